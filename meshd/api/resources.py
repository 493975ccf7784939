"""Rules: ``POST /v1/apply`` and ``/v1/resources/{kind}/{namespace}/{name}`` with history,
rollback and describe."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from meshd.api.deps import Editor, Svc, Viewer
from meshd.errors import BadRequest
from meshd.rules import with_revision
from meshd.schema.base import ResourceKey
from meshd.schema.kinds import lookup_kind
from meshd.schema.parse import parse_many
from meshd.store.base import Revision

router = APIRouter(prefix="/v1", tags=["resources"])
MAX_BODY = 8 * 1024 * 1024


async def _body(request: Request) -> tuple[bytes, str | None]:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise BadRequest(f"the request body is {len(body)} bytes; at most {MAX_BODY} are accepted")
    if not body.strip():
        raise BadRequest("the request body is empty; send YAML or JSON resources")
    return body, request.headers.get("content-type")


def _key(kind: str, namespace: str, name: str) -> ResourceKey:
    return ResourceKey(lookup_kind(kind).kind, namespace, name)


def _revision_json(rev: Revision) -> dict[str, Any]:
    return {
        "revision": rev.revision,
        "operation": rev.operation,
        "actor": rev.actor,
        "at": rev.at,
        "resource": dict(rev.body) if rev.body is not None else None,
    }


@router.post("/apply")
async def apply(
    request: Request,
    svc: Svc,
    who: Editor,
    dry_run: Annotated[bool, Query(alias="dry_run")] = False,
    namespace: Annotated[
        str, Query(description="namespace of resources that name none")
    ] = "default",
) -> dict[str, Any]:
    """Create or update every resource in a multi-document YAML or JSON body."""
    body, content_type = await _body(request)
    resources = parse_many(body, content_type, default_namespace=namespace)
    reports = await svc.rules.apply(resources, who, dry_run=dry_run)
    return {"dryRun": dry_run, "results": [r.to_json() for r in reports]}


@router.get("/resources")
async def list_all(
    svc: Svc, _who: Viewer, kind: str | None = None, namespace: str | None = None
) -> dict[str, Any]:
    canonical = lookup_kind(kind).kind if kind else None
    items = await svc.store.list(canonical, namespace)
    return {"apiVersion": "v1", "kind": "List", "items": [with_revision(s) for s in items]}


@router.get("/resources/{kind}")
async def list_kind(
    svc: Svc, who: Viewer, kind: str, namespace: str | None = None
) -> dict[str, Any]:
    return await list_all(svc, who, kind, namespace)


@router.get("/resources/{kind}/{namespace}")
async def list_namespace(svc: Svc, who: Viewer, kind: str, namespace: str) -> dict[str, Any]:
    return await list_all(svc, who, kind, namespace)


@router.get("/resources/{kind}/{namespace}/{name}")
async def get(svc: Svc, _who: Viewer, kind: str, namespace: str, name: str) -> dict[str, Any]:
    return with_revision(await svc.rules.get(_key(kind, namespace, name)))


@router.put("/resources/{kind}/{namespace}/{name}")
async def put(
    request: Request, svc: Svc, who: Editor, kind: str, namespace: str, name: str
) -> dict[str, Any]:
    """Replace one resource. ``metadata.resourceVersion`` in the body makes it a
    compare-and-set: 409 if the resource moved on."""
    key = _key(kind, namespace, name)
    body, content_type = await _body(request)
    resources = parse_many(body, content_type, default_namespace=namespace)
    if len(resources) != 1:
        raise BadRequest(f"PUT takes exactly one resource; the body holds {len(resources)}")
    report = await svc.rules.replace(key, resources[0], who)
    return report.to_json()


@router.delete("/resources/{kind}/{namespace}/{name}")
async def delete(
    svc: Svc,
    who: Editor,
    kind: str,
    namespace: str,
    name: str,
    revision: Annotated[
        int | None, Query(description="delete only if still at this revision")
    ] = None,
) -> dict[str, Any]:
    gone = await svc.rules.delete(_key(kind, namespace, name), who, revision)
    return {"deleted": with_revision(gone)}


@router.get("/resources/{kind}/{namespace}/{name}/history")
async def history(svc: Svc, _who: Viewer, kind: str, namespace: str, name: str) -> dict[str, Any]:
    revisions = await svc.rules.history(_key(kind, namespace, name))
    return {"items": [_revision_json(r) for r in revisions]}


class RollbackBody(BaseModel):
    revision: int = Field(ge=1)


@router.post("/resources/{kind}/{namespace}/{name}/rollback")
async def rollback(
    svc: Svc, who: Editor, kind: str, namespace: str, name: str, body: RollbackBody
) -> dict[str, Any]:
    report = await svc.rules.rollback(_key(kind, namespace, name), body.revision, who)
    return report.to_json()


@router.get("/resources/{kind}/{namespace}/{name}/describe")
async def describe(svc: Svc, _who: Viewer, kind: str, namespace: str, name: str) -> dict[str, Any]:
    """The resource and what it affects: the proxies whose config it shapes."""
    key = _key(kind, namespace, name)
    stored = await svc.rules.get(key)
    result = svc.control.last_result
    proxies = sorted(result.dependents(key)) if result is not None else []
    return {"resource": with_revision(stored), "affects": {"proxies": proxies}}
