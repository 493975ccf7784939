"""The embedded registry's own rules, on a fake clock and an in-memory record store:
expiry, persistence (what is written when), reload with a grace period, replicas sharing
one store through a records feed."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest

from registry.embedded import (
    CATALOG_COLLECTION,
    EmbeddedRegistry,
    FeedRecord,
    catalog_record,
    parse_record,
)
from registry.errors import InstanceNotRegistered
from registry.model import Instance, sorted_labels

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    """Monotonic and wall time moving together, by hand."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall_offset = 1_700_000_000.0 - 1000.0

    def __call__(self) -> float:
        return self.mono

    def wall(self) -> float:
        return self.mono + self.wall_offset

    def advance(self, seconds: float) -> None:
        self.mono += seconds


class MemoryStore:
    """The record part of meshd's store, in memory; counts writes."""

    def __init__(self, backend: str = "sqlite") -> None:
        self.backend = backend
        self.records: dict[str, dict[str, dict[str, Any]]] = {}
        self.puts = 0
        self.deletes = 0
        self.modify = 0
        self.index: dict[str, int] = {}

    async def record_put(
        self, collection: str, record_id: str, data: Mapping[str, Any], *, create_only: bool = False
    ) -> None:
        self.puts += 1
        self.modify += 1
        self.records.setdefault(collection, {})[record_id] = copy.deepcopy(dict(data))
        self.index[record_id] = self.modify

    async def record_delete(self, collection: str, record_id: str) -> bool:
        self.deletes += 1
        return self.records.get(collection, {}).pop(record_id, None) is not None

    async def record_list(self, collection: str) -> list[tuple[str, dict[str, Any]]]:
        return [(k, copy.deepcopy(v)) for k, v in sorted(self.records.get(collection, {}).items())]

    def feed(self) -> list[FeedRecord]:
        """What a records feed would deliver now."""
        return [
            (k, self.index[k], copy.deepcopy(v))
            for k, v in sorted(self.records.get(CATALOG_COLLECTION, {}).items())
        ]


def inst(n: int, service: str = "reviews", **kw: Any) -> Instance:
    fields: dict[str, Any] = {
        "id": f"{service}-{n}.default",
        "service": service,
        "namespace": "default",
        "address": f"198.18.0.{n}",
        "port": 15006,
        "app_port": 9080,
        "labels": sorted_labels({"version": f"v{n}"}),
    }
    fields.update(kw)
    return Instance(**fields)


def registry(store: MemoryStore | None, clock: Clock, **kw: Any) -> EmbeddedRegistry:
    reg = EmbeddedRegistry(store, clock=clock, wall=clock.wall, **kw)
    return reg


async def loaded(store: MemoryStore, clock: Clock, **kw: Any) -> EmbeddedRegistry:
    reg = registry(store, clock, **kw)
    await reg._load()  # what run() does first
    return reg


async def test_expires_ttl_after_the_last_heartbeat() -> None:
    clock = Clock()
    reg = registry(None, clock)
    a = inst(1)
    assert await reg.register(a, ttl_s=10) == "created"
    clock.advance(8)
    assert await reg.register(a, ttl_s=10) == "refreshed"
    clock.advance(9.9)
    assert await reg.sweep() == []
    assert reg.get(a.id) == a
    clock.advance(0.2)
    assert await reg.sweep() == [a.id]
    assert reg.get(a.id) is None
    assert reg.view().services == {}
    with pytest.raises(InstanceNotRegistered):
        await reg.report_health(a.id, True)
    # Its sidecar's next heartbeat registers it again.
    assert await reg.register(a, ttl_s=10) == "created"


async def test_report_health_renews_and_changes_health() -> None:
    clock = Clock()
    reg = registry(None, clock)
    a = inst(1)
    await reg.register(a, ttl_s=5)
    clock.advance(4)
    await reg.report_health(a.id, False, "connect refused")
    assert reg.get(a.id) == replace(a, healthy=False)
    assert reg.view().notes == {a.id: "connect refused"}
    clock.advance(4)
    await reg.sweep()
    assert reg.get(a.id) is not None, "a health report is a heartbeat too"
    expires = reg.expires_in(a.id)
    assert expires is not None
    assert expires == pytest.approx(1.0)


async def test_what_is_written_to_a_single_replica_store() -> None:
    """sqlite: registrations and changes are written; pure heartbeats are not."""
    clock, store = Clock(), MemoryStore("sqlite")
    reg = await loaded(store, clock)
    a = inst(1)
    await reg.register(a, ttl_s=10)
    assert store.puts == 1
    record = store.records[CATALOG_COLLECTION][a.id]
    assert parse_record(a.id, record).instance == a
    for _ in range(20):
        clock.advance(3)
        await reg.register(a, ttl_s=10)
    assert store.puts == 1, "heartbeats that change nothing stay in memory"
    await reg.register(replace(a, labels=sorted_labels({"version": "v9"})), ttl_s=10)
    await reg.report_health(a.id, False, "503")
    await reg.register(replace(a, labels=sorted_labels({"version": "v9"})), ttl_s=30)
    assert store.puts == 4, "a new label, a health change, a new TTL: each written"
    assert await reg.deregister(a.id)
    assert a.id not in store.records[CATALOG_COLLECTION]


async def test_a_shared_store_gets_heartbeats_at_most_once_per_half_ttl() -> None:
    clock, store = Clock(), MemoryStore("consul")
    reg = await loaded(store, clock, shared=True)
    a = inst(1)
    await reg.register(a, ttl_s=60)
    assert store.puts == 1
    writes_at = []
    for second in range(1, 181):
        clock.advance(1)
        before = store.puts
        await reg.register(a, ttl_s=60)  # a heartbeat every second
        if store.puts != before:
            writes_at.append(second)
    assert writes_at == [30, 60, 90, 120, 150, 180]
    stored = parse_record(a.id, store.records[CATALOG_COLLECTION][a.id])
    assert stored.expires_at == pytest.approx(clock.wall() + 60, abs=0.01)


async def test_reload_gives_a_fresh_grace_period_and_expired_records_are_deleted() -> None:
    clock, store = Clock(), MemoryStore()
    first = await loaded(store, clock)
    a, b = inst(1), inst(2, healthy=False)
    await first.register(a, ttl_s=10, output="ok")
    await first.register(b, ttl_s=30)
    # meshd is down for longer than a's TTL; its records say it expired long ago.
    clock.advance(100)
    second = await loaded(store, clock)
    assert second.ready
    assert second.view().instances("default", "reviews") == (a, b)
    assert second.view().notes == {a.id: "ok"}
    clock.advance(9)
    await second.sweep()
    assert second.get(a.id) == a, "a fresh grace period of its TTL after the restart"
    clock.advance(2)
    assert await second.sweep() == [a.id]
    assert a.id not in store.records[CATALOG_COLLECTION], "the sweep deletes its record"
    assert b.id in store.records[CATALOG_COLLECTION]


async def test_views_share_what_did_not_change() -> None:
    reg = registry(None, Clock())
    for n in range(3):
        await reg.register(inst(n, "reviews"))
        await reg.register(inst(n, "ratings"))
    before = reg.view()
    await reg.register(inst(1, "reviews", healthy=False))
    after = reg.view()
    assert after.services[("default", "ratings")] is before.services[("default", "ratings")]
    old, new = before.services[("default", "reviews")], after.services[("default", "reviews")]
    assert new is not old
    assert new[0] is old[0], "unchanged instances stay the very same objects"
    assert new[2] is old[2]
    # Output only: the services mapping itself is the same object (no recompile).
    await reg.register(inst(1, "reviews", healthy=False), output="still 503")
    assert reg.view().services is after.services
    assert reg.view().notes[inst(1, "reviews").id] == "still 503"


async def test_an_instance_moving_to_another_service_leaves_the_old_one() -> None:
    reg = registry(None, Clock())
    a = inst(1)
    await reg.register(a)
    await reg.register(replace(a, service="details"))
    assert reg.view().instances("default", "reviews") == ()
    assert reg.view().instances("default", "details") == (replace(a, service="details"),)
    assert ("default", "reviews") not in reg.view().services


async def test_replicas_on_one_store_follow_each_other() -> None:
    """Two replicas, one shared store; each follows the records through a feed."""
    clock, store = Clock(), MemoryStore("consul")
    r1 = await loaded(store, clock, shared=True, stale_grace_s=5)
    r2 = await loaded(store, clock, shared=True, stale_grace_s=5)
    a = inst(1)
    await r1.register(a, ttl_s=30)
    r2.reconcile(store.feed())
    assert r2.get(a.id) == a
    # A change made on r2 reaches r1.
    clock.advance(1)
    await r2.report_health(a.id, False, "down")
    r1.reconcile(store.feed())
    assert r1.get(a.id) == replace(a, healthy=False)
    # Heartbeats land on r1 only; r2 learns the renewed expiry from the store.
    for _ in range(10):
        clock.advance(10)
        await r1.register(replace(a, healthy=False), ttl_s=30)
        r2.reconcile(store.feed())
        await r1.sweep()
        await r2.sweep()
    assert r2.get(a.id) is not None, "r2 must not expire an instance that heartbeats on r1"
    # Deregistered on r1: r2 drops it once the record is gone (after the grace).
    await r1.deregister(a.id)
    r2.reconcile(store.feed())
    clock.advance(6)
    await r2.sweep()
    assert r2.get(a.id) is None
    # A stale feed answer written before the deregistration does not bring it back.
    stale = [(a.id, 1, catalog_record(a, 30, clock.wall() + 30, clock.wall() - 100))]
    r1.reconcile(stale)
    assert r1.get(a.id) is None


async def test_a_feed_that_lags_behind_our_own_write_does_not_drop_it() -> None:
    clock, store = Clock(), MemoryStore("consul")
    r1 = await loaded(store, clock, shared=True, stale_grace_s=5)
    a = inst(1)
    await r1.register(a, ttl_s=30)
    r1.reconcile([])  # an answer computed before the write
    assert r1.get(a.id) == a
    clock.advance(6)
    r1.reconcile(store.feed())
    assert r1.get(a.id) == a


async def test_bad_records_are_skipped() -> None:
    clock, store = Clock(), MemoryStore()
    store.records[CATALOG_COLLECTION] = {
        "x-1.default": {"instance": {"id": "x-1.default"}},
        "y-1.default": {"nothing": True},
        "reviews-1.default": catalog_record(inst(1), 30, clock.wall() + 30, clock.wall()),
    }
    reg = await loaded(store, clock)
    assert [i.id for i in reg.view().instances("default", "reviews")] == ["reviews-1.default"]
    assert reg.get("x-1.default") is None
