"""Synthetic meshes for the benchmarks.

Resources are built as plain mappings (exactly what a user would send as JSON to
``POST /v1/apply``) and turned into models with the same parser the apply path uses,
so the compiler sees what it would see in production. Addresses come from
198.18.0.0/15, the range reserved for network tests; nothing ever connects to them.

Compile workload: ``services`` services ``svc<n>`` with one instance per version
(v1, v2, v3), one DestinationRule per service (three subsets, a load balancer policy)
and one VirtualService per service (an ``end-user`` header match to v2, the rest split
by weight over v1/v2/v3) — the shape of Istio's bookinfo ``reviews`` rules, repeated.

Push workload: ``watchers`` instances spread over ``services`` services; one
DestinationRule and one VirtualService on ``svc0``, which every proxy of the
namespace sees, so editing that VirtualService changes every proxy's snapshot.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshd.schema.base import Resource
from meshd.schema.parse import parse_resource
from meshd.schema.validate import MeshNames, validate_set
from registry.model import Instance, RegistryView, sorted_labels

VERSIONS: tuple[str, ...] = ("v1", "v2", "v3")
LB_POLICIES: tuple[str, ...] = ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM")
# Each set sums to 100 and differs from its neighbours, so stepping through them is
# always a real change (a no-op apply would not push anything).
WEIGHT_SETS: tuple[tuple[int, int, int], ...] = (
    (70, 20, 10),
    (50, 30, 20),
    (34, 33, 33),
    (10, 20, 70),
    (60, 20, 20),
    (40, 40, 20),
    (20, 60, 20),
)
NAMESPACE = "default"
INBOUND_PORT = 15006
APP_PORT = 8080

Doc = dict[str, Any]


def service_name(n: int) -> str:
    return f"svc{n}"


def address(k: int) -> str:
    """The ``k``-th address of 198.18.0.0/15, skipping .0 and .251-.255 of each /24."""
    block = k // 250
    return f"198.{18 + block // 256}.{block % 256}.{k % 250 + 1}"


# --- resources as users write them ---------------------------------------------------------


def destination_rule(
    service: str,
    *,
    namespace: str = NAMESPACE,
    versions: Sequence[str] = VERSIONS,
    lb: str = "ROUND_ROBIN",
) -> Doc:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": service, "namespace": namespace},
        "spec": {
            "host": service,
            "trafficPolicy": {"loadBalancer": {"simple": lb}},
            "subsets": [{"name": v, "labels": {"version": v}} for v in versions],
        },
    }


def virtual_service(
    service: str,
    weights: Sequence[int],
    *,
    namespace: str = NAMESPACE,
    versions: Sequence[str] = VERSIONS,
) -> Doc:
    """A header match (``end-user: jason`` -> v2), then a weighted split over every
    subset; ``weights`` pairs with ``versions`` and must sum to 100."""
    if len(weights) != len(versions) or sum(weights) != 100:
        raise ValueError(f"weights {list(weights)} must be one per version and sum to 100")
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": service, "namespace": namespace},
        "spec": {
            "hosts": [service],
            "http": [
                {
                    "name": "jason",
                    "match": [{"headers": {"end-user": {"exact": "jason"}}}],
                    "route": [{"destination": {"host": service, "subset": versions[1]}}],
                },
                {
                    "name": "split",
                    "timeout": "5s",
                    "route": [
                        {"destination": {"host": service, "subset": v}, "weight": w}
                        for v, w in zip(versions, weights, strict=True)
                    ],
                },
            ],
        },
    }


def parse_docs(docs: Iterable[Mapping[str, Any]], *, check_set: bool = True) -> list[Resource[Any]]:
    """Models of ``docs`` as ``POST /v1/apply`` builds them: each parsed and validated,
    then (``check_set``) the whole set validated. A workload that would be rejected
    is a bug in this module, so problems raise."""
    resources = [parse_resource(dict(doc), i) for i, doc in enumerate(docs)]
    if check_set:
        problems = validate_set(resources, MeshNames())
        if problems:
            raise ValueError("the synthetic rules are invalid:\n" + "\n".join(map(str, problems)))
    return resources


def apply_body(docs: Sequence[Mapping[str, Any]]) -> bytes:
    """A JSON body for ``POST /v1/apply`` (a list of resources)."""
    return json.dumps(list(docs)).encode()


# --- registry ------------------------------------------------------------------------------


def make_instance(
    instance_id: str,
    service: str,
    version: str,
    k: int,
    *,
    namespace: str = NAMESPACE,
) -> Instance:
    return Instance(
        id=instance_id,
        service=service,
        namespace=namespace,
        address=address(k),
        port=INBOUND_PORT,
        app_port=APP_PORT,
        labels=sorted_labels({"app": service, "version": version}),
    )


def registry_of(instances: Iterable[Instance]) -> RegistryView:
    """The view ``registry.embedded`` publishes: services sorted, instances by id."""
    services: dict[tuple[str, str], list[Instance]] = {}
    for inst in instances:
        services.setdefault((inst.namespace, inst.service), []).append(inst)
    return RegistryView(
        {key: tuple(sorted(v, key=lambda i: i.id)) for key, v in sorted(services.items())}
    )


def with_instance(view: RegistryView, instance: Instance) -> RegistryView:
    """``view`` plus ``instance``; every other service keeps its very same tuple, as the
    embedded catalog's next view would (so the compiler can reuse their pieces)."""
    services = dict(view.services)
    key = (instance.namespace, instance.service)
    services[key] = tuple(sorted((*services.get(key, ()), instance), key=lambda i: i.id))
    return RegistryView(services)


# --- the compile workload ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompileWorkload:
    services: int
    docs: tuple[Doc, ...]
    resources: tuple[Resource[Any], ...]
    registry: RegistryView

    @property
    def proxies(self) -> int:
        return sum(len(v) for v in self.registry.services.values())


def compile_docs(services: int, *, namespace: str = NAMESPACE) -> list[Doc]:
    docs: list[Doc] = []
    for n in range(services):
        name = service_name(n)
        docs.append(
            destination_rule(name, namespace=namespace, lb=LB_POLICIES[n % len(LB_POLICIES)])
        )
        docs.append(virtual_service(name, WEIGHT_SETS[0], namespace=namespace))
    return docs


def compile_instances(services: int, *, namespace: str = NAMESPACE) -> list[Instance]:
    return [
        make_instance(
            f"{service_name(n)}-{v}.{namespace}",
            service_name(n),
            v,
            n * len(VERSIONS) + i,
            namespace=namespace,
        )
        for n in range(services)
        for i, v in enumerate(VERSIONS)
    ]


def compile_workload(services: int, *, namespace: str = NAMESPACE) -> CompileWorkload:
    docs = compile_docs(services, namespace=namespace)
    resources = parse_docs(docs)
    return CompileWorkload(
        services=services,
        docs=tuple(docs),
        resources=tuple(resources),
        registry=registry_of(compile_instances(services, namespace=namespace)),
    )


def edit_weights(
    resources: Sequence[Resource[Any]], service: int, step: int
) -> list[Resource[Any]]:
    """``resources`` with one VirtualService's weights replaced (``WEIGHT_SETS[step]``);
    every other resource is the very same object, as the control plane passes them."""
    doc = virtual_service(
        service_name(service), WEIGHT_SETS[step % len(WEIGHT_SETS)], namespace=NAMESPACE
    )
    changed = parse_docs([doc], check_set=False)[0]
    return [changed if r.key == changed.key else r for r in resources]


def extra_instance(workload: CompileWorkload, service: int, serial: int) -> Instance:
    """A new v1 instance of ``svc<service>`` at an address no generated instance uses."""
    name = service_name(service)
    return make_instance(f"{name}-extra{serial}.{NAMESPACE}", name, "v1", workload.proxies + serial)


# --- the push workload ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PushInstance:
    """One instance to register with ``PUT /v1/instances/{id}``: a watcher's proxy."""

    id: str
    body: Doc


def push_instances(
    watchers: int, services: int, *, namespace: str = NAMESPACE
) -> list[PushInstance]:
    """``watchers`` instances, round-robin over ``services`` services, versions cycling
    v1/v2/v3 so every subset of ``svc0`` has endpoints."""
    out: list[PushInstance] = []
    for k in range(watchers):
        n = k % services
        name = service_name(n)
        version = VERSIONS[(k // services) % len(VERSIONS)]
        out.append(
            PushInstance(
                id=f"{name}-{k}.{namespace}",
                body={
                    "service": name,
                    "namespace": namespace,
                    "address": address(k),
                    "port": INBOUND_PORT,
                    "appPort": APP_PORT,
                    "labels": {"app": name, "version": version},
                },
            )
        )
    return out


PUSH_TARGET = service_name(0)


def push_baseline_docs(*, namespace: str = NAMESPACE) -> list[Doc]:
    """Applied before the watchers start: the rules each round then edits."""
    return [
        destination_rule(PUSH_TARGET, namespace=namespace),
        virtual_service(PUSH_TARGET, WEIGHT_SETS[0], namespace=namespace),
    ]


def push_round_doc(round_number: int, *, namespace: str = NAMESPACE) -> Doc:
    """Round ``r`` (from 0) moves ``svc0``'s split to another weight set — never the
    baseline's (``WEIGHT_SETS[0]``) nor the previous round's — a change to every
    proxy's outbound config, so every watcher gets a new snapshot."""
    weights = WEIGHT_SETS[1 + round_number % (len(WEIGHT_SETS) - 1)]
    return virtual_service(PUSH_TARGET, weights, namespace=namespace)
