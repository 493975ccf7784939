"""The demo's apps as the compose stack runs them (meshd/demo_apps.py), without the mesh:
the TCP counter service, the backend counting each request there, and /healthz."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import pytest

from meshd import demo_apps
from meshd.demo_apps import Backend, Counter, CounterServer, counter_call, describe_counter


@pytest.fixture
def counter() -> Iterator[tuple[str, int]]:
    saved = dict(Counter.counts)
    Counter.counts.clear()
    server = CounterServer(("127.0.0.1", 0), Counter)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield str(host), int(port)
    finally:
        server.shutdown()
        server.server_close()
        Counter.counts.clear()
        Counter.counts.update(saved)


def test_counter_commands(counter: tuple[str, int]) -> None:
    assert counter_call(counter, "PING")["pong"] is True
    assert counter_call(counter, "INCR visits")["value"] == 1
    assert counter_call(counter, "INCR visits")["value"] == 2
    assert counter_call(counter, "GET visits") == {
        "service": "counter",
        "instance": "counter-1",
        "key": "visits",
        "value": 2,
    }
    assert "unknown command" in str(counter_call(counter, "DROP visits")["error"])


def test_backend_counts_each_request_and_answers_healthz(counter: tuple[str, int]) -> None:
    saved = (Backend.service, Backend.instance, Backend.app_version, Backend.counter)
    Backend.service, Backend.instance, Backend.app_version = "api", "api-v2", "v2"
    Backend.counter = counter
    server = ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{base}/healthz", timeout=5) as answer:
            assert (answer.status, answer.read()) == (200, b"ok\n")
        with opener.open(f"{base}/", timeout=5) as answer:
            body = json.loads(answer.read())
        assert body["service"] == "api"
        assert body["version"] == "v2"
        assert body["counter"]["value"] == 1
        assert describe_counter(body["counter"]) == " -> counter (counter-1): visits=1"
    finally:
        server.shutdown()
        server.server_close()
        Backend.service, Backend.instance, Backend.app_version, Backend.counter = saved


def test_backend_reports_a_counter_that_does_not_answer() -> None:
    assert describe_counter({"error": "no answer"}) == " -> counter: no answer"
    assert describe_counter(None) == ""


def test_command_line_rejects_a_bad_counter_address() -> None:
    with pytest.raises(SystemExit):
        demo_apps.main(["backend", "--port", "1", "--counter", "no-port"])
