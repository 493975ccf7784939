"""A worker process of ``mesh-sidecar run --workers N`` (``python -m sidecar.workers
--fd FD``): serves the proxy's listeners, nothing else.

The main process starts it with one end of a socketpair as FD and sends, in order,
``start`` (what to listen on), the current identity and the current config. The
worker binds its listeners (SO_REUSEPORT, the main process's ports) only once it
holds both a certificate and a config: before that, a connection the kernel handed
it could only be refused. Every later identity or config is applied with the code the
main process uses (``ProxyServer.apply``: compile, swap atomically, retire pools) and
answered, so the main process ACKs a version to meshd only once every worker serves it.

The worker never talks to meshd, never writes the state dir (its TLS credentials file
is removed as soon as it is loaded), and has no admin port: the main process asks it
for its metric state (``stats``) and serves the sum.

Signals: SIGINT and SIGTERM are ignored. A terminal's Ctrl-C and a service manager's
SIGTERM reach every process of the sidecar, but only the main one decides to stop: it
tells its workers to drain (``drain``). A worker whose main process is gone (its end of
the channel closed: it was killed) drains and exits by itself.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import trio

from registry.latest import Latest
from sidecar.config_store import decode_snapshot
from sidecar.errors import InvalidSnapshot
from sidecar.identity import Identity
from sidecar.proxy import ProxyServer, ProxyState, TelemetrySink
from sidecar.telemetry import AccessLog, Telemetry
from sidecar.telemetry.metrics import MetricState
from sidecar.tls_contexts import build_contexts
from sidecar.workers import channel
from sidecar.workers.channel import (
    ChannelError,
    IdentityMaterial,
    Message,
    WorkerSpec,
    decode_identity,
    decode_spec,
    encode_metric_state,
)
from sidecar.workers.link import Link
from sidecar.x509_reader import cert_facts

log = logging.getLogger("sidecar.worker")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ORPHAN_DRAIN_S = 5.0
"""How long requests in flight get when the main process vanished without a word."""


class WorkerError(Exception):
    """An identity this worker cannot use (answered to the main process, not raised)."""


def identity_from(material: IdentityMaterial, state_dir: Path) -> Identity:
    """The :class:`Identity` the main process published, with contexts of our own.
    Blocking (writes and loads the credentials): run it in a thread."""
    try:
        cert = cert_facts(material.cert_pem)
    except ValueError as exc:
        raise WorkerError(f"the certificate cannot be read: {exc}") from exc
    spiffe = cert.spiffe_id
    if spiffe is None:
        raise WorkerError("the certificate names no single SPIFFE ID")
    credentials = (material.key_pem + material.cert_pem + material.chain_pem).encode()
    contexts = build_contexts(state_dir, credentials, material.roots, keep=False)
    source: Literal["meshd", "saved"] = "saved" if material.source == "saved" else "meshd"
    return Identity(
        spiffe_id=spiffe,
        serial=cert.serial_hex,
        not_before=cert.not_before,
        not_after=cert.not_after,
        issued_at=datetime.fromtimestamp(material.issued_at, UTC),
        trust_bundle=material.trust_bundle,
        generation=material.generation,
        source=source,
        cert_pem=material.cert_pem,
        chain_pem=material.chain_pem,
        roots=material.roots,
        server_context=contexts.server,
        client_context=contexts.client,
        control_context=contexts.control,
    )


class Worker:
    """The listeners of one worker process and the messages that drive them."""

    def __init__(self, spec: WorkerSpec, link: Link) -> None:
        self.spec = spec
        self.link = link
        self.identity: Latest[Identity | None] = Latest(None)
        self.sink = TelemetrySink()
        self.telemetry: Telemetry | None = None
        self.access_log: AccessLog | None = None
        self.proxy = ProxyServer(
            ProxyState(),
            self.identity,
            inbound_host=spec.inbound_address,
            inbound_port=spec.inbound_port,
            outbound_port=spec.outbound_port,
            upstreams=spec.upstreams,
            app_host=spec.app_address,
            telemetry=self.sink,
            reuse_port=True,
        )
        self.version = ""
        self.listening = False

    async def run(self) -> None:
        """Until told to drain, or until the main process is gone."""
        try:
            async with trio.open_nursery() as nursery:
                await self._serve_messages(nursery)
                nursery.cancel_scope.cancel()
        finally:
            if self.access_log is not None:
                self.access_log.close()

    async def _serve_messages(self, nursery: trio.Nursery) -> None:
        while True:
            try:
                message = await self.link.receive()
            except ChannelError as exc:
                log.error("worker %d: %s; draining", self.spec.index, exc)
                message = None
            if message is None:
                log.warning(
                    "worker %d: the main sidecar process is gone; draining and exiting",
                    self.spec.index,
                )
                await self._drain(ORPHAN_DRAIN_S, answer=False)
                return
            if message.kind == channel.DRAIN:
                timeout = float(message.fields.get("timeout", ORPHAN_DRAIN_S))
                await self._drain(timeout, answer=True)
                return
            await self._handle(message, nursery)

    async def _handle(self, message: Message, nursery: trio.Nursery) -> None:
        if message.kind == channel.CONFIG:
            await self._apply_config(message)
        elif message.kind == channel.IDENTITY:
            await self._apply_identity(decode_identity(message))
        elif message.kind == channel.STATS:
            await self._send_stats(message.number("seq"))
        else:
            raise ChannelError(f"unexpected {message.kind!r} message from the main process")
        if not self.listening and self.identity.value is not None and self.version:
            await nursery.start(self.proxy.serve)
            self.listening = True
            await self.link.send(Message(channel.LISTENING, {"ports": self.proxy.ports}))

    async def _apply_config(self, message: Message) -> None:
        version = message.text("version")
        try:
            snapshot = decode_snapshot(message.body, self.spec.proxy_id, expected_version=version)
            self.proxy.apply(snapshot)
        except InvalidSnapshot as exc:
            await self._reject(version, exc.reason())
            return
        except Exception as exc:  # a compile failure: the main process NACKs with it
            log.exception("worker %d: cannot compile config version %s", self.spec.index, version)
            await self._reject(version, f"cannot compile it: {type(exc).__name__}: {exc}")
            return
        self.version = version
        await self.link.send(Message(channel.APPLIED, {"version": version}))

    async def _reject(self, version: str, reason: str) -> None:
        await self.link.send(Message(channel.REJECTED, {"version": version, "reason": reason}))

    async def _apply_identity(self, material: IdentityMaterial) -> None:
        try:
            identity = await trio.to_thread.run_sync(
                identity_from, material, Path(self.spec.state_dir)
            )
        except (OSError, ssl.SSLError, ValueError, WorkerError) as exc:
            reason = f"cannot build TLS contexts from identity {material.generation}: {exc}"
            log.error("worker %d: %s", self.spec.index, reason)
            await self.link.send(
                Message(
                    channel.IDENTITY_APPLIED,
                    {"generation": material.generation, "error": reason},
                )
            )
            return
        self.identity.set(identity)
        if self.telemetry is None:  # its labels need the workload's SPIFFE ID
            self.access_log = open_shared_access_log(self.spec.access_log)
            self.telemetry = Telemetry(
                self.spec.service,
                self.spec.namespace,
                str(identity.spiffe_id),
                labels=self.spec.labels,
                access_log=self.access_log,
            )
            self.sink.attach(self.telemetry)
        await self.link.send(Message(channel.IDENTITY_APPLIED, {"generation": material.generation}))

    async def _send_stats(self, seq: int, *, final: bool = False) -> None:
        state = self.telemetry.state() if self.telemetry is not None else MetricState({}, {})
        if self.access_log is not None:
            self.access_log.flush()  # a scrape may be followed by a read of the log
        await self.link.send(
            Message(
                channel.STATS,
                {
                    "seq": seq,
                    "final": final,
                    "connections": self.proxy.connections_total,
                    "active": self.proxy.active_connections,
                },
                encode_metric_state(state),
            )
        )

    async def _drain(self, timeout_s: float, *, answer: bool) -> None:
        if self.listening:
            await self.proxy.drain(timeout_s)
        if answer:
            try:
                await self._send_stats(-1, final=True)
                await self.link.send(Message(channel.DRAINED))
            except ChannelError:
                pass  # the main process stopped waiting: nothing left to tell it


def open_shared_access_log(where: str) -> AccessLog | None:
    """``--access-log`` in a worker: the same file as every process, appended to in
    whole lines (see :class:`~sidecar.telemetry.access_log.SharedAppendFile`)."""
    if not where:
        return None
    if where == "-":
        return AccessLog(sys.stdout)
    try:
        return AccessLog.to_path(where, shared=True)
    except OSError as exc:
        log.error("cannot open the access log %s: %s; running without it", where, exc)
        return None


async def serve(sock: socket.socket) -> int:
    """The worker's life on the channel ``sock``: 0 after a drain, 1 when the main
    process sent something unusable first."""
    link = Link.from_socket(sock)
    try:
        first = await link.receive()
        if first is None:
            return 0
        spec = decode_spec(first)
    except ChannelError as exc:
        log.error("sidecar worker: %s", exc)
        return 1
    root = logging.getLogger()
    root.setLevel(getattr(logging, spec.log_level.upper(), logging.INFO))
    # The workers share the main process's standard error: say whose line it is.
    for handler in root.handlers:
        handler.setFormatter(logging.Formatter(f"{LOG_FORMAT} [worker {spec.index}]"))
    log.info("worker %d (pid %d) started", spec.index, os.getpid())
    try:
        await Worker(spec, link).run()
    finally:
        await link.aclose()
    log.info("worker %d (pid %d) stopped", spec.index, os.getpid())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sidecar.workers",
        description="A worker process of mesh-sidecar run --workers N (started by the "
        "main sidecar process; not meant to be run by hand).",
    )
    parser.add_argument("--fd", type=int, required=True, help="the control socket's descriptor")
    args = parser.parse_args(argv)
    # Only the main process decides when to stop (see the module docstring).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    try:
        sock = socket.socket(fileno=args.fd)
    except OSError as exc:
        print(f"python -m sidecar.workers: --fd {args.fd}: {exc}", file=sys.stderr)
        return 2
    return trio.run(serve, sock)
