"""Workload identity: ``/v1/ca/roots``, ``/v1/ca/sign``, ``/v1/tokens``, ``/v1/certs``,
and root rotation (``/v1/ca/rotate``, ``/v1/ca/rotation``)."""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from meshd.admin_tokens import TOKEN_PREFIX as ADMIN_TOKEN_PREFIX
from meshd.api.deps import Admin, Editor, Svc, Viewer
from meshd.errors import Forbidden, Unauthorized
from meshd.identity import bundle_json
from meshd.join_tokens import TOKEN_PREFIX, JoinGrant
from meshd.spiffe import SpiffeId
from meshd.store.base import AuditEntry
from meshd.tls import peer_identity

router = APIRouter(prefix="/v1", tags=["identity"])


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


@router.get("/ca/roots")
async def roots(svc: Svc) -> dict[str, Any]:
    """The trust bundle: public, so a client can pin it on first contact."""
    return bundle_json(svc.identity.current_bundle())


class SignBody(_Body):
    csr: str = Field(max_length=16_384, description="PEM certificate signing request")
    proxy: str = Field(default="", max_length=253, description="the instance/proxy id")


@router.post("/ca/sign")
async def sign(request: Request, svc: Svc, body: SignBody) -> dict[str, Any]:
    """First certificate: ``Authorization: Bearer <join token>``. Renewal: the current
    workload certificate as the TLS client certificate."""
    credential: JoinGrant | SpiffeId
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token.startswith(TOKEN_PREFIX):
            if token.startswith(ADMIN_TOKEN_PREFIX):
                raise Forbidden(
                    "admin tokens cannot get workload certificates; use a join token "
                    "(meshctl token create --service S --namespace N)"
                )
            raise Unauthorized("the Authorization header must be 'Bearer <join token>'")
        credential = await svc.identity.tokens.check(token)
    else:
        found = peer_identity(request.scope, svc.settings.trust_domain)
        if found is None:
            raise Unauthorized(
                "a certificate needs a join token (Authorization: Bearer mjt_...) or, to "
                "renew, the current workload certificate as the TLS client certificate"
            )
        credential = found
    signed = await svc.identity.signer.sign(body.csr, body.proxy, credential)
    if body.proxy:
        svc.metrics.cert_expiry.labels(body.proxy).set(signed.issued.not_after.timestamp())
    return signed.to_json()


class TokenBody(_Body):
    service: str
    namespace: str = "default"
    service_account: str | None = None
    ttl: str = "1h"
    uses: Literal["single", "multi"] = "single"


@router.post("/tokens", status_code=201)
async def create_token(svc: Svc, who: Editor, body: TokenBody) -> dict[str, Any]:
    """A join token for one service's instances; shown once, stored hashed."""
    token, record = await svc.identity.tokens.create(
        service=body.service,
        namespace=body.namespace,
        service_account=body.service_account,
        ttl=body.ttl,
        uses=body.uses,
        actor=who.name,
    )
    await svc.store.audit_append(
        AuditEntry(time.time(), who.name, "created join token", record["spiffeId"], record["id"])
    )
    return record | {"token": token}


@router.get("/tokens")
async def list_tokens(svc: Svc, _who: Editor) -> dict[str, Any]:
    return {"items": await svc.identity.tokens.list()}


@router.delete("/tokens/{token_id}", status_code=204)
async def revoke_token(svc: Svc, who: Editor, token_id: str) -> Response:
    await svc.identity.tokens.revoke(token_id)
    await svc.store.audit_append(AuditEntry(time.time(), who.name, "revoked join token", token_id))
    return Response(status_code=204)


@router.get("/certs")
async def certs(svc: Svc, _who: Viewer) -> dict[str, Any]:
    """The newest certificate of every proxy, its root and expiry."""
    bundle = svc.identity.current_bundle()
    now = time.time()
    items = [
        r
        | {
            "expiresIn": r["notAfter"] - now,
            "rootTrusted": any(root.id == r["root"] for root in bundle.roots),
        }
        for r in await svc.identity.signer.issued()
    ]
    return {"items": items, "bundle": {"digest": bundle.digest, "signingRoot": bundle.signing_root}}


@router.post("/ca/rotate")
async def rotate(svc: Svc, who: Admin) -> dict[str, Any]:
    """Start a root rotation: new root into the bundle now, signing switches once every
    proxy ACKed it, the old root leaves once its last certificate expired."""
    state = await svc.identity.start_rotation(who.name)
    await svc.store.audit_append(
        AuditEntry(time.time(), who.name, "started root rotation", state["new"][:16])
    )
    return await svc.identity.rotation_status()


@router.get("/ca/rotation")
async def rotation(svc: Svc, _who: Viewer) -> dict[str, Any]:
    return await svc.identity.rotation_status()
