"""The shared store: Consul KV, for several meshd replicas on one Consul.

Layout under ``prefix`` (default ``meshd/``)::

    resources/<kind>/<namespace>/<name>        revision, body, updated_at, updated_by
    history/<kind>/<namespace>/<name>/<rev:010> revision, operation, body, actor, at
    records/<collection>/<id>                  the record's JSON
    audit/<unix ns:020>-<random hex>           at, actor, action, target, detail

(each value a JSON object with those fields).

Every resource write is one Consul transaction: a compare-and-set on the resource key's
ModifyIndex (0: must not exist) plus the new history entry (which must not exist
either). Two replicas racing cannot both win; the loser gets ``Conflict``. ``watch`` is a
blocking query on ``resources/``; its ``index`` is Consul's ``X-Consul-Index``.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import random
import secrets
import time
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import anyio

from meshd.errors import BadRequest, Conflict, StoreUnavailable
from meshd.schema.base import ResourceKey
from meshd.store.base import (
    AuditEntry,
    Operation,
    Revision,
    StoredResource,
    StoreState,
    WriteResult,
)
from meshd.store.common import (
    check_expected_revision,
    encode_body,
    encode_record,
    history_operation,
    lost_race,
    not_found,
)
from registry.consul_http import DEFAULT_WAIT, MAX_TXN_OPS, ConsulClient, KVOp, KVPair
from registry.errors import (
    ConsulClientClosed,
    ConsulError,
    ConsulPermissionDenied,
    ConsulUnavailable,
    TxnAborted,
    TxnTooLarge,
)

__all__ = ["ConsulStore"]

log = logging.getLogger(__name__)

RACE_RETRIES = 5
"""An unconditional put/delete that loses a race re-reads and tries again this often
(the sqlite store never loses one); a conditional write reports the ``Conflict`` at once."""

# Jitter only spreads retries out; it needs no cryptographic quality.
_jitter = random.Random()  # noqa: S311


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class ConsulStore:
    """The store in Consul KV under ``prefix``, through ``client``.

    Give each replica its own client (as separate meshd processes have). With
    ``owns_client`` the store closes the client in :meth:`aclose`. ``watch_wait`` is how
    long one blocking query waits before Consul answers "no change" (at most 10 min).
    Bodies handed out are shared with the store's cache: treat them as read-only.
    """

    backend = "consul"

    def __init__(
        self,
        client: ConsulClient,
        prefix: str = "meshd/",
        *,
        owns_client: bool = False,
        watch_wait: float = DEFAULT_WAIT,
    ) -> None:
        prefix = prefix.strip("/")
        if not prefix:
            raise ValueError("the Consul KV prefix must not be empty (e.g. 'meshd/')")
        self.prefix = prefix + "/"
        self._client = client
        self._owns_client = owns_client
        self._watch_wait = watch_wait
        self._resources = self.prefix + "resources/"
        self._closed = False
        self._watches: set[anyio.CancelScope] = set()
        # Consul key -> (ModifyIndex, parsed resource or None if unreadable): entries whose
        # ModifyIndex did not change are not parsed again.
        self._cache: dict[str, tuple[int, StoredResource | None]] = {}

    @property
    def address(self) -> str:
        return self._client.address

    # --- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Check that Consul answers and has a leader, so a wrong address fails at startup."""
        with self._errors("connect to Consul"):
            leader = await self._client.leader()
        if not leader:
            raise StoreUnavailable(
                f"consul store: Consul at {self.address} has no cluster leader yet; wait "
                "for the servers to elect one (`consul operator raft list-peers`)",
                backend=self.backend,
                address=self.address,
            )

    async def aclose(self) -> None:
        self._closed = True
        for waiting in list(self._watches):
            waiting.cancel()
        if self._owns_client:
            await self._client.aclose()

    # --- keys and errors -------------------------------------------------------------

    def _resource_key(self, key: ResourceKey) -> str:
        for part in key:
            if not part or "/" in part:
                raise BadRequest(
                    f"{key}: kind, namespace and name must be non-empty and contain no '/'",
                    key=str(key),
                )
        return f"{self._resources}{key.kind}/{key.namespace}/{key.name}"

    def _history_prefix(self, key: ResourceKey) -> str:
        return f"{self.prefix}history/{key.kind}/{key.namespace}/{key.name}/"

    def _history_key(self, key: ResourceKey, revision: int) -> str:
        return f"{self._history_prefix(key)}{revision:010d}"

    def _record_prefix(self, collection: str) -> str:
        if not collection or "/" in collection:
            raise BadRequest(
                f"invalid record collection {collection!r}: non-empty, without '/'",
                collection=collection,
            )
        return f"{self.prefix}records/{collection}/"

    def _record_key(self, collection: str, record_id: str) -> str:
        if not record_id:
            raise BadRequest(f"empty record id in collection {collection!r}")
        return self._record_prefix(collection) + record_id

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Translate the client's errors into ``StoreUnavailable`` naming what failed.
        ``TxnAborted`` passes through: the caller decides what a lost race means."""
        try:
            yield
        except TxnAborted:
            raise
        except ConsulError as exc:
            raise self._unavailable(doing, exc) from exc

    def _unavailable(self, doing: str, exc: ConsulError) -> StoreUnavailable:
        if isinstance(exc, ConsulPermissionDenied):
            hint = f"; the token needs key:write on the prefix {self.prefix!r}"
        elif isinstance(exc, ConsulUnavailable):
            hint = " (--consul-addr / MESHD_CONSUL_ADDR)"
        else:
            hint = ""
        return StoreUnavailable(
            f"consul store: cannot {doing}: {exc}{hint}",
            backend=self.backend,
            address=self.address,
            status=exc.status,
        )

    # --- parsing with the cache ------------------------------------------------------

    def _parse_resource(self, pair: KVPair) -> StoredResource | None:
        cached = self._cache.get(pair.key)
        if cached is not None and cached[0] == pair.modify_index:
            return cached[1]
        stored: StoredResource | None = None
        parts = pair.key[len(self._resources) :].split("/")
        try:
            if len(parts) != 3:
                raise ValueError("the key is not <kind>/<namespace>/<name>")
            data = json.loads(pair.value or b"")
            stored = StoredResource(
                ResourceKey(*parts),
                int(data["revision"]),
                data["body"],
                float(data["updated_at"]),
                str(data["updated_by"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            # Something else wrote under our prefix; one bad entry must not stop the mesh.
            log.warning(
                "consul store: ignoring unreadable entry %s (ModifyIndex %d): %s; "
                "delete or fix it with `consul kv`",
                pair.key,
                pair.modify_index,
                exc,
            )
        self._cache[pair.key] = (pair.modify_index, stored)
        return stored

    async def _read(self, key: ResourceKey) -> tuple[int, StoredResource] | None:
        consul_key = self._resource_key(key)
        with self._errors(f"read {key}"):
            pair = await self._client.kv_get(consul_key)
        if pair is None:
            self._cache.pop(consul_key, None)
            return None
        stored = self._parse_resource(pair)
        if stored is None:
            raise StoreUnavailable(
                f"consul store: the entry {consul_key} is not a meshd resource; delete or "
                "fix it with `consul kv`",
                backend=self.backend,
                address=self.address,
            )
        return pair.modify_index, stored

    # --- resources -------------------------------------------------------------------

    async def get(self, key: ResourceKey) -> StoredResource | None:
        found = await self._read(key)
        return found[1] if found is not None else None

    async def list(
        self, kind: str | None = None, namespace: str | None = None
    ) -> list[StoredResource]:
        prefix = self._resources
        if kind is not None:
            prefix += f"{kind}/"
            if namespace is not None:
                prefix += f"{namespace}/"
        with self._errors("list resources"):
            result = await self._client.kv_list(prefix)
        out = []
        for pair in result.value:
            stored = self._parse_resource(pair)
            if stored is not None and (namespace is None or stored.key.namespace == namespace):
                out.append(stored)
        if kind is None:
            self._prune({pair.key for pair in result.value})
        out.sort(key=lambda r: r.key)
        return out

    def _prune(self, present: set[str]) -> None:
        if len(self._cache) > len(present):
            self._cache = {k: v for k, v in self._cache.items() if k in present}

    async def _last_revision(self, key: ResourceKey) -> int:
        with self._errors(f"read the history of {key}"):
            keys = await self._client.kv_keys(self._history_prefix(key))
        revisions = [int(k.rsplit("/", 1)[1]) for k in keys if k.rsplit("/", 1)[1].isdigit()]
        return max(revisions, default=0)

    async def _commit(self, key: ResourceKey, ops: Sequence[KVOp]) -> dict[str, KVPair]:
        """Apply one write transaction; ``TxnAborted`` (a lost race) passes through."""
        try:
            result = await self._client.txn(ops)
        except TxnAborted:
            raise
        except TxnTooLarge as exc:
            raise BadRequest(
                f"{key} is too large for Consul KV (at most 512 KiB per value): "
                "split it into smaller resources",
                key=str(key),
            ) from exc
        except ConsulError as exc:
            raise self._unavailable(f"write {key}", exc) from exc
        return {pair.key: pair for pair in result.results}

    async def put(
        self,
        key: ResourceKey,
        body: Mapping[str, Any],
        *,
        actor: str,
        operation: Operation = "update",
        expected_revision: int | None = None,
    ) -> WriteResult:
        normalized, _ = encode_body(key, body)
        consul_key = self._resource_key(key)
        for attempt in range(RACE_RETRIES):
            found = await self._read(key)
            modify_index, current = found if found is not None else (0, None)
            check_expected_revision(key, current, expected_revision)
            if current is not None and current.body == normalized:
                return WriteResult("unchanged", current)
            op = history_operation(operation, current is not None)
            if current is not None:
                revision = current.revision + 1
            else:
                revision = await self._last_revision(key) + 1
            now = time.time()
            stored = StoredResource(key, revision, normalized, now, actor)
            value = _dumps(
                {"revision": revision, "body": normalized, "updated_at": now, "updated_by": actor}
            )
            entry = _dumps(
                {
                    "revision": revision,
                    "operation": op,
                    "body": normalized,
                    "actor": actor,
                    "at": now,
                }
            )
            try:
                written = await self._commit(
                    key,
                    [
                        KVOp.cas(consul_key, value, index=modify_index),
                        KVOp.cas(self._history_key(key, revision), entry, index=0),
                    ],
                )
            except TxnAborted as exc:
                if expected_revision is not None or attempt == RACE_RETRIES - 1:
                    raise lost_race(key) from exc
                await anyio.sleep(_jitter.uniform(0, 0.02 * (attempt + 1)))
                continue
            pair = written.get(consul_key)
            if pair is not None:
                self._cache[consul_key] = (pair.modify_index, stored)
            return WriteResult("configured" if current is not None else "created", stored)
        raise AssertionError("unreachable")  # pragma: no cover

    async def delete(
        self, key: ResourceKey, *, actor: str, expected_revision: int | None = None
    ) -> StoredResource:
        consul_key = self._resource_key(key)
        for attempt in range(RACE_RETRIES):
            found = await self._read(key)
            if found is None:
                raise not_found(key)
            modify_index, current = found
            check_expected_revision(key, current, expected_revision)
            revision = current.revision + 1
            entry = _dumps(
                {
                    "revision": revision,
                    "operation": "delete",
                    "body": None,
                    "actor": actor,
                    "at": time.time(),
                }
            )
            try:
                await self._commit(
                    key,
                    [
                        KVOp.delete_cas(consul_key, index=modify_index),
                        KVOp.cas(self._history_key(key, revision), entry, index=0),
                    ],
                )
            except TxnAborted as exc:
                if expected_revision is not None or attempt == RACE_RETRIES - 1:
                    raise lost_race(key) from exc
                await anyio.sleep(_jitter.uniform(0, 0.02 * (attempt + 1)))
                continue
            self._cache.pop(consul_key, None)
            return current
        raise AssertionError("unreachable")  # pragma: no cover

    async def history(self, key: ResourceKey) -> builtins.list[Revision]:
        prefix = self._history_prefix(key)
        self._resource_key(key)  # validates the key's parts
        with self._errors(f"read the history of {key}"):
            result = await self._client.kv_list(prefix)
        out = []
        for pair in result.value:
            try:
                data = json.loads(pair.value or b"")
                out.append(
                    Revision(
                        key,
                        int(data["revision"]),
                        data["body"],
                        data["operation"],
                        str(data["actor"]),
                        float(data["at"]),
                    )
                )
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("consul store: ignoring unreadable history entry %s: %s", pair.key, exc)
        out.sort(key=lambda r: r.revision)
        return out

    async def watch(self) -> AsyncGenerator[StoreState, None]:
        """The current state at once, then a new one whenever a resource changes (here or
        on another replica). While Consul is unreachable it keeps retrying with backoff,
        logging once when it fails and once when it recovers."""
        failing = False

        def on_error(exc: ConsulError, delay: float) -> None:
            nonlocal failing
            if not failing:
                failing = True
                log.warning(
                    "consul store: watching %s failed: %s; retrying with backoff until "
                    "Consul answers (check that it is running)",
                    self._resources,
                    exc,
                )

        last: tuple[tuple[str, int], ...] | None = None

        def on_recover() -> None:
            nonlocal failing, last
            failing = False
            # Consul may be back restored or rebuilt, reusing ModifyIndexes for other
            # values: nothing cached before the outage can be trusted.
            last = None
            self._cache.clear()
            log.info(
                "consul store: watching %s again, Consul at %s recovered",
                self._resources,
                self.address,
            )

        stream = self._client.kv_watch(
            self._resources, wait=self._watch_wait, on_error=on_error, on_recover=on_recover
        )
        async with contextlib.aclosing(stream):
            while not self._closed:
                # Only the wait is inside the scope (never the yield): aclose() cancels it,
                # since closing the client does not end a blocking query in flight.
                with anyio.CancelScope() as waiting:
                    self._watches.add(waiting)
                    try:
                        result = await anext(stream)
                    except ConsulClientClosed:
                        return
                    except ConsulError as exc:
                        raise self._unavailable("watch resources", exc) from exc
                    finally:
                        self._watches.discard(waiting)
                if waiting.cancelled_caught:
                    return
                signature = tuple((pair.key, pair.modify_index) for pair in result.value)
                if signature == last:
                    # The index moved for something outside our entries (a tombstone
                    # reaped, a write elsewhere): nothing to tell the watchers.
                    continue
                last = signature
                resources: dict[ResourceKey, StoredResource] = {}
                for pair in result.value:
                    stored = self._parse_resource(pair)
                    if stored is not None:
                        resources[stored.key] = stored
                self._prune({key for key, _ in signature})
                yield StoreState(result.index, MappingProxyType(resources))

    # --- records ---------------------------------------------------------------------

    async def record_get(self, collection: str, record_id: str) -> dict[str, Any] | None:
        consul_key = self._record_key(collection, record_id)
        with self._errors(f"read record {collection}/{record_id}"):
            pair = await self._client.kv_get(consul_key)
        return None if pair is None else _record_value(pair)

    async def record_put(
        self, collection: str, record_id: str, data: Mapping[str, Any], *, create_only: bool = False
    ) -> None:
        consul_key = self._record_key(collection, record_id)
        text = encode_record(collection, record_id, data)
        with self._errors(f"write record {collection}/{record_id}"):
            written = await self._client.kv_put(
                consul_key, text.encode(), cas=0 if create_only else None
            )
        if not written:
            raise Conflict(
                f"record {collection}/{record_id} already exists",
                collection=collection,
                id=record_id,
            )

    async def record_delete(self, collection: str, record_id: str) -> bool:
        consul_key = self._record_key(collection, record_id)
        try:
            with self._errors(f"delete record {collection}/{record_id}"):
                # ``get`` fails the transaction when the key is missing: one round trip
                # tells whether there was something to delete.
                await self._client.txn([KVOp.get(consul_key), KVOp.delete(consul_key)])
        except TxnAborted:
            return False
        return True

    async def record_list(self, collection: str) -> builtins.list[tuple[str, dict[str, Any]]]:
        prefix = self._record_prefix(collection)
        with self._errors(f"list records of {collection}"):
            result = await self._client.kv_list(prefix)
        return [(pair.key[len(prefix) :], _record_value(pair)) for pair in result.value]

    # --- audit -----------------------------------------------------------------------

    async def audit_append(self, entry: AuditEntry) -> None:
        # Sortable by time (ns since the epoch, fixed width); the random part keeps two
        # replicas writing in the same nanosecond apart.
        consul_key = f"{self.prefix}audit/{int(entry.at * 1e9):020d}-{secrets.token_hex(4)}"
        value = _dumps(
            {
                "at": entry.at,
                "actor": entry.actor,
                "action": entry.action,
                "target": entry.target,
                "detail": entry.detail,
            }
        )
        with self._errors("append to the audit log"):
            await self._client.kv_put(consul_key, value)

    async def audit_list(self, limit: int = 100) -> builtins.list[AuditEntry]:
        if limit <= 0:
            return []
        with self._errors("read the audit log"):
            keys = await self._client.kv_keys(f"{self.prefix}audit/")
            newest = sorted(keys, reverse=True)[:limit]
            pairs: dict[str, KVPair] = {}
            for start in range(0, len(newest), MAX_TXN_OPS):
                batch = newest[start : start + MAX_TXN_OPS]
                try:
                    result = await self._client.txn([KVOp.get(k) for k in batch])
                    pairs.update((p.key, p) for p in result.results)
                except TxnAborted:
                    # An entry vanished between listing and reading (pruned by hand):
                    # read this batch one by one and skip what is gone.
                    for k in batch:
                        pair = await self._client.kv_get(k)
                        if pair is not None:
                            pairs[k] = pair
        out = []
        for k in newest:
            pair = pairs.get(k)
            if pair is None:
                continue
            try:
                data = json.loads(pair.value or b"")
                out.append(
                    AuditEntry(
                        float(data["at"]),
                        str(data["actor"]),
                        str(data["action"]),
                        str(data["target"]),
                        str(data.get("detail", "")),
                    )
                )
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("consul store: ignoring unreadable audit entry %s: %s", k, exc)
        return out


def _record_value(pair: KVPair) -> dict[str, Any]:
    value = json.loads(pair.value or b"null")
    return value if isinstance(value, dict) else {"value": value}
