"""The local Consul agent, for ``--registry consul``: the endpoints that register the
instance with its TTL check, renew the check and deregister, on the sidecar's own HTTP
client (:mod:`sidecar.http_client`; the sidecar does not load httpx).

:class:`ConsulAgentClient` is what :class:`registry.consul_writer.ConsulWriter` writes
through (its :class:`~registry.consul_writer.AgentApi`), as meshd's
:class:`registry.consul.ConsulRegistry` does through :class:`registry.consul_http.
ConsulClient`. The requests, and the typed errors an answer becomes
(:mod:`registry.errors`: ``ConsulUnavailable``, ``ConsulPermissionDenied``,
``ConsulNotFound``...), are :mod:`registry.consul_api`'s, shared with that client: both
say the same to Consul and fail the same way.
"""

from __future__ import annotations

import ssl
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from registry.consul_api import (
    CHECK_TTL_ACCEPT,
    ApiCall,
    CheckStatus,
    base_url,
    body_excerpt,
    check_ttl_call,
    check_ttl_missing,
    encode_json,
    error_for,
    service_deregister_call,
    service_register_call,
    unreachable,
)
from sidecar import __version__, http_client
from sidecar.errors import ConfigError, HttpClientError
from sidecar.http_client import HttpResponse, Send, build_request

__all__ = ["ConsulAgentClient", "consul_tls"]

USER_AGENT = f"mesh-sidecar/{__version__}"


def consul_tls(address: str, ca_file: Path | None) -> ssl.SSLContext | None:
    """The context that verifies an ``https://`` agent: with ``ca_file`` (``--consul-ca-
    file``), else the system's CAs; None for ``http://``. Reads files: call it from a
    worker thread. A CA file that cannot be loaded is a :class:`ConfigError`."""
    if not base_url(address).startswith("https://"):
        return None
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"--consul-ca-file (or MESH_CONSUL_CA_FILE): cannot load {ca_file}: {exc}; give "
            "the PEM bundle of the CA that signed the Consul agent's certificate"
        ) from exc


class ConsulAgentClient:
    """Requests to one Consul agent, each on a connection of its own (a few a minute: a
    registration, then a TTL update every health interval). ``address`` is ``host:port``
    or a URL; ``token`` goes in ``X-Consul-Token``; ``datacenter`` in ``?dc=``; ``tls``
    verifies an ``https://`` agent (:func:`consul_tls`); ``timeout_s`` bounds each
    request; ``send`` is for tests."""

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        datacenter: str | None = None,
        tls: ssl.SSLContext | None = None,
        timeout_s: float = 10.0,
        send: Send | None = None,
    ) -> None:
        self.address = base_url(address, https=tls is not None)
        self.datacenter = datacenter
        self.timeout_s = timeout_s
        self._headers = [("User-Agent", USER_AGENT)]
        if token:
            self._headers.append(("X-Consul-Token", token))
        self._tls = tls
        # A TTL update every health interval: keep the connection alive between them.
        self._pool = http_client.ConnectionPool()
        self._send = send or self._pool.send

    async def aclose(self) -> None:
        """Close the idle connection(s) to the agent."""
        await self._pool.aclose()

    async def agent_service_register(
        self, definition: Mapping[str, Any], *, replace_existing_checks: bool = True
    ) -> None:
        """``PUT /v1/agent/service/register`` (see :func:`registry.consul_api.
        service_register_call`); a 400 (invalid Meta) is a ``ConsulError``."""
        await self._call(
            service_register_call(definition, replace_existing_checks=replace_existing_checks)
        )

    async def agent_service_deregister(self, service_id: str) -> None:
        await self._call(service_deregister_call(service_id))

    async def agent_check_ttl(self, check_id: str, status: CheckStatus, note: str = "") -> None:
        """Set the TTL check's status and output; ``ConsulNotFound`` when the agent has no
        such check (it lost the service, or reaped it after it stayed critical)."""
        call = check_ttl_call(check_id, status, note)
        response = await self._call(call, accept=CHECK_TTL_ACCEPT)
        if response.status in CHECK_TTL_ACCEPT:
            body = body_excerpt(response.text)
            missing = check_ttl_missing(self.address, check_id, call, response.status, body)
            raise missing or error_for(self.address, call.method, call.path, response.status, body)

    async def _call(self, call: ApiCall, *, accept: Collection[int] = ()) -> HttpResponse:
        """Send ``call``; the answer on 2xx or a status in ``accept``, else the typed error."""
        params = list(call.params)
        if self.datacenter:
            params.append(("dc", self.datacenter))
        request = build_request(
            call.method,
            self.address + call.path,
            params=params,
            body=encode_json(call.body) if call.body is not None else None,
            headers=self._headers,
            tls=self._tls,
            timeout_s=self.timeout_s,
            connect_timeout_s=self.timeout_s,
        )
        try:
            response = await self._send(request)
        except HttpClientError as exc:
            raise unreachable(self.address, call.method, call.path, exc.reason) from exc
        if 200 <= response.status < 300 or response.status in accept:
            return response
        raise error_for(
            self.address, call.method, call.path, response.status, body_excerpt(response.text)
        )
