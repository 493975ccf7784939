"""NACKs (``/v1/xds/{proxy}/ack``) and proxy status (``/v1/proxies``). The config
long-poll itself is ``meshd.api.xds_poll``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel

from meshd.api.deps import AnyCaller, Svc, Viewer, check_proxy_caller
from meshd.compile import codec
from meshd.errors import NotFound

router = APIRouter(prefix="/v1", tags=["proxies"])


class AckBody(BaseModel):
    version: str
    error: str | None = None


@router.post("/xds/{proxy}/ack", status_code=204)
async def ack(svc: Svc, who: AnyCaller, proxy: str, body: AckBody) -> Response:
    """ACK a version, or NACK it with ``error`` (the proxy keeps its last good config).
    A viewer, or the proxy's own sidecar."""
    check_proxy_caller(svc, who, proxy)
    svc.control.hub.ack(proxy, body.version, body.error)
    if body.error:
        svc.metrics.nacks.inc()
    return Response(status_code=204)


@router.get("/proxies")
async def proxies(svc: Svc, _who: Viewer) -> dict[str, Any]:
    hub = svc.control.hub
    return {"items": [hub.status(s) for s in hub.states()]}


@router.get("/proxies/{proxy}")
async def proxy(svc: Svc, _who: Viewer, proxy: str) -> dict[str, Any]:
    hub = svc.control.hub
    status = hub.status(hub.get(proxy))
    instance = svc.catalog.get(proxy)
    status["instance"] = codec.to_plain(instance) if instance is not None else None
    return status


@router.get("/proxies/{proxy}/config")
async def proxy_config(svc: Svc, _who: Viewer, proxy: str) -> dict[str, Any]:
    state = svc.control.hub.get(proxy)
    if state.snapshot is None:
        detail = "; ".join(state.errors) or "its first config is still being compiled"
        raise NotFound(f"proxy {proxy!r} has no config yet: {detail}")
    plain: dict[str, Any] = codec.to_plain(state.snapshot)
    return plain
