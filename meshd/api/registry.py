"""Registration and discovery over REST, with either registry backend.

``PUT /v1/instances/{id}`` registers an instance and is also its heartbeat: a sidecar
sends its whole registration every check interval with ``healthy`` (its app's health
now), ``ttlSeconds`` (how long the registration lasts without another heartbeat; twice
the interval is usual) and ``healthOutput`` (the check's output). With ``--registry
embedded`` meshd keeps the catalog; with ``--registry consul`` the request becomes
Consul agent calls (register with a TTL check, or a check pass/fail for a heartbeat), so
the API works the same with either backend. ``GET /v1/services[/{name}]`` shows the
catalog: instances, health, labels, the backend, and which proxies see each service.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from meshd.api.deps import AnyCaller, Services, Svc, Viewer, require_owner
from meshd.compile import codec
from meshd.errors import BadRequest, Conflict, FieldError, MeshError, NotFound
from meshd.schema.base import Namespace, ResourceName
from registry.base import DEFAULT_TTL_S, MAX_TTL_S, MIN_TTL_S
from registry.errors import (
    ConsulError,
    ConsulPermissionDenied,
    InstanceNotRegistered,
    InvalidInstance,
    RegistryError,
)
from registry.model import Instance, RegistryView, sorted_labels

router = APIRouter(prefix="/v1", tags=["registry"])

VISIBLE_WAIT_S = 5.0
"""How long a registration waits to show in the catalog (Consul: until meshd's watch
sees it) before answering, so a client can read its own write."""
SEEN_BY_IN_LISTS = 10
"""Proxy ids listed per service in ``GET /v1/services`` (the count is always whole)."""


class RegistryUnavailable(MeshError):
    """The registry backend (Consul) cannot be reached or refused the request."""

    status = 503
    slug = "registry-unavailable"
    title = "Registry unavailable"


class InstanceBody(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    service: ResourceName
    namespace: Namespace = "default"
    address: str
    port: int = Field(ge=1, le=65535, description="where peers connect: the sidecar's inbound port")
    app_port: int = Field(ge=1, le=65535)
    protocol: Literal["http", "http2", "grpc", "tcp"] = "http"
    labels: dict[str, str] = Field(default_factory=dict)
    service_account: str = ""
    meshed: bool = True
    healthy: bool = Field(True, description="the app's health now (its last check)")
    ttl_seconds: float = Field(
        DEFAULT_TTL_S,
        ge=MIN_TTL_S,
        le=MAX_TTL_S,
        description="the registration expires this long after the last heartbeat",
    )
    health_output: str = Field("", max_length=4096, description="the last check's output")


def _translate(exc: RegistryError, doing: str) -> MeshError:
    if isinstance(exc, InvalidInstance):
        return BadRequest(
            f"cannot {doing}: {exc}", errors=[FieldError(exc.field, str(exc))], field=exc.field
        )
    if isinstance(exc, InstanceNotRegistered):
        return NotFound(str(exc))
    if isinstance(exc, ConsulPermissionDenied):
        return RegistryUnavailable(
            f"cannot {doing}: {exc}; meshd's --consul-token needs service:write on the "
            "service and node:read"
        )
    if isinstance(exc, ConsulError):
        return RegistryUnavailable(f"cannot {doing}: {exc}; retry once Consul is reachable")
    return RegistryUnavailable(f"cannot {doing}: {exc}")


@router.put("/instances/{instance_id}")
async def register(
    svc: Svc, who: AnyCaller, instance_id: str, body: InstanceBody
) -> dict[str, Any]:
    """Register an instance, or heartbeat it (the same body again). An editor, or the
    instance's own sidecar (its certificate's namespace and service account must be the
    instance's, and those of the instance it replaces)."""
    if not instance_id or "/" in instance_id:
        raise BadRequest(f"instance id {instance_id!r} is not valid; use e.g. 'reviews-1.default'")
    instance = Instance(
        id=instance_id,
        service=body.service,
        namespace=body.namespace,
        address=body.address,
        port=body.port,
        app_port=body.app_port,
        protocol=body.protocol,
        labels=sorted_labels(body.labels),
        service_account=body.service_account,
        meshed=body.meshed,
        healthy=body.healthy,
    )
    require_owner(who, instance, "editor")
    existing = svc.catalog.get(instance_id)
    if existing is not None:
        require_owner(who, existing, "editor")
    try:
        outcome = await svc.catalog.register(
            instance, ttl_s=body.ttl_seconds, output=body.health_output
        )
    except RegistryError as exc:
        raise _translate(exc, f"register instance {instance_id}") from exc
    if outcome != "refreshed":
        await svc.catalog.wait_visible(instance_id, instance, timeout_s=VISIBLE_WAIT_S)
    out: dict[str, Any] = codec.to_plain(instance)
    out.update(outcome=outcome, registry=svc.catalog.backend, ttlSeconds=body.ttl_seconds)
    return out


@router.delete("/instances/{instance_id}", status_code=204)
async def deregister(svc: Svc, who: AnyCaller, instance_id: str) -> Response:
    instance = svc.catalog.get(instance_id)
    if instance is None:
        raise NotFound(f"no instance {instance_id!r} is registered")
    require_owner(who, instance, "editor")
    try:
        await svc.catalog.deregister(instance_id)
    except RegistryError as exc:
        raise _translate(exc, f"deregister instance {instance_id}") from exc
    if not await svc.catalog.wait_visible(instance_id, None, timeout_s=VISIBLE_WAIT_S):
        # Consul's agent answers 200 for a service it does not hold: the instance was
        # registered with another agent (another node), which alone can remove it.
        raise Conflict(
            f"instance {instance_id} is still in the {svc.catalog.backend} catalog "
            f"{VISIBLE_WAIT_S:.0f} s after its deregistration: it is registered with "
            "another Consul agent than meshd's (--consul-addr); deregister it on that agent",
            instance=instance_id,
        )
    return Response(status_code=204)


def _instance_json(inst: Instance, view: RegistryView) -> dict[str, Any]:
    out: dict[str, Any] = codec.to_plain(inst)
    out["health_output"] = view.notes.get(inst.id, "")
    return out


@router.get("/instances")
async def instances(svc: Svc, _who: Viewer) -> dict[str, Any]:
    view = svc.catalog.view()
    return {
        "registry": svc.catalog.backend,
        "items": [_instance_json(i, view) for insts in view.services.values() for i in insts],
    }


def _service_json(
    svc: Services,
    view: RegistryView,
    namespace: str,
    name: str,
    insts: tuple[Instance, ...],
    *,
    seen_limit: int | None,
) -> dict[str, Any]:
    count, proxies = svc.control.seen_by(namespace, name, limit=seen_limit)
    return {
        "name": name,
        "namespace": namespace,
        "registry": svc.catalog.backend,
        "healthy": sum(1 for i in insts if i.healthy),
        "total": len(insts),
        "instances": [
            {
                "id": i.id,
                "address": f"{i.address}:{i.port}",
                "appPort": i.app_port,
                "protocol": i.protocol,
                "labels": i.label_map(),
                "healthy": i.healthy,
                "healthOutput": view.notes.get(i.id, ""),
                "meshed": i.meshed,
                "serviceAccount": i.account,
            }
            for i in insts
        ],
        # Proxies whose outbound config (the last compile) includes this service.
        "seenBy": {"count": count, "proxies": proxies, "complete": len(proxies) == count},
    }


@router.get("/services")
async def services_list(
    svc: Svc, _who: Viewer, namespace: Annotated[str | None, Query()] = None
) -> dict[str, Any]:
    view = svc.catalog.view()
    return {
        "registry": svc.catalog.backend,
        "ready": svc.catalog.ready,
        "items": [
            _service_json(svc, view, ns, name, insts, seen_limit=SEEN_BY_IN_LISTS)
            for (ns, name), insts in view.services.items()
            if namespace is None or ns == namespace
        ],
    }


@router.get("/services/{name}")
async def service(svc: Svc, _who: Viewer, name: str, namespace: str = "default") -> dict[str, Any]:
    if "." in name:
        name, _, namespace = name.partition(".")
    view = svc.catalog.view()
    insts = view.instances(namespace, name)
    if not insts:
        raise NotFound(
            f"no service {name!r} in namespace {namespace!r}; list them with meshctl get services"
        )
    return _service_json(svc, view, namespace, name, insts, seen_limit=None)
