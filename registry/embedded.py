"""The embedded registry: meshd's own catalog of instances, registered by sidecars
through meshd's API. Held in memory for now (sidecars re-register when they start
or reconnect); the registry issue adds persistence, heartbeats and health."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from registry.latest import Latest
from registry.model import Instance, RegistryView, ServiceKey


class EmbeddedCatalog:
    def __init__(self) -> None:
        self._instances: dict[str, Instance] = {}
        self._view: Latest[RegistryView] = Latest(RegistryView())

    def register(self, instance: Instance) -> bool:
        """Add or replace an instance; False when nothing changed."""
        if self._instances.get(instance.id) == instance:
            return False
        self._instances[instance.id] = instance
        self._publish()
        return True

    def deregister(self, instance_id: str) -> Instance | None:
        gone = self._instances.pop(instance_id, None)
        if gone is not None:
            self._publish()
        return gone

    def get(self, instance_id: str) -> Instance | None:
        return self._instances.get(instance_id)

    def view(self) -> RegistryView:
        return self._view.value

    def watch(self) -> AsyncGenerator[RegistryView]:
        return self._view.watch()

    def _publish(self) -> None:
        services: dict[ServiceKey, list[Instance]] = {}
        for inst in self._instances.values():
            services.setdefault((inst.namespace, inst.service), []).append(inst)
        self._view.set(
            RegistryView(
                {k: tuple(sorted(v, key=lambda i: i.id)) for k, v in sorted(services.items())}
            )
        )
