"""The control loop: store and registry changes -> debounced, incremental compile ->
new snapshots in the xDS hub.

Every replica compiles from the store's watch (its own writes included), so all
replicas converge on the same snapshots; versions are content hashes, so a proxy
that moves to another replica is not re-sent what it already has.

Registry changes are incremental: the registry (``registry.base.Registry``) publishes
views in which every service whose instances did not change keeps its very same tuple,
so the compiler rebuilds only the pieces of services whose endpoints changed (and the
outbound configs and snapshots that contain them). A view that differs only in health
output (``RegistryView.notes``) recompiles nothing. The first compile waits until the
registry is ready (its whole catalog read), so a restarted meshd never pushes partial
endpoint sets.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus

from meshd.ca.base import TrustBundle
from meshd.compile.compiler import Compiler, CompileResult, CompileSettings
from meshd.compile.snapshot import MeshSettings
from meshd.config import Settings
from meshd.metrics import Metrics
from meshd.models import ModelCache
from meshd.schema.base import AnyResource, ResourceKey
from meshd.schema.hosts import service_fqdn
from meshd.store.base import Store, StoreState
from meshd.xds.encode import Encoded, SnapshotEncoder
from meshd.xds.hub import ProxyState, XdsHub
from registry.base import Registry
from registry.latest import Latest
from registry.model import RegistryView

log = logging.getLogger("meshd.control")


@dataclass(frozen=True, slots=True)
class CompileReport:
    at: float
    duration_s: float
    proxies: int
    changed: int
    errors: int
    store_index: int
    pieces_built: int = 0
    pieces_reused: int = 0
    snapshots_built: int = 0


class ControlPlane:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        catalog: Registry,
        metrics: Metrics,
        bundle: Latest[TrustBundle | None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.metrics = metrics
        self.models = ModelCache()
        self.hub = XdsHub(on_ack=self._observe_ack)
        self._compiler = Compiler()
        self._encoder = SnapshotEncoder()
        self._compile_settings = CompileSettings(
            mesh=MeshSettings(
                trust_domain=settings.trust_domain, domain_suffix=settings.domain_suffix
            ),
            root_namespace=settings.root_namespace,
            default_mtls_mode=settings.default_mtls_mode,
        )
        self._bundle = bundle
        self._current: dict[ResourceKey, AnyResource] = {}
        self._store_index = -1
        self._dirty: Latest[int] = Latest(0)
        self._logged_errors: dict[str, tuple[str, ...]] = {}
        self.last_result: CompileResult | None = None
        self.last_report: CompileReport | None = None
        self.ready = anyio.Event()
        self._last_compile = 0.0
        # Whether anything but endpoints changed since the last compile (see _debounce).
        self._rules_dirty = True
        self._seen_by: tuple[CompileResult | None, dict[str, list[list[str]]]] = (None, {})

    # --- inputs ---------------------------------------------------------------------------

    def current(self) -> dict[ResourceKey, AnyResource]:
        """The resources the last store state holds (the compiler's input)."""
        return self._current

    def _mark_dirty(self, *, endpoints_only: bool = False) -> None:
        if not endpoints_only:
            self._rules_dirty = True
        self._dirty.set(self._dirty.value + 1)

    async def _watch_store(self) -> None:
        async for state in self.store.watch():
            self._take_state(state)
            self._mark_dirty()

    def _take_state(self, state: StoreState) -> None:
        self._current = self.models.models(state.resources.values())
        self.models.forget_missing(state.resources.keys())
        self._store_index = state.index

    async def _watch_bundle(self) -> None:
        """The trust roots are part of every snapshot; a new bundle recompiles all."""
        if self._bundle is None:
            return
        async for bundle in self._bundle.watch():
            if bundle is None:
                continue
            self._compile_settings = dataclasses.replace(
                self._compile_settings,
                trust_bundle=bundle.digest,
                trust_roots=tuple(r.pem for r in bundle.roots),
            )
            self._mark_dirty()

    def lagging(self, digest: str) -> tuple[int, list[str]]:
        """How many connected proxies do not yet run (ACKed) a snapshot with trust bundle
        ``digest``, and a few of their ids. Proxies not seen for a while are left out: a
        proxy that comes back gets the newest snapshot before anything else."""
        behind = [
            s.proxy_id
            for s in self.hub.states()
            if self.hub.status(s)["connected"]
            and not (
                s.snapshot is not None
                and s.snapshot.trust_bundle == digest
                and s.acked_version == s.snapshot.version
            )
        ]
        return len(behind), behind[:10]

    async def _watch_registry(self) -> None:
        """Recompile when endpoints change, or when the registry becomes ready; a view
        that differs only in health output (``notes``) is not a change."""
        last: RegistryView | None = None
        was_ready = False
        async for view in self.catalog.watch():
            ready = self.catalog.ready
            if last is None or ready != was_ready:
                self._mark_dirty()
            elif view.services is not last.services:
                self._mark_dirty(endpoints_only=True)
            last, was_ready = view, ready

    # --- the loop -------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_store)
            tg.start_soon(self._watch_registry)
            tg.start_soon(self._watch_bundle)
            tg.start_soon(self._compile_loop)
            tg.start_soon(self._collect_when_quiet)
            task_status.started()

    async def _compile_loop(self) -> None:
        seen = 0
        while True:
            seen, _ = await self._dirty.wait_newer(seen)
            await self._debounce(seen)
            seen = self._dirty.version
            self._rules_dirty = False
            # The first compile waits for the store's initial state, or it would push an
            # empty config to proxies that reconnect right after a restart.
            if self._store_index < 0 or (self._bundle is not None and self._bundle.value is None):
                continue
            # Nor before the registry has read its whole catalog (the store's records,
            # Consul's services): partial endpoint sets would send traffic to too few
            # instances, or to none.
            if not self.catalog.ready:
                continue
            await self._compile_once()

    async def _collect_when_quiet(
        self, every_s: float = 300.0, quiet_s: float = 5.0, check_s: float = 10.0
    ) -> None:
        """A full collection at most every ``every_s``, only when no compile ran for
        ``quiet_s``: a pause then delays nothing."""
        last = time.monotonic()
        while True:
            await anyio.sleep(check_s)
            now = time.monotonic()
            if now - last >= every_s and now - self._last_compile >= quiet_s:
                gc.unfreeze()
                gc.collect()
                gc.freeze()
                last = time.monotonic()

    async def _debounce(self, seen: int) -> None:
        """Wait until changes pause for ``debounce_ms`` (at most ``debounce_max_ms``).

        Endpoint churn alone (registry views, no rule or trust change) gets one fixed
        window of ``debounce_ms`` instead: a steady stream of endpoint changes (10/s in
        a large mesh) rarely pauses for a whole window, so waiting for a pause would hold
        every endpoint update for up to ``debounce_max_ms``. Endpoint updates are
        incremental and cheap, so they batch over one window and go."""
        quiet = self.settings.debounce_ms / 1000
        deadline = time.monotonic() + self.settings.debounce_max_ms / 1000
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if not self._rules_dirty:
                await anyio.sleep(min(quiet, left))
                return
            with anyio.move_on_after(min(quiet, left)) as scope:
                seen, _ = await self._dirty.wait_newer(seen)
            if scope.cancelled_caught:
                return

    async def _compile_once(self) -> None:
        resources = list(self._current.values())
        view = self.catalog.view()
        index = self._store_index
        started = time.perf_counter()
        # In a worker thread so a large compile does not stall API requests and polls.
        result, documents = await anyio.to_thread.run_sync(
            self._compile_and_encode, resources, view
        )
        took = time.perf_counter() - started
        proxies = [
            inst.id for instances in view.services.values() for inst in instances if inst.meshed
        ]
        changed = self.hub.publish(result.snapshots, result.errors, proxies, documents)
        # What survives a compile lives until the next one; moving it out of the
        # collector's reach keeps full collections (80-180 ms pauses at 1,000 proxies,
        # measured) from landing in the middle of a push. _collect_when_quiet bounds
        # the cyclic garbage this can strand.
        gc.freeze()
        self._last_compile = time.monotonic()
        self.last_result = result
        stats = result.stats
        self.last_report = CompileReport(
            time.time(),
            took,
            len(proxies),
            changed,
            len(result.errors),
            index,
            stats.pieces_built,
            stats.pieces_reused,
            stats.snapshots_built,
        )
        self.metrics.observe_compile(took, changed, len(result.errors))
        self._log_errors(result)
        log.info(
            "compiled %d resources for %d proxies in %.0f ms: %d new versions, %d with "
            "errors; service pieces rebuilt %d, reused %d",
            len(resources),
            len(proxies),
            took * 1000,
            changed,
            len(result.errors),
            stats.pieces_built,
            stats.pieces_reused,
        )
        if not self.ready.is_set():
            self.ready.set()

    def _compile_and_encode(
        self, resources: list[AnyResource], view: RegistryView
    ) -> tuple[CompileResult, dict[str, Encoded]]:
        """Runs in a worker thread, one at a time, so the event loop only sends bytes."""
        result = self._compiler.compile(resources, view, self._compile_settings)
        return result, self._encoder.encode_all(result.snapshots)

    def _log_errors(self, result: CompileResult) -> None:
        for pid, errors in result.errors.items():
            if self._logged_errors.get(pid) != errors:
                log.error(
                    "proxy %s keeps its last good config; its new config is invalid: %s",
                    pid,
                    "; ".join(errors),
                )
        self._logged_errors = dict(result.errors)

    def seen_by(
        self, namespace: str, name: str, *, limit: int | None = None
    ) -> tuple[int, list[str]]:
        """The proxies whose outbound config (last compile) includes registry service
        ``name.namespace``, i.e. those that can call it: how many, and their ids (sorted;
        the first ``limit`` only, when given). Proxies of one scope share one outbound
        object, so the index is built once per compile per distinct outbound."""
        groups = self._seen_index().get(service_fqdn(name, namespace, self.settings.domain_suffix))
        if not groups:
            return 0, []
        count = sum(len(g) for g in groups)
        if limit is not None and limit <= 0:
            return count, []
        pids = sorted(pid for g in groups for pid in g)
        return count, pids if limit is None else pids[:limit]

    def _seen_index(self) -> dict[str, list[list[str]]]:
        result = self.last_result
        cached_for, index = self._seen_by
        if result is None:
            return {}
        if cached_for is not result:
            by_outbound: dict[int, tuple[set[str], list[str]]] = {}
            for pid, snap in result.snapshots.items():
                entry = by_outbound.get(id(snap.outbound))
                if entry is None:
                    hosts = {c.service for c in snap.outbound.clusters}
                    entry = by_outbound[id(snap.outbound)] = (hosts, [])
                entry[1].append(pid)
            index = {}
            for hosts, pids in by_outbound.values():
                for host in hosts:
                    index.setdefault(host, []).append(pids)
            self._seen_by = (result, index)
        return index

    def _observe_ack(self, state: ProxyState, latency_s: float) -> None:
        self.metrics.observe_ack(latency_s)
