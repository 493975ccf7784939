"""The sidecar's run loop: state dir, saved config, admin server, workload identity,
registration, config watch, heartbeat, and an orderly stop on SIGTERM/SIGINT.

Start-up order (each step needs the one before)::

    CA file check -> state dir + instance id -> saved config -> admin server
      -> proxy listeners bound (inbound, outbound, --upstream), following the config
      -> health checker (its first check runs while the certificate is fetched)
      -> IdentityManager.run: the saved certificate, or one got with the join token
      -> telemetry (it needs the workload's SPIFFE ID)
      -> registration, config watch and heartbeat, over mTLS with that certificate
         (registration and heartbeat go to the local Consul agent instead with
         ``--registry consul``)

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
    ├── HealthChecker.run         checks the app every --health-interval (sidecar.health)
    ├── signal watcher            1st signal: stop the control tasks; 2nd: stop everything
    ├── IdentityManager.run       started (first certificate) under the control scope,
    │                             then renews until everything stops
    └── control tasks             cancelled on the first signal, then deregistration
        ├── Agent.control_loop    register -> long-poll / roots / apply / ACK / NACK -> ...
        └── Agent.heartbeat       report the app's health every --health-interval, and
                                  at once when it flips (the registration's TTL is two
                                  intervals: a sidecar that stops reporting leaves)

Where the instance is registered is a :class:`Registrar`: :class:`MeshdRegistrar`
(``PUT /v1/instances/{id}`` with ``healthy``, ``ttlSeconds``, ``healthOutput``: meshd's
embedded catalog, or Consul through meshd with ``meshd serve --registry consul``), or
:class:`ConsulRegistrar` (``--registry consul``: the local Consul agent, with a TTL
check renewed pass/fail; meshd learns of the instance from Consul's catalog).

An unhealthy app does not stop the sidecar's inbound listener: peers stop sending
because meshd takes the instance out of their endpoints, and a request that still
arrives (sent before the peer got its new config) is answered 503 by the inbound side
when the app refuses it, which the peer retries on another endpoint.

On the first signal the proxy drains (nothing new accepted, requests in flight get
``--drain-timeout``) while the instance deregisters; then everything stops.

meshd being down never stops the sidecar: it keeps serving its last good config (or
the saved one) and its certificate, and retries with jittered exponential backoff,
logging once when the link fails and once when it recovers.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

import trio

from meshd.compile.snapshot import ProxySnapshot
from registry.consul_meta import instance_meta
from registry.consul_writer import ConsulWriter
from registry.errors import (
    ConsulPermissionDenied,
    InstanceNotRegistered,
    InvalidInstance,
    RegistryError,
)
from registry.limits import DEFAULT_TTL_S
from registry.model import Instance
from sidecar.admin import AdminApp, AdminServer
from sidecar.config_store import (
    ConfigStore,
    decode_snapshot,
    load_or_create_id_suffix,
    prepare_state_dir,
    summary,
)
from sidecar.consul_agent import ConsulAgentClient, consul_tls
from sidecar.control_client import (
    Backoff,
    Changed,
    Connectivity,
    ControlClient,
    HealthReport,
    Registration,
    Unchanged,
)
from sidecar.errors import (
    ConfigError,
    ControlPlaneError,
    InstanceUnknown,
    InvalidSnapshot,
    SidecarError,
    StateError,
)
from sidecar.health import HealthChecker, iso_time
from sidecar.identity import Identity, IdentityError, IdentityManager
from sidecar.native import data_path
from sidecar.proxy import ProxyServer, ProxyState, TelemetrySink
from sidecar.settings import Settings, check_ca_file, derive_instance_id
from sidecar.telemetry import AccessLog, Telemetry
from sidecar.workers.supervisor import Supervisor

log = logging.getLogger("sidecar")

HEARTBEAT_S = 30.0
"""The heartbeat of an agent without a health checker (``run`` always gives it one: its
heartbeat is the health interval)."""
DEREGISTER_TIMEOUT_S = 3.0
NOT_SEEN_WARN_S = 10.0
"""With ``--registry consul``: how long meshd may answer 404 (it has not seen the
instance in Consul yet) before the sidecar says what may be wrong."""
FIRST_CHECK_GRACE_S = 1.0
"""How much longer than the check's timeout the first registration waits for its result."""


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


def instance_of(proxy_id: str, registration: Registration, healthy: bool = True) -> Instance:
    """The instance a registration describes, as the registry holds it."""
    return Instance(
        id=proxy_id,
        service=registration.service,
        namespace=registration.namespace,
        address=registration.address,
        port=registration.port,
        app_port=registration.app_port,
        protocol=registration.protocol,  # type: ignore[arg-type]  # checked by the settings
        labels=registration.labels,
        service_account=registration.service_account,
        meshed=registration.meshed,
        healthy=healthy,
    )


# --- where the instance is registered ---------------------------------------------------------


class RegistryUnavailable(SidecarError):
    """The local Consul agent did not take a registration, health report or
    deregistration (unreachable, refused by its ACLs, ...). The sidecar retries."""

    def __init__(self, message: str, *, kind: str = "") -> None:
        super().__init__(message)
        self.kind = kind


REGISTRATION_ERRORS = (ControlPlaneError, RegistryUnavailable)
"""What a :class:`Registrar` raises: worth retrying later."""


class Registrar(Protocol):
    """Where the instance is registered and its health reported. ``register`` once (and
    again when the registry lost the instance), ``report`` every health interval (it
    registers again when the registry no longer holds the instance), ``deregister`` on
    an orderly stop. Each raises one of :data:`REGISTRATION_ERRORS`; ``health`` None
    means "no health checker": healthy, with the registry's default TTL."""

    backend: str
    """``meshd`` or ``consul``."""
    where: str
    """The registry's address, for messages."""

    async def register(
        self, proxy_id: str, registration: Registration, health: HealthReport | None
    ) -> None: ...

    async def report(
        self, proxy_id: str, registration: Registration, health: HealthReport | None
    ) -> None: ...

    async def deregister(self, proxy_id: str, *, timeout_s: float) -> bool: ...

    @property
    def last_error(self) -> str | None:
        """Why the last request failed; None once one succeeded."""
        ...


class MeshdRegistrar:
    """Through meshd's API: ``PUT /v1/instances/{id}`` registers, and the same request
    again is the heartbeat (with the app's health); ``DELETE`` deregisters. meshd keeps
    the instance in its own catalog, or writes it to Consul (``meshd serve --registry
    consul``). Every outcome feeds ``connectivity``."""

    backend = "meshd"

    def __init__(self, client: ControlClient, connectivity: Connectivity) -> None:
        self.client = client
        self.connectivity = connectivity
        self.where = client.base_url

    async def register(
        self, proxy_id: str, registration: Registration, health: HealthReport | None
    ) -> None:
        try:
            await self.client.register(proxy_id, registration, health)
        except ControlPlaneError as exc:
            self.connectivity.failed(exc)
            raise
        self.connectivity.succeeded()

    async def report(
        self, proxy_id: str, registration: Registration, health: HealthReport | None
    ) -> None:
        await self.register(proxy_id, registration, health)

    async def deregister(self, proxy_id: str, *, timeout_s: float) -> bool:
        return await self.client.deregister(proxy_id, timeout_s=timeout_s)

    @property
    def last_error(self) -> str | None:
        return self.connectivity.last_error


class RegistryLink:
    """Whether the local Consul agent answers: one log line when it stops (or fails in a
    new way), one when it is back, never one per retry."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.connected = False
        self.last_error: str | None = None
        self._kind: str | None = None

    def succeeded(self) -> None:
        if self._kind is not None:
            log.info("the Consul agent at %s answers again", self.where)
        self.connected = True
        self.last_error = None
        self._kind = None

    def failed(self, exc: RegistryUnavailable) -> None:
        if self.connected or self._kind != exc.kind:
            log.warning("%s; retrying with backoff", exc)
        self.connected = False
        self.last_error = str(exc)
        self._kind = exc.kind


class ConsulRegistrar:
    """With the local Consul agent (``--registry consul``), through the Consul registry's
    write side (:class:`registry.consul_writer.ConsulWriter`, which meshd's
    :class:`registry.consul.ConsulRegistry` writes with too; here on
    :class:`sidecar.consul_agent.ConsulAgentClient`): the service with one TTL check of
    two health intervals, renewed with pass/fail and the check's output; meshd (``meshd
    serve --registry consul``) sees the instance in Consul's catalog. A registry that
    lost the instance (an agent restarted without its data, or the service reaped after
    staying critical) gets it registered again."""

    backend = "consul"

    def __init__(self, registry: ConsulWriter) -> None:
        self.registry = registry
        self.where = registry.address
        self.link = RegistryLink(self.where)

    async def register(
        self, proxy_id: str, registration: Registration, health: HealthReport | None
    ) -> None:
        healthy = health.healthy if health is not None else True
        instance = instance_of(proxy_id, registration, healthy)
        try:
            await self.registry.register(
                instance,
                ttl_s=health.ttl_s if health is not None else DEFAULT_TTL_S,
                output=health.output if health is not None else "",
            )
        except RegistryError as exc:
            raise self._failed(exc, f"register instance {proxy_id}") from exc
        self.link.succeeded()

    async def report(
        self, proxy_id: str, registration: Registration, health: HealthReport | None
    ) -> None:
        healthy = health.healthy if health is not None else True
        try:
            await self.registry.report_health(
                proxy_id, healthy, health.output if health is not None else ""
            )
        except InstanceNotRegistered:
            log.warning(
                "the Consul agent at %s no longer holds instance %s (restarted without its "
                "data, or it deregistered the instance after its check stayed critical): "
                "registering it again",
                self.where,
                proxy_id,
            )
            await self.register(proxy_id, registration, health)
            return
        except RegistryError as exc:
            raise self._failed(exc, f"report the health of instance {proxy_id}") from exc
        self.link.succeeded()

    async def deregister(self, proxy_id: str, *, timeout_s: float) -> bool:
        try:
            with trio.fail_after(timeout_s):
                return await self.registry.deregister(proxy_id)
        except trio.TooSlowError:
            raise RegistryUnavailable(
                f"the Consul agent at {self.where} did not answer within {timeout_s:g} s"
            ) from None
        except RegistryError as exc:
            raise self._failed(exc, f"deregister instance {proxy_id}") from exc

    @property
    def last_error(self) -> str | None:
        return self.link.last_error

    def _failed(self, exc: RegistryError, doing: str) -> RegistryUnavailable:
        hint = ""
        if isinstance(exc, ConsulPermissionDenied):
            hint = (
                "; the ACL token (--consul-token, MESH_CONSUL_TOKEN or CONSUL_HTTP_TOKEN) "
                "needs service:write on the service"
            )
        error = RegistryUnavailable(
            f"cannot {doing} with the Consul agent at {self.where}: {exc}{hint}",
            kind=type(exc).__name__,
        )
        self.link.failed(error)
        return error


class TrustRoots(Protocol):
    """What the agent needs of the identity (:class:`IdentityManager`): take a
    snapshot's trust roots before the snapshot is ACKed."""

    async def update_roots(self, roots: Sequence[str], trust_bundle: str = "") -> bool: ...


class WorkerFanout(Protocol):
    """The worker processes of ``--workers N`` (:class:`~sidecar.workers.supervisor.
    Supervisor`): a snapshot is ACKed only once every one of them applied it."""

    async def distribute(self, snapshot: ProxySnapshot) -> str | None: ...


class Agent:
    """Keeps one proxy registered and its config current. Drive :meth:`control_loop`
    and :meth:`heartbeat` in a nursery; both run until cancelled. ``identity`` gets
    every snapshot's trust roots before the snapshot is applied (and so ACKed).

    ``health`` (a :class:`HealthChecker`) makes every registration and heartbeat carry
    the app's health and a TTL of two check intervals, and a change of health be
    reported at once; without it the instance is reported healthy with the registry's
    default TTL. ``registrar`` is where the instance registers (default: meshd, through
    ``client``). ``workers`` (``--workers`` > 1) gets every valid snapshot before this
    process applies it; a worker's refusal is NACKed."""

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
        health: HealthChecker | None = None,
        registrar: Registrar | None = None,
        workers: WorkerFanout | None = None,
    ) -> None:
        self.settings = settings
        self.workers = workers
        self.proxy_id = proxy_id
        self.store = store
        self.client = client
        self.connectivity = connectivity
        self.identity = identity
        self.registration = registration_of(settings)
        self.heartbeat_s = heartbeat_s
        self.health = health
        self.registrar: Registrar = registrar or MeshdRegistrar(client, connectivity)
        self.registered = False
        self.reported: HealthReport | None = None
        """The health the registry was last told (None: not yet, or no checker)."""
        self.reported_at: float | None = None
        self._reporting = trio.Lock()
        self._first_registration = True
        self._unknown_since: float | None = None
        self._unknown_warned = False
        self._new_backoff = backoff
        self._unknown_backoff = backoff()
        self._refused = self._new_backoff()
        self._last_refused = ""

    # --- registration and health reports --------------------------------------------------

    def health_report(self) -> HealthReport | None:
        """What the next registration or heartbeat says of the app's health."""
        if self.health is None:
            return None
        state = self.health.state.value
        return HealthReport(state.healthy, state.output, self.health.config.ttl_s)

    async def _send(
        self,
        call: Callable[[str, Registration, HealthReport | None], Awaitable[None]],
    ) -> None:
        """One registration or report, with the health as it is when it leaves; reports
        go out one at a time, so a registry never gets an older health after a newer."""
        async with self._reporting:
            report = self.health_report()
            await call(self.proxy_id, self.registration, report)
            self.reported = report
            self.reported_at = time.time()

    @property
    def app_healthy(self) -> bool:
        return self.health is None or self.health.healthy

    def health_json(self) -> dict[str, Any]:
        """The app's health and its reporting, for ``/config_dump``."""
        if self.health is not None:
            document = self.health.health_json()
        else:
            document = {"check": "none", "kind": "none", "healthy": True, "status": "healthy"}
        sent = self.reported
        document["registry"] = {
            "backend": self.registrar.backend,
            "address": self.registrar.where,
            "registered": self.registered,
            "reportedHealthy": None if sent is None else sent.healthy,
            "lastReportAt": iso_time(self.reported_at),
            "lastError": self.registrar.last_error,
        }
        return document

    async def register(self) -> None:
        """Register, retrying until the registry accepts it. The first time, the first
        health check's result is awaited (for at most its timeout): the registration
        says whether the app is healthy from the start."""
        if self._first_registration and self.health is not None:
            self._first_registration = False
            config = self.health.config
            await self.health.wait_first_result(config.timeout_s + FIRST_CHECK_GRACE_S)
        backoff = self._new_backoff()
        while True:
            try:
                await self._send(self.registrar.register)
            except REGISTRATION_ERRORS:
                await trio.sleep(backoff.next_delay())
                continue
            if not self.registered and self.registrar.backend == "meshd":
                # (The Consul registry logs its registrations itself.)
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
        """Report the app's health every ``heartbeat_s`` (the registration lasts two of
        them), and at once when it flips. A failed report is retried with backoff within
        the interval, so one lost report does not let the registration expire."""
        backoff = self._new_backoff()
        delay, failing = self.heartbeat_s, False
        while True:
            await self._until_due(delay, wake_on_flip=not failing)
            if not self.registered:  # the control loop is registering right now
                delay, failing = self.heartbeat_s, False
                continue
            try:
                await self._send(self.registrar.report)
            except REGISTRATION_ERRORS:
                delay, failing = min(self.heartbeat_s, backoff.next_delay()), True
            else:
                backoff.reset()
                delay, failing = self.heartbeat_s, False

    async def _until_due(self, delay: float, *, wake_on_flip: bool) -> None:
        """Sleep ``delay`` seconds, or less when the app's health differs from the last
        health reported (with ``wake_on_flip``)."""
        with trio.move_on_after(delay):
            if self.health is None or not wake_on_flip:
                await trio.sleep_forever()
            state = self.health.state
            version = state.version
            while True:
                sent = self.reported
                if sent is not None and state.value.healthy != sent.healthy:
                    return
                version, _ = await state.wait_newer(version)

    async def deregister(self) -> None:
        """Best effort, bounded: the registry may well be down."""
        where = self.registrar.where
        with trio.move_on_after(DEREGISTER_TIMEOUT_S) as scope:
            try:
                known = await self.registrar.deregister(
                    self.proxy_id, timeout_s=DEREGISTER_TIMEOUT_S
                )
            except REGISTRATION_ERRORS as exc:
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
        elif self.registrar.backend == "meshd":
            log.info("meshd did not know instance %s: nothing to deregister", self.proxy_id)
        else:
            log.info("the Consul agent at %s did not hold instance %s", where, self.proxy_id)

    # --- the config watch -----------------------------------------------------------------

    async def control_loop(self) -> None:
        while True:
            await self.register()
            try:
                await self.watch()
            except InstanceUnknown as exc:
                if self.registrar.backend != "meshd":
                    # meshd learns of the instance from its watch on Consul: give it time.
                    self._not_seen_yet(exc)
                    await trio.sleep(self._unknown_backoff.next_delay())
                    continue
                self.registered = False
                log.warning(
                    "meshd does not know instance %s (it may have restarted: %s); "
                    "registering again",
                    self.proxy_id,
                    exc.detail or exc,
                )

    def _not_seen_yet(self, exc: InstanceUnknown) -> None:
        """meshd answered 404 although the instance is in Consul: normal for a moment
        (meshd's watch has not seen it yet); said once when it lasts."""
        now = trio.current_time()
        if self._unknown_since is None:
            self._unknown_since = now
        elif now - self._unknown_since >= NOT_SEEN_WARN_S and not self._unknown_warned:
            self._unknown_warned = True
            log.warning(
                "meshd at %s has not seen instance %s for %.0f s although it is registered "
                "with the Consul agent at %s (%s); meshd must run with --registry consul "
                "on the same Consul datacenter; still waiting",
                self.client.base_url,
                self.proxy_id,
                now - self._unknown_since,
                self.registrar.where,
                exc.detail or exc,
            )

    def _seen(self) -> None:
        if self._unknown_warned:
            log.info("meshd sees instance %s now", self.proxy_id)
        self._unknown_since = None
        self._unknown_warned = False
        self._unknown_backoff.reset()

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
            self._seen()
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
        if self.workers is not None:
            # Every worker first: the ACK (the next poll) must mean every process serves
            # it, and a refusal must leave every process on the old version.
            failure = await self.workers.distribute(snapshot)
            if failure is not None:
                await self.refuse(
                    snapshot.version, InvalidSnapshot([failure], version=snapshot.version)
                )
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
        "mesh-sidecar starting: instance %s, service %s.%s, meshd %s (CA file %s), state dir %s,"
        " data path %s",
        proxy_id,
        settings.service,
        settings.namespace,
        settings.meshd_url,
        settings.ca_file,
        settings.state_dir,
        data_path(),
    )
    store = ConfigStore(settings.state_dir, proxy_id)
    saved = await trio.to_thread.run_sync(store.read_saved)
    if saved is not None:
        store.apply(saved, "saved")
        log.info("serving saved config version %s (%s)", saved.version, summary(saved))
    else:
        log.info("no saved config for %s: waiting for the first one from meshd", proxy_id)
    registration = registration_of(settings)
    if settings.registry == "consul":
        check_consul_meta(proxy_id, registration)
    manager = IdentityManager.from_settings(settings, proxy_id, ca_file=settings.ca_file)
    connectivity = Connectivity(settings.meshd_url, serving=lambda: store.version)
    health = HealthChecker(settings.health, settings.app_address, settings.app_port)
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
        reuse_port=settings.workers > 1,
    )
    supervisor = (
        Supervisor(settings, proxy_id, store, manager, proxy, lambda: sink.telemetry)
        if settings.workers > 1
        else None
    )
    access_log: AccessLog | None = None
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with (
            ControlClient(settings.meshd_url, manager.control_plane_context) as client,
            open_registrar(settings, client, connectivity) as registrar,
            trio.open_nursery() as nursery,
        ):
            agent = Agent(
                settings,
                proxy_id,
                store,
                client,
                connectivity,
                manager,
                heartbeat_s=settings.health.interval_s,
                health=health,
                registrar=registrar,
                workers=supervisor,
            )
            app = AdminApp(
                settings,
                proxy_id,
                store,
                connectivity,
                manager,
                proxy=proxy,
                health=agent,
                workers=supervisor,
            )
            admin = AdminServer(app, settings.admin_host, settings.admin_port)
            await nursery.start(admin.serve)
            await nursery.start(proxy.serve, store)
            if supervisor is not None:  # after our own bind: a taken port stops us first
                await nursery.start(supervisor.run)
            await nursery.start(health.run)
            control = trio.CancelScope()
            nursery.start_soon(_watch_signals, signals, control, nursery.cancel_scope)
            try:
                with control:
                    # Started under the control scope (a signal stops the wait for the
                    # first certificate), then renewing in the outer nursery until the end.
                    identity: Identity = await nursery.start(manager.run)
                    access_log = open_access_log(settings.access_log, shared=settings.workers > 1)
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
                    if supervisor is not None:
                        stopping.start_soon(supervisor.drain, settings.drain_timeout_s)
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


def check_consul_meta(proxy_id: str, registration: Registration) -> None:
    """``--registry consul``: the instance fits Consul's Meta limits (labels), before
    anything is sent; else a :class:`ConfigError` naming the label."""
    try:
        instance_meta(instance_of(proxy_id, registration))
    except InvalidInstance as exc:
        raise ConfigError(f"--labels (or MESH_LABELS): {exc}") from exc


@contextlib.asynccontextmanager
async def open_registrar(
    settings: Settings, client: ControlClient, connectivity: Connectivity
) -> AsyncIterator[Registrar]:
    """Where the instance registers (``--registry``). Raises :class:`ConfigError` when
    the ``--consul-ca-file`` cannot be loaded."""
    if settings.registry == "meshd":
        yield MeshdRegistrar(client, connectivity)
        return
    # One request must not outlast a heartbeat interval by much (a hung agent).
    timeout = min(10.0, max(2.0, settings.health.interval_s))
    tls = await trio.to_thread.run_sync(consul_tls, settings.consul_addr, settings.consul_ca_file)
    consul = ConsulAgentClient(
        settings.consul_addr,
        token=settings.consul_token or None,
        tls=tls,
        timeout_s=timeout,
    )
    log.info(
        "registering with the Consul agent at %s (TTL check of %g s, renewed every %g s)",
        consul.address,
        settings.health.ttl_s,
        settings.health.interval_s,
    )
    try:
        yield ConsulRegistrar(ConsulWriter(consul))
    finally:
        await consul.aclose()


def open_access_log(where: str, *, shared: bool = False) -> AccessLog | None:
    """``--access-log``: None (off), ``-`` (standard output) or a file appended to
    (``shared``: by the worker processes too, in whole lines)."""
    if not where:
        return None
    if where == "-":
        return AccessLog(sys.stdout)
    try:
        return AccessLog.to_path(where, shared=shared)
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
