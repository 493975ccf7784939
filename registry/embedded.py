"""The embedded registry (meshd's default): meshd keeps the catalog itself.

Sidecars register and heartbeat through meshd's API (``PUT /v1/instances/{id}`` with
``healthy`` and ``ttlSeconds``); each heartbeat is a :meth:`EmbeddedRegistry.register` of
the same description. An instance expires ``ttl_s`` after its last heartbeat: a sweep
runs every second (and at the moment the next instance is due) and drops it from the
view, so from every peer's endpoints.

Persistence, in meshd's store (records collection ``catalog``, one record per instance,
see :func:`catalog_record`):

- a registration that changes something (a new instance, other labels, ports, health) is
  written before ``register`` returns, so a restarted meshd finds it;
- a pure heartbeat (nothing changed) renews the expiry in memory only when the store is
  one replica's own (sqlite: no fsync per heartbeat); with a shared store (Consul KV,
  several replicas) it is written too, so every replica agrees on when the instance
  expires, but at most once per half TTL per instance: a write happens when the stored
  expiry is less than half a TTL away;
- on start the records are read back; each instance gets a fresh grace period of its TTL
  (its sidecar's next heartbeat renews it; if none comes, it expires then), so a restart
  never empties the catalog.

Replicas on one shared store see each other's writes through a *records feed*
(:class:`ConsulRecordsFeed`: a blocking query on the records' KV prefix, rate-limited to
one answer per ``min_interval_s``; :class:`PollingRecordsFeed` for any other store).
Times in records are wall-clock seconds: replicas need synchronised clocks (NTP).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any, Protocol

import anyio
from anyio.abc import TaskStatus

from registry.base import (
    DEFAULT_TTL_S,
    CatalogViews,
    KeyedLock,
    RegisterOutcome,
    check_ttl,
    clip_output,
)
from registry.consul_http import ConsulClient, KVPair
from registry.errors import ConsulError, InstanceNotRegistered
from registry.model import Instance, RegistryView, ServiceKey, instance_from_json, instance_to_json

__all__ = [
    "CATALOG_COLLECTION",
    "ConsulRecordsFeed",
    "EmbeddedRegistry",
    "FeedRecord",
    "PollingRecordsFeed",
    "RecordStore",
    "RecordsFeed",
    "StoredEntry",
    "catalog_record",
    "parse_record",
]

log = logging.getLogger("registry.embedded")

CATALOG_COLLECTION = "catalog"

TOMBSTONE_S = 60.0
"""How long a deregistered or expired id ignores records written before it left: a
replica's feed may still carry the old record for a moment."""


class RecordStore(Protocol):
    """What the embedded registry needs of meshd's store (``meshd.store.base.Store``
    has it). Errors pass through unchanged (meshd's ``StoreUnavailable``)."""

    backend: str

    async def record_put(
        self, collection: str, record_id: str, data: Mapping[str, Any], *, create_only: bool = False
    ) -> None: ...

    async def record_delete(self, collection: str, record_id: str) -> bool: ...

    async def record_list(self, collection: str) -> list[tuple[str, dict[str, Any]]]: ...


FeedRecord = tuple[str, int | None, Mapping[str, Any]]
"""``(record id, version token, data)``: a token that did not change means the data did
not either (Consul's ModifyIndex), so it need not be parsed again; ``None``: unknown."""

RecordsFeed = Callable[[], AsyncIterator[list[FeedRecord]]]
"""Every catalog record now, then again after each change (made by any replica)."""


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """A catalog record, parsed."""

    instance: Instance
    ttl_s: float
    expires_at: float
    updated_at: float
    output: str = ""


def catalog_record(
    instance: Instance, ttl_s: float, expires_at: float, updated_at: float, output: str = ""
) -> dict[str, Any]:
    """The record of one instance: ``{"instance": {...the REST form...}, "ttlSeconds",
    "expiresAt", "updatedAt", "output"}`` (times: Unix seconds; ``updatedAt`` is when the
    registration last changed, ``expiresAt`` when it expires without a heartbeat)."""
    return {
        "instance": instance_to_json(instance),
        "ttlSeconds": ttl_s,
        "expiresAt": round(expires_at, 3),
        "updatedAt": round(updated_at, 6),
        "output": output,
    }


def parse_record(record_id: str, data: Mapping[str, Any]) -> StoredEntry:
    """Raises ``ValueError`` naming what is wrong."""
    raw = data.get("instance")
    if not isinstance(raw, Mapping):
        raise ValueError("no 'instance' object")
    instance = instance_from_json(raw)
    if instance.id != record_id:
        raise ValueError(f"the record of {record_id!r} describes instance {instance.id!r}")
    ttl = data.get("ttlSeconds", DEFAULT_TTL_S)
    expires = data.get("expiresAt", 0.0)
    updated = data.get("updatedAt", 0.0)
    for name, value in (("ttlSeconds", ttl), ("expiresAt", expires), ("updatedAt", updated)):
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
        ):
            raise ValueError(f"{name} must be a number, not {value!r}")
    output = data.get("output", "")
    return StoredEntry(
        instance,
        float(ttl),
        float(expires),
        float(updated),
        output if isinstance(output, str) else "",
    )


@dataclass(slots=True)
class _Entry:
    instance: Instance
    ttl_s: float
    expires: float
    """Monotonic time at which it expires without a heartbeat."""
    stored_expires_at: float
    """The ``expiresAt`` (wall clock) of its record in the store."""
    updated_at: float
    """Wall-clock time of its last registration change (the record's ``updatedAt``)."""
    seen: float
    """Monotonic time it was last written by us or seen in the records feed."""


class EmbeddedRegistry:
    """The embedded backend; see the module docstring. ``store`` None keeps the catalog in
    memory only (tests, tools). ``shared``: the store is shared by several replicas
    (write heartbeats at half TTL; follow ``feed``). ``clock`` is monotonic seconds and
    ``wall`` Unix seconds (both replaceable in tests)."""

    backend = "embedded"

    def __init__(
        self,
        store: RecordStore | None = None,
        *,
        shared: bool = False,
        feed: RecordsFeed | None = None,
        sweep_interval_s: float = 1.0,
        stale_grace_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.shared = shared
        self._feed = feed
        self._sweep_interval = sweep_interval_s
        self._stale_grace = stale_grace_s
        self._clock = clock
        self._wall = wall
        self._entries: dict[str, _Entry] = {}
        self._members: dict[ServiceKey, dict[str, Instance]] = {}
        self._views = CatalogViews()
        self._locks = KeyedLock()
        self._tombstones: dict[str, float] = {}
        self._pending_deletes: set[str] = set()
        self._parsed: dict[str, tuple[int, StoredEntry]] = {}
        self._bad_records: set[str] = set()
        self._feed_ids: set[str] | None = None
        self._ready = store is None

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

    def expires_in(self, instance_id: str) -> float | None:
        """Seconds until the instance expires without a heartbeat (None: not held)."""
        entry = self._entries.get(instance_id)
        return None if entry is None else entry.expires - self._clock()

    async def wait_visible(
        self, instance_id: str, instance: Instance | None, *, timeout_s: float = 5.0
    ) -> bool:
        return await self._views.wait_for(instance_id, instance, timeout_s)

    # --- writes --------------------------------------------------------------------------

    async def register(
        self, instance: Instance, *, ttl_s: float = DEFAULT_TTL_S, output: str = ""
    ) -> RegisterOutcome:
        ttl = check_ttl(ttl_s)
        output = clip_output(output)
        iid = instance.id
        async with self._locks.hold(iid):
            entry = self._entries.get(iid)
            now, wall = self._clock(), self._wall()
            if entry is None or entry.instance != instance or entry.ttl_s != ttl:
                if self._store is not None:
                    record = catalog_record(instance, ttl, wall + ttl, wall, output)
                    await self._store.record_put(CATALOG_COLLECTION, iid, record)
                self._tombstones.pop(iid, None)
                self._pending_deletes.discard(iid)
                old = entry.instance if entry is not None else None
                self._entries[iid] = _Entry(instance, ttl, now + ttl, wall + ttl, wall, now)
                self._place(old, instance)
                self._views.set_note(iid, output)
                self._views.publish()
                _log_change(old, instance, output, ttl)
                return "created" if old is None else "updated"
            entry.expires = now + ttl
            if (
                self.shared
                and self._store is not None
                and entry.stored_expires_at - wall <= ttl / 2
            ):
                record = catalog_record(instance, ttl, wall + ttl, entry.updated_at, output)
                await self._store.record_put(CATALOG_COLLECTION, iid, record)
                entry.stored_expires_at = wall + ttl
                entry.seen = now
            if self._views.set_note(iid, output):
                self._views.publish()
            return "refreshed"

    async def report_health(self, instance_id: str, healthy: bool, output: str = "") -> None:
        entry = self._entries.get(instance_id)
        if entry is None:
            raise InstanceNotRegistered(
                f"instance {instance_id!r} is not registered (it expired after missing its "
                "heartbeats, or was deregistered): register it again with its whole "
                "description (PUT /v1/instances/{id})",
                instance_id=instance_id,
            )
        await self.register(
            replace(entry.instance, healthy=healthy), ttl_s=entry.ttl_s, output=output
        )

    async def deregister(self, instance_id: str) -> bool:
        async with self._locks.hold(instance_id):
            deleted = False
            if self._store is not None:
                deleted = await self._store.record_delete(CATALOG_COLLECTION, instance_id)
            entry = self._forget(instance_id)
            self._views.publish()
        if entry is not None:
            log.info("deregistered instance %s", instance_id)
        return entry is not None or deleted

    # --- background: load, sweep, follow other replicas ----------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if self._store is not None and not self._ready:
            await self._load()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._sweep_loop)
            if self._feed is not None:
                tg.start_soon(self._follow, self._feed)

    async def _load(self) -> None:
        assert self._store is not None
        records = await self._store.record_list(CATALOG_COLLECTION)
        now = self._clock()
        loaded = 0
        for record_id, data in records:
            if record_id in self._entries:  # registered again while we were reading
                continue
            stored = self._parse(record_id, None, data)
            if stored is None:
                continue
            # A fresh grace period: the sidecar's next heartbeat renews it.
            self._entries[record_id] = _Entry(
                stored.instance,
                stored.ttl_s,
                now + stored.ttl_s,
                stored.expires_at,
                stored.updated_at,
                now,
            )
            self._place(None, stored.instance)
            self._views.set_note(record_id, stored.output)
            loaded += 1
        self._ready = True
        if not self._views.publish():
            self._views.touch()
        log.info(
            "catalog loaded from the %s store: %d instances, each with a fresh TTL grace period",
            self._store.backend,
            loaded,
        )

    async def _sweep_loop(self) -> None:
        """Sweep every ``sweep_interval_s``, or sooner when an instance is due: an
        instance leaves the view at its expiry, not up to a sweep interval later."""
        while True:
            now = self._clock()
            due = min((e.expires for e in self._entries.values()), default=math.inf)
            await anyio.sleep(max(0.0, min(self._sweep_interval, due - now)))
            await self.sweep()

    async def sweep(self) -> list[str]:
        """Drop every instance whose TTL passed (and, on a shared store, every one that
        left the store more than ``stale_grace_s`` ago); delete their records. Returns the
        ids that expired."""
        now, wall = self._clock(), self._wall()
        expired = [iid for iid, e in self._entries.items() if e.expires <= now]
        for iid in expired:
            entry = self._forget(iid)
            self._pending_deletes.add(iid)
            if entry is not None:
                log.info(
                    "instance %s expired: no heartbeat for %.0f s (its TTL); removed from "
                    "the catalog",
                    iid,
                    entry.ttl_s,
                )
        if self._feed_ids is not None:
            self._drop_vanished(self._feed_ids, now)
        self._views.publish()
        for iid, at in list(self._tombstones.items()):
            if wall - at > TOMBSTONE_S:
                del self._tombstones[iid]
        if self._store is not None:
            for iid in list(self._pending_deletes):
                async with self._locks.hold(iid):
                    if iid in self._entries:  # registered again meanwhile: keep its record
                        self._pending_deletes.discard(iid)
                        continue
                    try:
                        await self._store.record_delete(CATALOG_COLLECTION, iid)
                    except Exception as exc:  # retried at the next sweep
                        log.warning(
                            "could not delete the expired instance %s from the %s store "
                            "(retrying in %.0f s): %s",
                            iid,
                            self._store.backend,
                            self._sweep_interval,
                            exc,
                        )
                        break
                    self._pending_deletes.discard(iid)
        return expired

    async def _follow(self, feed: RecordsFeed) -> None:
        stream = feed()
        try:
            async for records in stream:
                self.reconcile(records)
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()

    def reconcile(self, records: Sequence[FeedRecord]) -> None:
        """Take in the catalog records as the shared store holds them now: instances
        other replicas registered, renewed, changed or removed."""
        now, wall = self._clock(), self._wall()
        ids: set[str] = set()
        for record_id, token, data in records:
            stored = self._parse(record_id, token, data)
            if stored is None:
                continue
            ids.add(record_id)
            left = self._tombstones.get(record_id)
            if left is not None and stored.updated_at <= left:
                continue
            expires = now + (stored.expires_at - wall)
            entry = self._entries.get(record_id)
            if entry is None:
                if stored.expires_at <= wall:
                    self._pending_deletes.add(record_id)
                    continue
                self._entries[record_id] = _Entry(
                    stored.instance,
                    stored.ttl_s,
                    expires,
                    stored.expires_at,
                    stored.updated_at,
                    now,
                )
                self._place(None, stored.instance)
                self._views.set_note(record_id, stored.output)
                _log_change(None, stored.instance, stored.output, stored.ttl_s, "another replica")
                continue
            entry.seen = now
            if stored.updated_at > entry.updated_at:
                old = entry.instance
                entry.instance, entry.ttl_s = stored.instance, stored.ttl_s
                entry.updated_at = stored.updated_at
                if old != stored.instance:
                    self._place(old, stored.instance)
                    self._views.set_note(record_id, stored.output)
                    _log_change(
                        old, stored.instance, stored.output, stored.ttl_s, "another replica"
                    )
            entry.stored_expires_at = max(entry.stored_expires_at, stored.expires_at)
            entry.expires = max(entry.expires, expires)
        self._feed_ids = ids
        self._drop_vanished(ids, now)
        for gone in [iid for iid in self._parsed if iid not in ids]:
            del self._parsed[gone]
        self._views.publish()

    def _drop_vanished(self, ids: set[str], now: float) -> None:
        """Entries whose record is gone from the shared store (deregistered or expired by
        another replica), unless we wrote or saw them very recently (the feed may lag
        behind our own write)."""
        for iid in [i for i, e in self._entries.items() if i not in ids]:
            if now - self._entries[iid].seen > self._stale_grace:
                self._forget(iid)
                log.info("instance %s left the catalog (removed by another replica)", iid)

    # --- helpers -------------------------------------------------------------------------

    def _parse(
        self, record_id: str, token: int | None, data: Mapping[str, Any]
    ) -> StoredEntry | None:
        if token is not None:
            cached = self._parsed.get(record_id)
            if cached is not None and cached[0] == token:
                return cached[1]
        try:
            stored = parse_record(record_id, data)
        except ValueError as exc:
            if record_id not in self._bad_records:
                self._bad_records.add(record_id)
                log.warning(
                    "ignoring the catalog record %r: %s (delete it, or register the "
                    "instance again)",
                    record_id,
                    exc,
                )
            return None
        self._bad_records.discard(record_id)
        if token is not None:
            self._parsed[record_id] = (token, stored)
        return stored

    def _place(self, old: Instance | None, new: Instance | None) -> None:
        """Move an instance between (or into, or out of) its services' member sets."""
        keys: set[ServiceKey] = set()
        if old is not None:
            key = (old.namespace, old.service)
            members = self._members.get(key)
            if members is not None:
                members.pop(old.id, None)
                keys.add(key)
        if new is not None:
            key = (new.namespace, new.service)
            self._members.setdefault(key, {})[new.id] = new
            keys.add(key)
        for key in keys:
            members = self._members.get(key) or {}
            self._views.set_service(key, members.values())
            if not members:
                self._members.pop(key, None)

    def _forget(self, instance_id: str) -> _Entry | None:
        entry = self._entries.pop(instance_id, None)
        if entry is not None:
            self._place(entry.instance, None)
            self._views.set_note(instance_id, "")
            self._tombstones[instance_id] = self._wall()
        return entry


def _log_change(
    old: Instance | None, new: Instance, output: str, ttl_s: float, via: str = ""
) -> None:
    origin = f" (by {via})" if via else ""
    if old is None:
        log.info(
            "registered instance %s of %s.%s at %s:%d, %s, TTL %.0f s%s",
            new.id,
            new.service,
            new.namespace,
            new.address,
            new.port,
            "healthy" if new.healthy else "unhealthy",
            ttl_s,
            origin,
        )
    elif old.healthy != new.healthy and replace(old, healthy=new.healthy) == new:
        log.info(
            "instance %s is %s%s%s",
            new.id,
            "healthy again" if new.healthy else "unhealthy",
            f": {output}" if output else "",
            origin,
        )
    else:
        log.info("instance %s changed its registration%s", new.id, origin)


# --- records feeds ------------------------------------------------------------------------


class ConsulRecordsFeed:
    """The catalog records of a Consul KV store, followed with a blocking query on
    ``<store prefix>records/catalog/`` (the layout of ``meshd.store.consul``): every
    record at once, then again after each change, at most one answer per
    ``min_interval_s`` (a replica's heartbeat writes must not make every replica re-read
    the whole catalog many times a second). ``client`` is a client of its own."""

    def __init__(
        self, client: ConsulClient, store_prefix: str, *, min_interval_s: float = 0.25
    ) -> None:
        self._client = client
        self.prefix = store_prefix.strip("/") + f"/records/{CATALOG_COLLECTION}/"
        self._min_interval = min_interval_s
        self._failing = False
        self._decoded: dict[str, tuple[int, dict[str, Any]]] = {}

    def _on_error(self, exc: ConsulError, delay: float) -> None:
        if not self._failing:
            self._failing = True
            log.warning(
                "cannot follow other replicas' registrations in Consul (%s); retrying, "
                "next in %.1f s",
                exc,
                delay,
            )

    def _on_recover(self) -> None:
        self._failing = False
        log.info("following other replicas' registrations in Consul again")

    async def __call__(self) -> AsyncIterator[list[FeedRecord]]:
        stream = self._client.kv_watch(
            self.prefix, on_error=self._on_error, on_recover=self._on_recover
        )
        async with aclosing(stream):
            async for result in stream:
                started = time.monotonic()
                yield self._records(result.value)
                left = self._min_interval - (time.monotonic() - started)
                if left > 0:
                    await anyio.sleep(left)

    def _records(self, pairs: Sequence[KVPair]) -> list[FeedRecord]:
        """Decode only what changed since the last answer (by ModifyIndex): with thousands
        of instances most records are the same from one answer to the next."""
        out: list[FeedRecord] = []
        decoded: dict[str, tuple[int, dict[str, Any]]] = {}
        for pair in pairs:
            record_id = pair.key[len(self.prefix) :]
            known = self._decoded.get(record_id)
            if known is not None and known[0] == pair.modify_index:
                data = known[1]
            else:
                try:
                    parsed = json.loads(pair.value or b"{}")
                except ValueError:
                    parsed = {}
                data = parsed if isinstance(parsed, dict) else {}
            decoded[record_id] = (pair.modify_index, data)
            out.append((record_id, pair.modify_index, data))
        self._decoded = decoded
        return out


class PollingRecordsFeed:
    """The catalog records of any store, read every ``interval_s``."""

    def __init__(self, store: RecordStore, *, interval_s: float = 1.0) -> None:
        self._store = store
        self._interval = interval_s

    async def __call__(self) -> AsyncIterator[list[FeedRecord]]:
        while True:
            try:
                records = await self._store.record_list(CATALOG_COLLECTION)
            except Exception as exc:  # the store's own typed errors; retried
                log.warning("cannot read the catalog records (retrying): %s", exc)
            else:
                yield [(rid, None, data) for rid, data in records]
            await anyio.sleep(self._interval)
