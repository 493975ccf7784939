"""Liveness, readiness and metrics. Unauthenticated, like istiod's monitoring port:
they reveal no rules."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from meshd.api.deps import Svc

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(svc: Svc) -> Response:
    """Ready once the store's state has been read and compiled."""
    report = svc.control.last_report
    body: dict[str, Any] = {
        "status": "ready" if svc.control.ready.is_set() else "starting",
        "store": svc.store.backend,
    }
    if report is not None:
        body["lastCompile"] = {
            "at": report.at,
            "durationMs": round(report.duration_s * 1000, 1),
            "proxies": report.proxies,
            "proxiesWithErrors": report.errors,
            "storeIndex": report.store_index,
        }
    return JSONResponse(body, status_code=200 if svc.control.ready.is_set() else 503)


@router.get("/metrics")
async def metrics(svc: Svc) -> Response:
    hub = svc.control.hub

    def refresh() -> None:
        svc.metrics.proxies_connected.set(
            sum(1 for s in hub.states() if hub.status(s)["connected"])
        )

    return Response(svc.metrics.render(refresh), media_type="text/plain; version=0.0.4")
