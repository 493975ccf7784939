"""The main process's side of ``--workers N``: it starts workers 1..N-1, keeps them
fed with the current identity and config, restarts them when they die, sums their
metrics, and drains them on stop. The main process itself is worker 0.

Config: :meth:`Supervisor.distribute` sends a snapshot (the JSON the agent saves) to
every worker and waits until each one answered ``applied`` for it (and holds the
current identity, so roots taken for a rotation are trusted everywhere). Only then does
the agent apply it itself and ACK it; a worker that refuses it makes the agent NACK
with the worker's reason, and the workers that did apply it get the previous config
back. A worker that is down (restarting) does not hold up the ACK: it serves nothing,
and when it comes back it gets the current config before it binds a port.

Identity: every identity the main process publishes (first certificate, renewal, new
roots) goes to every worker as PEM over its socketpair; the key is never written
anywhere new.

Metrics: before a scrape (``/stats/prometheus``, ``/config_dump``) :meth:`refresh`
asks every worker for its metric state (at most :data:`STATS_TIMEOUT_S`; a worker that
does not answer counts with its last state). The last state of a worker process that
died stays in the sum, so the summed counters do not go down when a worker is
restarted; only what it counted since the previous scrape is lost with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import trio

from meshd.compile import codec
from meshd.compile.snapshot import ProxySnapshot
from registry.latest import Latest
from sidecar.config_store import ConfigStore
from sidecar.control_client import Backoff
from sidecar.identity import Identity
from sidecar.settings import Settings
from sidecar.telemetry import Telemetry
from sidecar.telemetry.metrics import MetricState, merge_states, render_state
from sidecar.workers import channel
from sidecar.workers.channel import (
    ChannelError,
    IdentityMaterial,
    Message,
    WorkerSpec,
    decode_metric_state,
    encode_identity,
    encode_spec,
)
from sidecar.workers.link import Link

log = logging.getLogger("sidecar.workers")

APPLY_TIMEOUT_S = 10.0
"""A worker that has not applied a config after this is reported in the NACK."""
STATS_TIMEOUT_S = 1.0
DRAIN_GRACE_S = 2.0
"""Beyond --drain-timeout, what a worker gets to answer before it is killed."""
STABLE_S = 10.0
"""A worker that ran this long before dying is restarted without backoff."""

SECRET_ENV = frozenset(("MESH_TOKEN", "MESH_CONSUL_TOKEN", "CONSUL_HTTP_TOKEN"))
"""Secrets a worker never needs (it talks to neither meshd nor Consul): not passed on."""

SlotState = Literal["starting", "serving", "draining", "down", "stopped"]


class IdentitySource(Protocol):
    """What the supervisor needs of :class:`~sidecar.identity.IdentityManager`."""

    @property
    def current(self) -> Latest[Identity | None]: ...

    def private_key_pem(self) -> str: ...


class ProxyCounters(Protocol):
    """The main process's proxy (:class:`~sidecar.proxy.ProxyServer`): worker 0."""

    @property
    def connections_total(self) -> int: ...

    def not_ready_reason(self) -> str | None: ...


@dataclass
class Slot:
    """One worker index and the process serving it now (if any)."""

    index: int
    state: SlotState = "down"
    pid: int | None = None
    link: Link | None = None
    restarts: int = 0
    version: str = ""
    """The config version this process applied."""
    generation: int = 0
    """The identity generation this process applied."""
    failure: tuple[str, str] | None = None
    """(version or ``identity N``, reason) of the last thing it refused."""
    stats_seq: int = 0
    connections: int = 0
    metrics: MetricState | None = None
    retired: list[MetricState] = field(default_factory=list)
    retired_connections: int = 0

    def attach(self, pid: int, link: Link, stats_seq: int) -> None:
        """A new process serves this slot: it holds nothing yet."""
        self.pid, self.link, self.state = pid, link, "starting"
        self.version, self.generation, self.failure = "", 0, None
        self.metrics, self.connections, self.stats_seq = None, 0, stats_seq

    def retire(self) -> None:
        """The process exited: its last counts stay in the sum (counters must not go
        down when a worker is restarted)."""
        self.link = None
        self.state = "down"
        if self.metrics is not None:
            self.retired = [self.total_metrics() or self.metrics]
            self.metrics = None
        self.retired_connections += self.connections
        self.connections = 0

    def total_metrics(self) -> MetricState | None:
        states = [*self.retired, *([self.metrics] if self.metrics is not None else [])]
        if not states:
            return None
        return states[0] if len(states) == 1 else merge_states(states)


def material_of(identity: Identity, key_pem: str) -> IdentityMaterial:
    return IdentityMaterial(
        generation=identity.generation,
        key_pem=key_pem,
        cert_pem=identity.cert_pem,
        chain_pem=identity.chain_pem,
        roots=identity.roots,
        trust_bundle=identity.trust_bundle,
        issued_at=identity.issued_at.timestamp(),
        source=identity.source,
    )


def worker_argv(fd: int) -> list[str]:
    return [sys.executable, "-m", "sidecar.workers", "--fd", str(fd)]


class Supervisor:
    """Workers 1..``settings.workers - 1`` of one sidecar. Drive :meth:`run` in a
    nursery (``await nursery.start(...)``) after the main process's listeners are
    bound; :meth:`drain` on stop."""

    def __init__(
        self,
        settings: Settings,
        proxy_id: str,
        store: ConfigStore,
        identity: IdentitySource,
        proxy: ProxyCounters,
        telemetry: Callable[[], Telemetry | None],
        *,
        argv: Callable[[int], list[str]] = worker_argv,
    ) -> None:
        self.settings = settings
        self.proxy_id = proxy_id
        self.store = store
        self.identity = identity
        self.proxy = proxy
        self.telemetry = telemetry
        self.argv = argv
        self.slots = [Slot(i) for i in range(1, settings.workers)]
        self.stopping = False
        applied = store.current.value
        self._config: tuple[str, bytes] | None = (
            (applied.version, codec.dumps(applied.snapshot)) if applied is not None else None
        )
        self._changed = trio.Event()
        # One sender of identities and configs at a time: a worker must get them in
        # the order they were published (a late start message must not overtake a
        # newer config sent to the same worker).
        self._feeding = trio.Lock()
        self._stats_seq = 0

    # --- what the admin port shows -----------------------------------------------------

    def not_ready_reason(self) -> str | None:
        waiting = [f"{s.index} ({s.state})" for s in self.slots if s.state != "serving"]
        if not waiting:
            return None
        return f"worker(s) not serving yet: {', '.join(waiting)}"

    def workers_json(self) -> list[dict[str, Any]]:
        main_telemetry = self.telemetry()
        main_state = main_telemetry.state() if main_telemetry is not None else None
        reason = self.proxy.not_ready_reason()
        out: list[dict[str, Any]] = [
            {
                "worker": 0,
                "pid": os.getpid(),
                "state": "serving" if reason is None else reason,
                "version": self.store.version or None,
                "identityGeneration": (
                    ident.generation if (ident := self.identity.current.value) else None
                ),
                "connections": self.proxy.connections_total,
                "requests": main_state.requests if main_state is not None else 0,
                "restarts": 0,
            }
        ]
        for s in self.slots:
            total = s.total_metrics()
            out.append(
                {
                    "worker": s.index,
                    "pid": s.pid,
                    "state": s.state,
                    "version": s.version or None,
                    "identityGeneration": s.generation or None,
                    "connections": s.retired_connections + s.connections,
                    "requests": total.requests if total is not None else 0,
                    "restarts": s.restarts,
                    "lastRefusal": (
                        {"what": s.failure[0], "reason": s.failure[1]} if s.failure else None
                    ),
                }
            )
        return out

    def render_metrics(self) -> str:
        """The Istio metrics summed over every process, then the workers' own."""
        main_telemetry = self.telemetry()
        if main_telemetry is None:  # no certificate yet: no process has metrics
            return ""
        states = [main_telemetry.state()]
        states += [t for s in self.slots if (t := s.total_metrics()) is not None]
        text = render_state(merge_states(states))
        serving = 1 + sum(s.state == "serving" for s in self.slots)
        restarts = sum(s.restarts for s in self.slots)
        return text + (
            "# HELP mesh_sidecar_workers Processes serving the proxy's ports (--workers), "
            "and how many of them are serving now.\n"
            "# TYPE mesh_sidecar_workers gauge\n"
            f'mesh_sidecar_workers{{state="configured"}} {1 + len(self.slots)}\n'
            f'mesh_sidecar_workers{{state="serving"}} {serving}\n'
            "# HELP mesh_sidecar_worker_restarts_total Worker processes restarted after "
            "they exited.\n"
            "# TYPE mesh_sidecar_worker_restarts_total counter\n"
            f"mesh_sidecar_worker_restarts_total {restarts}\n"
        )

    async def refresh(self) -> None:
        """Ask every live worker for its metric state; back after all answered or
        :data:`STATS_TIMEOUT_S`."""
        self._stats_seq += 1
        seq = self._stats_seq
        for slot in self.slots:
            if slot.link is not None and slot.state == "serving":
                with contextlib.suppress(ChannelError):
                    await slot.link.send(Message(channel.STATS, {"seq": seq}))
        await self._wait_for(
            lambda: all(
                s.link is None or s.state != "serving" or s.stats_seq >= seq for s in self.slots
            ),
            STATS_TIMEOUT_S,
        )

    # --- running -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the workers and keep them running until cancelled."""
        log.info(
            "starting %d worker process(es) beside this one (--workers %d)",
            len(self.slots),
            self.settings.workers,
        )
        async with trio.open_nursery() as nursery:
            for slot in self.slots:
                nursery.start_soon(self._keep_running, slot)
            nursery.start_soon(self._follow_identity)
            task_status.started()

    async def _keep_running(self, slot: Slot) -> None:
        backoff = Backoff(initial=0.2, maximum=10.0)
        while True:
            started = trio.current_time()
            status = await self._run_once(slot)
            if self.stopping:
                slot.state = "stopped"
                self._notify()
                return
            if trio.current_time() - started >= STABLE_S:
                backoff.reset()
            delay = backoff.next_delay()
            slot.restarts += 1
            log.warning(
                "worker %d (pid %s) exited with %s; restarting it in %.1f s",
                slot.index,
                slot.pid,
                _status(status),
                delay,
            )
            await trio.sleep(delay)

    async def _run_once(self, slot: Slot) -> int | None:
        """One worker process, from spawn to exit; its exit status."""
        parent, child = socket.socketpair()
        try:
            process = await trio.lowlevel.open_process(
                self.argv(child.fileno()),
                pass_fds=(child.fileno(),),
                env={k: v for k, v in os.environ.items() if k not in SECRET_ENV},
            )
        except OSError as exc:
            parent.close()
            log.error("cannot start worker %d: %s", slot.index, exc)
            return None
        finally:
            child.close()
        link = Link.from_socket(parent)
        slot.attach(process.pid, link, self._stats_seq)
        self._notify()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read, slot, link, process)
                with contextlib.suppress(ChannelError):  # it died starting: wait() says how
                    await self._introduce(slot, link)
                await process.wait()
                nursery.cancel_scope.cancel()
        finally:
            if process.returncode is None:
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
            slot.retire()
            self._notify()
            with trio.CancelScope(shield=True):
                await link.aclose()
        return process.returncode

    async def _introduce(self, slot: Slot, link: Link) -> None:
        async with self._feeding:
            await link.send(encode_spec(self._spec(slot.index)))
            identity = self.identity.current.value
            if identity is not None:
                await link.send(encode_identity(material_of(identity, self._key())))
            if self._config is not None:
                version, raw = self._config
                await link.send(Message(channel.CONFIG, {"version": version}, raw))

    def _spec(self, index: int) -> WorkerSpec:
        s = self.settings
        return WorkerSpec(
            index=index,
            proxy_id=self.proxy_id,
            service=s.service,
            namespace=s.namespace,
            labels=s.labels,
            inbound_address=s.inbound_address,
            inbound_port=s.inbound_port,
            outbound_port=s.outbound_port,
            app_address=s.app_address,
            upstreams=s.upstreams,
            access_log=s.access_log,
            log_level=s.log_level,
            state_dir=str(s.state_dir),
        )

    def _key(self) -> str:
        return self.identity.private_key_pem()

    async def _read(self, slot: Slot, link: Link, process: trio.Process) -> None:
        while True:
            try:
                message = await link.receive()
                if message is None:
                    return
                self._take(slot, message)
            except ChannelError as exc:
                log.error("worker %d (pid %d): %s; killing it", slot.index, process.pid, exc)
                process.kill()
                return
            self._notify()

    def _take(self, slot: Slot, message: Message) -> None:
        kind = message.kind
        if kind == channel.APPLIED:
            slot.version = message.text("version")
            slot.failure = None
        elif kind == channel.REJECTED:
            slot.failure = (message.text("version"), message.text("reason"))
        elif kind == channel.IDENTITY_APPLIED:
            error = message.fields.get("error")
            generation = message.number("generation")
            if isinstance(error, str):
                slot.failure = (f"identity {generation}", error)
            else:
                slot.generation = max(slot.generation, generation)
        elif kind == channel.LISTENING:
            slot.state = "serving"
            log.info("worker %d (pid %s) serving", slot.index, slot.pid)
        elif kind == channel.STATS:
            slot.metrics = decode_metric_state(message.body)
            slot.connections = message.number("connections")
            slot.stats_seq = max(slot.stats_seq, message.number("seq"))
        elif kind == channel.DRAINED:
            slot.state = "draining"
        else:
            raise ChannelError(f"unexpected {kind!r} message")

    async def _follow_identity(self) -> None:
        async with aclosing(self.identity.current.watch()) as identities:
            async for identity in identities:
                if identity is not None:
                    await self._feed_identity()

    async def _feed_identity(self) -> None:
        """Send the current identity to every worker that does not hold it yet."""
        async with self._feeding:
            identity = self.identity.current.value
            if identity is None:
                return
            message = encode_identity(material_of(identity, self._key()))
            for slot in self.slots:
                if slot.link is not None and slot.generation < identity.generation:
                    with contextlib.suppress(ChannelError):
                        await slot.link.send(message)

    async def _broadcast_config(self) -> None:
        async with self._feeding:
            if self._config is None:
                return
            version, raw = self._config
            message = Message(channel.CONFIG, {"version": version}, raw)
            for slot in self.slots:
                if slot.link is not None:
                    with contextlib.suppress(ChannelError):
                        await slot.link.send(message)

    # --- config --------------------------------------------------------------------------

    async def distribute(self, snapshot: ProxySnapshot) -> str | None:
        """Have every live worker apply ``snapshot`` (and hold the current identity);
        None once they all did, else why not (for the NACK), the previous config sent
        back to them."""
        previous = self._config
        version = snapshot.version
        self._config = (version, codec.dumps(snapshot))
        identity = self.identity.current.value
        generation = identity.generation if identity is not None else 0
        await self._feed_identity()
        await self._broadcast_config()

        def settled(slot: Slot) -> bool:
            if slot.link is None:
                return True  # down: it gets the current config before it serves again
            if slot.failure is not None and slot.failure[0] in (
                version,
                f"identity {generation}",
            ):
                return True
            return slot.version == version and slot.generation >= generation

        await self._wait_for(lambda: all(settled(s) for s in self.slots), APPLY_TIMEOUT_S)
        problems = []
        for slot in self.slots:
            if slot.link is None:
                continue
            if slot.failure is not None and slot.failure[0] in (version, f"identity {generation}"):
                problems.append(f"worker {slot.index}: {slot.failure[1]}")
            elif not settled(slot):
                problems.append(
                    f"worker {slot.index} (pid {slot.pid}) did not apply it within "
                    f"{APPLY_TIMEOUT_S:g} s"
                )
        if not problems:
            return None
        self._config = previous
        await self._broadcast_config()
        return "; ".join(problems)

    # --- stop ------------------------------------------------------------------------------

    async def drain(self, timeout_s: float) -> None:
        """Tell every worker to drain (``timeout_s`` for requests in flight) and wait for
        them to exit; kill those that did not after ``timeout_s`` + :data:`DRAIN_GRACE_S`."""
        self.stopping = True
        live = [s for s in self.slots if s.link is not None]
        if live:
            log.info("draining %d worker process(es)", len(live))
        for slot in live:
            if slot.link is not None:
                with contextlib.suppress(ChannelError):
                    await slot.link.send(Message(channel.DRAIN, {"timeout": timeout_s}))
        done = await self._wait_for(
            lambda: all(s.link is None for s in self.slots), timeout_s + DRAIN_GRACE_S
        )
        if not done:
            late = [str(s.pid) for s in self.slots if s.link is not None]
            log.warning("worker process(es) %s did not stop in time: killing them", ", ".join(late))

    # --- waiting ---------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_for(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        with trio.move_on_after(timeout_s):
            while not condition():
                await self._changed.wait()
            return True
        return False


def _status(code: int | None) -> str:
    if code is None:
        return "an unknown status"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
        return f"signal {-code}"
    return f"status {code}"
