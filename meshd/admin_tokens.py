"""Admin bearer tokens with roles (admin > editor > viewer), stored hashed.

A token is 256 random bits, so an unsalted SHA-256 is enough to make the stored
form useless to a thief (as GitHub does); the record id is a prefix of that hash,
so a lookup needs no scan. Lookups are cached for a few seconds because every API
call (and every config poll) authenticates; revocation takes effect within that TTL.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from meshd.errors import BadRequest, Forbidden, NotFound, Unauthorized
from meshd.store.base import Store

Role = Literal["admin", "editor", "viewer"]
ROLES: tuple[Role, ...] = ("viewer", "editor", "admin")
_RANK = {role: i for i, role in enumerate(ROLES)}
COLLECTION = "admin-tokens"
TOKEN_PREFIX = "mshd_"  # noqa: S105 — a marker, not a secret


@dataclass(frozen=True, slots=True)
class Principal:
    token_id: str
    name: str
    role: Role

    def require(self, needed: Role) -> None:
        if _RANK[self.role] < _RANK[needed]:
            raise Forbidden(
                f"token {self.name!r} has role {self.role}; this needs {needed} or higher. "
                "Ask an admin for a token with that role (meshctl admin-token create)"
            )


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_id(token: str) -> str:
    return token_digest(token)[:16]


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def check_role(role: str) -> Role:
    if role not in _RANK:
        raise BadRequest(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    return role


class AdminTokens:
    def __init__(self, store: Store, cache_ttl_s: float = 5.0) -> None:
        self._store = store
        self._ttl = cache_ttl_s
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    async def ensure_bootstrap(self, bootstrap: str | None, data_dir: Path) -> str | None:
        """Make sure an admin token exists. Returns a newly generated token (to print once)
        or None. A given ``bootstrap`` token is registered as admin every start."""
        if bootstrap:
            await self._save(bootstrap, name="bootstrap", role="admin", actor="meshd")
            return None
        if await self._store.record_list(COLLECTION):
            return None
        token = new_token()
        await self._save(token, name="bootstrap", role="admin", actor="meshd")
        path = data_dir / "admin.token"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        return token

    async def create(self, name: str, role: str, actor: str) -> tuple[str, dict[str, Any]]:
        if not name:
            raise BadRequest("a token needs a name, e.g. 'ci' or 'alice'")
        token = new_token()
        record = await self._save(token, name=name, role=check_role(role), actor=actor)
        return token, record

    async def _save(self, token: str, *, name: str, role: Role, actor: str) -> dict[str, Any]:
        tid = token_id(token)
        record: dict[str, Any] = {
            "id": tid,
            "name": name,
            "role": role,
            "hash": token_digest(token),
            "created_at": time.time(),
            "created_by": actor,
        }
        await self._store.record_put(COLLECTION, tid, record)
        self._cache.pop(tid, None)
        return public(record)

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthorized(
                "no bearer token: pass --token or set MESHD_TOKEN (the first admin token is in "
                "<data-dir>/admin.token)"
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        token = token.strip()
        tid = token_id(token)
        now = time.monotonic()
        cached = self._cache.get(tid)
        if cached is not None and now - cached[0] < self._ttl:
            principal = cached[1]
        else:
            record = await self._store.record_get(COLLECTION, tid)
            principal = _principal(record, token)
            self._cache[tid] = (now, principal)
        if principal is None:
            raise Unauthorized("unknown or revoked token; ask an admin for a new one")
        return principal

    async def list(self) -> list[dict[str, Any]]:
        return sorted(
            (public(rec) for _, rec in await self._store.record_list(COLLECTION)),
            key=lambda r: (r["name"], r["id"]),
        )

    async def revoke(self, tid: str) -> None:
        if not await self._store.record_delete(COLLECTION, tid):
            raise NotFound(
                f"no admin token with id {tid!r}; list them with meshctl admin-token list"
            )
        self._cache.pop(tid, None)


def _principal(record: Mapping[str, Any] | None, token: str) -> Principal | None:
    if record is None or not hmac.compare_digest(str(record.get("hash", "")), token_digest(token)):
        return None
    return Principal(
        token_id=str(record["id"]), name=str(record["name"]), role=check_role(str(record["role"]))
    )


def public(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "hash"}
