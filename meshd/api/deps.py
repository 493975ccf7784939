"""What every router needs: the app's services and the caller's identity."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from meshd.admin_tokens import AdminTokens, Principal, Role
from meshd.config import Settings
from meshd.control import ControlPlane
from meshd.metrics import Metrics
from meshd.rules import Rules
from meshd.store.base import Store
from registry.embedded import EmbeddedCatalog


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    store: Store
    catalog: EmbeddedCatalog
    control: ControlPlane
    rules: Rules
    tokens: AdminTokens
    metrics: Metrics


def services(request: Request) -> Services:
    svc: Services = request.app.state.mesh
    return svc


async def caller(request: Request) -> Principal:
    return await services(request).tokens.authenticate(request.headers.get("authorization"))


def role(needed: Role) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(principal: Annotated[Principal, Depends(caller)]) -> Principal:
        principal.require(needed)
        return principal

    return check


Svc = Annotated[Services, Depends(services)]
Viewer = Annotated[Principal, Depends(role("viewer"))]
Editor = Annotated[Principal, Depends(role("editor"))]
Admin = Annotated[Principal, Depends(role("admin"))]
