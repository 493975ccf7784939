"""The sidecar's run loop: state dir, saved config, admin server, workload identity,
registration, config watch, heartbeat, and an orderly stop on SIGTERM/SIGINT.

Start-up order (each step needs the one before)::

    CA file check -> state dir + instance id -> saved config -> admin server
      -> proxy listeners bound (inbound, outbound, --upstream), following the config
      -> IdentityManager.run: the saved certificate, or one got with the join token
      -> telemetry (it needs the workload's SPIFFE ID)
      -> registration, config watch and heartbeat, over mTLS with that certificate

The listeners are bound early (a taken port stops the sidecar at once, with the flag to
change); until there is a certificate the inbound side closes TLS connections and the
outbound side answers 503 for mesh destinations. ``/ready`` says 200 only with a config,
a certificate and the listeners up.

The admin server comes up before the certificate, so ``/ready`` can say why the sidecar
is not ready (no certificate yet: meshd unreachable, ...). A saved unexpired certificate
lets a sidecar restarted while meshd is down serve at once; without one it retries
until meshd answers. A refused join token (wrong, expired, revoked, used up) stops the
sidecar with what to do: create a new join token.

Task tree (structured concurrency; nothing outlives :func:`run`)::

    run
    ├── admin server              started first, stopped last
    ├── proxy                     listeners, config follower, sweepers (sidecar.proxy);
    │                             drained after the first signal, then stopped
    ├── signal watcher            1st signal: stop the control tasks; 2nd: stop everything
    ├── IdentityManager.run       started (first certificate) under the control scope,
    │                             then renews until everything stops
    └── control tasks             cancelled on the first signal, then deregistration
        ├── Agent.control_loop    register -> long-poll / roots / apply / ACK / NACK -> ...
        └── Agent.heartbeat       re-register every 30 s (meshd's catalog is in memory)

On the first signal the proxy drains (nothing new accepted, requests in flight get
``--drain-timeout``) while the instance deregisters; then everything stops.

meshd being down never stops the sidecar: it keeps serving its last good config (or
the saved one) and its certificate, and retries with jittered exponential backoff,
logging once when the link fails and once when it recovers.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

import trio

from sidecar.admin import AdminApp, AdminServer
from sidecar.config_store import (
    ConfigStore,
    decode_snapshot,
    load_or_create_id_suffix,
    prepare_state_dir,
    summary,
)
from sidecar.control_client import (
    Backoff,
    Changed,
    Connectivity,
    ControlClient,
    Registration,
    Unchanged,
)
from sidecar.errors import (
    ConfigError,
    ControlPlaneError,
    InstanceUnknown,
    InvalidSnapshot,
    StateError,
)
from sidecar.identity import Identity, IdentityError, IdentityManager
from sidecar.proxy import ProxyServer, ProxyState, TelemetrySink
from sidecar.settings import Settings, check_ca_file, derive_instance_id
from sidecar.telemetry import AccessLog, Telemetry

log = logging.getLogger("sidecar")

HEARTBEAT_S = 30.0
DEREGISTER_TIMEOUT_S = 3.0


def registration_of(settings: Settings) -> Registration:
    return Registration(
        service=settings.service,
        namespace=settings.namespace,
        address=settings.address,
        port=settings.inbound_port,
        app_port=settings.app_port,
        protocol=settings.protocol,
        labels=settings.labels,
        service_account=settings.service_account,
    )


class TrustRoots(Protocol):
    """What the agent needs of the identity (:class:`IdentityManager`): take a
    snapshot's trust roots before the snapshot is ACKed."""

    async def update_roots(self, roots: Sequence[str], trust_bundle: str = "") -> bool: ...


class Agent:
    """Keeps one proxy registered and its config current. Drive :meth:`control_loop`
    and :meth:`heartbeat` in a nursery; both run until cancelled. ``identity`` gets
    every snapshot's trust roots before the snapshot is applied (and so ACKed)."""

    def __init__(
        self,
        settings: Settings,
        proxy_id: str,
        store: ConfigStore,
        client: ControlClient,
        connectivity: Connectivity,
        identity: TrustRoots,
        *,
        heartbeat_s: float = HEARTBEAT_S,
        backoff: Callable[[], Backoff] = Backoff,
    ) -> None:
        self.settings = settings
        self.proxy_id = proxy_id
        self.store = store
        self.client = client
        self.connectivity = connectivity
        self.identity = identity
        self.registration = registration_of(settings)
        self.heartbeat_s = heartbeat_s
        self.registered = False
        self._new_backoff = backoff
        self._refused = self._new_backoff()
        self._last_refused = ""

    # --- registration ---------------------------------------------------------------------

    async def register(self) -> None:
        """Register, retrying until meshd accepts it."""
        backoff = self._new_backoff()
        while True:
            try:
                await self.client.register(self.proxy_id, self.registration)
            except ControlPlaneError as exc:
                self.connectivity.failed(exc)
                await trio.sleep(backoff.next_delay())
                continue
            self.connectivity.succeeded()
            if not self.registered:
                log.info(
                    "registered instance %s (service %s.%s at %s:%d) with meshd at %s",
                    self.proxy_id,
                    self.settings.service,
                    self.settings.namespace,
                    self.settings.address,
                    self.settings.inbound_port,
                    self.client.base_url,
                )
            self.registered = True
            return

    async def heartbeat(self) -> None:
        """Re-register every ``heartbeat_s``: meshd keeps its catalog in memory."""
        while True:
            await trio.sleep(self.heartbeat_s)
            if not self.registered:  # the control loop is registering right now
                continue
            try:
                await self.client.register(self.proxy_id, self.registration)
            except ControlPlaneError as exc:
                self.connectivity.failed(exc)
            else:
                self.connectivity.succeeded()

    async def deregister(self) -> None:
        """Best effort, bounded: meshd may well be down."""
        with trio.move_on_after(DEREGISTER_TIMEOUT_S) as scope:
            try:
                known = await self.client.deregister(self.proxy_id, timeout_s=DEREGISTER_TIMEOUT_S)
            except ControlPlaneError as exc:
                log.warning("could not deregister instance %s: %s", self.proxy_id, exc)
                return
        if scope.cancelled_caught:
            log.warning(
                "could not deregister instance %s within %.0f s",
                self.proxy_id,
                DEREGISTER_TIMEOUT_S,
            )
        elif known:
            log.info("deregistered instance %s", self.proxy_id)
        else:
            log.info("meshd did not know instance %s: nothing to deregister", self.proxy_id)

    # --- the config watch -----------------------------------------------------------------

    async def control_loop(self) -> None:
        while True:
            await self.register()
            try:
                await self.watch()
            except InstanceUnknown as exc:
                self.registered = False
                log.warning(
                    "meshd does not know instance %s (it may have restarted: %s); "
                    "registering again",
                    self.proxy_id,
                    exc.detail or exc,
                )

    def poll_version(self) -> str:
        """What the next poll carries: the version served (its ACK); empty while that
        version only comes from the saved copy, so meshd answers at once with its own
        (confirming it, or replacing it)."""
        applied = self.store.current.value
        if applied is None or applied.source != "meshd":
            return ""
        return applied.version

    async def watch(self) -> None:
        """Long-poll until cancelled; raises :class:`InstanceUnknown` on a 404."""
        backoff = self._new_backoff()
        while True:
            try:
                result = await self.client.poll(
                    self.proxy_id, self.poll_version(), self.settings.poll_wait_s
                )
            except InstanceUnknown:
                raise
            except ControlPlaneError as exc:
                self.connectivity.failed(exc)
                await trio.sleep(backoff.next_delay())
                continue
            self.connectivity.succeeded()
            backoff.reset()
            if isinstance(result, Unchanged):
                continue
            await self.offer(result)

    async def offer(self, changed: Changed) -> None:
        """A snapshot from meshd: trust its roots, then apply and save it; or refuse
        (NACK) it. The roots go to the identity *before* the snapshot is applied (its ACK
        is the next poll): during a root rotation meshd switches signing to the new root
        only once every proxy ACKed a bundle holding it, so by then this sidecar's TLS
        contexts must trust it."""
        try:
            snapshot = decode_snapshot(
                changed.body, self.proxy_id, expected_version=changed.version
            )
        except InvalidSnapshot as exc:
            await self.refuse(changed.version or exc.version, exc)
            return
        try:
            await self.identity.update_roots(snapshot.trust_roots, snapshot.trust_bundle)
        except IdentityError as exc:
            reason = f"trust_roots: {exc}"
            await self.refuse(snapshot.version, InvalidSnapshot([reason], version=snapshot.version))
            return
        self._refused.reset()
        self._last_refused = ""
        current = self.store.current.value
        if current is not None and current.version == snapshot.version:
            if self.store.confirm():
                log.info("meshd confirmed the saved config version %s", snapshot.version)
            return
        self.store.apply(snapshot, "meshd")
        try:
            await trio.to_thread.run_sync(self.store.save, snapshot)
        except StateError as exc:
            log.warning("%s; a restart while meshd is down would serve an older config", exc)
        log.info("config version %s applied (%s)", snapshot.version, summary(snapshot))

    async def refuse(self, version: str, exc: InvalidSnapshot) -> None:
        """Keep the old config, tell meshd why (it will not resend that version), and
        poll on with the old version."""
        reason = exc.reason()
        self.store.record_rejection(version, reason)
        repeated = version == self._last_refused
        if not repeated:
            kept = self.store.version or "none"
            log.warning(
                "config version %s rejected, keeping version %s: %s",
                version or "(unknown)",
                kept,
                reason.replace("\n", "; "),
            )
        self._last_refused = version
        if version:
            try:
                await self.client.nack(self.proxy_id, version, reason)
            except InstanceUnknown:
                raise
            except ControlPlaneError as nack_error:
                self.connectivity.failed(nack_error)
                repeated = True
        if repeated or not version:
            # meshd sends what we refused again (the NACK was lost, or no version to
            # NACK): do not spin on it.
            await trio.sleep(self._refused.next_delay())


# --- the process ----------------------------------------------------------------------------


def resolve_proxy_id(settings: Settings) -> str:
    """``--id``, else ``<service>-<suffix>.<namespace>`` with the suffix kept in the state
    dir (file I/O: call from a worker thread)."""
    if settings.instance_id:
        return settings.instance_id
    suffix = load_or_create_id_suffix(settings.state_dir)
    return derive_instance_id(settings.service, settings.namespace, suffix)


async def run(settings: Settings) -> None:
    """``mesh-sidecar run``: until SIGTERM/SIGINT. Raises :class:`ConfigError` (a bad CA
    file), :class:`StateError`, :class:`AdminServerError` or the identity's errors
    (:class:`JoinTokenRejected`...) when the sidecar cannot run."""
    await trio.to_thread.run_sync(check_ca_file, settings.ca_file)
    await trio.to_thread.run_sync(prepare_state_dir, settings.state_dir)
    proxy_id = await trio.to_thread.run_sync(resolve_proxy_id, settings)
    log.info(
        "mesh-sidecar starting: instance %s, service %s.%s, meshd %s (CA file %s), state dir %s",
        proxy_id,
        settings.service,
        settings.namespace,
        settings.meshd_url,
        settings.ca_file,
        settings.state_dir,
    )
    store = ConfigStore(settings.state_dir, proxy_id)
    saved = await trio.to_thread.run_sync(store.read_saved)
    if saved is not None:
        store.apply(saved, "saved")
        log.info("serving saved config version %s (%s)", saved.version, summary(saved))
    else:
        log.info("no saved config for %s: waiting for the first one from meshd", proxy_id)
    manager = IdentityManager.from_settings(settings, proxy_id, ca_file=settings.ca_file)
    connectivity = Connectivity(settings.meshd_url, serving=lambda: store.version)
    sink = TelemetrySink()
    proxy = ProxyServer(
        ProxyState(),
        manager.current,
        inbound_host=settings.inbound_address,
        inbound_port=settings.inbound_port,
        outbound_port=settings.outbound_port,
        upstreams=settings.upstreams,
        app_host=settings.app_address,
        telemetry=sink,
    )
    access_log: AccessLog | None = None
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with (
            ControlClient(settings.meshd_url, manager.control_plane_context) as client,
            trio.open_nursery() as nursery,
        ):
            agent = Agent(settings, proxy_id, store, client, connectivity, manager)
            app = AdminApp(settings, proxy_id, store, connectivity, manager, proxy=proxy)
            admin = AdminServer(app, settings.admin_host, settings.admin_port)
            await nursery.start(admin.serve)
            await nursery.start(proxy.serve, store)
            control = trio.CancelScope()
            nursery.start_soon(_watch_signals, signals, control, nursery.cancel_scope)
            try:
                with control:
                    # Started under the control scope (a signal stops the wait for the
                    # first certificate), then renewing in the outer nursery until the end.
                    identity: Identity = await nursery.start(manager.run)
                    access_log = open_access_log(settings.access_log)
                    telemetry = Telemetry(
                        settings.service,
                        settings.namespace,
                        str(identity.spiffe_id),
                        labels=settings.labels,
                        access_log=access_log,
                    )
                    sink.attach(telemetry)
                    app.telemetry = telemetry
                    async with trio.open_nursery() as tasks:
                        tasks.start_soon(agent.control_loop)
                        tasks.start_soon(agent.heartbeat)
                async with trio.open_nursery() as stopping:
                    # Peers learn we are leaving while requests in flight finish.
                    stopping.start_soon(proxy.drain, settings.drain_timeout_s)
                    if manager.current.value is not None:
                        stopping.start_soon(agent.deregister)
                    else:
                        log.info(
                            "stopped before this sidecar got a certificate: nothing to deregister"
                        )
            finally:
                if access_log is not None:
                    access_log.close()
            log.info("stopping the proxy and the admin server")
            nursery.cancel_scope.cancel()
    log.info("mesh-sidecar stopped")


def open_access_log(where: str) -> AccessLog | None:
    """``--access-log``: None (off), ``-`` (standard output) or a file appended to."""
    if not where:
        return None
    if where == "-":
        return AccessLog(sys.stdout)
    try:
        return AccessLog.to_path(where)
    except OSError as exc:
        raise ConfigError(
            f"--access-log (or MESH_ACCESS_LOG): cannot open {where}: {exc.strerror or exc}; "
            "give a writable file, or - for standard output"
        ) from exc


async def _watch_signals(
    signals: AsyncIterator[int],
    control: trio.CancelScope,
    everything: trio.CancelScope,
) -> None:
    async for signum in signals:
        name = signal.Signals(signum).name
        if not control.cancel_called:
            log.info("received %s: stopping (deregister, then close the admin server)", name)
            control.cancel()
        else:
            log.warning("received %s again: stopping now", name)
            everything.cancel()
