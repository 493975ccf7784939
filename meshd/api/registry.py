"""The embedded registry: instances register here; ``/v1/services`` shows the catalog."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from meshd.api.deps import AnyCaller, Svc, Viewer, require_owner
from meshd.compile import codec
from meshd.errors import BadRequest, NotFound
from meshd.schema.base import Namespace, ResourceName
from registry.model import Instance, sorted_labels

router = APIRouter(prefix="/v1", tags=["registry"])


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


@router.put("/instances/{instance_id}")
async def register(
    svc: Svc, who: AnyCaller, instance_id: str, body: InstanceBody
) -> dict[str, Any]:
    """An editor, or the instance's own sidecar (its certificate's namespace and service
    account must be the instance's)."""
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
    )
    require_owner(who, instance, "editor")
    svc.catalog.register(instance)
    out: dict[str, Any] = codec.to_plain(instance)
    return out


@router.delete("/instances/{instance_id}", status_code=204)
async def deregister(svc: Svc, who: AnyCaller, instance_id: str) -> Response:
    instance = svc.catalog.get(instance_id)
    if instance is None:
        raise NotFound(f"no instance {instance_id!r} is registered")
    require_owner(who, instance, "editor")
    svc.catalog.deregister(instance_id)
    return Response(status_code=204)


@router.get("/instances")
async def instances(svc: Svc, _who: Viewer) -> dict[str, Any]:
    view = svc.catalog.view()
    return {"items": [codec.to_plain(i) for insts in view.services.values() for i in insts]}


def _service_json(namespace: str, name: str, insts: tuple[Instance, ...]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "instances": [
            {
                "id": i.id,
                "address": f"{i.address}:{i.port}",
                "appPort": i.app_port,
                "protocol": i.protocol,
                "labels": i.label_map(),
                "healthy": i.healthy,
                "meshed": i.meshed,
            }
            for i in insts
        ],
    }


@router.get("/services")
async def services_list(
    svc: Svc, _who: Viewer, namespace: Annotated[str | None, Query()] = None
) -> dict[str, Any]:
    view = svc.catalog.view()
    return {
        "items": [
            _service_json(ns, name, insts)
            for (ns, name), insts in view.services.items()
            if namespace is None or ns == namespace
        ]
    }


@router.get("/services/{name}")
async def service(svc: Svc, _who: Viewer, name: str, namespace: str = "default") -> dict[str, Any]:
    if "." in name:
        name, _, namespace = name.partition(".")
    insts = svc.catalog.view().instances(namespace, name)
    if not insts:
        raise NotFound(
            f"no service {name!r} in namespace {namespace!r}; list them with meshctl get services"
        )
    return _service_json(namespace, name, insts)
