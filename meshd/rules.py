"""Writing rules: apply, replace, delete and roll back — each validated against the
whole resulting state before anything is stored, each recorded in the audit log.

Validation compares the errors of the state after the change with those of the
state before it, so a change is judged by what it breaks, and an old problem
elsewhere (say, a resource stored before an upgrade tightened a rule) does not block
unrelated work.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshd.admin_tokens import Principal
from meshd.errors import BadRequest, Conflict, FieldError, NotFound, ValidationFailed
from meshd.models import ModelCache
from meshd.schema.base import AnyResource, ResourceKey, dump
from meshd.schema.kinds import lookup_kind
from meshd.schema.parse import parse_resource
from meshd.schema.validate import MeshNames, validate_set
from meshd.store.base import AuditEntry, Outcome, Revision, Store, StoredResource

RESOURCE_VERSION = "resourceVersion"


@dataclass(frozen=True, slots=True)
class WriteReport:
    key: ResourceKey
    api_version: str
    outcome: Outcome
    revision: int

    def to_json(self) -> dict[str, Any]:
        return {
            "apiVersion": self.api_version,
            "kind": self.key.kind,
            "namespace": self.key.namespace,
            "name": self.key.name,
            "outcome": self.outcome,
            "revision": self.revision,
        }


def stored_body(resource: AnyResource) -> dict[str, Any]:
    """What is stored: the wire form at the kind's stored version, without the
    ``resourceVersion`` precondition."""
    info = lookup_kind(resource.kind)
    body = dump(resource)
    body["apiVersion"] = info.api_version
    body["metadata"].pop(RESOURCE_VERSION, None)
    return body


def with_revision(stored: StoredResource) -> dict[str, Any]:
    """A stored resource as the API returns it: ``metadata.resourceVersion`` is its revision."""
    body = dict(stored.body)
    body["metadata"] = {**body["metadata"], RESOURCE_VERSION: str(stored.revision)}
    return body


def _precondition(resource: AnyResource) -> int | None:
    raw = resource.metadata.resource_version
    if raw is None:
        return None
    if not raw.isdigit():
        raise BadRequest(
            f"metadata.resourceVersion {raw!r} is not a meshd revision; omit it, or use the "
            "value meshctl get returned"
        )
    return int(raw)


class Rules:
    def __init__(self, store: Store, models: ModelCache, names: MeshNames) -> None:
        self._store = store
        self._models = models
        self._names = names

    async def _state(
        self,
    ) -> tuple[dict[ResourceKey, StoredResource], dict[ResourceKey, AnyResource]]:
        stored = {s.key: s for s in await self._store.list()}
        return stored, self._models.models(stored.values())

    def _new_errors(
        self, before: Mapping[ResourceKey, AnyResource], after: Mapping[ResourceKey, AnyResource]
    ) -> list[FieldError]:
        old = set(validate_set(before.values(), self._names))
        return [e for e in validate_set(after.values(), self._names) if e not in old]

    async def apply(
        self, resources: Sequence[AnyResource], actor: Principal, *, dry_run: bool = False
    ) -> list[WriteReport]:
        keys = [r.key for r in resources]
        dupes = sorted({str(k) for k in keys if keys.count(k) > 1})
        if dupes:
            raise BadRequest(f"the same resource appears more than once: {', '.join(dupes)}")
        stored, current = await self._state()
        candidate = dict(current)
        candidate.update({r.key: r for r in resources})
        errors = self._new_errors(current, candidate)
        if errors:
            raise ValidationFailed(f"{len(errors)} problem(s); nothing was applied", errors=errors)
        reports: list[WriteReport] = []
        for resource in resources:
            body = stored_body(resource)
            old = stored.get(resource.key)
            expected = _precondition(resource)
            if dry_run:
                at = old.revision if old else 0
                if expected is not None and expected != at:
                    raise Conflict(f"{resource.key} is at revision {at}, not {expected}")
                outcome: Outcome = (
                    "created"
                    if old is None
                    else ("unchanged" if dict(old.body) == body else "configured")
                )
                revision = (old.revision if old else 0) + (outcome != "unchanged")
                reports.append(WriteReport(resource.key, body["apiVersion"], outcome, revision))
                continue
            result = await self._store.put(
                resource.key,
                body,
                actor=actor.name,
                operation="create" if old is None else "update",
                expected_revision=expected,
            )
            if result.outcome != "unchanged":
                await self._audit(actor, result.outcome, resource.key, result.resource.revision)
            reports.append(
                WriteReport(
                    resource.key, body["apiVersion"], result.outcome, result.resource.revision
                )
            )
        return reports

    async def replace(
        self, key: ResourceKey, resource: AnyResource, actor: Principal
    ) -> WriteReport:
        """PUT: the body must name the resource of the URL."""
        if resource.key != key:
            raise BadRequest(
                f"the body describes {resource.key} but the URL names {key}; make them agree"
            )
        (report,) = await self.apply([resource], actor)
        return report

    async def delete(
        self, key: ResourceKey, actor: Principal, expected_revision: int | None = None
    ) -> StoredResource:
        stored, current = await self._state()
        if key not in stored:
            raise NotFound(f"{key} does not exist")
        candidate = {k: v for k, v in current.items() if k != key}
        errors = self._new_errors(current, candidate)
        if errors:
            raise Conflict(
                f"deleting {key} would break other resources; change or delete them first",
                errors=errors,
            )
        gone = await self._store.delete(key, actor=actor.name, expected_revision=expected_revision)
        await self._audit(actor, "deleted", key, gone.revision)
        return gone

    async def rollback(self, key: ResourceKey, revision: int, actor: Principal) -> WriteReport:
        history = await self._store.history(key)
        target = next((r for r in history if r.revision == revision), None)
        if target is None:
            have = ", ".join(str(r.revision) for r in history) or "none"
            raise NotFound(f"{key} has no revision {revision} (revisions: {have})")
        if target.body is None:
            raise BadRequest(
                f"revision {revision} of {key} records its deletion; "
                "roll back to a revision before it"
            )
        resource = parse_resource(dict(target.body))
        stored, current = await self._state()
        candidate = {**current, key: resource}
        errors = self._new_errors(current, candidate)
        if errors:
            raise ValidationFailed(
                f"rolling {key} back to revision {revision} would be invalid", errors=errors
            )
        old = stored.get(key)
        result = await self._store.put(
            key,
            stored_body(resource),
            actor=actor.name,
            operation="rollback",
            expected_revision=old.revision if old else 0,
        )
        await self._audit(
            actor, f"rolled back to revision {revision}", key, result.resource.revision
        )
        return WriteReport(
            key, stored_body(resource)["apiVersion"], result.outcome, result.resource.revision
        )

    async def get(self, key: ResourceKey) -> StoredResource:
        stored = await self._store.get(key)
        if stored is None:
            raise NotFound(f"{key} does not exist; list what exists with meshctl get {key.kind}")
        return stored

    async def history(self, key: ResourceKey) -> list[Revision]:
        history = await self._store.history(key)
        if not history:
            raise NotFound(f"{key} has no history: it never existed")
        return history

    async def _audit(self, actor: Principal, action: str, key: ResourceKey, revision: int) -> None:
        await self._store.audit_append(
            AuditEntry(time.time(), actor.name, action, str(key), f"revision {revision}")
        )
