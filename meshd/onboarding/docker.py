"""The Docker watcher: onboards containers labelled ``mesh.service`` into the mesh.

It follows the engine's container events and, whenever it (re)connects, reconciles what
already runs (:func:`meshd.onboarding.plan.reconcile`). For a running labelled app it
mints a single-use join token (meshd's own :class:`~meshd.join_tokens.JoinTokens`, not
over HTTP) and starts a sidecar container in the app's network namespace; when the app
stops, dies or is removed, it removes the instance from the catalog and stops (SIGTERM)
and removes the sidecar. Each app is worked on by one task at a time: events for an app
whose work is running mark it for another pass, so bursts coalesce.

The Docker SDK is synchronous: every call runs in a worker thread (at most
``DOCKER_THREADS`` at once, plus one that reads the event stream). Calls are abandoned
on cancellation, so meshd's shutdown never waits for the engine; sidecars keep running
while meshd is down, and the next start reconciles them. When the engine goes away the
watcher reconnects with backoff and reconciles again.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import docker
import docker.errors
import requests.exceptions
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectSendStream
from docker.models.containers import Container
from docker.types.daemon import CancellableStream

from meshd.config import Settings
from meshd.errors import MeshError
from meshd.identity import BUNDLE_FILE, _sans
from meshd.join_tokens import JoinTokens
from meshd.onboarding.plan import (
    ACTOR,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_SERVICE,
    LABEL_SIDECAR_FOR,
    LABEL_SPEC,
    MANAGED_BY,
    Action,
    AppContainer,
    FailureTracker,
    OnboardingConfig,
    RemoveSidecar,
    ReportInvalid,
    ReportStopped,
    SidecarContainer,
    SidecarSpec,
    StartSidecar,
    decide,
    reconcile,
    sidecar_name,
)
from meshd.store.base import AuditEntry, Store
from registry.base import Registry
from registry.errors import RegistryError

log = logging.getLogger("meshd.onboarding")

T = TypeVar("T")

API_TIMEOUT_S = 30
"""Per Docker API call (the event stream has none)."""
DOCKER_THREADS = 8
EVENT_BUFFER = 256
EVENT_FILTERS = {"type": ["container"], "event": ["start", "die", "destroy"]}
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_SESSION_S = 30.0
CONFLICT_RETRIES = 5
CONFLICT_DELAY_S = 1.0
EXIT_CODE_ATTR = "exitCode"
"""Where a ``die`` event carries the exit status (next to the container's labels)."""
LOG_LINES = 20
"""Lines of a failing sidecar's log quoted in meshd's."""


class DockerUnavailable(MeshError):
    """The Docker engine cannot be reached, or stopped answering."""

    status = 503
    slug = "docker-unavailable"
    title = "Docker engine unavailable"


class _NameTaken(Exception):
    """Creating the sidecar hit a name conflict (a previous sidecar still being removed,
    or another meshd replica got there first): observe again and retry."""


# --- observing ------------------------------------------------------------------------


def app_from_attrs(attrs: dict[str, Any]) -> AppContainer:
    """An app as ``docker inspect`` shows it."""
    config = attrs.get("Config") or {}
    state = attrs.get("State") or {}
    host = attrs.get("HostConfig") or {}
    networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
    return AppContainer(
        id=str(attrs["Id"]),
        name=str(attrs.get("Name") or attrs["Id"][:12]).lstrip("/"),
        labels=dict(config.get("Labels") or {}),
        running=bool(state.get("Running")) and not state.get("Restarting"),
        network_mode=str(host.get("NetworkMode") or "default"),
        networks=tuple(
            (str(n), str((v or {}).get("IPAddress") or "")) for n, v in networks.items()
        ),
        exposed_ports=tuple(sorted(config.get("ExposedPorts") or {})),
    )


def sidecar_from_attrs(attrs: dict[str, Any]) -> SidecarContainer:
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    state = attrs.get("State") or {}
    return SidecarContainer(
        id=str(attrs["Id"]),
        name=str(attrs.get("Name") or "").lstrip("/"),
        app_id=str(labels.get(LABEL_SIDECAR_FOR, "")),
        status=str(state.get("Status") or "unknown"),
        spec=str(labels.get(LABEL_SPEC, "")),
        instance_id=str(labels.get(LABEL_INSTANCE, "")),
        exit_code=int(state.get("ExitCode") or 0),
    )


def is_sidecar(labels: dict[str, Any]) -> bool:
    return labels.get(LABEL_MANAGED_BY) == MANAGED_BY or LABEL_SIDECAR_FOR in labels


def meshd_url_for(settings: Settings, gateway: str | None) -> str:
    """meshd's URL as containers reach it: ``--onboarding-meshd-url``; else meshd's
    listen address; else, listening on a wildcard, the engine's bridge gateway (an
    address of this host that every container can reach)."""
    if settings.onboarding_meshd_url:
        return settings.onboarding_meshd_url.rstrip("/")
    host = settings.listen_host
    if needs_gateway(settings):
        if not gateway:
            raise DockerUnavailable(
                "the engine's default bridge has no gateway address, so meshd cannot tell "
                "containers where to reach it; set --onboarding-meshd-url"
            )
        host = gateway
    shown = f"[{host}]" if ":" in host else host
    return f"https://{shown}:{settings.listen_port}"


def needs_gateway(settings: Settings) -> bool:
    """Whether meshd's URL for containers is the engine's bridge gateway."""
    host = settings.listen_host
    return not settings.onboarding_meshd_url and _is_ip(host) and _unspecified(host)


def _unspecified(host: str) -> bool:
    return ipaddress.ip_address(host).is_unspecified


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def certificate_names(settings: Settings, url: str) -> str | None:
    """None if meshd's serving certificate is valid for ``url``'s host; else what to do."""
    host = (urlsplit(url).hostname or "").strip("[]")
    names, ips = _sans(settings)
    if host in names or host in ips:
        return None
    return (
        f"meshd's certificate does not name {host}, the address sidecars are told to use "
        f"({url}): they will refuse it. Restart meshd with --san {host} (or listen on it)"
    )


# --- the watcher ----------------------------------------------------------------------


@dataclass
class _Session:
    client: docker.DockerClient
    config: OnboardingConfig
    tg: TaskGroup


class DockerWatcher:
    """``meshd serve --docker-onboarding``: see the module's docstring."""

    def __init__(
        self,
        settings: Settings,
        tokens: JoinTokens,
        catalog: Registry,
        store: Store | None = None,
        *,
        client_factory: Callable[[], docker.DockerClient] | None = None,
    ) -> None:
        self._settings = settings
        self._tokens = tokens
        self._catalog = catalog
        self._store = store
        self._host = settings.docker_host
        self._client_factory = client_factory or functools.partial(
            docker.DockerClient, base_url=self._host, timeout=API_TIMEOUT_S
        )
        self._limiter = anyio.CapacityLimiter(DOCKER_THREADS)
        self._active: set[str] = set()
        self._pending: dict[str, bool] = {}
        self._deaths: dict[str, list[tuple[str, str, int]]] = {}
        self._failures = FailureTracker()
        self._reported: set[tuple[str, str]] = set()
        self.connected = False
        self.sessions = 0

    # -- the loop ------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Watch until cancelled; never blocks meshd's start (the engine may be down)."""
        log.info(
            "docker onboarding: watching %s for containers labelled %s (sidecar image %s)",
            self._host,
            LABEL_SERVICE,
            self._settings.sidecar_image,
        )
        task_status.started()
        delay = BACKOFF_START_S
        down_since: float | None = None
        while True:
            try:
                client = await self._thread(self._connect)
            except DockerUnavailable as exc:
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("%s; retrying with backoff (up to %.0fs)", exc, BACKOFF_MAX_S)
                await anyio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 — jitter
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            if down_since is not None:
                log.info(
                    "docker onboarding: the engine at %s answers again (after %.0fs)",
                    self._host,
                    time.monotonic() - down_since,
                )
                down_since = None
            began = time.monotonic()
            try:
                reason = await self._session(client)
            except DockerUnavailable as exc:
                reason = str(exc)
            except Exception as exc:  # a bug must not take meshd down with it
                log.exception("docker onboarding: the watcher failed; restarting it")
                reason = f"the watcher failed: {exc!r}"
            finally:
                self.connected = False
                client.close()
            down_since = time.monotonic()
            log.warning(
                "docker onboarding: lost the engine at %s (%s); reconnecting", self._host, reason
            )
            # A session that ended at once (engine restarting, a persistent error) backs
            # off further; one that lasted starts over.
            lasted = down_since - began > STABLE_SESSION_S
            delay = BACKOFF_START_S if lasted else min(delay * 2, BACKOFF_MAX_S)
            await anyio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 — jitter

    def _connect(self) -> docker.DockerClient:
        try:
            client = self._client_factory()
            version = client.version()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise DockerUnavailable(
                f"docker onboarding: cannot reach the Docker engine at {self._host} ({exc}); "
                "check --docker-host and that meshd may use the socket"
            ) from exc
        log.info(
            "docker onboarding: connected to Docker %s (API %s) at %s",
            version.get("Version", "?"),
            version.get("ApiVersion", "?"),
            self._host,
        )
        return client

    def _gateway(self, client: docker.DockerClient) -> str | None:
        try:
            bridge = client.networks.get("bridge")
        except docker.errors.NotFound:
            return None
        for block in (bridge.attrs.get("IPAM") or {}).get("Config") or []:
            if gateway := (block or {}).get("Gateway"):
                return str(gateway).partition("/")[0]
        return None

    async def _session(self, client: docker.DockerClient) -> str:
        gateway = None
        if needs_gateway(self._settings):
            gateway = await self._thread(self._gateway, client)
        config = OnboardingConfig(
            image=self._settings.sidecar_image,
            meshd_url=meshd_url_for(self._settings, gateway),
            ca_file=str((self._settings.data_dir / BUNDLE_FILE).resolve()),
        )
        if problem := certificate_names(self._settings, config.meshd_url):
            log.error("docker onboarding: %s", problem)
        # Subscribe before listing, so nothing that happens in between is missed.
        stream = await self._thread(self._events, client)
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](EVENT_BUFFER)
        self.connected = True
        self.sessions += 1
        reason = "its event stream ended"
        try:
            async with anyio.create_task_group() as tg:
                session = _Session(client, config, tg)
                tg.start_soon(self._pump, stream, send)
                await self._reconcile(session)
                async with receive:
                    async for event in receive:
                        self._on_event(session, event)
                # The engine went away: drop the work in flight; reconnecting reconciles.
                tg.cancel_scope.cancel()
        except* DockerUnavailable as group:
            reason = str(group.exceptions[0])
        finally:
            stream.close()
            self._active.clear()
            self._pending.clear()
        return reason

    @staticmethod
    def _events(client: docker.DockerClient) -> CancellableStream[dict[str, Any]]:
        return client.events(decode=True, filters=EVENT_FILTERS)

    async def _pump(
        self,
        stream: CancellableStream[dict[str, Any]],
        send: MemoryObjectSendStream[dict[str, Any]],
    ) -> None:
        """Read the blocking event stream in a worker thread into ``send``."""

        def pump() -> None:
            try:
                for event in stream:
                    anyio.from_thread.run(send.send, event)
            except Exception as exc:  # the engine went away, or the loop is closing
                log.debug("docker onboarding: event stream: %r", exc)

        async with send:
            try:
                await anyio.to_thread.run_sync(pump, abandon_on_cancel=True)
            finally:
                stream.close()

    async def _thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn`` in a worker thread; engine connection errors become DockerUnavailable."""
        call = functools.partial(fn, *args, **kwargs)
        try:
            return await anyio.to_thread.run_sync(
                call, abandon_on_cancel=True, limiter=self._limiter
            )
        except requests.exceptions.ConnectionError as exc:
            raise DockerUnavailable(f"the engine stopped answering ({exc})") from exc

    # -- reconciliation and events ------------------------------------------------------

    async def _reconcile(self, session: _Session) -> None:
        apps, sidecars = await self._thread(self._list_all, session.client)
        plan = reconcile(apps, sidecars, session.config)
        starts = sum(isinstance(a, StartSidecar) for acts in plan.values() for a in acts)
        removals = sum(isinstance(a, RemoveSidecar) for acts in plan.values() for a in acts)
        log.info(
            "docker onboarding: reconciling %d labelled containers (%d running) and %d "
            "sidecars: %d to start, %d to remove",
            len(apps),
            sum(a.running for a in apps),
            len(sidecars),
            starts,
            removals,
        )
        for app_id, actions in plan.items():
            self._schedule(session, app_id, fresh=True, actions=actions)

    def _list_all(
        self, client: docker.DockerClient
    ) -> tuple[list[AppContainer], list[SidecarContainer]]:
        labelled = client.containers.list(
            all=True, filters={"label": LABEL_SERVICE}, ignore_removed=True
        )
        apps = [app_from_attrs(c.attrs) for c in labelled if not is_sidecar(c.labels)]
        managed = client.containers.list(
            all=True, filters={"label": f"{LABEL_MANAGED_BY}={MANAGED_BY}"}, ignore_removed=True
        )
        return apps, [sidecar_from_attrs(c.attrs) for c in managed]

    def _on_event(self, session: _Session, event: dict[str, Any]) -> None:
        actor = event.get("Actor") or {}
        attrs = actor.get("Attributes") or {}
        action = str(event.get("Action") or event.get("status") or "")
        container_id = str(actor.get("ID") or event.get("id") or "")
        if not container_id:
            return
        if is_sidecar(attrs):
            app_id = str(attrs.get(LABEL_SIDECAR_FOR, ""))
            if action == "die" and app_id:
                code = int(attrs.get(EXIT_CODE_ATTR) or 0)
                name = str(attrs.get("name") or container_id[:12])
                self._deaths.setdefault(app_id, []).append((container_id, name, code))
            if app_id and action in ("die", "destroy"):
                self._schedule(session, app_id)
        elif LABEL_SERVICE in attrs:
            self._schedule(session, container_id)

    def _schedule(
        self,
        session: _Session,
        app_id: str,
        *,
        fresh: bool = False,
        actions: list[Action] | None = None,
    ) -> None:
        if app_id in self._active:
            self._pending[app_id] = self._pending.get(app_id, False) or fresh
            return
        self._active.add(app_id)
        session.tg.start_soon(self._work, session, app_id, fresh, actions)

    async def _work(
        self, session: _Session, app_id: str, fresh: bool, actions: list[Action] | None
    ) -> None:
        """Passes over one app until no event asked for another."""
        try:
            attempts = 0
            while True:
                try:
                    await self._sync(session, app_id, fresh=fresh, actions=actions)
                except _NameTaken as exc:
                    attempts += 1
                    if attempts >= CONFLICT_RETRIES:
                        log.error("docker onboarding: %s; giving up for now", exc)
                    else:
                        await anyio.sleep(CONFLICT_DELAY_S)
                        actions = None
                        continue
                except DockerUnavailable:
                    raise  # ends the session: reconnect and reconcile
                except (MeshError, docker.errors.APIError) as exc:
                    log.error("docker onboarding: container %s: %s", app_id[:12], exc)
                except Exception:
                    log.exception("docker onboarding: handling container %s failed", app_id[:12])
                if app_id not in self._pending:
                    return
                fresh = self._pending.pop(app_id)
                actions = None
                attempts = 0
        finally:
            self._active.discard(app_id)
            self._pending.pop(app_id, None)

    def _observe(
        self, client: docker.DockerClient, app_id: str
    ) -> tuple[AppContainer | None, list[SidecarContainer], list[SidecarContainer]]:
        try:
            app: AppContainer | None = app_from_attrs(client.api.inspect_container(app_id))
        except docker.errors.NotFound:
            app = None
        found = client.containers.list(
            all=True, filters={"label": f"{LABEL_SIDECAR_FOR}={app_id}"}, ignore_removed=True
        )
        sidecars = [sidecar_from_attrs(c.attrs) for c in found]
        holders: list[SidecarContainer] = []
        if (
            app is not None
            and app.running
            and not any(s.name == sidecar_name(app.name) for s in sidecars)
        ):
            try:
                holder = client.containers.get(sidecar_name(app.name))
            except docker.errors.NotFound:
                pass
            else:
                if holder.labels.get(LABEL_MANAGED_BY) == MANAGED_BY:
                    holders.append(sidecar_from_attrs(holder.attrs))
        return app, sidecars, holders

    async def _sync(
        self, session: _Session, app_id: str, *, fresh: bool, actions: list[Action] | None
    ) -> None:
        if actions is None:
            app, sidecars, holders = await self._thread(self._observe, session.client, app_id)
            if app is None:
                self._reported = {k for k in self._reported if k[0] != app_id}
            await self._note_deaths(session, app, sidecars)
            actions = decide(
                app_id, app, sidecars, session.config, fresh=fresh, name_holders=holders
            )
        else:
            self._deaths.pop(app_id, None)
        for action in actions:
            await self._execute(session, action)

    async def _note_deaths(
        self, session: _Session, app: AppContainer | None, sidecars: list[SidecarContainer]
    ) -> None:
        """Sidecars of a running app that exited with an error (ours stop with 0, and
        are gone by the time the app's next pass looks): a line each, and their logs
        once they keep failing."""
        if app is None:
            return
        deaths = self._deaths.pop(app.id, [])
        if not app.running:
            return
        present = {s.id: s for s in sidecars}
        for sidecar_id, name, code in deaths:
            if code == 0 or sidecar_id not in present:
                continue
            count, report = self._failures.record(sidecar_id, time.monotonic())
            restarting = present[sidecar_id].alive
            log.warning(
                "docker onboarding: sidecar %s of %s exited with status %d (%d time(s) in "
                "10 min)%s",
                name,
                app.name,
                code,
                count,
                "; Docker restarts it" if restarting else "",
            )
            if report:
                tail = await self._logs(session, sidecar_id)
                log.error(
                    "docker onboarding: sidecar %s of %s keeps failing (%d exits in 10 min); "
                    "its last log lines:\n%s",
                    name,
                    app.name,
                    count,
                    tail,
                )

    async def _logs(self, session: _Session, container_id: str) -> str:
        def read() -> str:
            raw = session.client.api.logs(container_id, tail=LOG_LINES, stdout=True, stderr=True)
            return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)

        try:
            text = await self._thread(read)
        except docker.errors.DockerException as exc:
            return f"  (could not read its log: {exc})"
        return "\n".join(f"  | {line}" for line in text.rstrip().splitlines()) or "  (empty)"

    # -- actions --------------------------------------------------------------------------

    async def _execute(self, session: _Session, action: Action) -> None:
        if isinstance(action, StartSidecar):
            await self._start(session, action.spec)
        elif isinstance(action, RemoveSidecar):
            await self._remove(session, action)
        elif isinstance(action, ReportInvalid):
            key = (action.app.id, str(action.error))
            if key not in self._reported:
                self._reported.add(key)
                log.error("docker onboarding: not meshing %s: %s", action.app.name, action.error)
        elif isinstance(action, ReportStopped):
            key = (action.sidecar.id, "stopped")
            if key not in self._reported:
                self._reported.add(key)
                tail = await self._logs(session, action.sidecar.id)
                log.error(
                    "docker onboarding: sidecar %s of %s has stopped (exit status %d) and "
                    "Docker does not restart it; %s runs unmeshed. Fix the cause and "
                    "`docker rm %s` (meshd then starts a new one), or restart meshd. Its last "
                    "log lines:\n%s",
                    action.sidecar.name,
                    action.app.name,
                    action.sidecar.exit_code,
                    action.app.name,
                    action.sidecar.name,
                    tail,
                )

    async def _start(self, session: _Session, spec: SidecarSpec) -> None:
        token, record = await self._tokens.create(
            service=spec.app.service,
            namespace=spec.app.namespace,
            service_account=spec.app.service_account,
            ttl=session.config.token_ttl,
            uses="single",
            actor=ACTOR,
        )
        if self._store is not None:
            await self._store.audit_append(
                AuditEntry(
                    time.time(),
                    ACTOR,
                    "created join token",
                    str(record["spiffeId"]),
                    f"{record['id']} for container {spec.app_name}",
                )
            )
        try:
            container = await self._thread(self._create, session.client, spec, token)
        except Exception:
            # Not on cancellation: an abandoned create may still finish and use it.
            await self._revoke(str(record["id"]))
            raise
        log.info(
            "docker onboarding: started sidecar %s (%s) for %s: instance %s of %s at %s, meshd %s",
            spec.name,
            container.short_id,
            spec.app_name,
            spec.instance_id,
            spec.identity,
            spec.address,
            session.config.meshd_url,
        )

    def _create(self, client: docker.DockerClient, spec: SidecarSpec, token: str) -> Container:
        try:
            container = client.containers.create(**spec.container_kwargs(token))
        except docker.errors.ImageNotFound as exc:
            raise MeshError(
                f"cannot start the sidecar of {spec.app_name}: the engine has no image "
                f"{spec.image!r} ({exc.explanation}); build or load it there (make images), "
                "or set --sidecar-image"
            ) from exc
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                raise _NameTaken(
                    f"the sidecar name {spec.name} is taken ({exc.explanation}); if a "
                    "container meshd did not start holds it, rename or remove that container"
                ) from exc
            raise
        try:
            container.start()
        except Exception:
            container.remove(force=True, v=True)
            raise
        return container

    async def _revoke(self, token_id: str) -> None:
        try:
            await self._tokens.revoke(token_id)
        except MeshError as exc:
            log.debug("docker onboarding: revoking unused join token %s: %s", token_id, exc)

    async def _remove(self, session: _Session, action: RemoveSidecar) -> None:
        sidecar = action.sidecar
        if action.deregister and sidecar.instance_id:
            # First: peers stop sending to an app that is gone right away. The sidecar
            # would deregister on SIGTERM, but it lost the network with its app.
            try:
                await self._catalog.deregister(sidecar.instance_id)
            except RegistryError as exc:
                log.warning(
                    "docker onboarding: could not deregister %s: %s", sidecar.instance_id, exc
                )
        removed = await self._thread(
            self._stop_and_remove, session.client, sidecar.id, session.config.stop_timeout_s
        )
        self._failures.forget(sidecar.id)
        self._reported.discard((sidecar.id, "stopped"))
        if removed:
            log.info(
                "docker onboarding: removed sidecar %s (instance %s): %s",
                sidecar.name,
                sidecar.instance_id or "?",
                action.reason,
            )

    @staticmethod
    def _stop_and_remove(client: docker.DockerClient, container_id: str, timeout_s: int) -> bool:
        """SIGTERM (the sidecar deregisters and drains), SIGKILL after ``timeout_s``, then
        remove with its volume. False if it was already gone."""
        try:
            container = client.containers.get(container_id)
            if container.status in ("running", "restarting", "paused"):
                container.stop(timeout=timeout_s)
            container.remove(v=True, force=True)
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # removal already in progress
                return False
            raise
        return True
