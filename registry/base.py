"""The registry contract: one async interface on anyio, so the same code runs in meshd
(asyncio) and in the sidecar (Trio). Two backends implement it:

- :class:`registry.embedded.EmbeddedRegistry` (default): meshd keeps the catalog itself,
  in memory and in its store; sidecars register and heartbeat through meshd's API
  (``PUT /v1/instances/{id}``); an instance that misses its heartbeats expires.
- :class:`registry.consul.ConsulRegistry`: Consul's catalog is the truth. meshd watches
  it with blocking queries; the write side (agent service registration with a TTL
  check, check pass/fail, deregistration) is what a sidecar registering with its local
  Consul agent uses, and what meshd's API uses with ``--registry consul``.

The lifecycle of an instance, as a sidecar drives it::

    await registry.register(instance, ttl_s=2 * interval)       # once, at start
    while running:                                               # every check interval
        await registry.report_health(instance.id, healthy, output)
    await registry.deregister(instance.id)                       # on an orderly stop

``register`` is idempotent: registering the same description again only refreshes the
instance's TTL (that is how the embedded heartbeat over meshd's API works: the sidecar
re-sends its whole registration with ``healthy`` and ``ttlSeconds``). An instance whose
TTL passes without a ``register`` or ``report_health`` leaves the endpoint sets (the
embedded registry drops it; Consul marks its TTL check critical, then deregisters it after
``DeregisterCriticalServiceAfter``).

Readers (meshd's control loop) use :meth:`Registry.watch`: whole consistent views
(:class:`registry.model.RegistryView`), newest first; a slow consumer skips straight to the
newest. :meth:`Registry.run` is the background work a reader needs (the embedded expiry
sweep and store reload; Consul's catalog watch); a writer-only user (a sidecar) never runs
it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

import anyio
from anyio.abc import TaskStatus

from registry.latest import Latest
from registry.limits import (
    DEFAULT_TTL_S,
    MAX_OUTPUT,
    MAX_TTL_S,
    MIN_TTL_S,
    check_ttl,
    clip_output,
)
from registry.model import Instance, RegisterOutcome, RegistryView, ServiceKey

__all__ = [
    "DEFAULT_TTL_S",
    "MAX_OUTPUT",
    "MAX_TTL_S",
    "MIN_TTL_S",
    "CatalogViews",
    "KeyedLock",
    "RegisterOutcome",
    "Registry",
    "check_ttl",
    "clip_output",
]


class Registry(Protocol):
    """Service discovery, one backend. Every method may raise the backend's typed errors
    (``registry.errors``; for Consul ``ConsulUnavailable`` and friends)."""

    backend: str
    """``embedded`` or ``consul``."""

    async def register(
        self, instance: Instance, *, ttl_s: float = DEFAULT_TTL_S, output: str = ""
    ) -> RegisterOutcome:
        """Add or replace ``instance`` (its ``healthy`` field is its health now, ``output``
        the check's output); it stays for ``ttl_s`` seconds unless renewed by another
        ``register`` or a ``report_health``. Registering the same instance again renews
        the TTL. Raises ``InvalidInstance`` when the backend cannot represent it."""
        ...

    async def deregister(self, instance_id: str) -> bool:
        """Remove the instance; False when it was not registered."""
        ...

    async def report_health(self, instance_id: str, healthy: bool, output: str = "") -> None:
        """The app's latest health-check result; renews the TTL. Raises
        ``InstanceNotRegistered`` when the registry does not hold the instance (it
        expired, or was never registered): register it again."""
        ...

    def watch(self) -> AsyncGenerator[RegistryView, None]:
        """The current view at once, then each newer one (intermediate views may be
        skipped). Needs :meth:`run` to be running for changes made elsewhere. Close it
        (``contextlib.aclosing``) when done early: Trio insists."""
        ...

    def view(self) -> RegistryView:
        """The newest view."""
        ...

    def get(self, instance_id: str) -> Instance | None:
        """The instance with that id in the newest view."""
        ...

    @property
    def ready(self) -> bool:
        """Whether the view holds the whole catalog (the store was read, Consul answered):
        before that, compiling from it would push incomplete endpoint sets."""
        ...

    async def wait_visible(
        self, instance_id: str, instance: Instance | None, *, timeout_s: float = 5.0
    ) -> bool:
        """Wait until the view shows ``instance`` under ``instance_id`` (``None``: shows
        no such instance); False on timeout. For read-your-writes over the REST API: the
        embedded view changes at once, Consul's once its watch sees the write."""
        ...

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The background work of a reader; signals ``started`` once it runs (not once
        :attr:`ready`), and runs until cancelled."""
        ...


class KeyedLock:
    """One lock per key, created on first use and forgotten when nobody holds or waits
    for it: writes for one instance are ordered, writes for different ones run
    concurrently."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[anyio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (anyio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class CatalogViews:
    """The catalog as per-service tuples, published as :class:`RegistryView` objects that
    share what did not change.

    :meth:`set_service` replaces one service's instances: equal instances keep their old
    objects and an equal set keeps its old tuple, so a view differs from the previous one
    only in the services that really changed (and the compiler rebuilds only those).
    :meth:`publish` hands a new view to watchers; until then changes accumulate.
    """

    def __init__(self) -> None:
        self._tuples: dict[ServiceKey, tuple[Instance, ...]] = {}
        self._ids: dict[str, Instance] = {}
        self._notes: dict[str, str] = {}
        self._services_dirty = False
        self._notes_dirty = False
        self._keys_changed = False
        self.latest: Latest[RegistryView] = Latest(RegistryView())

    # --- reads -------------------------------------------------------------------------

    def view(self) -> RegistryView:
        return self.latest.value

    def get(self, instance_id: str) -> Instance | None:
        """The instance as of the last change (callers publish right after changes)."""
        return self._ids.get(instance_id)

    def instances(self, key: ServiceKey) -> tuple[Instance, ...]:
        return self._tuples.get(key, ())

    def keys(self) -> Iterator[ServiceKey]:
        return iter(self._tuples)

    def note(self, instance_id: str) -> str:
        return self._notes.get(instance_id, "")

    def __len__(self) -> int:
        return sum(len(t) for t in self._tuples.values())

    # --- writes ------------------------------------------------------------------------

    def set_service(self, key: ServiceKey, instances: Iterable[Instance]) -> bool:
        """Replace the instances of ``key`` (none: the service leaves); True if changed."""
        old = self._tuples.get(key, ())
        old_by_id = {i.id: i for i in old}
        fresh: list[Instance] = []
        for inst in sorted(instances, key=lambda i: i.id):
            prev = old_by_id.get(inst.id)
            fresh.append(prev if prev is not None and prev == inst else inst)
        new = tuple(fresh)
        if new == old:
            return False
        for inst in old:
            if self._ids.get(inst.id) is inst:
                del self._ids[inst.id]
        for inst in new:
            self._ids[inst.id] = inst
        if new:
            if key not in self._tuples:
                self._keys_changed = True
            self._tuples[key] = new
        else:
            del self._tuples[key]
            self._keys_changed = True
        self._services_dirty = True
        return True

    def set_note(self, instance_id: str, output: str) -> bool:
        output = clip_output(output)
        if self._notes.get(instance_id, "") == output:
            return False
        if output:
            self._notes[instance_id] = output
        else:
            del self._notes[instance_id]
        self._notes_dirty = True
        return True

    def set_notes(self, notes: Mapping[str, str], ids: Sequence[str]) -> bool:
        """Set the notes of ``ids`` from ``notes`` (missing: no note)."""
        changed = False
        for iid in ids:
            changed = self.set_note(iid, notes.get(iid, "")) or changed
        return changed

    def publish(self) -> bool:
        """Hand a new view to watchers if anything changed since the last one."""
        if not (self._services_dirty or self._notes_dirty):
            return False
        last = self.latest.value
        services: Mapping[ServiceKey, tuple[Instance, ...]] = last.services
        if self._services_dirty:
            if self._keys_changed:
                self._tuples = dict(sorted(self._tuples.items()))
            services = dict(self._tuples)
        notes = dict(self._notes) if self._notes_dirty else last.notes
        self._services_dirty = self._notes_dirty = self._keys_changed = False
        self.latest.set(RegistryView(services, notes))
        return True

    def touch(self) -> None:
        """Publish the current view again (same content), e.g. to wake watchers when the
        registry becomes ready."""
        last = self.latest.value
        self.latest.set(RegistryView(last.services, last.notes))

    async def wait_for(self, instance_id: str, instance: Instance | None, timeout_s: float) -> bool:
        """Until the published view shows ``instance`` (``None``: nothing) under
        ``instance_id``; False on timeout."""
        with anyio.move_on_after(timeout_s):
            version = self.latest.version
            while True:
                current = self._ids.get(instance_id)
                if current == instance:
                    return True
                version, _ = await self.latest.wait_newer(version)
        return False
