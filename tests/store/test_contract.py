"""The store contract (``meshd.store.base.Store``), run against both backends: sqlite in a
temporary directory, and Consul KV on a real ``consul agent -dev`` under a fresh prefix."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path

import anyio
import pytest

from meshd.errors import BadRequest, Conflict, NotFound
from meshd.schema.base import ResourceKey
from meshd.store.base import AuditEntry, Store
from meshd.store.factory import open_store
from tests.store.helpers import vs_body, vs_key, watching
from tests.support.components import ConsulAgent

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite", pytest.param("consul", marks=pytest.mark.integration)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncGenerator[Store, None]:
    if request.param == "sqlite":
        opened = await open_store(
            "sqlite", data_dir=tmp_path / "data", consul_addr="", consul_token=None
        )
    else:
        agent: ConsulAgent = request.getfixturevalue("consul_agent")
        prefix: str = request.getfixturevalue("consul_prefix")
        opened = await open_store(
            "consul",
            data_dir=tmp_path,
            consul_addr=agent.http_addr,
            consul_token=None,
            consul_prefix=prefix,
        )
    assert opened.backend == request.param
    try:
        yield opened
    finally:
        await opened.aclose()


async def test_put_outcomes_and_revisions(store: Store) -> None:
    key = vs_key()
    created = await store.put(key, vs_body(weight=80), actor="alice")
    assert created.outcome == "created"
    assert created.resource.revision == 1
    assert created.resource.key == key
    assert created.resource.updated_by == "alice"
    assert created.resource.body == vs_body(weight=80)

    same = await store.put(key, vs_body(weight=80), actor="bob")
    assert same.outcome == "unchanged"
    assert same.resource == created.resource, "an unchanged put writes nothing"

    changed = await store.put(key, vs_body(weight=50), actor="bob")
    assert changed.outcome == "configured"
    assert changed.resource.revision == 2
    assert changed.resource.updated_by == "bob"
    assert changed.resource.updated_at >= created.resource.updated_at

    stored = await store.get(key)
    assert stored == changed.resource
    assert len(await store.history(key)) == 2


async def test_body_reads_back_equal(store: Store) -> None:
    key = vs_key("unicode")
    body = vs_body("unicode")
    body["metadata"]["annotations"] = {"note": "grüße ✓", "empty": ""}
    body["spec"]["extra"] = {"nested": [1, 2.5, None, True, {"deep": []}]}
    await store.put(key, body, actor="a")
    stored = await store.get(key)
    assert stored is not None
    assert stored.body == body
    (listed,) = await store.list("VirtualService", "default")
    assert listed.body == body


async def test_a_body_that_is_not_json_is_rejected(store: Store) -> None:
    with pytest.raises(BadRequest, match="cannot be stored as JSON"):
        await store.put(vs_key(), {"spec": {"weight": float("nan")}}, actor="a")
    assert await store.get(vs_key()) is None


async def test_expected_revision_is_compare_and_set(store: Store) -> None:
    key = vs_key()
    first = await store.put(key, vs_body(weight=80), actor="a", expected_revision=0)
    assert first.outcome == "created"

    with pytest.raises(Conflict, match="already exists") as exists:
        await store.put(key, vs_body(weight=70), actor="a", expected_revision=0)
    assert exists.value.status == 409

    second = await store.put(key, vs_body(weight=70), actor="a", expected_revision=1)
    assert second.resource.revision == 2

    with pytest.raises(Conflict, match=r"expected revision 1, found 2\): re-read it and retry"):
        await store.put(key, vs_body(weight=60), actor="a", expected_revision=1)
    with pytest.raises(Conflict, match="expected revision 1"):
        # Even an unchanged body must not pass a stale precondition.
        await store.put(key, vs_body(weight=70), actor="a", expected_revision=1)
    with pytest.raises(Conflict, match="does not exist"):
        await store.put(vs_key("absent"), vs_body("absent"), actor="a", expected_revision=3)

    current = await store.get(key)
    assert current is not None
    assert current.revision == 2
    assert current.body == vs_body(weight=70)


async def test_get_and_list_with_filters(store: Store) -> None:
    keys = [
        ResourceKey("VirtualService", "default", "reviews"),
        ResourceKey("VirtualService", "default", "ratings"),
        ResourceKey("VirtualService", "shop", "cart"),
        ResourceKey("DestinationRule", "default", "reviews"),
        ResourceKey("DestinationRule", "shop", "cart"),
    ]
    for key in keys:
        await store.put(key, {"kind": key.kind, "name": key.name}, actor="a")

    assert await store.get(ResourceKey("VirtualService", "default", "nope")) is None
    got = await store.get(keys[2])
    assert got is not None
    assert got.body == {"kind": "VirtualService", "name": "cart"}

    assert [r.key for r in await store.list()] == sorted(keys)
    assert [r.key for r in await store.list("VirtualService")] == sorted(keys[:3])
    assert [r.key for r in await store.list("VirtualService", "default")] == sorted(keys[:2])
    assert [r.key for r in await store.list(namespace="shop")] == sorted([keys[2], keys[4]])
    assert await store.list("Sidecar") == []
    assert await store.list("VirtualService", "nowhere") == []


async def test_delete(store: Store) -> None:
    key = vs_key()
    with pytest.raises(NotFound, match="VirtualService default/reviews not found"):
        await store.delete(key, actor="a")
    put = await store.put(key, vs_body(), actor="a")
    with pytest.raises(Conflict):
        await store.delete(key, actor="a", expected_revision=7)
    assert await store.get(key) is not None

    deleted = await store.delete(key, actor="b", expected_revision=1)
    assert deleted == put.resource
    assert await store.get(key) is None
    assert await store.list() == []
    with pytest.raises(NotFound):
        await store.delete(key, actor="a")


async def test_history_is_oldest_first_and_survives_delete_and_recreate(store: Store) -> None:
    key = vs_key()
    assert await store.history(key) == []
    await store.put(key, vs_body(weight=90), actor="alice")
    await store.put(key, vs_body(weight=80), actor="alice")
    await store.put(key, vs_body(weight=80), actor="alice")  # unchanged: no entry
    await store.delete(key, actor="bob")
    recreated = await store.put(key, vs_body(weight=70), actor="carol")
    assert recreated.outcome == "created"
    assert recreated.resource.revision == 4, "revisions keep counting across a delete"
    rolled = await store.put(key, vs_body(weight=90), actor="dave", operation="rollback")
    assert rolled.outcome == "configured"

    history = await store.history(key)
    assert [(h.revision, h.operation, h.actor) for h in history] == [
        (1, "create", "alice"),
        (2, "update", "alice"),
        (3, "delete", "bob"),
        (4, "create", "carol"),
        (5, "rollback", "dave"),
    ]
    assert history[0].body == vs_body(weight=90)
    assert history[2].body is None
    assert history[4].body == vs_body(weight=90)
    assert all(h.key == key for h in history)
    assert [h.at for h in history] == sorted(h.at for h in history)
    assert await store.history(vs_key("other")) == []


async def test_watch_yields_the_state_then_every_change(store: Store) -> None:
    key = vs_key()
    await store.put(key, vs_body(weight=90), actor="a")
    async with watching(store) as states:
        with anyio.fail_after(10):
            initial = await anext(states)
            assert set(initial.resources) == {key}
            assert initial.resources[key].revision == 1

            other = vs_key("ratings")
            await store.put(other, vs_body("ratings"), actor="a")
            after_put = await anext(states)
            while other not in after_put.resources:  # a write from before may come first
                after_put = await anext(states)
            assert after_put.index > initial.index
            assert set(after_put.resources) == {key, other}
            assert initial.resources.keys() == {key}, "a published state never changes"

            await store.delete(key, actor="a")
            after_delete = await anext(states)
            assert after_delete.index > after_put.index
            assert set(after_delete.resources) == {other}


async def test_a_slow_watcher_gets_the_latest_state(store: Store) -> None:
    async with watching(store) as states:
        with anyio.fail_after(10):
            first = await anext(states)
            for weight in (10, 20, 30, 40):
                await store.put(vs_key(), vs_body(weight=weight), actor="a")
            latest = await anext(states)
            while latest.resources[vs_key()].revision < 4:
                latest = await anext(states)
    assert latest.index > first.index
    assert latest.resources[vs_key()].body == vs_body(weight=40)


async def test_records(store: Store) -> None:
    assert await store.record_get("tokens", "t1") is None
    await store.record_put("tokens", "t1", {"role": "admin", "hash": "x"}, create_only=True)
    with pytest.raises(Conflict, match="record tokens/t1 already exists"):
        await store.record_put("tokens", "t1", {"role": "viewer"}, create_only=True)
    assert await store.record_get("tokens", "t1") == {"role": "admin", "hash": "x"}

    await store.record_put("tokens", "t1", {"role": "viewer"})
    await store.record_put("tokens", "t0", {"role": "editor"})
    await store.record_put("other", "t9", {"n": 1})
    assert await store.record_list("tokens") == [
        ("t0", {"role": "editor"}),
        ("t1", {"role": "viewer"}),
    ]
    assert await store.record_delete("tokens", "t1") is True
    assert await store.record_delete("tokens", "t1") is False
    assert await store.record_get("tokens", "t1") is None
    assert await store.record_list("tokens") == [("t0", {"role": "editor"})]
    assert await store.record_list("empty") == []
    # Records are not resources: they never show up in list() or watch().
    assert await store.list() == []


async def test_audit_is_newest_first(store: Store) -> None:
    assert await store.audit_list() == []
    entries = [
        AuditEntry(at=1000.0 + i, actor=f"user{i}", action="apply", target=f"VS default/r{i}")
        for i in range(5)
    ]
    for entry in entries:
        await store.audit_append(entry)
    await store.audit_append(AuditEntry(2000.0, "root", "delete", "VS default/x", "dry run: no"))
    listed = await store.audit_list()
    assert listed[0] == AuditEntry(2000.0, "root", "delete", "VS default/x", "dry run: no")
    assert listed[1:] == list(reversed(entries))
    assert await store.audit_list(limit=2) == listed[:2]
    assert await store.audit_list(limit=0) == []
