"""Health checks of the app: the threshold state machine (table-driven, and a property
test over random result sequences), parsing ``--health-check``, and the HTTP and TCP
checks against real loopback sockets: a server that answers 200, 301, 500, one that
hangs, one that closes without answering, one that answers garbage, and a port nothing
listens on. Then the Trio runner: healthy, two failures in a row, back after one pass."""

from __future__ import annotations

import functools
import socket
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from sidecar.health import (
    ALWAYS_HEALTHY,
    STARTING,
    TRANSITIONS,
    CheckResult,
    HealthCheckConfig,
    HealthChecker,
    HealthState,
    advance,
    http_check,
    initial_state,
    parse_check,
    state_json,
    tcp_check,
)

LOOPBACK = "127.0.0.1"
P, F = True, False


def run_results(
    results: list[bool], *, healthy_threshold: int = 1, unhealthy_threshold: int = 2
) -> list[str]:
    config = HealthCheckConfig(
        "http", "/h", healthy_threshold=healthy_threshold, unhealthy_threshold=unhealthy_threshold
    )
    state = initial_state(config)
    phases: list[str] = []
    for n, passed in enumerate(results):
        state = advance(state, CheckResult(passed, f"check {n}", at=float(n)), config)
        phases.append(state.phase)
    return phases


# --- the state machine --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("results", "thresholds", "phases"),
    [
        # At start one pass is enough, whatever the healthy threshold (Envoy's rule).
        ([P], (1, 2), ["healthy"]),
        ([P], (3, 2), ["healthy"]),
        # Failing at start: not healthy until the first pass.
        ([F, F, F, P], (3, 2), ["starting", "starting", "starting", "healthy"]),
        # Defaults: two failures in a row make it unhealthy, one pass brings it back.
        ([P, F, F, P], (1, 2), ["healthy", "healthy", "unhealthy", "healthy"]),
        # A pass between failures resets the count.
        ([P, F, P, F, P, F], (1, 2), ["healthy"] * 6),
        # unhealthy threshold 1: the first failure counts.
        ([P, F, P], (1, 1), ["healthy", "unhealthy", "healthy"]),
        # healthy threshold 3: three passes in a row after being unhealthy.
        (
            [P, F, F, P, P, F, P, P, P],
            (3, 2),
            [
                "healthy",
                "healthy",
                "unhealthy",
                "unhealthy",
                "unhealthy",
                "unhealthy",
                "unhealthy",
                "unhealthy",
                "healthy",
            ],
        ),
        # unhealthy threshold 3.
        ([P, F, F, F, F], (1, 3), ["healthy", "healthy", "healthy", "unhealthy", "unhealthy"]),
    ],
)
def test_thresholds(results: list[bool], thresholds: tuple[int, int], phases: list[str]) -> None:
    healthy, unhealthy = thresholds
    assert run_results(results, healthy_threshold=healthy, unhealthy_threshold=unhealthy) == phases


def test_every_phase_and_result_has_a_rule() -> None:
    assert set(TRANSITIONS) == {
        (phase, passed) for phase in ("starting", "healthy", "unhealthy") for passed in (P, F)
    }


def test_the_state_counts_and_remembers_the_last_result() -> None:
    config = HealthCheckConfig("tcp")
    state = initial_state(config)
    assert state is STARTING
    assert not state.healthy
    assert state.output == "starting: no health check has run yet"
    state = advance(state, CheckResult(P, "ok", at=10.0), config)
    assert (state.healthy, state.successes, state.failures, state.checks) == (True, 1, 0, 1)
    assert (state.changes, state.changed_at) == (1, 10.0)
    state = advance(state, CheckResult(F, "refused", at=11.0), config)
    assert (state.healthy, state.successes, state.failures) == (True, 0, 1)
    assert state.output == "refused"
    assert (state.changes, state.changed_at) == (1, 10.0)
    state = advance(state, CheckResult(F, "refused again", at=12.0), config)
    assert (state.healthy, state.failures, state.changes, state.changed_at) == (F, 2, 2, 12.0)
    assert initial_state(HealthCheckConfig("none")) is ALWAYS_HEALTHY
    assert ALWAYS_HEALTHY.healthy
    assert ALWAYS_HEALTHY.output == ""


def test_state_json() -> None:
    config = HealthCheckConfig("http", "/healthz", interval_s=1.0, timeout_s=0.5)
    state = advance(STARTING, CheckResult(P, "GET /healthz: 200 OK", 0.0, 0.0123), config)
    assert state_json(state, config) == {
        "check": "http:/healthz",
        "kind": "http",
        "path": "/healthz",
        "intervalSeconds": 1.0,
        "timeoutSeconds": 0.5,
        "healthyThreshold": 1,
        "unhealthyThreshold": 2,
        "ttlSeconds": 2.0,
        "healthy": True,
        "status": "healthy",
        "consecutiveSuccesses": 1,
        "consecutiveFailures": 0,
        "checks": 1,
        "changes": 1,
        "changedAt": "1970-01-01T00:00:00.000Z",
        "lastResult": {
            "passed": True,
            "output": "GET /healthz: 200 OK",
            "at": "1970-01-01T00:00:00.000Z",
            "durationMs": 12.3,
        },
    }


@given(
    st.lists(st.booleans(), max_size=40),
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=1, max_value=5),
)
def test_the_health_follows_the_definition(
    results: list[bool], healthy_threshold: int, unhealthy_threshold: int
) -> None:
    """Against a direct reading of the rules: healthy once some pass came, except while
    the latest run of failures (after a healthy moment) reached the unhealthy
    threshold and the passes since did not yet reach the healthy threshold."""
    phases = run_results(
        results, healthy_threshold=healthy_threshold, unhealthy_threshold=unhealthy_threshold
    )
    healthy = False
    started = False
    run_pass = run_fail = 0
    for passed, phase in zip(results, phases, strict=True):
        run_pass, run_fail = (run_pass + 1, 0) if passed else (0, run_fail + 1)
        if not started:
            healthy = started = passed
        elif healthy and run_fail >= unhealthy_threshold:
            healthy = False
        elif not healthy and run_pass >= healthy_threshold:
            healthy = True
        assert (phase == "healthy") == healthy
        assert (phase == "starting") == (not started)


# --- parsing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("none", ("none", "")),
        ("tcp", ("tcp", "")),
        ("http:/healthz", ("http", "/healthz")),
        (" http:/ ", ("http", "/")),
        ("http:/status?full=1", ("http", "/status?full=1")),
    ],
)
def test_parse_check(text: str, parsed: tuple[str, str]) -> None:
    assert parse_check(text) == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("http", r"needs the path to GET: e.g. http:/healthz"),
        ("http:", r"has no path"),
        ("http:healthz", r"must start with /"),
        ("http:/a b", r"no spaces or control"),
        ("grpc", r"is not a health check: use http:/PATH, tcp or none"),
        ("", r"is not a health check"),
    ],
)
def test_parse_check_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_check(text)


# --- checks against real sockets ------------------------------------------------------------------

Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def read_head(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
    return data


def answering(status_line: bytes, seen: list[bytes] | None = None) -> Handler:
    async def handler(stream: trio.SocketStream) -> None:
        head = await read_head(stream)
        if seen is not None:
            seen.append(head)
        body = b"ok"
        await stream.send_all(
            status_line + b"\r\nContent-Length: %d\r\nLocation: /x\r\n\r\n" % len(body) + body
        )
        await stream.aclose()

    return handler


async def hanging(stream: trio.SocketStream) -> None:
    await read_head(stream)
    await trio.sleep_forever()


async def closing(stream: trio.SocketStream) -> None:
    await read_head(stream)
    await stream.aclose()


async def garbage(stream: trio.SocketStream) -> None:
    await read_head(stream)
    await stream.send_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
    await stream.aclose()


async def with_server(handler: Handler, body: Callable[[int], Awaitable[None]]) -> None:
    async with trio.open_nursery() as nursery:
        serve = functools.partial(trio.serve_tcp, handler, 0, host=LOOPBACK)
        listeners = await nursery.start(serve)
        port = int(listeners[0].socket.getsockname()[1])
        await body(port)
        nursery.cancel_scope.cancel()


@contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port nothing listens on (bound, not listening: connections are refused)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("status_line", "passed", "output"),
    [
        (b"HTTP/1.1 200 OK", True, "GET /healthz: 200 OK"),
        (b"HTTP/1.1 204 No Content", True, "GET /healthz: 204 No Content"),
        (b"HTTP/1.1 301 Moved Permanently", True, "GET /healthz: 301 Moved Permanently"),
        (b"HTTP/1.0 200 OK", True, "GET /healthz: 200 OK"),
        (b"HTTP/1.1 404 Not Found", False, "GET /healthz: 404 Not Found"),
        (b"HTTP/1.1 500 Internal Server Error", False, "GET /healthz: 500 Internal Server Error"),
        (b"HTTP/1.1 503 Service Unavailable", False, "GET /healthz: 503 Service Unavailable"),
    ],
)
def test_http_check_by_status(status_line: bytes, passed: bool, output: str) -> None:
    seen: list[bytes] = []

    async def main() -> None:
        async def check(port: int) -> None:
            result = await http_check(LOOPBACK, port, "/healthz", 2.0)
            assert result == (passed, output)

        await with_server(answering(status_line, seen), check)

    trio.run(main)
    (head,) = seen
    assert head.startswith(b"GET /healthz HTTP/1.1\r\n")
    assert b"\r\nconnection: close\r\n" in head
    assert b"\r\nuser-agent: mesh-sidecar-health/" in head
    assert b"\r\nhost: 127.0.0.1:" in head


def test_http_check_times_out_on_a_hanging_app() -> None:
    async def main() -> None:
        async def check(port: int) -> None:
            started = trio.current_time()
            passed, output = await http_check(LOOPBACK, port, "/healthz", 0.3)
            took = trio.current_time() - started
            assert (passed, output) == (False, "GET /healthz: no answer within 0.3 s")
            assert 0.3 <= took < 1.0

        await with_server(hanging, check)

    trio.run(main)


@pytest.mark.parametrize(
    ("handler", "output"),
    [
        (closing, "GET /healthz: the app closed the connection without answering"),
        (garbage, "GET /healthz: not an HTTP/1.1 answer"),
    ],
)
def test_http_check_fails_without_a_valid_answer(handler: Handler, output: str) -> None:
    async def main() -> None:
        async def check(port: int) -> None:
            passed, text = await http_check(LOOPBACK, port, "/healthz", 2.0)
            assert not passed
            assert text.startswith(output), text

        await with_server(handler, check)

    trio.run(main)


def test_http_and_tcp_checks_fail_when_the_app_refuses() -> None:
    async def main() -> None:
        with closed_port() as port:
            assert await http_check(LOOPBACK, port, "/h", 2.0) == (
                False,
                f"GET /h: connection refused (127.0.0.1:{port})",
            )
            assert await tcp_check(LOOPBACK, port, 2.0) == (
                False,
                f"TCP connect 127.0.0.1:{port}: connection refused",
            )

    trio.run(main)


def test_tcp_check_passes_when_the_app_accepts() -> None:
    async def main() -> None:
        async def check(port: int) -> None:
            assert await tcp_check(LOOPBACK, port, 2.0) == (
                True,
                f"TCP connect 127.0.0.1:{port}: ok",
            )

        await with_server(hanging, check)

    trio.run(main)


# --- the runner -----------------------------------------------------------------------------------


class FlagApp:
    """A tiny app whose health path answers 200 or 500 as ``healthy`` says, and that
    can stop listening altogether (``down``)."""

    def __init__(self) -> None:
        self.healthy = True
        self.requests = 0

    async def handler(self, stream: trio.SocketStream) -> None:
        self.requests += 1
        await read_head(stream)
        line = b"HTTP/1.1 200 OK" if self.healthy else b"HTTP/1.1 500 Internal Server Error"
        await stream.send_all(line + b"\r\nContent-Length: 0\r\n\r\n")
        await stream.aclose()


def test_the_checker_runs_every_interval_and_applies_the_thresholds() -> None:
    app = FlagApp()
    config = HealthCheckConfig("http", "/healthz", interval_s=0.05, timeout_s=0.05)
    seen: list[HealthState] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            serve = functools.partial(trio.serve_tcp, app.handler, 0, host=LOOPBACK)
            listeners = await nursery.start(serve)
            port = int(listeners[0].socket.getsockname()[1])
            checker = HealthChecker(config, LOOPBACK, port)
            assert checker.state.value.phase == "starting"
            await nursery.start(checker.run)
            assert await checker.wait_first_result(2.0)
            assert checker.healthy

            async def until(predicate: Callable[[HealthState], bool]) -> HealthState:
                with trio.fail_after(5):
                    version = checker.state.version
                    while not predicate(checker.state.value):
                        version, _ = await checker.state.wait_newer(version)
                state = checker.state.value
                seen.append(state)
                return state

            app.healthy = False
            first_failure = await until(lambda s: s.failures == 1)
            assert first_failure.healthy  # one failure is not enough
            down = await until(lambda s: not s.healthy)
            assert down.failures == 2
            assert down.output == "GET /healthz: 500 Internal Server Error"
            app.healthy = True
            up = await until(lambda s: s.healthy)
            assert (up.successes, up.changes) == (1, 3)
            assert up.output == "GET /healthz: 200 OK"
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert app.requests >= 4


def test_a_checker_without_a_check_is_healthy_at_once() -> None:
    async def main() -> None:
        checker = HealthChecker(HealthCheckConfig("none"), LOOPBACK, 1)
        assert checker.healthy
        assert await checker.wait_first_result(0)
        with trio.move_on_after(0.05):
            await checker.run()
        assert checker.state.value is ALWAYS_HEALTHY
        assert checker.health_json()["check"] == "none"

    trio.run(main)


def test_wait_first_result_gives_up_after_its_timeout() -> None:
    async def main() -> None:
        checker = HealthChecker(HealthCheckConfig("tcp"), LOOPBACK, 1)
        assert not await checker.wait_first_result(0.01)

    trio.run(main)
