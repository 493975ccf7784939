"""The store contract. Two implementations: ``sqlite`` (default, one node) and
``consul`` (Consul KV, shared by several meshd replicas). One contract test suite
(``tests/store/test_contract.py``) runs against both.

Durability: when a write method returns, the change is durable (fsynced sqlite
commit; acknowledged Consul write). Concurrency: every resource write is a
compare-and-set; losing a race raises :class:`meshd.errors.Conflict`.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from meshd.schema.base import ResourceKey

Outcome = Literal["created", "configured", "unchanged"]
Operation = Literal["create", "update", "delete", "rollback"]


@dataclass(frozen=True, slots=True)
class StoredResource:
    """A resource as stored: ``body`` is its wire form (``meshd.schema.base.dump``)
    without ``metadata.resourceVersion``; ``revision`` counts this key's writes from 1 and
    keeps counting across a delete and re-create."""

    key: ResourceKey
    revision: int
    body: Mapping[str, Any]
    updated_at: float
    updated_by: str


@dataclass(frozen=True, slots=True)
class Revision:
    """One entry of a resource's history; ``body`` None records a delete."""

    key: ResourceKey
    revision: int
    body: Mapping[str, Any] | None
    operation: Operation
    actor: str
    at: float


@dataclass(frozen=True, slots=True)
class WriteResult:
    outcome: Outcome
    resource: StoredResource


@dataclass(frozen=True, slots=True)
class StoreState:
    """Every stored resource at one moment. ``index`` grows with every change, so
    watchers can tell states apart."""

    index: int
    resources: Mapping[ResourceKey, StoredResource]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: float
    actor: str
    action: str
    target: str
    detail: str = ""


class Store(Protocol):
    """What meshd needs from durable storage. All methods may raise
    ``StoreUnavailable`` (say which backend and what to check) and the resource writes
    ``Conflict``/``NotFound``."""

    backend: str

    async def get(self, key: ResourceKey) -> StoredResource | None: ...

    async def list(
        self, kind: str | None = None, namespace: str | None = None
    ) -> list[StoredResource]: ...

    async def put(
        self,
        key: ResourceKey,
        body: Mapping[str, Any],
        *,
        actor: str,
        operation: Operation = "update",
        expected_revision: int | None = None,
    ) -> WriteResult:
        """Create or replace. A body equal to the stored one is ``unchanged`` and writes
        nothing. ``expected_revision`` (0 = must not exist) makes it conditional."""
        ...

    async def delete(
        self, key: ResourceKey, *, actor: str, expected_revision: int | None = None
    ) -> StoredResource:
        """Remove and record the delete in the history; ``NotFound`` if absent."""
        ...

    async def history(self, key: ResourceKey) -> builtins.list[Revision]:
        """Oldest first; kept after a delete; empty if the key never existed."""
        ...

    def watch(self) -> AsyncIterator[StoreState]:
        """The current state at once, then a new state after every change (also changes
        made by other replicas). Consecutive changes may be coalesced."""
        ...

    # Small records that are not rules: tokens, catalog entries, CA metadata.
    async def record_get(self, collection: str, record_id: str) -> dict[str, Any] | None: ...

    async def record_put(
        self, collection: str, record_id: str, data: Mapping[str, Any], *, create_only: bool = False
    ) -> None:
        """``create_only`` raises ``Conflict`` when the record exists."""
        ...

    async def record_delete(self, collection: str, record_id: str) -> bool: ...

    async def record_list(self, collection: str) -> builtins.list[tuple[str, dict[str, Any]]]: ...

    async def audit_append(self, entry: AuditEntry) -> None: ...

    async def audit_list(self, limit: int = 100) -> builtins.list[AuditEntry]:
        """Newest first."""
        ...

    async def aclose(self) -> None: ...
