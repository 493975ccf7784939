"""Registry benchmark: endpoint churn in a 1,000-service mesh, ``embedded`` and ``consul``.

Per backend, real processes over loopback:

1. ``meshd serve`` (sqlite store, default 100 ms debounce), with ``--registry embedded``,
   or ``--registry consul`` against a ``consul agent -dev`` started for the run (with
   ``limits.http_max_conns_per_client`` raised so meshd can hold one blocking query per
   service, and ``--consul-max-watches`` above the number of services);
2. 1,000 services x 3 instances (3,000 proxies) in 100 namespaces of 10 services, and one
   mesh-wide ``Sidecar`` (root namespace, egress ``./*``): each proxy sees the 10
   services of its namespace, as Istio users scope their sidecars. Registered through
   meshd's API (embedded) or straight into Consul's agent API in meshd's Meta format
   (consul), as the sidecars would;
3. simulated sidecars (``bench.watchers``' raw asyncio TLS long polls, in a process of
   their own) for every proxy of the 20 namespaces that change: 600 watchers;
4. 10 endpoint changes per second for 20 s, round-robin over those namespaces (each
   namespace changes every 2 s): one instance's health flips (embedded: its heartbeat
   ``PUT /v1/instances/{id}`` with ``healthy`` false/true; consul: its TTL check
   ``PUT /v1/agent/check/fail|pass/service:<id>``, as a sidecar reports it). Each change
   affects the 30 proxies of its namespace.

Numbers: per change, for each affected proxy, the time from the change request leaving
the orchestrator to the proxy's ACK (its next poll after receiving the new snapshot);
p50/p99 over all of them. meshd's (and Consul's) CPU over the 20 s. The compiles meshd
ran meanwhile and how many service pieces each rebuilt (from meshd's log). And, in
process, the incremental check: a one-instance change in the 1,000-service view each
backend publishes rebuilds one service piece (``CompileStats``).

``python -m bench.registry_bench run [--quick]`` prints the JSON; ``python -m bench
--only registry`` puts it in the report.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import anyio
import httpx

from bench import progress
from bench.push_bench import (
    LOOPBACK,
    WATCHER_MALLOC,
    Child,
    ChildError,
    distribution,
    free_port,
    machine_busy_s,
    proc_times,
    rss_mib,
)
from bench.workloads import apply_body, parse_docs
from meshd.compile.compiler import Compiler, CompileSettings
from registry.consul import ConsulRegistry
from registry.consul_http import ConsulClient
from registry.consul_meta import check_id, service_definition
from registry.embedded import EmbeddedRegistry
from registry.model import Instance, RegistryView, sorted_labels

TARGET_P99_MS = 1000.0
MIB = 2**20
VERSIONS = ("v1", "v2", "v3")
ROOT_NAMESPACE = "istio-system"
INBOUND_PORT = 15006
APP_PORT = 8080
READY_TIMEOUT_S = 60.0
REGISTER_CONCURRENCY = 16
SETTLE_S = 3.0
"""After the last change: time for its pushes to arrive before the watchers are read."""


@dataclass(frozen=True, slots=True)
class RegistrySize:
    services: int = 1000
    per_namespace: int = 10
    hot_namespaces: int = 20
    rate: float = 10.0
    duration_s: float = 20.0
    warmup_s: float = 2.0

    @property
    def namespaces(self) -> int:
        return math.ceil(self.services / self.per_namespace)

    @property
    def instances(self) -> int:
        return self.services * len(VERSIONS)


QUICK = RegistrySize(services=60, hot_namespaces=2, duration_s=4.0, warmup_s=1.0)


# --- the workload --------------------------------------------------------------------------


def namespace_of(n: int, size: RegistrySize) -> str:
    return f"ns{n // size.per_namespace}"


def address(k: int) -> str:
    block = k // 250
    return f"198.{18 + block // 256}.{block % 256}.{k % 250 + 1}"


@dataclass(frozen=True, slots=True)
class Inst:
    id: str
    service: str
    namespace: str
    version: str
    address: str

    def body(self, *, healthy: bool = True) -> dict[str, Any]:
        return {
            "service": self.service,
            "namespace": self.namespace,
            "address": self.address,
            "port": INBOUND_PORT,
            "appPort": APP_PORT,
            "labels": {"app": self.service, "version": self.version},
            "healthy": healthy,
            "ttlSeconds": 3600,
        }


def instances(size: RegistrySize) -> list[Inst]:
    out = []
    for n in range(size.services):
        ns = namespace_of(n, size)
        for i, v in enumerate(VERSIONS):
            k = n * len(VERSIONS) + i
            out.append(Inst(f"svc{n}-{v}.{ns}", f"svc{n}", ns, v, address(k)))
    return out


def sidecar_doc() -> dict[str, Any]:
    """Mesh-wide: every proxy sees only its own namespace's services."""
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Sidecar",
        "metadata": {"name": "default", "namespace": ROOT_NAMESPACE},
        "spec": {"egress": [{"hosts": ["./*"]}]},
    }


@dataclass(frozen=True, slots=True)
class Change:
    at_ns: int
    namespace: str
    instance: str
    healthy: bool


def change_plan(size: RegistrySize, count: int) -> Iterator[tuple[str, Inst]]:
    """Round-robin over the hot namespaces; within one, over its services and their
    instances: ``(namespace, instance)`` for each change."""
    by_ns: dict[str, list[Inst]] = {}
    for inst in instances(size):
        by_ns.setdefault(inst.namespace, []).append(inst)
    hot = [f"ns{k}" for k in range(min(size.hot_namespaces, size.namespaces))]
    for i in range(count):
        ns = hot[i % len(hot)]
        members = by_ns[ns]
        # Walk the namespace's services first, then the versions, so consecutive changes
        # of one namespace touch different services.
        j = i // len(hot)
        per = len(members) // len(VERSIONS)
        yield ns, members[(j % per) * len(VERSIONS) + (j // per) % len(VERSIONS)]


# --- processes -------------------------------------------------------------------------------


class ConsulAgentProcess(Child):
    """``consul agent -dev`` on free loopback ports, allowing many connections per client."""

    def __init__(self, workdir: Path) -> None:
        binary = _consul_binary()
        self.http_port = free_port()
        self.addr = f"{LOOPBACK}:{self.http_port}"
        ports = [free_port() for _ in range(4)]
        argv = [
            str(binary), "agent", "-dev",
            f"-bind={LOOPBACK}", f"-client={LOOPBACK}",
            f"-http-port={self.http_port}", "-dns-port=-1", "-grpc-port=-1", "-https-port=-1",
            f"-serf-lan-port={ports[0]}", f"-serf-wan-port={ports[1]}",
            f"-server-port={ports[2]}",
            f"-node=meshd-bench-{secrets.token_hex(3)}",
            "-hcl=disable_update_check = true",
            "-hcl=limits { http_max_conns_per_client = 8192 }",
        ]  # fmt: skip
        super().__init__(argv, name="consul", log_dir=workdir, env={"CHECKPOINT_DISABLE": "1"})

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.alive:
                raise ChildError(f"consul exited while starting\n{self.describe()}")
            with contextlib.suppress(httpx.HTTPError):
                leader = httpx.get(f"http://{self.addr}/v1/status/leader", timeout=2).json()
                if (
                    leader
                    and httpx.put(
                        f"http://{self.addr}/v1/kv/bench/ready", content=b"1", timeout=2
                    ).is_success
                ):
                    return
            time.sleep(0.1)
        raise ChildError(f"consul was not ready in {READY_TIMEOUT_S:.0f}s\n{self.describe()}")


def _consul_binary() -> Path:
    local = Path(__file__).resolve().parent.parent / ".deps" / "bin" / "consul"
    if local.is_file():
        return local
    found = shutil.which("consul")
    if found is None:
        raise ChildError("consul not found: run `make deps` (installs it into .deps/bin)")
    return Path(found)


class MeshdProcess(Child):
    """``meshd serve`` with its data in ``workdir/../data`` (shared by every meshd of one
    backend's run, so rules applied by one are there for the next)."""

    def __init__(self, workdir: Path, extra: Sequence[str]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        data = (workdir.parent if workdir.name == "prepare" else workdir) / "data"
        self.port = free_port()
        self.token = "mshd_bench_" + secrets.token_urlsafe(24)
        self.url = f"https://{LOOPBACK}:{self.port}"
        self.ca_file = data / "ca-bundle.pem"
        argv = [
            sys.executable, "-m", "meshd.cli", "serve",
            "--data-dir", str(data),
            "--listen", f"{LOOPBACK}:{self.port}",
            "--bootstrap-token", self.token,
            *extra,
        ]  # fmt: skip
        super().__init__(argv, name="meshd", log_dir=workdir)

    def client(self) -> httpx.Client:
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
            verify=str(self.ca_file),
        )

    def wait_listening(self, client: httpx.Client) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.alive:
                raise ChildError(f"meshd exited while starting\n{self.describe()}")
            with contextlib.suppress(httpx.TransportError):
                if client.get("/healthz").status_code == 200:
                    return
            time.sleep(0.05)
        raise ChildError(f"meshd did not listen in {READY_TIMEOUT_S:.0f}s\n{self.describe()}")

    def wait_compiled(self, client: httpx.Client, proxies: int) -> None:
        """Until a compile covered every proxy (the registry had the whole catalog)."""
        deadline = time.monotonic() + 3 * READY_TIMEOUT_S
        last: Any = None
        while time.monotonic() < deadline:
            if not self.alive:
                raise ChildError(f"meshd exited\n{self.describe()}")
            with contextlib.suppress(httpx.TransportError):
                last = client.get("/readyz").json().get("lastCompile") or {}
                if last.get("proxies") == proxies:
                    return
            time.sleep(0.2)
        raise ChildError(f"meshd never compiled for all {proxies} proxies (last: {last})")


class Watchers(Child):
    """``python -m bench.registry_bench watchers``: bench.watchers' long polls, and a
    command that hands back every push they received."""

    def __init__(self, workdir: Path, meshd: MeshdProcess, ids: Sequence[str]) -> None:
        ids_file = workdir / "proxies.json"
        ids_file.write_text(json.dumps(list(ids)))
        argv = [
            sys.executable, "-m", "bench.registry_bench", "watchers",
            "--port", str(meshd.port), "--token", meshd.token, "--ids", str(ids_file),
            "--ca-file", str(meshd.ca_file),
        ]  # fmt: skip
        super().__init__(argv, name="watchers", log_dir=workdir, pipes=True, env=WATCHER_MALLOC)
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(
            target=self._read, args=(self.popen.stdout,), daemon=True, name="watcher-replies"
        ).start()

    def _read(self, stream: IO[bytes] | None) -> None:
        assert stream is not None
        with contextlib.suppress(ValueError, OSError):
            for line in stream:
                self._lines.put(line.decode())
        self._lines.put(None)

    def command(self, doc: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        stdin = self.popen.stdin
        assert stdin is not None
        try:
            stdin.write((json.dumps(doc) + "\n").encode())
            stdin.flush()
            line = self._lines.get(timeout=timeout)
        except (OSError, queue.Empty) as exc:
            raise ChildError(
                f"the watchers did not answer {doc}: {exc}\n{self.describe()}"
            ) from exc
        if line is None:
            raise ChildError(f"the watchers exited\n{self.describe()}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def wait_synced(self, count: int) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = self.command({"cmd": "status"})
            if status["synced"] >= count and status["connected"] >= count:
                return
            time.sleep(0.2)
        raise ChildError(f"only {status.get('synced')}/{count} watchers synced: {status}")


async def _watchers_main(ids: Sequence[str], port: int, token: str, ca_file: Path) -> None:
    import asyncio  # noqa: PLC0415 — this mode only; the watchers process runs on asyncio
    import ssl  # noqa: PLC0415

    from bench.watchers import CONNECT_CONCURRENCY, Target, Watcher, watch  # noqa: PLC0415

    watchers = [Watcher(pid) for pid in ids]
    target = Target(LOOPBACK, port, token, 60.0, ssl.create_default_context(cafile=str(ca_file)))
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    acked = asyncio.Event()
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)

    def reply(doc: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(watch(w, target, gate, acked)) for w in watchers]
        try:
            while line := await commands.readline():
                cmd = json.loads(line)
                if cmd.get("cmd") == "status":
                    reply(
                        {
                            "synced": sum(bool(w.pushes) for w in watchers),
                            "connected": sum(w.connected for w in watchers),
                            "errors": sum(w.errors for w in watchers),
                            "last_error": next(
                                (w.last_error for w in watchers if w.last_error), ""
                            ),
                        }
                    )
                elif cmd.get("cmd") == "pushes":
                    since = int(cmd["since_ns"])
                    reply(
                        {
                            "pushes": {
                                w.proxy_id: [
                                    [p.received_ns, p.acked_ns]
                                    for p in w.pushes
                                    if p.received_ns >= since
                                ]
                                for w in watchers
                            },
                            "errors": sum(w.errors for w in watchers),
                        }
                    )
                else:
                    break
        finally:
            for task in tasks:
                task.cancel()


# --- registering -----------------------------------------------------------------------------


async def _register_all(
    insts: Sequence[Inst], send: Any, concurrency: int = REGISTER_CONCURRENCY
) -> None:
    limiter = anyio.CapacityLimiter(concurrency)

    async def one(inst: Inst) -> None:
        async with limiter:
            await send(inst)

    async with anyio.create_task_group() as tg:
        for inst in insts:
            tg.start_soon(one, inst)


def register_embedded(meshd: MeshdProcess, insts: Sequence[Inst]) -> None:
    async def main() -> None:
        async with httpx.AsyncClient(
            base_url=meshd.url,
            headers={"Authorization": f"Bearer {meshd.token}"},
            verify=str(meshd.ca_file),
            timeout=30,
            trust_env=False,
        ) as client:

            async def send(inst: Inst) -> None:
                reply = await client.put(f"/v1/instances/{inst.id}", json=inst.body())
                if reply.status_code != 200:
                    raise ChildError(f"registering {inst.id}: {reply.status_code} {reply.text}")

            await _register_all(insts, send)

    anyio.run(main)


def consul_definition(inst: Inst) -> dict[str, Any]:
    model = Instance(
        inst.id,
        inst.service,
        inst.namespace,
        inst.address,
        INBOUND_PORT,
        APP_PORT,
        labels=sorted_labels({"app": inst.service, "version": inst.version}),
    )
    return service_definition(model, ttl_s=3600, deregister_after_s=3600)


def register_consul(
    consul: ConsulAgentProcess, insts: Sequence[Inst], hot: set[str]
) -> tuple[int, int]:
    """The instances of the namespaces that change: with the agent's API, each with the
    TTL check its sidecar renews (the path a sidecar takes). The others: straight into
    the catalog (``/v1/catalog/register``) on nodes of 30 instances each, as the agents of
    other machines would have synced them; one agent holding all 3,000 would spend
    minutes in its anti-entropy sync (it diffs every service on each change). Returns
    (agent registrations, catalog registrations)."""
    agent = [i for i in insts if i.namespace in hot]
    elsewhere = [i for i in insts if i.namespace not in hot]

    def catalog_body(k: int, inst: Inst) -> dict[str, Any]:
        d = consul_definition(inst)
        node = k // 30
        return {
            "Node": f"bench-node-{node}",
            "Address": f"198.19.{node // 250}.{node % 250 + 1}",
            "Service": {"ID": d["ID"], "Service": d["Name"], "Address": d["Address"],
                        "Port": d["Port"], "Meta": d["Meta"]},
            "Check": {"CheckID": check_id(inst.id), "Name": "sidecar", "Status": "passing",
                      "ServiceID": inst.id},
        }  # fmt: skip

    async def main() -> None:
        async with httpx.AsyncClient(
            base_url=f"http://{consul.addr}", timeout=60, trust_env=False
        ) as client:
            numbered = {inst.id: k for k, inst in enumerate(elsewhere)}

            async def via_agent(inst: Inst) -> None:
                reply = await client.put("/v1/agent/service/register", json=consul_definition(inst))
                if reply.status_code != 200:
                    raise ChildError(f"registering {inst.id}: {reply.status_code} {reply.text}")

            async def via_catalog(inst: Inst) -> None:
                body = catalog_body(numbered[inst.id], inst)
                reply = await client.put("/v1/catalog/register", json=body)
                if reply.status_code != 200:
                    raise ChildError(f"registering {inst.id}: {reply.status_code} {reply.text}")

            await _register_all(elsewhere, via_catalog)
            await _register_all(agent, via_agent)

    anyio.run(main)
    return len(agent), len(elsewhere)


# --- one backend -----------------------------------------------------------------------------


_COMPILE_LINE = re.compile(
    r"^(\S+ \S+) INFO meshd\.control: compiled \d+ resources for (\d+) proxies in (\d+) ms: "
    r"(\d+) new versions, \d+ with errors; service pieces rebuilt (\d+), reused (\d+)"
)


def compiles_between(log: Path, start: float, end: float) -> list[dict[str, float]]:
    """meshd's compile log lines stamped within ``[start, end]`` (wall clock)."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        m = _COMPILE_LINE.match(line)
        if not m:
            continue
        at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if start <= at <= end:
            out.append(
                {
                    "ms": float(m.group(3)),
                    "versions": float(m.group(4)),
                    "rebuilt": float(m.group(5)),
                    "reused": float(m.group(6)),
                }
            )
    return out


def run_backend(backend: str, size: RegistrySize, workdir: Path) -> dict[str, Any]:
    phase = f"registry {backend}"
    workdir.mkdir(parents=True, exist_ok=True)
    insts = instances(size)
    hot = {f"ns{k}" for k in range(min(size.hot_namespaces, size.namespaces))}
    watched = sorted(i.id for i in insts if i.namespace in hot)
    by_ns: dict[str, list[str]] = {}
    for inst in insts:
        if inst.namespace in hot:
            by_ns.setdefault(inst.namespace, []).append(inst.id)
    out: dict[str, Any] = {
        "backend": backend,
        "services": size.services,
        "instances": len(insts),
        "namespaces": size.namespaces,
        "watchers": len(watched),
        "rate_per_s": size.rate,
        "duration_s": size.duration_s,
    }
    with contextlib.ExitStack() as stack:
        consul: ConsulAgentProcess | None = None
        extra: list[str] = []
        # The Sidecar goes into the store first, by a meshd of its own: the measured meshd
        # then starts as a restarted one would, rules in place, and its first compile is
        # the scoped one (an apply racing the registry's first read could lose, and the
        # first compile would see every service from every proxy).
        with MeshdProcess(workdir / "prepare", []) as prep, prep.client() as pc:
            prep.wait_listening(pc)
            reply = pc.post(
                "/v1/apply",
                content=apply_body([sidecar_doc()]),
                headers={"Content-Type": "application/json"},
            )
            if reply.status_code != 200:
                raise ChildError(f"apply: {reply.status_code} {reply.text}")
        if backend == "consul":
            progress(phase, "starting consul agent -dev ...")
            consul = stack.enter_context(ConsulAgentProcess(workdir))
            consul.wait_ready()
            extra = [
                "--registry", "consul", "--consul-addr", consul.addr,
                "--consul-max-watches", str(size.services + 100),
            ]  # fmt: skip
            started = time.perf_counter()
            by_agent, by_catalog = register_consul(consul, insts, hot)
            out["register_s"] = round(time.perf_counter() - started, 2)
            out["consul_registrations"] = {"agent": by_agent, "catalog": by_catalog}
            progress(
                phase,
                f"registered {len(insts)} instances in Consul in {out['register_s']} s "
                f"({by_agent} with the agent and TTL checks, {by_catalog} in the catalog)",
            )
        progress(phase, "starting meshd ...")
        meshd = stack.enter_context(MeshdProcess(workdir, extra))
        client = stack.enter_context(meshd.client())
        meshd.wait_listening(client)
        started = time.perf_counter()
        if backend == "embedded":
            register_embedded(meshd, insts)
            out["register_s"] = round(time.perf_counter() - started, 2)
            progress(
                phase, f"registered {len(insts)} instances through meshd in {out['register_s']} s"
            )
        meshd.wait_compiled(client, len(insts))
        out["ready_s"] = round(time.perf_counter() - started, 2)
        progress(
            phase, f"meshd compiled all {len(insts)} proxies; starting {len(watched)} watchers"
        )
        watchers = stack.enter_context(Watchers(workdir, meshd, watched))
        watchers.wait_synced(len(watched))

        consul_http = (
            stack.enter_context(
                httpx.Client(base_url=f"http://{consul.addr}", timeout=10, trust_env=False)
            )
            if consul is not None
            else None
        )
        health: dict[str, bool] = {}
        by_id = {i.id: i for i in insts}

        def change(ns: str, inst: Inst) -> Change:
            healthy = not health.get(inst.id, True)
            health[inst.id] = healthy
            at = time.monotonic_ns()
            if consul_http is not None:
                verb = "pass" if healthy else "fail"
                r = consul_http.put(f"/v1/agent/check/{verb}/service:{inst.id}")
            else:
                r = client.put(
                    f"/v1/instances/{inst.id}", json=by_id[inst.id].body(healthy=healthy)
                )
            if r.status_code != 200:
                raise ChildError(f"change of {inst.id}: {r.status_code} {r.text}")
            return Change(at, ns, inst.id, healthy)

        def drive(count: int, plan: Iterator[tuple[str, Inst]]) -> list[Change]:
            done: list[Change] = []
            t0 = time.monotonic()
            for i in range(count):
                due = t0 + i / size.rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                ns, inst = next(plan)
                done.append(change(ns, inst))
            return done

        total = int(size.rate * (size.warmup_s + size.duration_s))
        warm = int(size.rate * size.warmup_s)
        plan = change_plan(size, total)
        progress(phase, f"warm-up: {warm} changes ...")
        drive(warm, plan)
        time.sleep(SETTLE_S / 2)
        counted = total - warm
        progress(
            phase, f"{counted} endpoint changes at {size.rate:g}/s for {size.duration_s:g} s ..."
        )
        pids = {
            "meshd": meshd.pid,
            **({"consul": consul.pid} if consul else {}),
            "watchers": watchers.pid,
        }
        cpu0 = {k: proc_times(p) for k, p in pids.items()}
        own0, busy0 = proc_times(os.getpid()), machine_busy_s()
        wall0 = time.time()
        since = time.monotonic_ns()
        changes = drive(counted, plan)
        window_s = (time.monotonic_ns() - since) / 1e9
        cpu1 = {k: proc_times(p) for k, p in pids.items()}
        own1, busy1 = proc_times(os.getpid()), machine_busy_s()
        ours = sum(cpu1[k].cpu_s - cpu0[k].cpu_s for k in pids) + own1.cpu_s - own0.cpu_s
        wall1 = time.time()
        time.sleep(SETTLE_S)
        pushes = watchers.command({"cmd": "pushes", "since_ns": since}, timeout=60)["pushes"]

        latencies: list[float] = []
        received: list[float] = []
        missing = 0
        for ch in changes:
            for pid in by_ns[ch.namespace]:
                first = next((p for p in pushes[pid] if p[0] >= ch.at_ns), None)
                if first is None or not first[1]:
                    missing += 1
                    continue
                received.append((first[0] - ch.at_ns) / 1e6)
                latencies.append((first[1] - ch.at_ns) / 1e6)
        compiles = compiles_between(meshd.log_path, wall0, wall1 + SETTLE_S)
        out.update(
            changes=len(changes),
            affected_per_change=len(watched) // max(1, len(by_ns)),
            change_to_ack_ms=distribution(latencies),
            change_to_snapshot_ms=distribution(received),
            missing=missing,
            window_s=round(window_s, 2),
            cpu={
                k: {
                    **cpu1[k].since(cpu0[k]),
                    "cores": round((cpu1[k].cpu_s - cpu0[k].cpu_s) / window_s, 3),
                }
                for k in pids
            },
            # CPU the rest of the machine used meanwhile (other work on the same cores).
            others_cpu_s=round(max(0.0, busy1 - busy0 - ours), 2),
            meshd_max_rss_mib=round(rss_mib(meshd.pid), 1),
            compiles={
                "count": len(compiles),
                "changes_per_compile": round(len(changes) / len(compiles), 2) if compiles else None,
                "compile_ms": distribution([c["ms"] for c in compiles]),
                "pieces_rebuilt": distribution([c["rebuilt"] for c in compiles]),
                "pieces_reused_mean": round(sum(c["reused"] for c in compiles) / len(compiles), 1)
                if compiles
                else None,
                "new_versions": distribution([c["versions"] for c in compiles]),
            },
        )
        ack = out["change_to_ack_ms"]
        progress(
            phase,
            f"change -> ACK p50 {ack.get('p50', math.nan):.0f} / "
            f"p99 {ack.get('p99', math.nan):.0f} / max {ack.get('max', math.nan):.0f} ms "
            f"over {len(latencies)} ACKs"
            + (f", {missing} MISSING" if missing else "")
            + f"; meshd CPU {out['cpu']['meshd']['cores']:.2f} cores; {len(compiles)} compiles, "
            f"other processes' CPU {out['others_cpu_s']:.1f} s, "
            f"pieces rebuilt p50 {out['compiles']['pieces_rebuilt'].get('p50', math.nan):g}",
        )
    return out


# --- the incremental check, in process -----------------------------------------------------


def incremental(size: RegistrySize) -> dict[str, Any]:
    """A one-instance health change in the view each backend publishes for the workload:
    what the compiler rebuilds (1 piece of ``services``) and how long the recompile takes,
    against a full compile."""
    resources = parse_docs([sidecar_doc()])
    models = [
        Instance(
            i.id,
            i.service,
            i.namespace,
            i.address,
            INBOUND_PORT,
            APP_PORT,
            labels=sorted_labels({"app": i.service, "version": i.version}),
        )
        for i in instances(size)
    ]
    target = models[len(models) // 2]

    def measure(before: RegistryView, after: RegistryView) -> dict[str, Any]:
        compiler = Compiler()
        settings = CompileSettings()
        t = time.perf_counter()
        compiler.compile(resources, before, settings)
        full_ms = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        stats = compiler.compile(resources, after, settings).stats
        return {
            "full_compile_ms": round(full_ms, 1),
            "recompile_ms": round((time.perf_counter() - t) * 1000, 1),
            "pieces_built": stats.pieces_built,
            "pieces_reused": stats.pieces_reused,
            "outbounds_built": stats.outbounds_built,
            "snapshots_built": stats.snapshots_built,
            "versions_changed": stats.versions_changed,
        }

    async def embedded() -> tuple[RegistryView, RegistryView]:
        reg = EmbeddedRegistry()
        for m in models:
            await reg.register(m)
        before = reg.view()
        await reg.report_health(target.id, False, "503")
        return before, reg.view()

    async def consul() -> tuple[RegistryView, RegistryView]:
        async with ConsulClient("127.0.0.1:1") as unused:
            reg = ConsulRegistry(unused)
            groups: dict[str, list[Instance]] = {}
            for m in models:
                groups.setdefault(m.service, []).append(m)
            for name, members in groups.items():
                reg.apply_service(name, consul_entries(members))
            before = reg.view()
            members = [
                replace(m, healthy=False) if m.id == target.id else m
                for m in groups[target.service]
            ]
            reg.apply_service(target.service, consul_entries(members))
            return before, reg.view()

    return {
        "services": size.services,
        "proxies": len(models),
        "embedded": measure(*anyio.run(embedded)),
        "consul": measure(*anyio.run(consul)),
    }


def consul_entries(members: Sequence[Any]) -> list[dict[str, Any]]:
    """``/v1/health/service`` entries for instances (what Consul would answer)."""
    out = []
    for m in members:
        d = service_definition(m, ttl_s=3600, deregister_after_s=3600)
        out.append(
            {
                "Node": {"Node": "vm", "Address": "198.19.255.1"},
                "Service": {k: d[k] for k in ("ID", "Address", "Port", "Meta")}
                | {"Service": d["Name"]},
                "Checks": [
                    {
                        "CheckID": check_id(m.id),
                        "ServiceID": m.id,
                        "Status": "passing" if m.healthy else "critical",
                    }
                ],
            }
        )
    return out


# --- the whole benchmark ---------------------------------------------------------------------


def run(quick: bool = False) -> dict[str, Any]:
    size = QUICK if quick else RegistrySize()
    progress("registry", "incremental check (in process) ...")
    result: dict[str, Any] = {
        "target": {"p99_ms": TARGET_P99_MS},
        "size": {
            "services": size.services,
            "instances": size.instances,
            "namespaces": size.namespaces,
            "hot_namespaces": size.hot_namespaces,
            "rate_per_s": size.rate,
            "duration_s": size.duration_s,
        },
        "incremental": incremental(size),
        "backends": [],
    }
    inc = result["incremental"]
    progress(
        "registry",
        "one-instance change: pieces rebuilt "
        f"{inc['embedded']['pieces_built']} (embedded) / {inc['consul']['pieces_built']} (consul) "
        f"of {size.services}",
    )
    with tempfile.TemporaryDirectory(prefix="meshd-bench-registry-") as tmp:
        for backend in ("embedded", "consul"):
            try:
                outcome = run_backend(backend, size, Path(tmp) / backend)
            except (ChildError, httpx.HTTPError, OSError, ValueError, KeyError) as exc:
                progress(f"registry {backend}", f"FAILED: {exc}")
                outcome = {"backend": backend, "error": str(exc)}
            result["backends"].append(outcome)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.registry_bench")
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="the registry benchmark; JSON on stdout")
    r.add_argument("--quick", action="store_true")
    w = sub.add_parser("watchers", help="(internal) the simulated sidecars")
    w.add_argument("--port", type=int, required=True)
    w.add_argument("--token", required=True)
    w.add_argument("--ids", type=Path, required=True)
    w.add_argument("--ca-file", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "watchers":
        import asyncio  # noqa: PLC0415

        ids = json.loads(args.ids.read_text())
        with contextlib.suppress(KeyboardInterrupt):
            try:
                import uvloop  # noqa: PLC0415
            except ImportError:
                asyncio.run(_watchers_main(ids, args.port, args.token, args.ca_file))
            else:
                uvloop.run(_watchers_main(ids, args.port, args.token, args.ca_file))
        return 0
    json.dump(run(args.quick), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
