"""The demo's small services (``make run``), standard library only. Each is an ordinary
HTTP/1.1 app that knows nothing of the mesh: its sidecar carries its traffic.

``python -m meshd.demo_apps backend --version v1 --host 127.0.0.2 --port 9090``
    ``GET /`` answers JSON naming the instance and version that answered. It fails a
    share of requests with 500 (a status the mesh's default retry policy leaves alone,
    unlike 503) when told to: ``--fail-rate`` (or ``FAIL_RATE``) at
    start, or ``GET /fail?rate=0.5`` at any time (``rate=0`` heals it).

``python -m meshd.demo_apps frontend --port 9080 --backend http://backend/``
    ``GET /`` calls the backend through its sidecar (the ``HTTP_PROXY`` in its
    environment, like any unchanged app) and answers one line saying which backend
    version answered, or what went wrong (502 then). It passes the tracing headers
    (``x-request-id``, ``traceparent``, ``tracestate``) and ``end-user`` on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PASSED_ON = ("x-request-id", "traceparent", "tracestate", "end-user")
BACKEND_TIMEOUT_S = 10.0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the sidecar pools its connections
    disable_nagle_algorithm = True  # the head and the body go in two writes
    server_version = "demo-app"

    def reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", f"{content_type}; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        raise NotImplementedError


class Backend(_Handler):
    instance = "backend-v1"
    app_version = "v1"
    fail_rate = 0.0
    lock = threading.Lock()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/fail":
            self.set_fail_rate(parse_qs(url.query).get("rate", [""])[0])
            return
        with Backend.lock:
            failing = random.random() < Backend.fail_rate  # noqa: S311 — not a secret
        answer = {"service": "backend", "version": self.app_version, "instance": self.instance}
        if failing:
            answer["error"] = f"{self.instance} failed this request on purpose (fail rate)"
        body = json.dumps(answer).encode() + b"\n"
        self.reply(500 if failing else 200, body, "application/json")

    def set_fail_rate(self, value: str) -> None:
        try:
            rate = float(value)
        except ValueError:
            rate = -1.0
        if not 0.0 <= rate <= 1.0:
            self.reply(400, b"usage: GET /fail?rate=R with R from 0 to 1 (0: never fail)\n")
            return
        with Backend.lock:
            Backend.fail_rate = rate
        self.reply(200, f"{self.instance} now fails {rate:.0%} of its requests\n".encode())


class Frontend(_Handler):
    backend_url = "http://backend/"
    opener = urllib.request.build_opener()

    def do_GET(self) -> None:
        if urlsplit(self.path).path != "/":
            self.reply(404, b"not found: the frontend serves GET /\n")
            return
        headers = {k: v for k in PASSED_ON if (v := self.headers.get(k)) is not None}
        # The URL's scheme was checked at start: http:// only.
        request = urllib.request.Request(self.backend_url, headers=headers)  # noqa: S310
        try:
            with self.opener.open(request, timeout=BACKEND_TIMEOUT_S) as answer:
                body = json.loads(answer.read())
            line = f"frontend -> backend {body['version']} ({body['instance']})"
            self.reply(200, line.encode() + b"\n")
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", "replace").strip()
            with contextlib.suppress(ValueError, AttributeError):  # not the backend's JSON
                text = json.loads(text).get("error", text)
            self.reply(502, f"frontend -> backend: {exc.code} {text}\n".encode())
        except (OSError, ValueError, KeyError) as exc:
            self.reply(502, f"frontend -> backend: no answer ({exc})\n".encode())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m meshd.demo_apps",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("app", choices=("frontend", "backend"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", help="the instance's name (default: the app's)")
    parser.add_argument("--version", default="v1", help="backend: the version it reports")
    parser.add_argument(
        "--fail-rate",
        type=float,
        default=float(os.environ.get("FAIL_RATE", "0")),
        help="backend: the share of requests answered 500 [env FAIL_RATE; default 0]",
    )
    parser.add_argument("--backend", default="http://backend/", help="frontend: the URL it calls")
    args = parser.parse_args(argv)
    if not args.backend.startswith("http://"):
        parser.error(f"--backend must be an http:// URL, not {args.backend!r}")
    handler: type[_Handler]
    if args.app == "backend":
        Backend.instance = args.name or f"backend-{args.version}"
        Backend.app_version = args.version
        Backend.fail_rate = args.fail_rate
        handler = Backend
    else:
        proxy = os.environ.get("HTTP_PROXY") or os.environ.get("http_proxy")
        # Only the proxy for http:// (no NO_PROXY exceptions): every call goes through
        # the sidecar, as with the mesh's iptables capture elsewhere.
        proxies = {"http": proxy} if proxy else {}
        Frontend.opener = urllib.request.build_opener(urllib.request.ProxyHandler(proxies))
        Frontend.backend_url = args.backend
        handler = Frontend
    server = ThreadingHTTPServer((args.host, args.port), handler)
    server.daemon_threads = True
    print(f"{args.app} listening on http://{args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
