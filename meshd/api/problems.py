"""Errors at the HTTP boundary become RFC 9457 problem documents.

Every problem names the failing field(s) in ``errors`` so meshctl can print
``spec.http[0].route: weights sum to 90; they must sum to 100``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from meshd.errors import FieldError, MeshError

log = logging.getLogger("meshd.api")
PROBLEM_JSON = "application/problem+json"


def problem(
    status: int,
    slug: str,
    title: str,
    detail: str,
    instance: str,
    errors: tuple[FieldError, ...] = (),
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:meshd:problem:{slug}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
    }
    if errors:
        body["errors"] = [e.to_json() for e in errors]
    if extra:
        body.update(extra)
    headers = {"WWW-Authenticate": 'Bearer realm="meshd"'} if status == 401 else {}
    if extra and "retryAfter" in extra:
        headers["Retry-After"] = str(max(1, round(float(extra["retryAfter"]))))
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _loc_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def install(app: FastAPI) -> None:
    @app.exception_handler(MeshError)
    async def mesh_error(request: Request, exc: MeshError) -> JSONResponse:
        if exc.status >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, exc)
        extra = {"retryAfter": exc.context["retry_after"]} if "retry_after" in exc.context else None
        return problem(
            exc.status, exc.slug, exc.title, exc.detail, request.url.path, exc.errors, extra
        )

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = tuple(
            FieldError(_loc_path(tuple(e.get("loc", ()))), str(e.get("msg", "invalid")))
            for e in exc.errors()
        )
        return problem(
            400, "bad-request", "Bad request", "the request is malformed", request.url.path, errors
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, "http", str(exc.detail), str(exc.detail), request.url.path)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s crashed", request.method, request.url.path)
        return problem(
            500,
            "internal",
            "Internal error",
            f"{type(exc).__name__}: {exc}. This is a bug in meshd; "
            "the server log has the traceback",
            request.url.path,
        )
