"""Health checks of the app next to the sidecar: what to check, the threshold state
machine (pure), and the Trio runner that checks every interval.

``--health-check`` says what a check is:

- ``http:/path``: ``GET /path`` on ``--app-address:--app-port`` (a new connection each
  time, ``Connection: close``); a 2xx or 3xx answer within the timeout passes (redirects
  are not followed), anything else fails;
- ``tcp``: a TCP connection to the app is accepted within the timeout;
- ``none`` (the default): no check; the app is healthy while the sidecar runs.

A check that takes longer than ``--health-timeout`` fails. Thresholds decide when a run
of results changes the instance's health, as Envoy's active health checks do:

- ``--unhealthy-threshold`` (default 2) failures in a row make a healthy app unhealthy;
- ``--healthy-threshold`` (default 1) passes in a row make an unhealthy app healthy;
- at start the app is unhealthy until its first check passes, and that single pass is
  enough (Envoy: "during startup, only a single successful health check is required").

Every result counts towards a threshold, whatever the kind of failure (Envoy marks a
host unhealthy at once on some HTTP statuses; we do not: two answers of 503 in a row are
needed, as two refused connections are).

The transitions are a table (:data:`TRANSITIONS`) applied by :func:`advance`, a pure
function of the state and one result; :class:`HealthChecker` runs checks on Trio and
publishes each new :class:`HealthState` in a :class:`~registry.latest.Latest`, which the
agent follows to report the health (at once when it changes) and the admin port shows.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

import trio

from registry.latest import Latest
from sidecar import __version__
from sidecar.protocol import (
    ClientConnection,
    EndOfMessage,
    Headers,
    ProtocolError,
    Request,
    Response,
)

log = logging.getLogger("sidecar.health")

CheckKind = Literal["none", "http", "tcp"]
Phase = Literal["starting", "healthy", "unhealthy"]

DEFAULT_INTERVAL_S = 10.0
DEFAULT_TIMEOUT_S = 2.0
DEFAULT_HEALTHY_THRESHOLD = 1
DEFAULT_UNHEALTHY_THRESHOLD = 2
MIN_INTERVAL_S = 0.5
"""The registration lasts two intervals, and registries take a TTL of 1 s at the least."""
MAX_INTERVAL_S = 3600.0
MIN_TIMEOUT_S = 0.01
MAX_THRESHOLD = 100
USER_AGENT = f"mesh-sidecar-health/{__version__}"
RECV_SIZE = 16 * 1024
MAX_OUTPUT = 512
"""Characters of check output kept (what the registry shows as the last output)."""

_PATH = re.compile(r"/[\x21-\x7e]*")


# --- what to check ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HealthCheckConfig:
    """``--health-check`` and its companions. ``path`` is the HTTP check's request
    target (``/healthz``), empty for the others."""

    kind: CheckKind = "none"
    path: str = ""
    interval_s: float = DEFAULT_INTERVAL_S
    timeout_s: float = DEFAULT_TIMEOUT_S
    healthy_threshold: int = DEFAULT_HEALTHY_THRESHOLD
    unhealthy_threshold: int = DEFAULT_UNHEALTHY_THRESHOLD

    @property
    def ttl_s(self) -> float:
        """How long a report lasts in the registry: two intervals, so one late or lost
        report does not take the instance out, two do."""
        return 2 * self.interval_s

    def describe(self) -> str:
        """The check as the flag takes it: ``http:/healthz``, ``tcp``, ``none``."""
        return f"http:{self.path}" if self.kind == "http" else self.kind


def parse_check(text: str) -> tuple[CheckKind, str]:
    """``http:/path`` | ``tcp`` | ``none`` -> (kind, path). Raises ``ValueError`` saying
    what would be right."""
    value = text.strip()
    if value in ("none", "tcp"):
        return value, ""  # type: ignore[return-value]
    if value.startswith("http:"):
        path = value[len("http:") :]
        if not path:
            raise ValueError(f"{text!r} has no path: give one, e.g. http:/healthz")
        if not _PATH.fullmatch(path):
            raise ValueError(
                f"{text!r}: the path must start with / and hold no spaces or control "
                "characters, e.g. http:/healthz or http:/status?full=1"
            )
        return "http", path
    if value == "http":
        raise ValueError("'http' needs the path to GET: e.g. http:/healthz")
    raise ValueError(f"{text!r} is not a health check: use http:/PATH, tcp or none")


# --- one result, and the state machine ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check: whether it passed, what it saw (``GET /healthz: 200 OK``), when it
    ended (wall clock) and how long it took."""

    passed: bool
    output: str
    at: float = 0.0
    duration_s: float = 0.0


@dataclass(frozen=True, slots=True)
class HealthState:
    """The app's health as the sidecar reports it. ``healthy`` is what the registry is
    told; ``successes``/``failures`` count the latest run of equal results (one of
    them is 0); ``changed_at`` is when ``healthy`` last flipped (wall clock)."""

    phase: Phase
    successes: int = 0
    failures: int = 0
    last: CheckResult | None = None
    checks: int = 0
    changes: int = 0
    changed_at: float | None = None

    @property
    def healthy(self) -> bool:
        return self.phase == "healthy"

    @property
    def output(self) -> str:
        """What the registry shows as the last check's output."""
        if self.last is not None:
            return self.last.output
        return "" if self.phase == "healthy" else "starting: no health check has run yet"


@dataclass(frozen=True, slots=True)
class Rule:
    """Where one result leads: ``then`` once the count of equal results in a row reaches
    the threshold named by ``threshold`` (None: at once), else ``otherwise``."""

    threshold: Literal["healthy", "unhealthy"] | None
    then: Phase
    otherwise: Phase


TRANSITIONS: Mapping[tuple[Phase, bool], Rule] = {
    # (phase, the check passed) -> rule
    ("starting", True): Rule(None, "healthy", "healthy"),  # one pass at start suffices
    ("starting", False): Rule(None, "starting", "starting"),
    ("healthy", True): Rule(None, "healthy", "healthy"),
    ("healthy", False): Rule("unhealthy", "unhealthy", "healthy"),
    ("unhealthy", True): Rule("healthy", "healthy", "unhealthy"),
    ("unhealthy", False): Rule(None, "unhealthy", "unhealthy"),
}

NO_CHECK = HealthCheckConfig()
"""``--health-check none`` with the default interval."""
STARTING = HealthState("starting")
"""Before the first result of a real check: not healthy (peers get no traffic to it)."""
ALWAYS_HEALTHY = HealthState("healthy")
"""``--health-check none``: healthy while the sidecar runs."""


def initial_state(config: HealthCheckConfig) -> HealthState:
    return ALWAYS_HEALTHY if config.kind == "none" else STARTING


def advance(state: HealthState, result: CheckResult, config: HealthCheckConfig) -> HealthState:
    """The state after one more result. Pure: the whole state machine."""
    if result.passed:
        successes, failures = state.successes + 1, 0
    else:
        successes, failures = 0, state.failures + 1
    rule = TRANSITIONS[(state.phase, result.passed)]
    if rule.threshold is None:
        phase = rule.then
    elif rule.threshold == "healthy":
        phase = rule.then if successes >= config.healthy_threshold else rule.otherwise
    else:
        phase = rule.then if failures >= config.unhealthy_threshold else rule.otherwise
    flipped = (phase == "healthy") != state.healthy
    return replace(
        state,
        phase=phase,
        successes=successes,
        failures=failures,
        last=result,
        checks=state.checks + 1,
        changes=state.changes + int(flipped),
        changed_at=result.at if flipped else state.changed_at,
    )


def iso_time(ts: float | None) -> str | None:
    """Epoch seconds as RFC 3339 UTC with milliseconds (as ``/config_dump`` writes times)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def state_json(state: HealthState, config: HealthCheckConfig) -> dict[str, Any]:
    """The health as ``/config_dump`` shows it (camelCase)."""
    last = state.last
    return {
        "check": config.describe(),
        "kind": config.kind,
        "path": config.path or None,
        "intervalSeconds": config.interval_s,
        "timeoutSeconds": config.timeout_s if config.kind != "none" else None,
        "healthyThreshold": config.healthy_threshold,
        "unhealthyThreshold": config.unhealthy_threshold,
        "ttlSeconds": config.ttl_s,
        "healthy": state.healthy,
        "status": state.phase,
        "consecutiveSuccesses": state.successes,
        "consecutiveFailures": state.failures,
        "checks": state.checks,
        "changes": state.changes,
        "changedAt": iso_time(state.changed_at),
        "lastResult": None
        if last is None
        else {
            "passed": last.passed,
            "output": last.output,
            "at": iso_time(last.at),
            "durationMs": round(last.duration_s * 1000, 1),
        },
    }


# --- the checks (Trio) -----------------------------------------------------------------


def _clip(text: str) -> str:
    return text if len(text) <= MAX_OUTPUT else text[: MAX_OUTPUT - 1] + "…"


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _os_reason(exc: OSError) -> str:
    if exc.errno is not None and exc.errno in errno.errorcode:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


async def _connect(host: str, port: int) -> trio.SocketStream:
    """A TCP connection to the app (``host`` is an IP address: no resolving, one
    attempt, so a failure is the connection's own ``OSError``)."""
    family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
    sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
    try:
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def tcp_check(host: str, port: int, timeout_s: float) -> tuple[bool, str]:
    """Pass when a TCP connection to ``host:port`` is accepted within the timeout."""
    where = f"TCP connect {_host_port(host, port)}"
    with trio.move_on_after(timeout_s):
        try:
            stream = await _connect(host, port)
        except OSError as exc:
            return False, f"{where}: {_os_reason(exc)}"
        await stream.aclose()
        return True, f"{where}: ok"
    return False, f"{where}: no connection within {_seconds(timeout_s)}"


async def http_check(host: str, port: int, path: str, timeout_s: float) -> tuple[bool, str]:
    """``GET path`` on a new connection; pass on a 2xx or 3xx response head within the
    timeout (the body is not read)."""
    where = f"GET {path}"
    with trio.move_on_after(timeout_s):
        try:
            stream = await _connect(host, port)
        except OSError as exc:
            return False, f"{where}: {_os_reason(exc)} ({_host_port(host, port)})"
        async with stream:
            return await _exchange(stream, host, port, path, where)
    return False, f"{where}: no answer within {_seconds(timeout_s)}"


async def _exchange(
    stream: trio.SocketStream, host: str, port: int, path: str, where: str
) -> tuple[bool, str]:
    conn = ClientConnection()
    request = Request(
        b"GET",
        path.encode("ascii"),
        headers=Headers(
            [
                (b"host", _host_port(host, port).encode("ascii")),
                (b"user-agent", USER_AGENT.encode("ascii")),
                (b"accept", b"*/*"),
                (b"connection", b"close"),
            ]
        ),
    )
    try:
        await stream.send_all(conn.send(request) + conn.send(EndOfMessage()))
        while True:
            data = await stream.receive_some(RECV_SIZE)
            for event in conn.receive_data(data):
                if isinstance(event, Response):
                    reason = event.reason.decode("latin-1", "replace")
                    status = f"{event.status} {reason}".rstrip()
                    return 200 <= event.status < 400, f"{where}: {status}"
            if not data:
                return False, f"{where}: the app closed the connection without answering"
    except ProtocolError as exc:
        return False, f"{where}: not an HTTP/1.1 answer ({exc})"
    except (trio.BrokenResourceError, OSError) as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
        reason = _os_reason(cause) if isinstance(cause, OSError) else str(exc) or "broken"
        return False, f"{where}: the connection failed ({reason})"


class HealthChecker:
    """Checks the app every ``interval_s`` (start to start; a check never outlasts its
    timeout, which is at most the interval) and publishes each new state in
    :attr:`state`. With ``kind == "none"`` nothing runs: the state stays healthy.

    ``clock`` is the wall clock results are stamped with (tests pass their own)."""

    def __init__(
        self,
        config: HealthCheckConfig,
        host: str,
        port: int,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.state: Latest[HealthState] = Latest(initial_state(config))
        self._clock = clock
        self._first = trio.Event()
        if config.kind == "none":
            self._first.set()

    @property
    def healthy(self) -> bool:
        return self.state.value.healthy

    def health_json(self) -> dict[str, Any]:
        return state_json(self.state.value, self.config)

    async def wait_first_result(self, timeout_s: float) -> bool:
        """Until the first check has a result (at once with no check); False after
        ``timeout_s`` without one."""
        if self._first.is_set():
            return True
        with trio.move_on_after(timeout_s):
            await self._first.wait()
            return True
        return False

    async def check_once(self) -> CheckResult:
        config = self.config
        started = trio.current_time()
        if config.kind == "http":
            passed, output = await http_check(self.host, self.port, config.path, config.timeout_s)
        elif config.kind == "tcp":
            passed, output = await tcp_check(self.host, self.port, config.timeout_s)
        else:
            passed, output = True, ""
        return CheckResult(passed, _clip(output), self._clock(), trio.current_time() - started)

    def take(self, result: CheckResult) -> HealthState:
        """Apply one result (logs a line when the health flips); the new state."""
        old = self.state.value
        new = advance(old, result, self.config)
        self.state.set(new)
        self._first.set()
        if new.healthy != old.healthy:
            if new.healthy:
                log.info("the app is healthy%s: %s", _again(old, new), result.output)
            else:
                log.warning(
                    "the app is unhealthy (%d failed check%s in a row): %s; peers stop "
                    "sending to this instance until it passes again",
                    new.failures,
                    "" if new.failures == 1 else "s",
                    result.output,
                )
        elif new.phase == "starting" and old.checks == 0:
            log.info("the app is not healthy yet: %s", result.output)
        return new

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        task_status.started()
        if config.kind == "none":
            await trio.sleep_forever()
        log.info(
            "health check %s on %s every %g s (timeout %g s, healthy after %d pass%s, "
            "unhealthy after %d failure%s in a row)",
            config.describe(),
            _host_port(self.host, self.port),
            config.interval_s,
            config.timeout_s,
            config.healthy_threshold,
            "" if config.healthy_threshold == 1 else "es",
            config.unhealthy_threshold,
            "" if config.unhealthy_threshold == 1 else "s",
        )
        next_at = trio.current_time()
        while True:
            self.take(await self.check_once())
            next_at += config.interval_s
            now = trio.current_time()
            next_at = max(next_at, now)  # after a stall, the missed checks are not run
            await trio.sleep_until(next_at)


def _again(old: HealthState, new: HealthState) -> str:
    if old.phase == "starting":
        return ""
    return f" again ({new.successes} passed check{'' if new.successes == 1 else 's'} in a row)"
