"""The Consul registry: Consul's catalog is the truth; meshd watches it.

Read side (:meth:`ConsulRegistry.run`, in meshd): a blocking query on
``/v1/catalog/services`` gives the service names; each service then gets a blocking query
of its own on ``/v1/health/service/<name>``, which answers with every instance and its
checks as soon as anything about that service changes (Consul indexes it per service, so
one service's churn wakes only that service's query). Each answer replaces that
service's instances in the view; services that did not change keep their very same
tuples, so meshd recompiles only the pieces whose endpoints changed. Errors are retried
with exponential backoff and jitter (``registry.consul_http.Backoff``); an index that goes
backwards (a restored or rebuilt Consul) restarts the query from 0. While Consul cannot
be reached the last view stays (endpoints are not dropped for an outage of the
registry). A restarted meshd just watches again: the whole catalog comes back with no
manual step.

Connection budget: each blocking query holds one HTTP connection, and Consul refuses a
client more than ``limits.http_max_conns_per_client`` (200 by default) at once. Up to
``max_watches`` services (default 160) get a query of their own. Beyond that, meshd
watches the rest together: one blocking query on ``/v1/health/state/any`` tells which of
them had a check change (those are re-read at once), and every registration change
(``/v1/catalog/services``' index moving) or ``overflow_refresh_s`` re-reads them all, a
few at a time. Raise Consul's limit and ``--consul-max-watches`` above the number of
services for the fastest updates.

Write side (meshd's REST API with ``--registry consul``): ``register``, ``report_health``
and ``deregister`` are :class:`registry.consul_writer.ConsulWriter`'s, which the sidecar's
``--registry consul`` registrar uses too (without this module: it loads no httpx/anyio).
The Meta format is in :mod:`registry.consul_meta`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from contextlib import aclosing
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from registry.base import (
    DEFAULT_TTL_S,
    CatalogViews,
    RegisterOutcome,
)
from registry.consul_http import (
    DEFAULT_WAIT,
    Backoff,
    ConsulClient,
    QueryResult,
    health_service_path,
    parse_list,
    parse_services,
)
from registry.consul_meta import instance_from_entry
from registry.consul_writer import ConsulWriter
from registry.errors import (
    ConsulError,
    ConsulPermissionDenied,
)
from registry.model import Instance, RegistryView, ServiceKey

__all__ = ["DEFAULT_MAX_WATCHES", "ConsulRegistry"]

log = logging.getLogger("registry.consul")

DEFAULT_MAX_WATCHES = 160
"""Per-service blocking queries at most: under Consul's default of 200 connections per
client, with room for meshd's other requests and other clients on the same address."""


class ConsulRegistry:
    """The Consul backend; see the module docstring. ``client`` sends the writes, the
    catalog-wide blocking queries and the overflow re-reads. ``watch_clients`` makes the
    clients that hold the per-service blocking queries, ``shard_size`` queries each
    (called with the pool size they need; they are closed when :meth:`run` ends): an
    httpx pool does work in proportion to its connections on every request, so a single
    pool of 1,000 long polls costs quadratic time (measured: 100 s to read 1,000
    services), while shards of 32 keep it flat. Without a factory every query shares
    ``client`` (fine for a few services). ``ignore``: Consul services never looked at
    (``consul`` itself)."""

    backend = "consul"

    def __init__(
        self,
        client: ConsulClient,
        *,
        watch_clients: Callable[[int], ConsulClient] | None = None,
        shard_size: int = 32,
        max_watches: int = DEFAULT_MAX_WATCHES,
        wait_s: float = DEFAULT_WAIT,
        deregister_after_s: float = 300.0,
        overflow_refresh_s: float = 30.0,
        refresh_concurrency: int = 8,
        ignore: Iterable[str] = ("consul",),
    ) -> None:
        self._client = client
        self._watch_client = client
        self._make_client = watch_clients
        self._shard_size = max(1, shard_size)
        self._shards: list[list[Any]] = []  # [client, watches using it]
        self._max_watches = max(0, max_watches)
        self._wait = wait_s
        self._overflow_refresh = overflow_refresh_s
        self._refresh_limit = anyio.CapacityLimiter(max(1, refresh_concurrency))
        self._ignore = frozenset(ignore)
        self._views = CatalogViews()
        self._writer = ConsulWriter(
            client, deregister_after_s=deregister_after_s, lookup=self._views.get
        )
        self._keys_of: dict[str, set[ServiceKey]] = {}
        self._ids_of: dict[str, set[str]] = {}
        self._watched: dict[str, anyio.CancelScope] = {}
        self._overflow: set[str] = set()
        self._overflow_wake = anyio.Event()
        self._overflow_warned = 0
        self._initial: set[str] = set()
        self._names_known = False
        self._ready = False
        self._running = False
        self._failing: set[str] = set()
        self._bad: dict[str, str] = {}
        self._tg: TaskGroup | None = None

    @property
    def address(self) -> str:
        return self._client.address

    # --- reads ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready

    def view(self) -> RegistryView:
        return self._views.view()

    def watch(self) -> AsyncGenerator[RegistryView, None]:
        return self._views.latest.watch()

    def get(self, instance_id: str) -> Instance | None:
        return self._views.get(instance_id)

    @property
    def watched(self) -> tuple[int, int]:
        """(services with a blocking query of their own, services watched together)."""
        return len(self._watched), len(self._overflow)

    async def wait_visible(
        self, instance_id: str, instance: Instance | None, *, timeout_s: float = 5.0
    ) -> bool:
        if not self._running:
            return False
        return await self._views.wait_for(instance_id, instance, timeout_s)

    # --- writes (agent API) --------------------------------------------------------------

    async def register(
        self, instance: Instance, *, ttl_s: float = DEFAULT_TTL_S, output: str = ""
    ) -> RegisterOutcome:
        return await self._writer.register(instance, ttl_s=ttl_s, output=output)

    async def report_health(self, instance_id: str, healthy: bool, output: str = "") -> None:
        await self._writer.report_health(instance_id, healthy, output)

    async def deregister(self, instance_id: str) -> bool:
        return await self._writer.deregister(instance_id)

    # --- the watch -----------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._running = True
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._overflow_loop)
                task_status.started()
                stream = self._watch_client.watch(
                    "/v1/catalog/services",
                    parse_services,
                    wait=self._wait,
                    on_error=lambda exc, delay: self._on_error("catalog", exc, delay),
                    on_recover=lambda: self._on_recover("catalog"),
                )
                async with aclosing(stream):
                    async for result in stream:
                        self._take_names(set(result.value) - self._ignore)
        finally:
            self._running = False
            self._tg = None
            with anyio.CancelScope(shield=True):
                for shard_client, _ in self._shards:
                    if shard_client is not self._watch_client:
                        await shard_client.aclose()
            self._shards.clear()

    def _take_names(self, names: set[str]) -> None:
        assert self._tg is not None
        current = set(self._watched) | self._overflow
        for name in current - names:
            scope = self._watched.pop(name, None)
            if scope is not None:
                scope.cancel()
            self._overflow.discard(name)
            self._initial.discard(name)
            self.apply_service(name, [])
        # Budget freed by services that left goes to services watched together.
        while self._overflow and len(self._watched) < self._max_watches:
            name = min(self._overflow)
            self._overflow.discard(name)
            scope = anyio.CancelScope()
            self._watched[name] = scope
            self._tg.start_soon(self._watch_service, name, scope)
        added = sorted(names - current)
        for name in added:
            self._initial.add(name)
            if len(self._watched) < self._max_watches:
                scope = anyio.CancelScope()
                self._watched[name] = scope
                self._tg.start_soon(self._watch_service, name, scope)
            else:
                self._overflow.add(name)
        if self._overflow:
            if len(self._overflow) > self._overflow_warned:
                self._overflow_warned = len(self._overflow)
                log.warning(
                    "%d Consul services have a blocking query each (--consul-max-watches); "
                    "%d more are watched together through /v1/health/state/any and re-read "
                    "on registration changes: slower to follow. Raise Consul's "
                    "limits.http_max_conns_per_client and --consul-max-watches above %d",
                    len(self._watched),
                    len(self._overflow),
                    len(names) + 40,
                )
            # Registrations changed somewhere: re-read the services watched together.
            self._overflow_wake.set()
        self._names_known = True
        self._views.publish()
        self._check_ready()

    def _take_shard(self) -> list[Any]:
        for shard in self._shards:
            if shard[1] < self._shard_size:
                shard[1] += 1
                return shard
        if self._make_client is None:
            shard = [self._watch_client, 1]
        else:
            shard = [self._make_client(self._shard_size + 2), 1]
        self._shards.append(shard)
        return shard

    async def _watch_service(self, name: str, scope: anyio.CancelScope) -> None:
        shard = self._take_shard()
        client: ConsulClient = shard[0]
        try:
            with scope:
                await self._follow_service(name, client)
        finally:
            shard[1] -= 1

    async def _follow_service(self, name: str, client: ConsulClient) -> None:
        stream = client.watch(
            health_service_path(name),
            parse_list,
            wait=self._wait,
            on_error=lambda exc, delay: self._on_error(name, exc, delay),
            on_recover=lambda: self._on_recover(name),
            backoff=Backoff(),
        )
        async with aclosing(stream):
            async for result in stream:
                self.apply_service(name, result.value)
                self._initial_done(name)

    def apply_service(self, name: str, entries: list[dict[str, Any]]) -> None:
        """Replace the instances of Consul service ``name`` with ``entries`` (the body of
        ``/v1/health/service/<name>``) and publish: the watch's step for one answer,
        public so tools and tests can drive the view without a Consul."""
        by_key: dict[ServiceKey, dict[str, Instance]] = {}
        notes: dict[str, str] = {}
        for entry in entries:
            try:
                parsed = instance_from_entry(entry)
            except ValueError as exc:
                self._warn_bad(entry, name, str(exc))
                continue
            if parsed is None:
                continue
            inst, output = parsed
            members = by_key.setdefault((inst.namespace, inst.service), {})
            other = members.get(inst.id)
            # The same id on two nodes (IDs are unique per agent only): prefer a healthy one.
            if other is not None and (other.healthy or not inst.healthy):
                continue
            members[inst.id] = inst
            notes[inst.id] = output
            self._bad.pop(inst.id, None)
        old_keys = self._keys_of.get(name, set())
        for key in old_keys | set(by_key):
            fresh = by_key.get(key) or {}
            if self._ready:
                self._log_changes(self._views.instances(key), fresh, notes)
            self._views.set_service(key, fresh.values())
        ids = set(notes)
        for gone in self._ids_of.get(name, set()) - ids:
            self._views.set_note(gone, "")
        self._views.set_notes(notes, sorted(ids))
        if by_key:
            self._keys_of[name] = set(by_key)
            self._ids_of[name] = ids
        else:
            self._keys_of.pop(name, None)
            self._ids_of.pop(name, None)
        self._views.publish()

    @staticmethod
    def _log_changes(
        old: tuple[Instance, ...], new: Mapping[str, Instance], notes: Mapping[str, str]
    ) -> None:
        """One line per instance lifecycle event seen in Consul (not during the first
        read of the catalog, which gets one summary line)."""
        before = {i.id: i for i in old}
        for iid, inst in new.items():
            prev = before.get(iid)
            note = f": {notes[iid]}" if notes.get(iid) else ""
            if prev is None:
                log.info(
                    "instance %s of %s.%s appeared in Consul at %s:%d, %s",
                    iid,
                    inst.service,
                    inst.namespace,
                    inst.address,
                    inst.port,
                    "healthy" if inst.healthy else "unhealthy",
                )
            elif prev.healthy != inst.healthy:
                state = "healthy again" if inst.healthy else "unhealthy"
                log.info("instance %s is %s in Consul%s", iid, state, note)
            elif prev != inst:
                log.info("instance %s changed its registration in Consul", iid)
        for iid in before.keys() - new.keys():
            log.info("instance %s left Consul's catalog", iid)

    def _warn_bad(self, entry: Mapping[str, Any], name: str, reason: str) -> None:
        svc = entry.get("Service")
        iid = str(svc.get("ID")) if isinstance(svc, Mapping) else "?"
        if self._bad.get(iid) != reason:
            self._bad[iid] = reason
            log.warning(
                "ignoring Consul service instance %s of %s: %s (fix its registration; the "
                "Meta format is in docs/registry.md)",
                iid,
                name,
                reason,
            )

    def _initial_done(self, name: str) -> None:
        if name in self._initial:
            self._initial.discard(name)
            self._check_ready()

    def _check_ready(self) -> None:
        if self._ready or not self._names_known or self._initial:
            return
        self._ready = True
        view = self._views.view()
        log.info(
            "catalog read from Consul at %s: %d Consul services watched (%d with a blocking "
            "query each), %d mesh services, %d mesh instances",
            self._watch_client.address,
            len(self._watched) + len(self._overflow),
            len(self._watched),
            len(view.services),
            sum(len(v) for v in view.services.values()),
        )
        self._views.touch()

    # --- services beyond the connection budget -------------------------------------------

    async def _overflow_loop(self) -> None:
        """Idle until some services exceed ``max_watches``; then follow check changes
        with one blocking query and re-read those services when needed."""
        while not self._overflow:
            await self._overflow_wake.wait()
            self._overflow_wake = anyio.Event()
            self._overflow_wake.set()  # the first sweep runs at once
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._follow_checks)
            while True:
                with anyio.move_on_after(self._overflow_refresh):
                    await self._overflow_wake.wait()
                self._overflow_wake = anyio.Event()
                await self._refresh(sorted(self._overflow))

    async def _follow_checks(self) -> None:
        stream = self._watch_client.watch(
            "/v1/health/state/any",
            parse_list,
            wait=self._wait,
            on_error=lambda exc, delay: self._on_error("checks", exc, delay),
            on_recover=lambda: self._on_recover("checks"),
        )
        async with aclosing(stream):
            await self._take_checks(stream)

    async def _take_checks(self, stream: AsyncIterator[QueryResult[list[dict[str, Any]]]]) -> None:
        signatures: dict[str, tuple[tuple[str, str, int], ...]] = {}
        async for result in stream:
            grouped: dict[str, list[tuple[str, str, int]]] = {}
            for check in result.value:
                grouped.setdefault(str(check.get("ServiceName") or ""), []).append(
                    (
                        str(check.get("CheckID", "")),
                        str(check.get("Status", "")),
                        int(check.get("ModifyIndex") or 0),
                    )
                )
            fresh = {k: tuple(sorted(v)) for k, v in grouped.items()}
            changed = {
                k for k in fresh.keys() | signatures.keys() if fresh.get(k) != signatures.get(k)
            }
            first = not signatures
            signatures = fresh
            if first:
                continue
            if "" in changed:  # a node check: every service on that node may change
                self._overflow_wake.set()
                continue
            due = sorted(changed & self._overflow)
            if due:
                await self._refresh(due)

    async def _refresh(self, names: list[str]) -> None:
        async def one(name: str) -> None:
            async with self._refresh_limit:
                try:
                    result = await self._client.health_service(name)
                except ConsulError as exc:
                    self._on_error(name, exc, self._overflow_refresh)
                    return
            self._on_recover(name)
            if name in self._overflow:
                self.apply_service(name, result.value)
                self._initial_done(name)

        async with anyio.create_task_group() as tg:
            for name in names:
                tg.start_soon(one, name)

    # --- one log line per outage, not one per query --------------------------------------

    def _on_error(self, what: str, exc: ConsulError, delay: float) -> None:
        if what in self._failing:
            return
        self._failing.add(what)
        if len(self._failing) == 1:
            hint = (
                "; check the ACL token (--consul-token): it needs service:read and node:read"
                if isinstance(exc, ConsulPermissionDenied)
                else ""
            )
            log.warning(
                "cannot watch the catalog in Consul (%s)%s; meshd keeps the endpoints it "
                "knows and retries with backoff (next in %.1f s)",
                exc,
                hint,
                delay,
            )

    def _on_recover(self, what: str) -> None:
        if what not in self._failing:
            return
        self._failing.discard(what)
        if not self._failing:
            log.info("watching the catalog in Consul at %s again", self._watch_client.address)
