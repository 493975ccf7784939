"""What every router needs: the app's services and the caller's identity.

A caller is an admin principal (bearer token with a role) or a workload (a verified
client certificate carrying a SPIFFE ID of this mesh). Admin endpoints take admin
principals only; the endpoints sidecars use take either, and a workload only for its
own identity.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request

from meshd.admin_tokens import AdminTokens, Principal, Role
from meshd.config import Settings
from meshd.control import ControlPlane
from meshd.errors import Forbidden, NotFound, Unauthorized
from meshd.metrics import Metrics
from meshd.rules import Rules
from meshd.spiffe import SpiffeId
from meshd.store.base import Store
from meshd.tls import peer_identity
from registry.base import Registry
from registry.model import Instance

if TYPE_CHECKING:
    from meshd.identity import Identity


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    store: Store
    catalog: Registry
    """The registry ``--registry`` chose (embedded or consul)."""
    control: ControlPlane
    rules: Rules
    tokens: AdminTokens
    metrics: Metrics
    identity: Identity


@dataclass(frozen=True, slots=True)
class Workload:
    """A sidecar that authenticated with its certificate."""

    identity: SpiffeId

    @property
    def name(self) -> str:
        return str(self.identity)

    def owns(self, instance: Instance) -> bool:
        return (instance.namespace, instance.account) == (
            self.identity.namespace,
            self.identity.service_account,
        )


Caller = Principal | Workload


def services(request: Request) -> Services:
    svc: Services = request.app.state.mesh
    return svc


async def authenticate(svc: Services, scope: Any, authorization: str | None) -> Caller:
    """Bearer token first (an operator may poke a proxy's endpoints), then the client
    certificate."""
    if authorization:
        return await svc.tokens.authenticate(authorization)
    identity = peer_identity(scope, svc.settings.trust_domain)
    if identity is not None:
        return Workload(identity)
    raise Unauthorized(
        "no credential: pass an admin token (--token or MESHD_TOKEN; the first one is in "
        "<data-dir>/admin.token), or present a workload certificate of this mesh"
    )


async def caller(request: Request) -> Caller:
    svc = services(request)
    return await authenticate(svc, request.scope, request.headers.get("authorization"))


def role(needed: Role) -> Callable[[Caller], Awaitable[Principal]]:
    async def check(who: Annotated[Caller, Depends(caller)]) -> Principal:
        if isinstance(who, Workload):
            raise Forbidden(
                f"{who.identity} authenticated with a workload certificate; this needs an "
                f"admin token with the {needed} role"
            )
        who.require(needed)
        return who

    return check


def require_owner(who: Caller, instance: Instance, admin_role: Role) -> None:
    """Admins with ``admin_role`` may act on any instance; a workload only on its own."""
    if isinstance(who, Workload):
        if not who.owns(instance):
            raise Forbidden(
                f"{who.identity} may not act for instance {instance.id} of "
                f"{instance.namespace}/{instance.account}"
            )
        return
    who.require(admin_role)


def check_proxy_caller(svc: Services, who: Caller, proxy: str) -> None:
    """Viewers may read any proxy's config; a workload only its own (registered) one."""
    if isinstance(who, Principal):
        who.require("viewer")
        return
    instance = svc.catalog.get(proxy)
    if instance is None:
        raise NotFound(
            f"proxy {proxy!r} is not known: register its instance first "
            "(PUT /v1/instances/{id}), then poll again"
        )
    require_owner(who, instance, "viewer")


Svc = Annotated[Services, Depends(services)]
AnyCaller = Annotated[Caller, Depends(caller)]
Viewer = Annotated[Principal, Depends(role("viewer"))]
Editor = Annotated[Principal, Depends(role("editor"))]
Admin = Annotated[Principal, Depends(role("admin"))]
