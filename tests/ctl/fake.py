"""A fake meshd for meshctl's unit tests (``httpx.MockTransport``, no sockets) and ``run``,
which runs ``main([...])`` against it with output captured.

meshd serves HTTPS only, so every run needs roots to verify it: the ``fake`` fixture
(conftest.py) gives it a HOME holding a bundle pinned for the default server, and tags
every request with what its client verifies with, so that a fake with ``serving_root``
can play the TLS handshake: a request from a client whose roots do not include
``serving_root`` fails as a real one would, before anything reaches the server.
"""

from __future__ import annotations

import io
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from meshd.ctl.main import main
from tests.ctl.pki import CaRoot

TOKEN = "mshd_test"
DEFAULT_SERVER = "https://127.0.0.1:15012"
VERIFY = "meshctl-test-verify"
"""The request extension the ``fake`` fixture tags every request with: what its client
verifies the server with (False: nothing; an SSLContext: those roots)."""
Answer = tuple[int, Any] | Callable[[httpx.Request], httpx.Response]


def problem(
    status: int, detail: str, errors: list[dict[str, str]] | None = None
) -> tuple[int, Any]:
    body: dict[str, Any] = {
        "type": "urn:meshd:problem:x",
        "title": "t",
        "status": status,
        "detail": detail,
        "instance": "/",
    }
    if errors:
        body["errors"] = errors
    return status, body


def verify_error(request: httpx.Request, message: str, code: int = 20) -> httpx.ConnectError:
    """What httpx raises when the server's certificate does not verify."""
    cause = ssl.SSLCertVerificationError(
        1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message} (_ssl.c:1006)"
    )
    cause.verify_message = message
    cause.verify_code = code
    error = httpx.ConnectError(str(cause), request=request)
    error.__cause__ = cause
    return error


@dataclass
class FakeMeshd:
    """Answers by (method, path); records every request. With ``serving_root`` set, it
    plays TLS too: a request from a client verifying with roots that do not include
    ``serving_root`` fails the way a real handshake would (nothing reaches the server)."""

    home: Path
    routes: dict[tuple[str, str], Answer] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    serving_root: CaRoot | None = None
    hostname_mismatch: bool = False
    refused: list[httpx.Request] = field(default_factory=list)

    def on(self, method: str, path: str, answer: Answer) -> None:
        self.routes[(method, path)] = answer

    def handshake(self, request: httpx.Request) -> None:
        verify = request.extensions.get(VERIFY)
        if self.serving_root is None or not isinstance(verify, ssl.SSLContext):
            return
        if self.serving_root.der not in verify.get_ca_certs(binary_form=True):
            self.refused.append(request)
            raise verify_error(request, "unable to get local issuer certificate")
        if self.hostname_mismatch:
            self.refused.append(request)
            raise verify_error(
                request,
                f"Hostname mismatch, certificate is not valid for '{request.url.host}'.",
                code=62,
            )

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.handshake(request)
        self.requests.append(request)
        answer = self.routes.get((request.method, request.url.path))
        if answer is None:
            return httpx.Response(
                404, json={"detail": f"no fake route {request.method} {request.url.path}"}
            )
        if callable(answer):
            return answer(request)
        status, body = answer
        if body is None:
            return httpx.Response(status)
        media = "application/problem+json" if status >= 400 else "application/json"
        return httpx.Response(status, content=json.dumps(body), headers={"content-type": media})


@dataclass
class Result:
    code: int
    out: str
    err: str


def run(
    fake: FakeMeshd,
    *argv: str,
    stdin: str = "",
    env: dict[str, str] | None = None,
    token: bool = True,
    sleep: Callable[[float], None] | None = None,
) -> Result:
    out, err = io.StringIO(), io.StringIO()
    environ = {
        "HOME": str(fake.home),
        **({"MESHD_TOKEN": TOKEN} if token else {}),
        **(env or {}),
    }
    code = main(
        list(argv),
        env=environ,
        stdin=io.StringIO(stdin),
        stdout=out,
        stderr=err,
        transport=httpx.MockTransport(fake.handle),
        sleep=sleep or (lambda _s: None),
    )
    assert "Traceback" not in err.getvalue()
    return Result(code, out.getvalue(), err.getvalue())
