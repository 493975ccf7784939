"""The demo's small services (``make run``), standard library only. Each is an ordinary
HTTP/1.1 app that knows nothing of the mesh: its sidecar carries its traffic.

``python -m meshd.demo_apps backend --version v1 --host 127.0.0.2 --port 9090``
    ``GET /`` answers JSON naming the instance and version that answered. It fails a
    share of requests with 500 (a status the mesh's default retry policy leaves alone,
    unlike 503) when told to: ``--fail-rate`` (or ``FAIL_RATE``) at
    start, or ``GET /fail?rate=0.5`` at any time (``rate=0`` heals it).

    With ``--counter HOST:PORT`` (or ``COUNTER_ADDR``) each ``GET /`` also increments a
    key in the counter service over TCP (through its sidecar's TCP upstream listener,
    ``mesh-sidecar run --upstream counter=PORT``) and adds the counter's answer to its
    own; ``--service`` sets the service name it reports (``backend``).

``python -m meshd.demo_apps frontend --port 9080 --backend http://backend/``
    ``GET /`` calls the backend through its sidecar (the ``HTTP_PROXY`` in its
    environment, like any unchanged app) and answers one line saying which backend
    version answered, or what went wrong (502 then). It passes the tracing headers
    (``x-request-id``, ``traceparent``, ``tracestate``) and ``end-user`` on. ``--name``
    is the name its answers start with (``frontend``).

``python -m meshd.demo_apps counter --port 7070 --name counter-1``
    A TCP service (no HTTP): named counters in memory, one command per line, one JSON
    line per answer: ``INCR KEY`` (add one, answer the new value), ``GET KEY``,
    ``PING``. For example ``INCR visits`` answers
    ``{"service": "counter", "instance": "counter-1", "key": "visits", "value": 7}``.

Every HTTP app also answers ``GET /healthz`` (``ok``), for health checks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import socket
import socketserver
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PASSED_ON = ("x-request-id", "traceparent", "tracestate", "end-user")
BACKEND_TIMEOUT_S = 10.0
COUNTER_TIMEOUT_S = 5.0
COUNTER_KEY = "visits"
MAX_LINE = 1024


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

    def health(self) -> bool:
        """Answer ``GET /healthz`` (True) or leave the request to the app (False)."""
        if urlsplit(self.path).path != "/healthz":
            return False
        self.reply(200, b"ok\n")
        return True


def counter_call(address: tuple[str, int], command: str) -> dict[str, object]:
    """Send one command to the counter service and return its JSON answer."""
    with socket.create_connection(address, timeout=COUNTER_TIMEOUT_S) as conn:
        conn.sendall(command.encode() + b"\n")
        with conn.makefile("rb") as stream:
            line = stream.readline(MAX_LINE)
    if not line.endswith(b"\n"):
        raise ValueError(f"the counter closed the connection without an answer ({line!r})")
    answer = json.loads(line)
    if not isinstance(answer, dict):
        raise ValueError(f"the counter answered {line!r}, not a JSON object")
    return answer


class Backend(_Handler):
    service = "backend"
    instance = "backend-v1"
    app_version = "v1"
    fail_rate = 0.0
    counter: tuple[str, int] | None = None
    lock = threading.Lock()

    def do_GET(self) -> None:
        if self.health():
            return
        url = urlsplit(self.path)
        if url.path == "/fail":
            self.set_fail_rate(parse_qs(url.query).get("rate", [""])[0])
            return
        with Backend.lock:
            failing = random.random() < Backend.fail_rate  # noqa: S311 — not a secret
        answer: dict[str, object] = {
            "service": self.service,
            "version": self.app_version,
            "instance": self.instance,
        }
        if failing:
            answer["error"] = f"{self.instance} failed this request on purpose (fail rate)"
        elif self.counter is not None:
            # The TCP service, through this instance's sidecar (its --upstream listener).
            # Its failure does not fail the request: the answer says what went wrong.
            try:
                answer["counter"] = counter_call(self.counter, f"INCR {COUNTER_KEY}")
            except (OSError, ValueError) as exc:
                answer["counter"] = {"error": f"no answer from the counter ({exc})"}
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


def describe_counter(counter: object) -> str:
    """`` -> counter (counter-1): visits=7`` for the backend's ``counter`` field."""
    if not isinstance(counter, dict):
        return ""
    if "error" in counter:
        return f" -> counter: {counter['error']}"
    return (
        f" -> {counter.get('service')} ({counter.get('instance')}): "
        f"{counter.get('key')}={counter.get('value')}"
    )


class Frontend(_Handler):
    name = "frontend"
    backend_url = "http://backend/"
    opener = urllib.request.build_opener()

    def do_GET(self) -> None:
        if self.health():
            return
        if urlsplit(self.path).path != "/":
            self.reply(404, b"not found: the frontend serves GET /\n")
            return
        headers = {k: v for k in PASSED_ON if (v := self.headers.get(k)) is not None}
        # The URL's scheme was checked at start: http:// only.
        request = urllib.request.Request(self.backend_url, headers=headers)  # noqa: S310
        try:
            with self.opener.open(request, timeout=BACKEND_TIMEOUT_S) as answer:
                body = json.loads(answer.read())
            service = body.get("service", "backend")
            line = f"{self.name} -> {service} {body['version']} ({body['instance']})"
            line += describe_counter(body.get("counter"))
            self.reply(200, line.encode() + b"\n")
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", "replace").strip()
            with contextlib.suppress(ValueError, AttributeError):  # not the backend's JSON
                text = json.loads(text).get("error", text)
            self.reply(502, f"{self.name} -> {self.target()}: {exc.code} {text}\n".encode())
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            self.reply(502, f"{self.name} -> {self.target()}: no answer ({exc})\n".encode())

    def target(self) -> str:
        """The called service, as the backend URL names it (``backend``)."""
        return urlsplit(self.backend_url).hostname or "backend"


class Counter(socketserver.StreamRequestHandler):
    """The counter service: one command per line, one JSON line per answer."""

    instance = "counter-1"
    counts: dict[str, int] = {}  # noqa: RUF012 — shared by every connection, on purpose
    lock = threading.Lock()
    timeout = 300  # an idle client is let go after five minutes

    def handle(self) -> None:
        while True:
            try:
                line = self.rfile.readline(MAX_LINE + 1)
            except OSError:
                return
            if not line:
                return
            answer = self.answer(line)
            try:
                self.wfile.write(json.dumps(answer).encode() + b"\n")
            except OSError:
                return

    def answer(self, line: bytes) -> dict[str, object]:
        me: dict[str, object] = {"service": "counter", "instance": self.instance}
        if len(line) > MAX_LINE or not line.endswith(b"\n"):
            return {**me, "error": f"a command is one line of at most {MAX_LINE} bytes"}
        words = line.decode("utf-8", "replace").split()
        match words:
            case ["PING"]:
                return {**me, "pong": True}
            case ["INCR", key]:
                with Counter.lock:
                    value = Counter.counts[key] = Counter.counts.get(key, 0) + 1
                return {**me, "key": key, "value": value}
            case ["GET", key]:
                with Counter.lock:
                    value = Counter.counts.get(key, 0)
                return {**me, "key": key, "value": value}
        return {**me, "error": "unknown command: use INCR KEY, GET KEY or PING"}


class CounterServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def parse_address(value: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {value!r}")
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m meshd.demo_apps",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("app", choices=("frontend", "backend", "counter"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--name",
        help="backend, counter: the instance's name (default: backend-VERSION, counter-1); "
        "frontend: the name its answers start with (default: frontend)",
    )
    parser.add_argument("--service", default="backend", help="backend: the service name it reports")
    parser.add_argument("--version", default="v1", help="backend: the version it reports")
    parser.add_argument(
        "--fail-rate",
        type=float,
        default=float(os.environ.get("FAIL_RATE", "0")),
        help="backend: the share of requests answered 500 [env FAIL_RATE; default 0]",
    )
    parser.add_argument("--backend", default="http://backend/", help="frontend: the URL it calls")
    parser.add_argument(
        "--counter",
        type=parse_address,
        default=os.environ.get("COUNTER_ADDR") or None,
        metavar="HOST:PORT",
        help="backend: the counter service to call on each request, usually its sidecar's "
        "TCP upstream listener (127.0.0.1:PORT) [env COUNTER_ADDR; default: none]",
    )
    args = parser.parse_args(argv)
    if not args.backend.startswith("http://"):
        parser.error(f"--backend must be an http:// URL, not {args.backend!r}")
    if args.app == "counter":
        return serve_counter(args.host, args.port, args.name or "counter-1")
    handler: type[_Handler]
    if args.app == "backend":
        Backend.service = args.service
        Backend.instance = args.name or f"backend-{args.version}"
        Backend.app_version = args.version
        Backend.fail_rate = args.fail_rate
        Backend.counter = args.counter
        handler = Backend
    else:
        Frontend.name = args.name or "frontend"
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


def serve_counter(host: str, port: int, instance: str) -> int:
    Counter.instance = instance
    server = CounterServer((host, port), Counter)
    print(f"counter listening on tcp://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
