"""Admin tokens and the audit log (admin role only)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel

from meshd.api.deps import Admin, Svc
from meshd.store.base import AuditEntry

router = APIRouter(prefix="/v1", tags=["admin"])


class NewToken(BaseModel):
    name: str
    role: str = "viewer"


@router.post("/admin-tokens", status_code=201)
async def create_token(svc: Svc, who: Admin, body: NewToken) -> dict[str, Any]:
    """Returns the token once; only its hash is stored."""
    token, record = await svc.tokens.create(body.name, body.role, who.name)
    await svc.store.audit_append(
        AuditEntry(record["created_at"], who.name, "created admin token", record["id"], body.role)
    )
    return {**record, "token": token}


@router.get("/admin-tokens")
async def list_tokens(svc: Svc, _who: Admin) -> dict[str, Any]:
    return {"items": await svc.tokens.list()}


@router.delete("/admin-tokens/{token_id}", status_code=204)
async def revoke_token(svc: Svc, who: Admin, token_id: str) -> Response:
    await svc.tokens.revoke(token_id)
    await svc.store.audit_append(AuditEntry(time.time(), who.name, "revoked admin token", token_id))
    return Response(status_code=204)


@router.get("/audit")
async def audit(
    svc: Svc, _who: Admin, limit: Annotated[int, Query(ge=1, le=10_000)] = 100
) -> dict[str, Any]:
    entries = await svc.store.audit_list(limit)
    return {
        "items": [
            {
                "at": e.at,
                "actor": e.actor,
                "action": e.action,
                "target": e.target,
                "detail": e.detail,
            }
            for e in entries
        ]
    }
