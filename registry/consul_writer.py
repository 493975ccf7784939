"""The write side of the Consul registry: register an instance with its TTL check, report
its health, deregister it, through any client of the Consul agent's API (:class:`AgentApi`).

``register`` is ``PUT /v1/agent/service/register`` with a TTL check (``service:<id>``, TTL
``ttl_s``, ``DeregisterCriticalServiceAfter`` ``deregister_after_s``), then a TTL update
with the health and its output; ``report_health`` is ``PUT /v1/agent/check/pass|fail/
service:<id>?note=<output>``; ``deregister`` is ``PUT /v1/agent/service/deregister/<id>``.
The Meta format is in :mod:`registry.consul_meta`.

Two writers use :class:`ConsulWriter`: :class:`registry.consul.ConsulRegistry` (meshd's
REST API with ``--registry consul``, on :class:`registry.consul_http.ConsulClient`) and the
sidecar's ``--registry consul`` registrar (on its own httpx-free client), so an instance is
written the same way whoever writes it, and the registry's Consul tests cover both. This
module loads no I/O library (no httpx, no anyio): the sidecar imports it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Protocol

from registry.consul_api import CheckStatus
from registry.consul_meta import check_id, service_definition
from registry.errors import ConsulError, ConsulNotFound, InstanceNotRegistered, InvalidInstance
from registry.limits import DEFAULT_TTL_S, check_ttl, clip_output
from registry.model import Instance, RegisterOutcome

__all__ = ["MIN_DEREGISTER_AFTER_S", "AgentApi", "ConsulWriter"]

# The registry's own log lines, whichever process writes.
log = logging.getLogger("registry.consul")

MIN_DEREGISTER_AFTER_S = 60.0
"""Consul deregisters critical services after one minute at the least."""


class AgentApi(Protocol):
    """The agent endpoints a writer needs, each raising :mod:`registry.errors`' typed
    errors (``ConsulUnavailable``, ``ConsulPermissionDenied``, ``ConsulNotFound`` from a
    TTL update for a check the agent does not hold, ``ConsulError`` with the status)."""

    @property
    def address(self) -> str:
        """The agent's base URL, for messages."""
        ...

    async def agent_service_register(
        self, definition: Mapping[str, Any], *, replace_existing_checks: bool = True
    ) -> None: ...

    async def agent_service_deregister(self, service_id: str) -> None: ...

    async def agent_check_ttl(self, check_id: str, status: CheckStatus, note: str = "") -> None: ...


class ConsulWriter:
    """Registers instances with one Consul agent and keeps their TTL checks renewed.
    Remembers what it registered, so a registration identical to the last one (the
    heartbeat of a sidecar, over meshd's API) is only a TTL update. ``lookup`` tells
    whether the registry's view already holds an instance (for the log lines and
    :meth:`deregister`'s answer); a writer without a view (the sidecar) knows only what it
    registered itself."""

    def __init__(
        self,
        api: AgentApi,
        *,
        deregister_after_s: float = 300.0,
        lookup: Callable[[str], Instance | None] = lambda _iid: None,
    ) -> None:
        if deregister_after_s < MIN_DEREGISTER_AFTER_S:
            raise ValueError("Consul deregisters critical services after 1 minute at the least")
        self._api = api
        self._deregister_after = deregister_after_s
        self._lookup = lookup
        self._registered: dict[str, tuple[Instance, float]] = {}

    @property
    def address(self) -> str:
        return self._api.address

    async def register(
        self, instance: Instance, *, ttl_s: float = DEFAULT_TTL_S, output: str = ""
    ) -> RegisterOutcome:
        ttl = check_ttl(ttl_s)
        output = clip_output(output)
        iid = instance.id
        known = self._registered.get(iid)
        if (
            known is not None
            and known[1] == ttl
            and replace(known[0], healthy=True) == replace(instance, healthy=True)
        ):
            try:
                await self.report_health(iid, instance.healthy, output)
            except InstanceNotRegistered:
                pass  # the agent lost it (restarted without its data): register again
            else:
                return "refreshed"
        previous = known[0] if known is not None else self._lookup(iid)
        definition = service_definition(
            instance, ttl_s=ttl, deregister_after_s=self._deregister_after
        )
        try:
            await self._api.agent_service_register(definition)
        except ConsulError as exc:
            if exc.status == 400:
                raise InvalidInstance(
                    f"Consul refused instance {iid}: {exc.body or exc}", field="instance"
                ) from exc
            raise
        self._registered[iid] = (instance, ttl)
        # An agent keeps the status of a check that already existed (a re-registration
        # after a TTL expiry stays critical), and takes no output at registration: say
        # both with a TTL update.
        await self._api.agent_check_ttl(
            check_id(iid), "pass" if instance.healthy else "fail", output
        )
        if previous is None:
            log.info(
                "registered instance %s of %s.%s at %s:%d with the Consul agent at %s "
                "(TTL check %s, %s)",
                iid,
                instance.service,
                instance.namespace,
                instance.address,
                instance.port,
                self.address,
                check_id(iid),
                "passing" if instance.healthy else "critical",
            )
            return "created"
        if previous != instance:
            log.info("instance %s changed its registration in Consul", iid)
        return "updated"

    async def report_health(self, instance_id: str, healthy: bool, output: str = "") -> None:
        try:
            await self._api.agent_check_ttl(
                check_id(instance_id), "pass" if healthy else "fail", clip_output(output)
            )
        except ConsulNotFound as exc:
            self._registered.pop(instance_id, None)
            raise InstanceNotRegistered(
                f"the Consul agent at {self.address} has no TTL check for instance "
                f"{instance_id!r} (never registered there, deregistered, or deregistered by "
                "Consul after staying critical): register it again",
                instance_id=instance_id,
            ) from exc
        known = self._registered.get(instance_id)
        if known is not None and known[0].healthy != healthy:
            self._registered[instance_id] = (replace(known[0], healthy=healthy), known[1])
            log.info(
                "instance %s reported %s to Consul%s",
                instance_id,
                "healthy" if healthy else "unhealthy",
                f": {output}" if output else "",
            )

    async def deregister(self, instance_id: str) -> bool:
        """False when neither this writer nor the view held the instance (Consul answers
        200 either way)."""
        known = self._lookup(instance_id) is not None or instance_id in self._registered
        await self._api.agent_service_deregister(instance_id)
        self._registered.pop(instance_id, None)
        log.info("deregistered instance %s from the Consul agent at %s", instance_id, self.address)
        return known
