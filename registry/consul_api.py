"""Consul's HTTP API as data: its address, the agent endpoints a registrar writes to, and
how an answer maps to the typed errors of :mod:`registry.errors`. Pure: no I/O.

Two clients send these requests: :class:`registry.consul_http.ConsulClient` (httpx; meshd)
and the sidecar's :class:`sidecar.consul_agent.ConsulAgentClient` (the sidecar's own
Trio HTTP client: it does not load httpx, for its memory). Both build the agent requests
and read the answers here, so they say the same to Consul and raise the same errors.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from registry.errors import (
    ConsulError,
    ConsulNotFound,
    ConsulPermissionDenied,
    ConsulUnavailable,
    TxnTooLarge,
)

__all__ = [
    "CHECK_TTL_ACCEPT",
    "DEFAULT_ADDRESS",
    "ApiCall",
    "CheckStatus",
    "base_url",
    "body_excerpt",
    "check_ttl_call",
    "check_ttl_missing",
    "encode_json",
    "error_for",
    "service_deregister_call",
    "service_register_call",
    "unreachable",
]

DEFAULT_ADDRESS = "127.0.0.1:8500"

CheckStatus = Literal["pass", "warn", "fail"]
"""A TTL check update: ``pass`` (passing), ``warn`` (warning), ``fail`` (critical)."""

CHECK_TTL_ACCEPT = (404, 500)
"""The statuses a TTL update's answer is read for rather than raised on: Consul 1.8 says
"unknown check" with a 500 or a 404 (see :func:`check_ttl_missing`)."""

BODY_EXCERPT = 2000
"""How much of an error answer's body an error keeps."""


def base_url(address: str, *, https: bool = False) -> str:
    """``127.0.0.1:8500`` -> ``http://127.0.0.1:8500``; a URL with a scheme is kept
    (without a trailing slash). Accepts what ``CONSUL_HTTP_ADDR`` accepts."""
    address = address.strip().rstrip("/")
    if not address:
        raise ValueError("empty Consul address: use host:port, e.g. 127.0.0.1:8500")
    if "://" in address:
        scheme = address.split("://", 1)[0]
        if scheme not in ("http", "https"):
            raise ValueError(
                f"unsupported scheme in Consul address {address!r}: use http:// or https://"
            )
        return address
    return f"{'https' if https else 'http'}://{address}"


def encode_json(body: Any) -> bytes:
    """A request body as Consul gets it (compact JSON)."""
    return json.dumps(body, separators=(",", ":")).encode()


def body_excerpt(text: str) -> str:
    """The start of an answer's body, as errors keep it."""
    return text[:BODY_EXCERPT].strip()


# --- the agent endpoints a registrar writes to ----------------------------------------------


@dataclass(frozen=True, slots=True)
class ApiCall:
    """One request: ``path`` is already quoted; ``params`` the query (a ``""`` value is a
    flag: ``?recurse``); ``body`` JSON to send, None for none."""

    method: str
    path: str
    params: tuple[tuple[str, str], ...] = ()
    body: Any = None


def service_register_call(
    definition: Mapping[str, Any], *, replace_existing_checks: bool = True
) -> ApiCall:
    """``PUT /v1/agent/service/register``: add or replace a service on the agent
    (``definition`` in Consul's JSON form, as :func:`registry.consul_meta.
    service_definition` writes it). With ``replace_existing_checks`` checks missing from
    the definition are removed."""
    params = (("replace-existing-checks", "true"),) if replace_existing_checks else ()
    return ApiCall("PUT", "/v1/agent/service/register", params, dict(definition))


def service_deregister_call(service_id: str) -> ApiCall:
    """``PUT /v1/agent/service/deregister/<id>`` (Consul 1.8 answers 200 for an id it
    does not know)."""
    return ApiCall("PUT", "/v1/agent/service/deregister/" + quote(service_id, safe=""))


def check_ttl_call(check_id: str, status: CheckStatus, note: str = "") -> ApiCall:
    """``PUT /v1/agent/check/<pass|warn|fail>/<check id>?note=...``: set a TTL check's
    status and output and restart its TTL. Read the answer with :data:`CHECK_TTL_ACCEPT`
    and :func:`check_ttl_missing`."""
    path = f"/v1/agent/check/{status}/" + quote(check_id, safe="")
    return ApiCall("PUT", path, (("note", note),) if note else ())


def check_ttl_missing(
    address: str, check_id: str, call: ApiCall, status: int, body: str
) -> ConsulNotFound | None:
    """The error for a TTL update's answer (``status`` one of :data:`CHECK_TTL_ACCEPT`,
    ``body`` its excerpt) that says the agent has no TTL check of that id; None when it
    says something else (then it is :func:`error_for`'s)."""
    lowered = body.lower()
    if "unknown check" not in lowered and "does not have associated ttl" not in lowered:
        return None
    return ConsulNotFound(
        f"the Consul agent at {address} has no TTL check {check_id!r} "
        f"({body}); register the service (with its check) again",
        address=address,
        method=call.method,
        path=call.path,
        status=status,
        body=body,
    )


# --- errors -----------------------------------------------------------------------------------


def unreachable(address: str, method: str, path: str, reason: str) -> ConsulUnavailable:
    """No answer at all (refused, timeout, TLS failure...): ``reason`` says which."""
    return ConsulUnavailable(
        f"Consul at {address} is unreachable ({method} {path}: {reason}); "
        "check that Consul is running and that the address is right",
        address=address,
        method=method,
        path=path,
    )


def error_for(address: str, method: str, path: str, status: int, body: str) -> ConsulError:
    """The typed error for an answer that is not a success (``body``: its excerpt)."""
    where = f"{method} {path}"

    def make(cls: type[ConsulError], message: str) -> ConsulError:
        return cls(message, address=address, method=method, path=path, status=status, body=body)

    if status == 403:
        return make(
            ConsulPermissionDenied,
            f"Consul at {address} denied {where} (403: {body or 'permission denied'}); "
            "check that the ACL token (X-Consul-Token) grants this permission",
        )
    if status == 413:
        return make(
            TxnTooLarge,
            f"Consul at {address} refused {where} as too large (413: {body}); "
            "send fewer operations or smaller values per request",
        )
    if status == 429 or status >= 500:
        return make(
            ConsulUnavailable,
            f"Consul at {address} could not serve {where} ({status}: {body}); "
            "check the Consul servers' health and that a leader is elected",
        )
    return make(ConsulError, f"Consul at {address} rejected {where} ({status}: {body})")
