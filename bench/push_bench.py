"""Push benchmark: a real ``meshd serve`` and N simulated sidecars over loopback.

Three processes, so meshd and the watchers each get a core of their own and the
orchestrator (this module) idles while they work:

1. ``meshd serve`` (sqlite store, default 100 ms debounce) in a temporary data dir;
2. ``python -m bench.watchers``: N long-poll watches, one keep-alive connection each;
3. this process: registers N instances, applies the rules, runs the rounds, reads
   meshd's CPU time and peak RSS from ``/proc/<pid>``.

A round: once meshd reports every proxy SYNCED (it has ACKed the current version),
stamp ``t0 = time.monotonic_ns()``, ``POST /v1/apply`` a VirtualService edit that
changes every proxy's snapshot, then ask the watchers for the moment each received its
new snapshot and the moment it ACKed it (its next poll). Both are measured from ``t0``:
they include the apply itself (validation and the sqlite commit), the store watch,
the debounce, the compile, the encoding and the transfer. One warm-up round runs
first and is reported apart.

meshd is started as ``python -m bench.push_bench meshd --gc-log F -- serve ...``: it
runs ``meshd.cli.main`` in-process, unchanged, and logs every full garbage collection
(a pause of the whole process) so a round can be told whether one hit it. With
``--profile-out P`` a profiler also runs, resumed (SIGUSR1) just before each measured
round's apply and paused (SIGUSR2) when its last ACK is in, so the profile holds the
push and nothing else (yappi, every thread, when installed; else cProfile, which sees
only the event loop's thread and not the compile worker).

Standalone: ``python -m bench.push_bench run --watchers 1000 --rounds 5`` prints the
JSON of one size.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import pstats
import queue
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, Self

import httpx

from bench import progress
from bench.workloads import (
    apply_body,
    push_baseline_docs,
    push_instances,
    push_round_doc,
)

TARGET_P99_MS = 1000.0
TARGET_WATCHERS = 1000
"""From the issue: p99 apply -> ACK under 1 s at 1,000 watchers on 2 cores."""

LOOPBACK = "127.0.0.1"
READY_TIMEOUT_S = 30.0
SYNC_TIMEOUT_S = 60.0
ROUND_TIMEOUT_S = 60.0
MIB = 2**20
CLK_TCK = os.sysconf("SC_CLK_TCK")
WATCHER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(4 * MIB), "MALLOC_TRIM_THRESHOLD_": str(512 * MIB)}
"""glibc tunables for the watcher process only. The event loop reads each snapshot
(250 KiB at 1,000 watchers) into a fresh buffer; by default glibc maps every such
buffer and unmaps it when freed, so each round the process faults in every byte it
receives again (measured: ~62,000 minor faults and 0.12 s of kernel time per round at
1,000 watchers, over half of the process's CPU). Kept on the heap, the simulated
sidecars stay cheap. meshd runs with glibc's defaults."""


# --- /proc readings --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcTimes:
    """CPU seconds (user, system) of every thread of a process so far, and its minor
    page faults (a spike means it touched memory it had not used before: large
    allocations handed back to the kernel and taken again)."""

    user_s: float
    system_s: float
    minor_faults: int

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.system_s

    def since(self, before: ProcTimes) -> dict[str, float]:
        return {
            "cpu_s": round(self.cpu_s - before.cpu_s, 2),
            "user_s": round(self.user_s - before.user_s, 2),
            "system_s": round(self.system_s - before.system_s, 2),
            "minor_faults": self.minor_faults - before.minor_faults,
        }


def proc_times(pid: int) -> ProcTimes:
    with open(f"/proc/{pid}/stat") as stat:
        # The command name may hold spaces; the fields after its closing ")" do not.
        # Fields from "state" (3rd) on: minflt is the 10th, utime the 14th, stime the 15th.
        fields = stat.read().rsplit(")", 1)[1].split()
    return ProcTimes(int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK, int(fields[7]))


def machine_busy_s() -> float:
    """CPU seconds every core of the machine has spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...: idle and iowait are not busy.
    return (sum(values[:8]) - values[3] - values[4]) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of ``pid`` so far."""
    return proc_times(pid).cpu_s


def rss_mib(pid: int, field: str = "VmHWM") -> float:
    """``VmHWM`` (peak resident set) or ``VmRSS`` (now) of ``pid``, in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / MIB
    return math.nan


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least q% of values <= it
    (p99 of 1,000 values is the 990th smallest; of 100 values, the 99th)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def distribution(values: Sequence[float], qs: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
    out = {"n": float(len(values))}
    if values:
        out["min"] = round(min(values), 2)
        out.update({f"p{q:g}": round(percentile(values, q), 2) for q in qs})
        out["max"] = round(max(values), 2)
    return out


# --- child processes -------------------------------------------------------------------------


class ChildError(RuntimeError):
    """A child process died or did not answer; the message holds its log's tail."""


class Child:
    """A child process in its own session (a Ctrl-C in the terminal reaches only the
    orchestrator, which then stops its children in order), its output in a log file."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str,
        log_dir: Path,
        pipes: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else log,
                stderr=log,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def describe(self, lines: int = 30) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            tail = []
        state = "running" if self.alive else f"exited with {self.popen.returncode}"
        return f"{self.name} (pid {self.pid}, {state}; log {self.log_path}):\n" + "\n".join(tail)

    def stop(self, timeout: float = 10.0) -> None:
        """End of input (a child with a command channel exits on it), then SIGTERM,
        then SIGKILL after ``timeout`` seconds."""
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(2.0)
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait(timeout)
        if self.popen.stdout is not None:
            self.popen.stdout.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Meshd(Child):
    def __init__(self, workdir: Path, *, profile_out: Path | None = None) -> None:
        self.port = free_port()
        self.token = "mshd_bench_" + secrets.token_urlsafe(24)
        self.url = f"https://{LOOPBACK}:{self.port}"
        self.ca_file = workdir / "data" / "ca-bundle.pem"
        serve = [
            "serve",
            "--data-dir", str(workdir / "data"),
            "--listen", f"{LOOPBACK}:{self.port}",
            "--bootstrap-token", self.token,
        ]  # fmt: skip
        self.gc_log = workdir / "meshd-gc.log"
        self.profile_out = profile_out
        self._profile_switches = 0
        # Through a thin wrapper that runs meshd.cli.main in-process with a GC callback
        # (and a profiler when asked): the same server, plus evidence of its GC pauses.
        argv = [
            sys.executable, "-m", "bench.push_bench", "meshd", "--gc-log", str(self.gc_log),
            *(["--profile-out", str(profile_out)] if profile_out else []),
            "--", *serve,
        ]  # fmt: skip
        super().__init__(argv, name="meshd", log_dir=workdir)

    def profiling(self, on: bool, timeout: float = 120.0) -> None:
        """Resume (SIGUSR1) or pause (SIGUSR2, which also saves the profile so far) the
        profiler, and wait until meshd says it did: the profile then covers exactly the
        measured windows, not the orchestrator's status requests between them."""
        if self.profile_out is None:
            return
        self._profile_switches += 1
        os.kill(self.pid, signal.SIGUSR1 if on else signal.SIGUSR2)
        want = f"{'on' if on else 'off'} {self._profile_switches}"
        state = _profile_state(self.profile_out)
        deadline = time.monotonic() + timeout
        while not (state.exists() and state.read_text() == want):
            if not self.alive or time.monotonic() > deadline:
                raise ChildError(f"the profiler did not switch {want}\n{self.describe()}")
            time.sleep(0.02)

    def client(self) -> httpx.Client:
        """Verifies meshd with the trust bundle it writes before it starts listening."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.ca_file.exists():
            if not self.alive or time.monotonic() > deadline:
                raise ChildError(f"meshd wrote no {self.ca_file}\n{self.describe()}")
            time.sleep(0.05)
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30.0,
            trust_env=False,
            verify=ssl.create_default_context(cafile=str(self.ca_file)),
        )

    def wait_ready(self, client: httpx.Client) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if not self.alive:
                raise ChildError(f"meshd exited while starting\n{self.describe()}")
            with contextlib.suppress(httpx.TransportError):
                if client.get("/readyz").status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise ChildError(
                    f"meshd was not ready after {READY_TIMEOUT_S:.0f}s\n{self.describe()}"
                )
            time.sleep(0.05)


class WatcherProcess(Child):
    """``bench.watchers`` with its stdin/stdout as a command channel."""

    def __init__(self, workdir: Path, meshd: Meshd, ids: Sequence[str]) -> None:
        ids_file = workdir / "proxies.json"
        ids_file.write_text(json.dumps(list(ids)))
        argv = [
            sys.executable, "-m", "bench.watchers",
            "--port", str(meshd.port), "--token", meshd.token, "--ids", str(ids_file),
            "--ca-file", str(meshd.ca_file),
        ]  # fmt: skip
        super().__init__(argv, name="watchers", log_dir=workdir, pipes=True, env=WATCHER_MALLOC)
        self._lines: queue.Queue[str | None] = queue.Queue()
        # A thread, not select(): the simplest portable way to read with a timeout.
        self._reader = threading.Thread(
            target=self._read, args=(self.popen.stdout,), daemon=True, name="watcher-replies"
        )
        self._reader.start()

    def _read(self, stream: IO[bytes] | None) -> None:
        assert stream is not None
        with contextlib.suppress(ValueError, OSError):
            for line in stream:
                self._lines.put(line.decode())
        self._lines.put(None)

    def command(self, doc: dict[str, Any], timeout: float) -> dict[str, Any]:
        stdin = self.popen.stdin
        assert stdin is not None
        try:
            stdin.write((json.dumps(doc) + "\n").encode())
            stdin.flush()
        except OSError as exc:
            raise ChildError(f"the watchers are gone: {exc}\n{self.describe()}") from exc
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise ChildError(f"the watchers did not answer {doc} in {timeout:.0f}s") from None
        if line is None:
            raise ChildError(f"the watchers exited\n{self.describe()}")
        reply: dict[str, Any] = json.loads(line)
        return reply


# --- meshd's side ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeshdMetrics:
    """Counters from meshd's own /metrics: compiles and the seconds they took; ACKs
    meshd has recorded (a proxy's poll carrying its current version, routed by meshd)
    and their summed delay from the snapshot's publication."""

    compiles: float
    compile_s: float
    acks: float
    ack_s: float


def meshd_metrics(client: httpx.Client) -> MeshdMetrics:
    values: dict[str, float] = {}
    for line in client.get("/metrics").text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith(("meshd_compile_duration_seconds_", "meshd_push_ack_seconds_")):
            values[name] = float(value)
    return MeshdMetrics(
        values.get("meshd_compile_duration_seconds_count", 0.0),
        values.get("meshd_compile_duration_seconds_sum", 0.0),
        values.get("meshd_push_ack_seconds_count", 0.0),
        values.get("meshd_push_ack_seconds_sum", 0.0),
    )


def wait_meshd_acks(
    client: httpx.Client, want: float, timeout: float = ROUND_TIMEOUT_S
) -> MeshdMetrics:
    """Until meshd has recorded ``want`` ACKs in all. The watchers stamp an ACK when
    they write their next poll; meshd still has to read and route those polls, and
    that work belongs to the push too. /metrics is the cheapest way to ask (~1.5 ms of
    meshd's CPU); asking every 50 ms keeps the disturbance small, and the exact times
    come from /v1/proxies afterwards (:func:`meshd_ack_times`)."""
    deadline = time.monotonic() + timeout
    while True:
        now = meshd_metrics(client)
        if now.acks >= want or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def meshd_ack_times(client: httpx.Client, since_wall: float) -> list[float]:
    """Per proxy, ms from ``since_wall`` (``time.time()``) to when meshd routed the
    poll that ACKed: the ``lastSeen`` of /v1/proxies, which a poll sets when it comes in
    (and again when it ends, but the ACK poll is still parked). Proxies not seen since
    are left out."""
    items = client.get("/v1/proxies").json()["items"]
    return [
        (item["lastSeen"] - since_wall) * 1000
        for item in items
        if item.get("lastSeen") and item["lastSeen"] >= since_wall
    ]


def apply(client: httpx.Client, docs: Sequence[dict[str, Any]]) -> None:
    reply = client.post(
        "/v1/apply", content=apply_body(docs), headers={"Content-Type": "application/json"}
    )
    if reply.status_code != 200:
        raise ChildError(f"apply failed: HTTP {reply.status_code}: {reply.text[:500]}")


def wait_compiled(client: httpx.Client, proxies: int, quiet_s: float = 0.3) -> None:
    """Until meshd's last compile covered every proxy and no other followed for
    ``quiet_s`` (longer than the debounce), so no stale compile lands in a round."""
    deadline = time.monotonic() + SYNC_TIMEOUT_S
    last: Any = None
    while time.monotonic() < deadline:
        report = client.get("/readyz").json().get("lastCompile") or {}
        if report.get("proxies") == proxies and report == last:
            return
        last = report if report.get("proxies") == proxies else None
        time.sleep(quiet_s)
    raise ChildError(f"meshd never compiled for all {proxies} proxies (last: {last})")


def wait_synced(client: httpx.Client, watchers: WatcherProcess, proxies: int) -> None:
    """Until meshd reports every proxy SYNCED: it holds the current version and ACKed it."""
    deadline = time.monotonic() + SYNC_TIMEOUT_S
    status: dict[str, Any] = {}
    synced = 0
    while time.monotonic() < deadline:
        items = client.get("/v1/proxies").json()["items"]
        synced = sum(1 for i in items if i["state"] == "SYNCED" and i["connected"])
        if synced == proxies and len(items) == proxies:
            return
        status = watchers.command({"cmd": "status"}, timeout=10)
        time.sleep(0.1)
    raise ChildError(
        f"only {synced}/{proxies} proxies were SYNCED after {SYNC_TIMEOUT_S:.0f}s; "
        f"watchers: {status}\n{watchers.describe()}"
    )


# --- one benchmark size ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PushSize:
    watchers: int
    services: int
    rounds: int


def gc_pauses(log: Path, start_ns: int, end_ns: int) -> dict[str, float]:
    """meshd's full (generation 2) collections that started in ``[start_ns, end_ns]``,
    from the log the wrapper in :func:`_serve` writes."""
    pauses: list[float] = []
    with contextlib.suppress(FileNotFoundError), log.open() as lines:
        for line in lines:
            at, took, _collected = line.split()
            if start_ns <= int(at) <= end_ns:
                pauses.append(int(took) / 1e6)
    return {
        "count": len(pauses),
        "total_ms": round(sum(pauses), 1),
        "max_ms": round(max(pauses), 1) if pauses else 0.0,
    }


class Round:
    """The measurements of one round; see the module docstring."""

    def __init__(self, meshd: Meshd, watchers: WatcherProcess, client: httpx.Client) -> None:
        self.meshd = meshd
        self.watchers = watchers
        self.client = client

    def run(
        self, number: int, proxies: int, *, profile: bool = False
    ) -> tuple[dict[str, Any], list[float], list[float]]:
        wait_synced(self.client, self.watchers, proxies)
        before = meshd_metrics(self.client)
        body = apply_body([push_round_doc(number)])
        if profile:
            self.meshd.profiling(True)
        cpu0, wcpu0 = proc_times(self.meshd.pid), proc_times(self.watchers.pid)
        own0, busy0 = proc_times(os.getpid()), machine_busy_s()
        t0_wall = time.time()
        t0 = time.monotonic_ns()
        reply = self.client.post(
            "/v1/apply", content=body, headers={"Content-Type": "application/json"}
        )
        applied_ns = time.monotonic_ns()
        if reply.status_code != 200:
            raise ChildError(f"apply failed: HTTP {reply.status_code}: {reply.text[:500]}")
        collected = self.watchers.command(
            {"cmd": "collect", "since_ns": t0, "timeout_s": ROUND_TIMEOUT_S},
            timeout=ROUND_TIMEOUT_S + 30,
        )
        collected_ns = time.monotonic_ns()
        after = wait_meshd_acks(self.client, before.acks + proxies)
        end_ns = time.monotonic_ns()
        cpu1, wcpu1 = proc_times(self.meshd.pid), proc_times(self.watchers.pid)
        own1, busy1 = proc_times(os.getpid()), machine_busy_s()
        if profile:
            self.meshd.profiling(False)
        meshd_acked = meshd_ack_times(self.client, t0_wall)
        ours = (cpu1.cpu_s - cpu0.cpu_s) + (wcpu1.cpu_s - wcpu0.cpu_s) + (own1.cpu_s - own0.cpu_s)

        def ms(stamps: list[int | None]) -> list[float]:
            return [(s - t0) / 1e6 for s in stamps if s is not None]

        to_snapshot = ms(collected["received_ns"])
        to_ack = ms(collected["acked_ns"])
        sizes = sorted(b for b in collected["bytes"] if b is not None)
        acks = after.acks - before.acks
        result = {
            "round": number,
            "apply_ms": round((applied_ns - t0) / 1e6, 2),
            "to_snapshot_ms": distribution(to_snapshot),
            "to_ack_ms": distribution(to_ack),
            "last_ack_ms": round(max(to_ack), 2) if to_ack else None,
            # When meshd itself routed each ACK poll (wall clock, same machine).
            "meshd_acked_ms": distribution(meshd_acked),
            "meshd_all_acked_ms": round(max(meshd_acked), 2)
            if acks >= proxies and meshd_acked
            else None,
            "meshd_acks": int(acks),
            "meshd_ack_mean_ms": round((after.ack_s - before.ack_s) / acks * 1000, 1)
            if acks
            else None,
            "missing": len(collected["missing"]),
            "extra_pushes": sum(max(0, n - 1) for n in collected["pushes"]),
            "snapshot_bytes": sizes[len(sizes) // 2] if sizes else 0,
            "compiles": int(after.compiles - before.compiles),
            "compile_ms": round((after.compile_s - before.compile_s) * 1000, 1),
            # From the apply until meshd had routed every ACK poll: the whole push.
            "meshd": cpu1.since(cpu0),
            "meshd_gc": gc_pauses(self.meshd.gc_log, t0, end_ns),
            "watchers": wcpu1.since(wcpu0),
            # CPU the rest of the machine used meanwhile: other work on the same two
            # cores makes a round slower for reasons that are not meshd's.
            "others_cpu_s": round(max(0.0, busy1 - busy0 - ours), 2),
            "round_s": round((end_ns - t0) / 1e9, 2),
            "collect_s": round((collected_ns - t0) / 1e9, 2),
            "raw_to_ack_ms": [round(v, 2) for v in to_ack],
            "raw_meshd_acked_ms": meshd_acked,
        }
        return result, to_snapshot, to_ack


def _round_line(result: dict[str, Any], label: str) -> str:
    ack = result["to_ack_ms"]
    gc = result["meshd_gc"]
    return (
        f"{label}: ACK p50 {ack.get('p50', math.nan):.0f} / p99 {ack.get('p99', math.nan):.0f}"
        f" / last {result['last_ack_ms'] or math.nan:.0f} ms;"
        f" meshd saw all ACKs at {result['meshd_all_acked_ms'] or math.nan:.0f} ms;"
        f" compile {result['compile_ms']:.0f} ms; meshd CPU {result['meshd']['cpu_s']:.2f} s;"
        f" full GCs {gc['count']} ({gc['total_ms']:.0f} ms);"
        f" other processes' CPU {result['others_cpu_s']:.2f} s"
        + (f"; {result['missing']} MISSING" if result["missing"] else "")
    )


def run_size(size: PushSize, workdir: Path, *, profile_out: Path | None = None) -> dict[str, Any]:
    """One meshd, ``size.watchers`` watchers, one warm-up round and ``size.rounds``
    measured rounds. Every process it starts is stopped before it returns or raises."""
    phase = f"push N={size.watchers}" + (" (profiled)" if profile_out else "")
    workdir.mkdir(parents=True, exist_ok=True)
    instances = push_instances(size.watchers, size.services)
    out: dict[str, Any] = {
        "watchers": size.watchers,
        "services": size.services,
        "profiled": profile_out is not None,
    }
    with contextlib.ExitStack() as stack:
        progress(phase, "starting meshd (sqlite store, default debounce) ...")
        meshd = stack.enter_context(Meshd(workdir, profile_out=profile_out))
        client = stack.enter_context(meshd.client())
        meshd.wait_ready(client)

        started = time.perf_counter()
        apply(client, push_baseline_docs())
        for inst in instances:
            reply = client.put(f"/v1/instances/{inst.id}", json=inst.body)
            if reply.status_code != 200:
                raise ChildError(f"registering {inst.id}: HTTP {reply.status_code}: {reply.text}")
        wait_compiled(client, size.watchers)
        out["register_s"] = round(time.perf_counter() - started, 2)
        progress(
            phase,
            f"registered {size.watchers} instances over {size.services} services "
            f"in {out['register_s']:.1f} s; starting {size.watchers} watchers ...",
        )

        started = time.perf_counter()
        watchers = stack.enter_context(WatcherProcess(workdir, meshd, [i.id for i in instances]))
        wait_synced(client, watchers, size.watchers)
        out["connect_s"] = round(time.perf_counter() - started, 2)
        progress(phase, f"all {size.watchers} watchers SYNCED in {out['connect_s']:.1f} s")

        rounds = Round(meshd, watchers, client)
        # The first push after set-up pays one-off costs on both sides (first touch of
        # memory for 1,000 response bodies, caches): shown, but not counted.
        warmup, _, _ = rounds.run(0, size.watchers)
        out["warmup"] = warmup
        progress(phase, _round_line(warmup, "warm-up round (not counted)"))

        results: list[dict[str, Any]] = []
        all_snapshot: list[float] = []
        all_ack: list[float] = []
        meshd_acked_all: list[float] = []
        for number in range(1, size.rounds + 1):
            result, to_snapshot, to_ack = rounds.run(
                number, size.watchers, profile=profile_out is not None
            )
            results.append(result)
            all_snapshot += to_snapshot
            all_ack += to_ack
            meshd_acked_all += result.pop("raw_meshd_acked_ms")
            progress(phase, _round_line(result, f"round {number}/{size.rounds}"))

        out["rounds"] = results
        out["all"] = {
            "to_snapshot_ms": distribution(all_snapshot),
            "to_ack_ms": distribution(all_ack),
            "last_ack_ms": distribution(
                [r["last_ack_ms"] for r in results if r["last_ack_ms"] is not None]
            ),
        }
        all_acked = [r["meshd_all_acked_ms"] for r in results]
        out["all"]["meshd_all_acked_ms"] = distribution([v for v in all_acked if v is not None])
        out["all"]["meshd_acked_ms"] = distribution(meshd_acked_all)
        gcs = [r["meshd_gc"] for r in results]
        # Sums over the counted rounds only, not the status checks between them.
        out["meshd"] = {
            "rounds": _sum_times([r["meshd"] for r in results]),
            "cpu_s_total": round(cpu_seconds(meshd.pid), 2),
            "max_rss_mib": round(rss_mib(meshd.pid), 1),
            "rss_mib": round(rss_mib(meshd.pid, "VmRSS"), 1),
            "gc_rounds": {
                "count": sum(g["count"] for g in gcs),
                "total_ms": round(sum(g["total_ms"] for g in gcs), 1),
                "max_ms": max((g["max_ms"] for g in gcs), default=0.0),
                "rounds_hit": sum(1 for g in gcs if g["count"]),
            },
        }
        final = watchers.command({"cmd": "status"}, timeout=10)
        out["watcher_process"] = {
            "rounds": _sum_times([r["watchers"] for r in results]),
            "max_rss_mib": round(rss_mib(watchers.pid), 1),
            "loop": final.get("loop", ""),
            "reconnects": final["reconnects"],
            "errors": final["errors"],
            "last_error": final["last_error"],
        }
    return out


def _sum_times(rounds: Sequence[dict[str, float]]) -> dict[str, float]:
    keys = ("cpu_s", "user_s", "system_s", "minor_faults")
    return {k: round(sum(r[k] for r in rounds), 2) for k in keys}


def _profile_state(profile_out: Path) -> Path:
    """Where the profiled meshd writes ``on N`` / ``off N`` after its N-th switch."""
    return profile_out.with_name(profile_out.name + ".state")


# --- the profile -------------------------------------------------------------------------


def _package_of(file: str) -> str:
    """Where a profiled function lives, coarse enough to add up: ``meshd.xds``,
    ``starlette``, ``stdlib:json``, ``C builtins``."""
    if file == "~" or not file:
        return "C builtins"
    path = Path(file)
    parts = path.parts
    if "site-packages" in parts:
        rest = parts[parts.index("site-packages") + 1 :]
        return rest[0].removesuffix(".py") if rest else file
    try:
        rel = path.resolve().relative_to(Path(__file__).resolve().parent.parent)
    except ValueError:
        return f"stdlib:{path.parent.name if path.name == '__init__.py' else path.stem}"
    return ".".join(rel.with_suffix("").parts[:2])


def summarize_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """The hottest functions of a saved profile by own and cumulative time, own time
    added up by package, and per-thread time when yappi wrote it."""
    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in raw.values())

    def rows(index: int) -> list[dict[str, Any]]:
        ordered = sorted(raw.items(), key=lambda kv: kv[1][index], reverse=True)[:top]
        return [
            {
                "function": f"{Path(file).name}:{line}({func})" if file != "~" else func,
                "file": file,
                "calls": entry[1],
                "own_s": round(entry[2], 3),
                "cumulative_s": round(entry[3], 3),
            }
            for (file, line, func), entry in ordered
        ]

    packages: dict[str, float] = {}
    for (file, _line, _func), entry in raw.items():
        key = _package_of(file)
        packages[key] = packages.get(key, 0.0) + entry[2]
    by_package = [
        {"package": k, "own_s": round(v, 3), "share": round(v / total, 3) if total else 0.0}
        for k, v in sorted(packages.items(), key=lambda kv: -kv[1])
    ]

    meta_path = path.with_name(path.name + ".json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return {
        "profiler": meta.get("profiler", "unknown"),
        "clock": meta.get("clock", ""),
        "threads": meta.get("threads", []),
        "total_own_s": round(total, 3),
        "by_package": by_package[:top],
        "by_own_time": rows(2),
        "by_cumulative_time": rows(3),
    }


class _GcLog:
    """Appends one line per full (generation 2) collection: start (CLOCK_MONOTONIC ns,
    comparable with the orchestrator's stamps), duration (ns), objects collected. Full
    collections stop every thread (they hold the GIL), so each is a pause of meshd."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("a", buffering=1)
        self._started = (0, 0)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = (time.monotonic_ns(), time.perf_counter_ns())
        else:
            at, began = self._started
            took = time.perf_counter_ns() - began
            self._file.write(f"{at} {took} {info['collected']}\n")


def _serve(gc_log: Path, profile_out: Path | None, clock: str, meshd_args: Sequence[str]) -> int:
    """``meshd <meshd_args>`` (``serve ...``) in this process, exactly as ``meshd`` runs
    it, plus a log of its full GC pauses and, with ``profile_out``, a profiler that
    SIGUSR1 resumes and SIGUSR2 pauses (saving the profile so far)."""
    import cProfile  # noqa: PLC0415
    import gc  # noqa: PLC0415

    from meshd import cli  # noqa: PLC0415 — only this mode needs meshd in-process

    gc.callbacks.append(_GcLog(gc_log))
    if profile_out is None:
        return cli.main(list(meshd_args))
    out = profile_out
    state = _profile_state(out)
    try:
        yappi: Any = importlib.import_module("yappi")
    except ImportError:
        yappi = None
    fallback = cProfile.Profile()
    meta: dict[str, Any] = {"profiler": "yappi" if yappi else "cProfile (event loop thread only)"}
    switches = 0

    def resume(_sig: int, _frame: FrameType | None) -> None:
        nonlocal switches
        switches += 1
        if yappi is not None:
            if switches == 1:
                yappi.set_clock_type(clock)
            yappi.start(builtins=True, profile_threads=True)
        else:
            fallback.enable()
        state.write_text(f"on {switches}")

    def pause(_sig: int, _frame: FrameType | None) -> None:
        nonlocal switches
        switches += 1
        if yappi is not None:
            yappi.stop()
            yappi.get_func_stats().save(str(out), type="pstat")
            meta["clock"] = clock
            # anyio's worker threads are interchangeable: add them up by name.
            threads: dict[str, list[float]] = {}
            for t in yappi.get_thread_stats():
                threads.setdefault(t.name, []).append(t.ttot)
            meta["threads"] = sorted(
                (
                    {"name": name, "count": len(times), "seconds": round(sum(times), 3)}
                    for name, times in threads.items()
                ),
                key=lambda t: -float(t["seconds"]),
            )
        else:
            fallback.disable()
            fallback.dump_stats(str(out))
            meta["clock"] = "wall"
        out.with_name(out.name + ".json").write_text(json.dumps(meta))
        state.write_text(f"off {switches}")

    signal.signal(signal.SIGUSR1, resume)
    signal.signal(signal.SIGUSR2, pause)
    return cli.main(list(meshd_args))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.push_bench")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="one push benchmark size; JSON on stdout")
    run.add_argument("--watchers", type=int, default=100)
    run.add_argument("--services", type=int, default=0, help="default: watchers / 10")
    run.add_argument("--rounds", type=int, default=3)
    serve = sub.add_parser("meshd", help="run meshd with a GC log (and a profiler); see above")
    serve.add_argument("--gc-log", type=Path, required=True)
    serve.add_argument("--profile-out", type=Path)
    serve.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    serve.add_argument("meshd_args", nargs=argparse.REMAINDER, help="-- serve ...")
    args = parser.parse_args(argv)
    if args.command == "meshd":
        rest = list(args.meshd_args)
        if rest[:1] == ["--"]:
            rest = rest[1:]
        return _serve(args.gc_log, args.profile_out, args.clock, rest)
    size = PushSize(args.watchers, args.services or max(1, args.watchers // 10), args.rounds)
    with tempfile.TemporaryDirectory(prefix="meshd-bench-") as tmp:
        json.dump(run_size(size, Path(tmp)), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
