"""``GET /v1/xds/{proxy}`` served straight from ASGI.

This is the one request every sidecar makes continuously, and a push to N proxies
is N of them at once; FastAPI's dependency solving and routing cost more than the
poll itself (measured with ``make bench``), so this path bypasses them. It also
watches for the client going away, so a poll parked for a vanished sidecar ends at
once instead of at its wait timeout.

The protocol (see ``meshd.xds.hub``): 200 with the snapshot and ``X-Mesh-Version``
when the proxy's snapshot differs from ``version``; 304 after ``wait`` seconds.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meshd.api.deps import Services, authenticate, check_proxy_caller
from meshd.api.problems import problem
from meshd.errors import BadRequest, MeshError

PREFIX = "/v1/xds/"
DEFAULT_WAIT_S = 30.0
# A push sends one snapshot to every proxy at once. Over TLS, asyncio keeps what it was
# given to send (and its encryption) in memory until the socket takes it, so 1,000
# proxies x 250 KiB meant 400+ MiB at the peak (measured with make bench). Bodies go
# out in slices, which lets uvicorn's per-connection backpressure work, and only so
# many bodies at a time; the CPU spent encrypting is the same either way.
SLICE = 64 * 1024
SENDING_AT_ONCE = 32


def _params(query: bytes) -> tuple[str, float]:
    version, wait = "", DEFAULT_WAIT_S
    for key, value in parse_qsl(query.decode("latin-1")):
        if key == "version":
            version = value
        elif key == "wait":
            try:
                wait = float(value)
            except ValueError:
                raise BadRequest(f"wait={value!r} is not a number of seconds") from None
            if not 0 <= wait < float("inf"):
                raise BadRequest(f"wait={value!r} must be a non-negative number of seconds")
    return version, wait


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class XdsPollMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._sending: anyio.Semaphore | None = None  # made on first use, in the event loop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if (
            scope["type"] != "http"
            or not path.startswith(PREFIX)
            or "/" in path[len(PREFIX) :]
            or scope["method"] != "GET"
        ):
            await self.app(scope, receive, send)
            return
        try:
            await self._poll(scope, receive, send, unquote(path[len(PREFIX) :]))
        except MeshError as exc:
            response = problem(exc.status, exc.slug, exc.title, exc.detail, path, exc.errors)
            await response(scope, receive, send)

    async def _poll(self, scope: Scope, receive: Receive, send: Send, proxy: str) -> None:
        svc: Services = scope["app"].state.mesh
        who = await authenticate(svc, scope, _header(scope, b"authorization"))
        check_proxy_caller(svc, who, proxy)
        version, wait = _params(scope["query_string"])
        wait = min(wait, svc.settings.poll_wait_max_s)
        registered = svc.catalog.get(proxy) is not None
        found = None
        error: MeshError | None = None
        async with anyio.create_task_group() as tg:

            async def until_disconnect() -> None:
                message: Message = await receive()
                while message["type"] != "http.disconnect":
                    message = await receive()
                tg.cancel_scope.cancel()

            tg.start_soon(until_disconnect)
            try:
                found = await svc.control.hub.poll(proxy, version, wait, registered=registered)
            except MeshError as exc:  # kept out of the task group's exception group
                error = exc
            tg.cancel_scope.cancel()
        if error is not None:
            raise error
        if found is None:
            await send({
                "type": "http.response.start",
                "status": 304,
                "headers": [(b"x-mesh-version", version.encode())],
            })  # fmt: skip
            await send({"type": "http.response.body", "body": b""})
            return
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(found.size).encode()),
                (b"x-mesh-version", found.version.encode()),
                (b"etag", f'"{found.version}"'.encode()),
            ],
        })  # fmt: skip
        if self._sending is None:
            self._sending = anyio.Semaphore(SENDING_AT_ONCE)
        async with self._sending:
            for chunk in found.chunks:
                for start in range(0, len(chunk), SLICE):
                    piece = chunk[start : start + SLICE] if len(chunk) > SLICE else chunk
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
