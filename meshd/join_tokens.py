"""Join tokens: the credential a sidecar trades for its first certificate.

A token is scoped to one workload identity (namespace + service account, and the
service it is for), expires, may be single-use, and can be revoked. Only its hash is
stored. Single use is enforced across replicas by creating a "used" record with
create-only semantics: of two replicas redeeming one token at once, one wins.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from meshd.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized
from meshd.schema.base import duration_ms
from meshd.spiffe import SpiffeId, spiffe_id
from meshd.store.base import Store

COLLECTION = "join-tokens"
USED = "join-tokens-used"
TOKEN_PREFIX = "mjt_"  # noqa: S105 — a marker, not a secret
DEFAULT_TTL = "1h"
MAX_TTL_S = 30 * 24 * 3600
Uses = Literal["single", "multi"]


@dataclass(frozen=True, slots=True)
class JoinGrant:
    """What a valid join token allows: certificates for ``identity`` (and registering
    instances of ``service``)."""

    token_id: str
    identity: SpiffeId
    service: str
    uses: Uses


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _id(token: str) -> str:
    return _digest(token)[:16]


def public(record: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in record.items() if k != "hash"}
    out["expired"] = time.time() >= float(record["expires_at"])
    return out


class JoinTokens:
    def __init__(self, store: Store, trust_domain: str) -> None:
        self._store = store
        self._trust_domain = trust_domain

    async def create(
        self,
        *,
        service: str,
        namespace: str,
        service_account: str | None,
        ttl: str,
        uses: str,
        actor: str,
    ) -> tuple[str, dict[str, Any]]:
        if uses not in ("single", "multi"):
            raise BadRequest(f"uses {uses!r}: use 'single' (default) or 'multi'")
        try:
            ttl_s = duration_ms(ttl) / 1000
            identity = spiffe_id(self._trust_domain, namespace, service_account or service)
            spiffe_id(self._trust_domain, namespace, service)  # the service name is a label too
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        if not 0 < ttl_s <= MAX_TTL_S:
            raise BadRequest(f"ttl {ttl!r} must be positive and at most 720h")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = time.time()
        record: dict[str, Any] = {
            "id": _id(token),
            "hash": _digest(token),
            "service": service,
            "namespace": namespace,
            "serviceAccount": identity.service_account,
            "spiffeId": str(identity),
            "uses": uses,
            "createdAt": now,
            "createdBy": actor,
            "expires_at": now + ttl_s,
        }
        await self._store.record_put(COLLECTION, record["id"], record, create_only=True)
        return token, public(record)

    async def list(self) -> list[dict[str, Any]]:
        used = {rid for rid, _ in await self._store.record_list(USED)}
        items = [
            public(r) | {"used": r["id"] in used}
            for _, r in await self._store.record_list(COLLECTION)
        ]
        return sorted(items, key=lambda r: (r["namespace"], r["service"], r["createdAt"]))

    async def revoke(self, token_id: str) -> None:
        if not await self._store.record_delete(COLLECTION, token_id):
            raise NotFound(f"no join token with id {token_id!r}; list them with meshctl token list")

    async def check(self, token: str) -> JoinGrant:
        """The grant of a usable token; Unauthorized for an unknown one, Forbidden (with
        what to do) for an expired, revoked or used one."""
        record = await self._store.record_get(COLLECTION, _id(token))
        if record is None or not hmac.compare_digest(str(record["hash"]), _digest(token)):
            raise Unauthorized(
                "unknown or revoked join token; create one with "
                "meshctl token create --service SERVICE --namespace NAMESPACE"
            )
        if time.time() >= float(record["expires_at"]):
            raise Forbidden(
                f"join token {record['id']} for {record['service']}.{record['namespace']} has "
                "expired; create a new one with meshctl token create"
            )
        if record["uses"] == "single" and await self._store.record_get(USED, record["id"]):
            raise Forbidden(
                f"join token {record['id']} was single-use and has been used; create a new one "
                "(or a --uses multi token for instances that come and go)"
            )
        identity = spiffe_id(self._trust_domain, record["namespace"], record["serviceAccount"])
        return JoinGrant(record["id"], identity, record["service"], record["uses"])

    async def consume(self, grant: JoinGrant, proxy: str) -> None:
        """Mark a single-use token used; Forbidden if another request got there first."""
        if grant.uses != "single":
            return
        try:
            await self._store.record_put(
                USED, grant.token_id, {"at": time.time(), "proxy": proxy}, create_only=True
            )
        except Conflict:
            raise Forbidden(
                f"join token {grant.token_id} was single-use and has just been used by another "
                "request; create a new one"
            ) from None
