"""What the registry knows: service instances. Plain frozen dataclasses, no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

Protocol = Literal["http", "http2", "grpc", "tcp"]
PROTOCOLS: frozenset[str] = frozenset(get_args(Protocol))

RegisterOutcome = Literal["created", "updated", "refreshed"]
"""What a ``register`` did: a new instance, a changed one (address, ports, labels,
health...), or the same one again (a heartbeat: only its TTL was renewed)."""


@dataclass(frozen=True, slots=True)
class Instance:
    """One running instance of a service.

    ``id`` is also the id of its sidecar proxy (``<service>-<suffix>.<namespace>``).
    Peers reach it at ``address:port``: the sidecar's inbound port when ``meshed``,
    else the app itself. ``app_port`` is the service's port as clients name it
    (``http://reviews:9080``). ``labels`` are sorted ``(key, value)`` pairs; subsets
    select on them.
    """

    id: str
    service: str
    namespace: str
    address: str
    port: int
    app_port: int
    protocol: Protocol = "http"
    labels: tuple[tuple[str, str], ...] = ()
    service_account: str = ""
    meshed: bool = True
    healthy: bool = True

    @property
    def account(self) -> str:
        return self.service_account or self.service

    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


ServiceKey = tuple[str, str]
"""``(namespace, service)``."""


@dataclass(frozen=True, slots=True)
class RegistryView:
    """A consistent picture of the catalog at one moment: every known service with its
    instances (healthy or not; the compiler keeps only healthy ones as endpoints).

    Registries publish views that share what did not change: a service whose instances
    are the same keeps the very same tuple (and the same Instance objects), so the
    compiler's memo recognises it at the cost of an identity check. ``notes`` holds each
    instance's last health-check output (``""`` when none); it is kept apart from
    ``services`` because it changes with every check while the endpoints do not: a view
    whose ``services`` is the very same mapping as the previous view's differs only in
    notes and needs no recompile."""

    services: Mapping[ServiceKey, tuple[Instance, ...]] = field(default_factory=dict)
    notes: Mapping[str, str] = field(default_factory=dict)

    def instances(self, namespace: str, service: str) -> tuple[Instance, ...]:
        return self.services.get((namespace, service), ())

    def find(self, instance_id: str) -> Instance | None:
        for instances in self.services.values():
            for inst in instances:
                if inst.id == instance_id:
                    return inst
        return None


def sorted_labels(labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def group_instances(instances: Iterable[Instance]) -> dict[ServiceKey, tuple[Instance, ...]]:
    """Instances grouped by ``(namespace, service)``: keys sorted, instances by id."""
    services: dict[ServiceKey, list[Instance]] = {}
    for inst in instances:
        services.setdefault((inst.namespace, inst.service), []).append(inst)
    return {k: tuple(sorted(v, key=lambda i: i.id)) for k, v in sorted(services.items())}


def instance_to_json(inst: Instance) -> dict[str, Any]:
    """The instance as a JSON object (camelCase, as the REST API writes it)."""
    return {
        "id": inst.id,
        "service": inst.service,
        "namespace": inst.namespace,
        "address": inst.address,
        "port": inst.port,
        "appPort": inst.app_port,
        "protocol": inst.protocol,
        "labels": dict(inst.labels),
        "serviceAccount": inst.service_account,
        "meshed": inst.meshed,
        "healthy": inst.healthy,
    }


def instance_from_json(raw: Mapping[str, Any]) -> Instance:
    """The inverse of :func:`instance_to_json`; raises ``ValueError`` (saying which field)
    on anything it did not write."""
    try:
        protocol = raw.get("protocol", "http")
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol {protocol!r} is not one of {sorted(PROTOCOLS)}")
        labels = raw.get("labels") or {}
        if not isinstance(labels, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise ValueError("labels must map strings to strings")
        fields: dict[str, Any] = {
            "id": raw["id"],
            "service": raw["service"],
            "namespace": raw["namespace"],
            "address": raw["address"],
        }
        for name, value in fields.items():
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string")
        port, app_port = raw["port"], raw["appPort"]
        for name, number in (("port", port), ("appPort", app_port)):
            if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 65535:
                raise ValueError(f"{name} must be a port number (1-65535), not {number!r}")
        return Instance(
            **fields,
            port=port,
            app_port=app_port,
            protocol=protocol,
            labels=sorted_labels(labels),
            service_account=str(raw.get("serviceAccount", "")),
            meshed=bool(raw.get("meshed", True)),
            healthy=bool(raw.get("healthy", True)),
        )
    except KeyError as exc:
        raise ValueError(f"missing field {exc.args[0]!r}") from None
