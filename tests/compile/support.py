"""Inputs for compiler tests: golden scenarios from disk and generated meshes.

A scenario is a directory ``tests/golden/<name>/`` with ``input.yaml`` (resources,
multi-document, parsed and validated exactly as ``meshctl apply`` would) and
``registry.yaml``::

    settings:                 # optional: CompileSettings / MeshSettings fields
      default_mtls_mode: PERMISSIVE
    instances:
      - id: reviews-v1-1.default
        service: reviews
        namespace: default    # default
        address: 198.18.0.12
        port: 15006           # default: the sidecar's inbound port
        app_port: 9080
        protocol: http        # default
        labels: {version: v1}
        service_account: ""   # default: the service name
        meshed: true          # default
        healthy: true         # default
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from meshd.compile import codec
from meshd.compile import snapshot as s
from meshd.compile.compiler import CompileResult, CompileSettings
from meshd.schema.base import Resource
from meshd.schema.parse import parse_many
from meshd.schema.validate import MeshNames, validate_set
from registry.model import Instance, RegistryView, sorted_labels

GOLDEN = Path(__file__).resolve().parent.parent / "golden"

_MESH_FIELDS = {
    "trust_domain",
    "domain_suffix",
    "retry_budget_percent",
    "retry_budget_min_concurrency",
}


def instance(
    id: str,
    service: str,
    address: str,
    app_port: int,
    *,
    namespace: str = "default",
    port: int = 15006,
    protocol: str = "http",
    labels: Mapping[str, str] | None = None,
    service_account: str = "",
    meshed: bool = True,
    healthy: bool = True,
) -> Instance:
    return Instance(
        id=id,
        service=service,
        namespace=namespace,
        address=address,
        port=port,
        app_port=app_port,
        protocol=protocol,  # type: ignore[arg-type]
        labels=sorted_labels(labels or {}),
        service_account=service_account,
        meshed=meshed,
        healthy=healthy,
    )


def registry_of(instances: Iterable[Instance]) -> RegistryView:
    services: dict[tuple[str, str], list[Instance]] = {}
    for inst in instances:
        services.setdefault((inst.namespace, inst.service), []).append(inst)
    return RegistryView(
        {k: tuple(sorted(v, key=lambda i: i.id)) for k, v in sorted(services.items())}
    )


def parse_resources(text: str, settings: CompileSettings | None = None) -> list[Resource[Any]]:
    """Resources as the apply path accepts them: parsed, each validated, the set validated."""
    settings = settings or CompileSettings()
    resources = parse_many(text)
    names = MeshNames(settings.mesh.domain_suffix, settings.root_namespace)
    problems = validate_set(resources, names)
    assert not problems, "\n".join(map(str, problems))
    return resources


def load_scenario(
    name: str,
) -> tuple[list[Resource[Any]], RegistryView, CompileSettings]:
    root = GOLDEN / name
    spec = yaml.safe_load((root / "registry.yaml").read_text()) or {}
    raw_settings: dict[str, Any] = dict(spec.get("settings") or {})
    mesh = s.MeshSettings(
        **{k: raw_settings.pop(k) for k in list(raw_settings) if k in _MESH_FIELDS}
    )
    settings = CompileSettings(mesh=mesh, **raw_settings)
    registry = registry_of(instance(**doc) for doc in spec.get("instances") or [])
    input_path = root / "input.yaml"
    text = input_path.read_text() if input_path.exists() else ""
    resources = parse_resources(text, settings) if text.strip() else []
    return resources, registry, settings


def scenarios() -> list[str]:
    return sorted(p.name for p in GOLDEN.iterdir() if (p / "registry.yaml").exists())


def golden_text(result: CompileResult) -> str:
    """Every snapshot in wire form, sorted by proxy id, pretty-printed with sorted keys;
    proxies whose snapshot failed appear under ``errors`` (absent when there are none)."""
    doc: Any = [codec.to_plain(result.snapshots[pid]) for pid in sorted(result.snapshots)]
    if result.errors:
        doc = {
            "snapshots": doc,
            "errors": {pid: list(result.errors[pid]) for pid in sorted(result.errors)},
        }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


# --- generated meshes (scale tests and measurements) ------------------------------------------


def generated_mesh(
    services: int,
    instances_per_service: int = 3,
    *,
    namespaces: int = 1,
    with_rules: bool = True,
    export_local: bool = False,
) -> tuple[list[Resource[Any]], RegistryView]:
    """``services`` services ``svc<n>``, spread round-robin over ``namespaces`` namespaces
    (``default`` when there is one, else ``ns0``, ``ns1``...), each with instances
    labelled v1, v2, v3...; with rules, a DestinationRule (subsets v1..vN) and a
    VirtualService (a header match to v2, the rest split 50/50 over v1 and the last
    version) per service, in the service's namespace (``exportTo: ["."]`` with
    ``export_local``)."""
    versions = [f"v{i + 1}" for i in range(instances_per_service)]
    insts = []
    docs: list[str] = []
    for n in range(services):
        ns = namespace_of(n, namespaces)
        for i, v in enumerate(versions):
            k = n * instances_per_service + i
            insts.append(
                instance(
                    f"svc{n}-{v}.{ns}",
                    f"svc{n}",
                    f"198.18.{k // 250}.{k % 250 + 1}",
                    8080,
                    namespace=ns,
                    labels={"app": f"svc{n}", "version": v},
                )
            )
        if with_rules:
            docs.append(destination_rule_yaml(f"svc{n}", versions, namespace=ns))
            docs.append(
                virtual_service_yaml(f"svc{n}", versions, namespace=ns, export_local=export_local)
            )
    resources = parse_many("\n---\n".join(docs)) if docs else []
    return resources, registry_of(insts)


def namespace_of(n: int, namespaces: int) -> str:
    return "default" if namespaces == 1 else f"ns{n % namespaces}"


def destination_rule_yaml(
    service: str, versions: Sequence[str], *, namespace: str = "default", lb: str = "ROUND_ROBIN"
) -> str:
    subsets = "".join(f"\n  - name: {v}\n    labels: {{version: {v}}}" for v in versions)
    return (
        f"apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        f"metadata: {{name: {service}, namespace: {namespace}}}\n"
        f"spec:\n  host: {service}\n  trafficPolicy: {{loadBalancer: {{simple: {lb}}}}}\n"
        f"  subsets:{subsets}\n"
    )


def virtual_service_yaml(
    service: str,
    versions: Sequence[str],
    *,
    namespace: str = "default",
    timeout: str = "5s",
    export_local: bool = False,
) -> str:
    first, second, last = versions[0], versions[min(1, len(versions) - 1)], versions[-1]
    split = (
        f"    - destination: {{host: {service}, subset: {first}}}\n      weight: 50\n"
        f"    - destination: {{host: {service}, subset: {last}}}\n      weight: 50\n"
        if first != last
        else f"    - destination: {{host: {service}, subset: {first}}}\n"
    )
    export = '  exportTo: ["."]\n' if export_local else ""
    return (
        f"apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        f"metadata: {{name: {service}, namespace: {namespace}}}\n"
        f"spec:\n  hosts: [{service}]\n{export}  http:\n"
        f"  - match:\n    - headers: {{end-user: {{exact: jason}}}}\n"
        f"    route:\n    - destination: {{host: {service}, subset: {second}}}\n"
        f"  - timeout: {timeout}\n    route:\n{split}"
    )
