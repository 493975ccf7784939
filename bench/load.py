"""Load generators of the proxy benchmark (``bench/proxy_bench.py``).

Every request is the same keep-alive ``GET / HTTP/1.1`` with a ``Host`` header and no
body, built once; every response is expected to be a ``200`` with a 1 KiB body.

- **Saturation** (closed loop: each connection sends its next request when the last
  answer is in): `wrk <https://github.com/wg/wrk>`_ from Debian (``make deps`` puts it in
  ``.deps/bin``), one thread, C and epoll, so one core of it drives ~150,000 requests/s
  on loopback — far above any proxy measured here. A Lua ``done()`` hook prints its
  summary as JSON (:data:`WRK_SCRIPT`); the request itself is wrk's own, pre-built one.
  Without wrk, :func:`closed_loop` (asyncio + uvloop, raw protocol callbacks) stands
  in, and the report says so: it is ~10x slower and would cap the faster proxies.
- **Fixed rate** (open loop): :func:`constant_rate`. Requests are due at ``start + i /
  rate`` whatever happened to earlier ones, and each latency is measured from its *due*
  time to the last byte of its answer, so a stall anywhere shows as latency of every
  request it delayed (no coordinated omission; wrk cannot do this). It runs on the
  standard asyncio loop over ``select()``, whose timeout is in microseconds (epoll's,
  and so uvloop's timers, are in milliseconds: a due time would be missed by up to
  1 ms, as much as the latencies measured). How late each request left is kept too
  (*send lag*), so the precision of the generator itself is in the report.

``python -m bench.load rate|closed --port P --host H ...`` runs one measurement and
prints it as one JSON object; the benchmark runs it in a child process pinned to the
load generator's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import gc
import json
import math
import resource
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
CONNECT_TIMEOUT_S = 5.0
DRAIN_TIMEOUT_S = 5.0
"""After the last due time, how long answers still in flight are waited for."""

WRK_SCRIPT = r"""
-- Print wrk's summary as one JSON line (latencies in microseconds).
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
"""


def request_bytes(host: str) -> bytes:
    return f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: meshd-bench\r\n\r\n".encode()


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest rank on an already sorted sequence (p99 of 10,000 is the 9,900th)."""
    if not ordered:
        return math.nan
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def summary_ms(values: Sequence[float]) -> dict[str, float]:
    """Seconds in, milliseconds out: n, mean, p50, p90, p99, p99.9, max."""
    ordered = sorted(values)
    out: dict[str, float] = {"n": len(ordered)}
    if ordered:
        out["mean"] = round(sum(ordered) / len(ordered) * 1000, 3)
        for q in (50, 90, 99, 99.9):
            out[f"p{q:g}"] = round(percentile(ordered, q) * 1000, 3)
        out["max"] = round(ordered[-1] * 1000, 3)
    return out


# --- responses -------------------------------------------------------------------------------


class _Connection(asyncio.Protocol):
    """One keep-alive client connection, one request in flight at a time. Parses just
    enough of each response (status, Content-Length or chunked framing) to know where
    it ends, and calls ``on_response(ok)`` at its last byte."""

    def __init__(self, on_response: Callable[[_Connection, bool], None]) -> None:
        self.on_response = on_response
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buf = bytearray()
        self._need = -1  # bytes of the current response; -1: head not parsed yet
        self._ok = False
        self._chunked = False
        # Per request, set by the sender: (due, sent) times.
        self.due = 0.0
        self.sent = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, but are one.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, request: bytes, due: float, sent: float) -> None:
        assert self.transport is not None
        self.due = due
        self.sent = sent
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while True:
            if self._need < 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                self._parse_head(bytes(buf[:end]))
                del buf[: end + 4]
            if self._chunked:
                size = self._chunked_size(buf)
                if size < 0:
                    return
                self._need = size
            if len(buf) < self._need:
                return
            del buf[: self._need]
            self._need = -1
            self.on_response(self, self._ok)
            if not buf:
                return

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        self._ok = lines[0].startswith(b"HTTP/1.1 200 ")
        self._chunked = False
        self._need = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                self._need = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                self._chunked = True

    @staticmethod
    def _chunked_size(buf: bytearray) -> int:
        """Length of a complete chunked body at the start of ``buf`` (no trailers
        expected), or -1 while it is incomplete."""
        pos = 0
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return -1
            size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            pos = eol + 2 + size + 2
            if size == 0:
                return pos if len(buf) >= pos else -1
            if len(buf) < pos:
                return -1


async def _connect(
    port: int, count: int, on_response: Callable[[_Connection, bool], None]
) -> list[_Connection]:
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(count):
        _transport, conn = await asyncio.wait_for(
            loop.create_connection(lambda: _Connection(on_response), LOOPBACK, port),
            CONNECT_TIMEOUT_S,
        )
        conns.append(conn)
    return conns


def _close(conns: Sequence[_Connection]) -> None:
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()


def fine_timers() -> bool:
    """Timer slack of 1 ns for this process (``prctl(PR_SET_TIMERSLACK)``): by default the
    kernel may end a sleep up to 50 µs late to batch wake-ups, on top of the wake-up
    itself. Measured here: median lateness of a 1 ms ``select()`` 80 -> 32 µs."""
    pr_set_timerslack = 29
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(pr_set_timerslack, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- fixed rate (open loop) -----------------------------------------------------------------


async def constant_rate(
    port: int, host: str, rate: float, duration: float, connections: int
) -> dict[str, Any]:
    """``rate`` requests/s for ``duration`` s over up to ``connections`` keep-alive
    connections, opened first. A due request takes the connection that finished last
    (LIFO, as a client pool does: a few hot connections); when all are busy it waits in
    a FIFO queue and its wait counts as latency."""
    loop = asyncio.get_running_loop()
    request = request_bytes(host)
    latencies: list[float] = []
    services: list[float] = []
    lags: list[float] = []
    errors = 0
    idle: list[_Connection] = []
    queued: collections.deque[float] = collections.deque()
    busy = 0
    finished = loop.create_future()
    total = int(rate * duration)
    scheduled = 0

    def dispatch(conn: _Connection, due: float) -> None:
        nonlocal busy
        busy += 1
        conn.send(request, due, loop.time())

    def on_response(conn: _Connection, ok: bool) -> None:
        nonlocal busy, errors
        now = loop.time()
        busy -= 1
        latencies.append(now - conn.due)
        services.append(now - conn.sent)
        if not ok:
            errors += 1
        if queued:
            dispatch(conn, queued.popleft())
        else:
            idle.append(conn)
            if scheduled == total and not busy and not finished.done():
                finished.set_result(None)

    fine = fine_timers()
    conns = await _connect(port, connections, on_response)
    idle.extend(conns)
    start = loop.time() + 0.05
    cpu0 = _cpu_s()
    gc.disable()

    def fire() -> None:
        nonlocal scheduled
        # Every request already due goes now (a late wake-up sends a small burst, each
        # stamped with its own due time); then sleep until the next one is due.
        now = loop.time()
        while scheduled < total:
            due = start + scheduled / rate
            if due > now:
                loop.call_at(due, fire)
                return
            scheduled += 1
            lags.append(now - due)  # how late the timer woke us: the generator's precision
            if idle:
                dispatch(idle.pop(), due)
            else:
                queued.append(due)
        if not busy and not queued and not finished.done():
            finished.set_result(None)

    loop.call_at(start, fire)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(finished, duration + 0.05 + DRAIN_TIMEOUT_S)
    end = loop.time()
    gc.enable()
    cpu = _cpu_s() - cpu0
    _close(conns)
    lost = total - len(latencies)
    return {
        "mode": "fixed rate (open loop)",
        "rate": rate,
        "duration_s": duration,
        "connections": connections,
        "requests": len(latencies),
        "achieved_rps": round(len(latencies) / max(1e-9, end - start), 1),
        "errors": errors + lost,
        "not_answered": lost,
        "latency_ms": summary_ms(latencies),
        "service_time_ms": summary_ms(services),
        "send_lag_ms": summary_ms(lags),
        "timer_slack": "1 ns" if fine else "default (50 µs)",
        "client_cpu_s": round(cpu, 3),
        "connections_used": sum(1 for c in conns if c.sent),
    }


# --- closed loop (fallback without wrk) -------------------------------------------------------


async def closed_loop(port: int, host: str, connections: int, duration: float) -> dict[str, Any]:
    """Each connection sends its next request as soon as the previous answer is in.
    Stamps come from ``time.perf_counter`` (uvloop's ``loop.time()`` counts in ms)."""
    loop = asyncio.get_running_loop()
    clock = time.perf_counter
    request = request_bytes(host)
    latencies: list[float] = []
    errors = 0
    deadline = 0.0
    running = 0
    finished = loop.create_future()

    def on_response(conn: _Connection, ok: bool) -> None:
        nonlocal errors, running
        now = clock()
        latencies.append(now - conn.sent)
        if not ok:
            errors += 1
        if now < deadline:
            conn.send(request, now, now)
        else:
            running -= 1
            if not running and not finished.done():
                finished.set_result(None)

    conns = await _connect(port, connections, on_response)
    gc.disable()
    cpu0 = _cpu_s()
    start = clock()
    deadline = start + duration
    running = len(conns)
    for conn in conns:
        conn.send(request, start, start)
    try:
        await asyncio.wait_for(finished, duration + DRAIN_TIMEOUT_S)
    except TimeoutError:
        errors += running
    end = clock()
    gc.enable()
    cpu = _cpu_s() - cpu0
    _close(conns)
    lat = summary_ms(latencies)
    return {
        "generator": "python",
        "requests": len(latencies),
        "duration_s": round(end - start, 3),
        "rps": round(len(latencies) / (end - start), 1),
        "errors": errors,
        "latency_ms": {k: lat[k] for k in ("mean", "p50", "p90", "p99", "max") if k in lat},
        "generator_cpu_s": round(cpu, 3),
    }


# --- wrk --------------------------------------------------------------------------------------


def wrk_binary() -> Path | None:
    local = REPO_ROOT / ".deps" / "bin" / "wrk"
    if local.exists():
        return local
    found = shutil.which("wrk")
    return Path(found) if found else None


def wrk_version(wrk: Path | None) -> str:
    """``wrk debian/4.1.0-3+b2`` (wrk -v prints it and exits with 1)."""
    if wrk is None:
        return "none"
    done = subprocess.run([str(wrk), "-v"], capture_output=True, text=True, check=False)
    words = (done.stdout + done.stderr).split()
    return " ".join(words[:2]) if words else "wrk"


def run_wrk(
    wrk: Path,
    port: int,
    host: str,
    connections: int,
    duration: float,
    prefix: Sequence[str] = (),
) -> dict[str, Any]:
    """One wrk run (one thread) against ``127.0.0.1:port``; ``prefix`` is e.g.
    ``taskset -c 0`` (which execs wrk: one process). wrk counts whole seconds."""
    seconds = max(1, round(duration))
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="wrk-") as script:
        script.write(WRK_SCRIPT)
        script.flush()
        argv = [
            *prefix, str(wrk), "-t1", f"-c{connections}", f"-d{seconds}s",
            "--timeout", "5s", "-H", f"Host: {host}", "-s", script.name,
            f"http://{LOOPBACK}:{port}/",
        ]  # fmt: skip
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=seconds + 30)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if proc.returncode != 0:
        said = (out + err).decode(errors="replace").strip()
        raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}: {said}")
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"wrk printed no summary:\n{out.decode()}\n{err.decode()}")
    raw: dict[str, Any] = json.loads(lines[-1])
    secs = raw["duration_us"] / 1e6
    errors = raw["errors"]
    lat = raw["latency_us"]
    return {
        "generator": "wrk",
        "requests": raw["requests"],
        "duration_s": round(secs, 3),
        "rps": round(raw["requests"] / secs, 1),
        "errors": sum(errors.values()),
        "error_kinds": {k: v for k, v in errors.items() if v},
        "latency_ms": {k: round(v / 1000, 3) for k, v in lat.items()},
    }


def children_cpu_s() -> float:
    """CPU time of every reaped child of this process so far (``RUSAGE_CHILDREN``)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def saturate(
    port: int,
    host: str,
    connections: int,
    duration: float,
    prefix: Sequence[str] = (),
) -> dict[str, Any]:
    """Closed-loop saturation with wrk, or the Python client without it; with the
    generator's own CPU seconds (``generator_cpu_s``)."""
    wrk = wrk_binary()
    before = children_cpu_s()
    if wrk is not None:
        result = run_wrk(wrk, port, host, connections, duration, prefix)
        result["generator_cpu_s"] = round(children_cpu_s() - before, 3)
        return result
    argv = [
        *prefix, sys.executable, "-m", "bench.load", "closed", "--port", str(port),
        "--host", host, "--connections", str(connections), "--duration", str(duration),
    ]  # fmt: skip
    return run_child(argv, duration + 30)


def run_child(argv: Sequence[str], timeout: float) -> dict[str, Any]:
    """A ``python -m bench.load`` child; its JSON line. Killed on any exception (also
    Ctrl-C), so no generator outlives the benchmark."""
    proc = subprocess.Popen(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited with {proc.returncode}: {err.decode(errors='replace')}"
        )
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def fixed_rate(
    port: int,
    host: str,
    rate: float,
    duration: float,
    connections: int,
    prefix: Sequence[str] = (),
) -> dict[str, Any]:
    argv = [
        *prefix, sys.executable, "-m", "bench.load", "rate", "--port", str(port),
        "--host", host, "--rate", str(rate), "--duration", str(duration),
        "--connections", str(connections),
    ]  # fmt: skip
    return run_child(argv, duration + DRAIN_TIMEOUT_S + 30)


# --- command line -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    sub = parser.add_subparsers(dest="mode", required=True)
    for name in ("rate", "closed"):
        p = sub.add_parser(name)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--host", default="bench")
        p.add_argument("--duration", type=float, default=10.0)
        p.add_argument("--connections", type=int, default=32)
        if name == "rate":
            p.add_argument("--rate", type=float, default=1000.0)
    args = parser.parse_args(argv)
    if args.mode == "rate":
        # select(): microsecond timeouts (see the module docstring).
        def select_loop() -> asyncio.AbstractEventLoop:
            return asyncio.SelectorEventLoop(selectors.SelectSelector())

        with asyncio.Runner(loop_factory=select_loop) as runner:
            result = runner.run(
                constant_rate(args.port, args.host, args.rate, args.duration, args.connections)
            )
    else:
        try:
            import uvloop  # noqa: PLC0415 — optional speed-up

            factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        except ImportError:
            factory = asyncio.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            result = runner.run(closed_loop(args.port, args.host, args.connections, args.duration))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
