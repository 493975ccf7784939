"""What the registry knows: service instances. Plain frozen dataclasses, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Protocol = Literal["http", "http2", "grpc", "tcp"]


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
    instances (healthy or not; the compiler keeps only healthy ones as endpoints)."""

    services: Mapping[ServiceKey, tuple[Instance, ...]] = field(default_factory=dict)

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
