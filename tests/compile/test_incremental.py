"""The incremental Compiler: it returns what compile_mesh returns, and reuses what did
not change (the very same objects)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshd.compile.compiler import Compiler, CompileResult, CompileSettings, compile_mesh
from meshd.schema.base import Resource, ResourceKey
from meshd.schema.parse import parse_many, parse_resource
from registry.model import Instance, RegistryView
from tests.compile.support import generated_mesh, registry_of, virtual_service_yaml

SETTINGS = CompileSettings()


def by_namespace(result: CompileResult, namespace: str) -> set[str]:
    return {pid for pid in result.snapshots if pid.endswith(f".{namespace}")}


def test_a_one_rule_change_rebuilds_one_piece_and_nothing_it_does_not_affect() -> None:
    resources, registry = generated_mesh(30, namespaces=3, export_local=True)
    compiler = Compiler()
    first = compiler.compile(resources, registry, SETTINGS)
    assert first.errors == {}
    changed = parse_many(
        virtual_service_yaml(
            "svc0", ["v1", "v2", "v3"], namespace="ns0", timeout="9s", export_local=True
        )
    )[0]
    second = compiler.compile(
        [changed if r.key == changed.key else r for r in resources], registry, SETTINGS
    )
    assert second.stats.pieces_built == 1
    lookups = first.stats.pieces_built + first.stats.pieces_reused
    assert second.stats.pieces_reused == lookups - 1
    ns0 = by_namespace(first, "ns0")
    assert second.changed == ns0
    assert second.stats.versions_changed == len(ns0)
    for pid, snap in first.snapshots.items():
        if pid in ns0:
            assert second.snapshots[pid].version != snap.version
        else:
            assert second.snapshots[pid] is snap
    # The outbound of an unaffected scope is the very same object.
    assert second.snapshots["svc1-v1.ns1"].outbound is first.snapshots["svc1-v1.ns1"].outbound


def test_proxies_of_one_scope_share_one_outbound_object() -> None:
    resources, registry = generated_mesh(12, namespaces=2)
    result = compile_mesh(resources, registry, SETTINGS)
    for ns in ("ns0", "ns1"):
        outbounds = {id(result.snapshots[pid].outbound) for pid in by_namespace(result, ns)}
        assert len(outbounds) == 1
    a, b = result.snapshots["svc0-v1.ns0"].outbound, result.snapshots["svc1-v1.ns1"].outbound
    assert a is not b
    # Each scope sees its own services with their short names, the other's without.
    assert result.stats.pieces_built == 12 + 12
    assert result.stats.pieces_reused == 0
    three = compile_mesh(*generated_mesh(12, namespaces=3), SETTINGS)
    # With more namespaces a service still has just two pieces (own namespace, foreign),
    # whatever the number of scopes: 3 scopes x 12 services = 24 built + 12 reused.
    assert three.stats.pieces_built == 24
    assert three.stats.pieces_reused == 12


def test_recompiling_the_same_inputs_reuses_everything() -> None:
    resources, registry = generated_mesh(10)
    compiler = Compiler()
    first = compiler.compile(resources, registry, SETTINGS)
    second = compiler.compile(resources, registry, SETTINGS)
    assert second.stats.parts_rebuilt == 0
    assert second.stats.versions_changed == 0
    assert second.changed == frozenset()
    assert all(second.snapshots[pid] is snap for pid, snap in first.snapshots.items())


def test_new_objects_with_equal_content_keep_versions() -> None:
    resources, registry = generated_mesh(10)
    compiler = Compiler()
    first = compiler.compile(resources, registry, SETTINGS)
    reparsed = [parse_resource(r.model_dump(mode="json", by_alias=True)) for r in resources]
    fresh_registry = RegistryView(
        {k: tuple(replace(i) for i in v) for k, v in registry.services.items()}
    )
    second = compiler.compile(reparsed, fresh_registry, SETTINGS)
    assert second.stats.pieces_built == 10  # new objects: not recognised by identity...
    assert second.stats.versions_changed == 0  # ...but the same content, so the same versions
    assert {p: s.version for p, s in second.snapshots.items()} == {
        p: s.version for p, s in first.snapshots.items()
    }


def test_an_instance_going_unhealthy_rebuilds_its_service_only() -> None:
    resources, registry = generated_mesh(10)
    compiler = Compiler()
    first = compiler.compile(resources, registry, SETTINGS)
    services = dict(registry.services)
    key = ("default", "svc3")
    services[key] = tuple(replace(i, healthy=i.id != "svc3-v2.default") for i in services[key])
    second = compiler.compile(resources, RegistryView(services), SETTINGS)
    assert second.stats.pieces_built == 1
    assert second.stats.inbounds_built == 0
    assert second.stats.versions_changed == len(first.snapshots)


def test_new_settings_change_every_version() -> None:
    resources, registry = generated_mesh(5)
    compiler = Compiler()
    first = compiler.compile(resources, registry, SETTINGS)
    second = compiler.compile(resources, registry, replace(SETTINGS, trust_bundle="roots-2"))
    assert second.stats.versions_changed == len(first.snapshots)
    assert all(s.trust_bundle == "roots-2" for s in second.snapshots.values())


# --- Compiler.compile == compile_mesh over random histories ----------------------------------

_POOL_TEXT: dict[str, list[str]] = {
    "vs-reviews": [
        """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 80}
    - {destination: {host: reviews, subset: v3}, weight: 20}""",
        """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  exportTo: ["."]
  http:
  - timeout: 2s
    route: [{destination: {host: reviews, subset: v9}}]""",
    ],
    "dr-reviews": [
        """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}""",
        """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
  subsets:
  - {name: v1, labels: {version: v1}}""",
    ],
    "vs-reviews-other": [
        """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: other}
spec:
  hosts: [reviews.default]
  http:
  - route: [{destination: {host: reviews.default, subset: v3}}]""",
    ],
    "se": [
        """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: other}
spec:
  hosts: [ext.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}]""",
        """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: other}
spec:
  hosts: [ext.example.com, reviews.default]
  exportTo: ["."]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}, {number: 443, name: tls, protocol: TCP}]""",
    ],
    "sidecar": [
        """apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: other}
spec:
  egress: [{hosts: ["./*", "default/reviews.default.svc.cluster.local"]}]
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}""",
        """apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: other}
spec:
  egress: [{hosts: ["*/*"]}]""",
    ],
    "sidecar-workload": [
        """apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: v1-only, namespace: default}
spec:
  workloadSelector: {labels: {version: v1}}
  egress: [{hosts: ["./reviews", "other/*"]}]""",
    ],
    "vs-web": [
        """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: other}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /reviews}}]
    route: [{destination: {host: reviews.default}}]
  - route: [{destination: {host: web}}]""",
    ],
    "pa": [
        """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: PERMISSIVE}}""",
        """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}""",
    ],
    "pa-workload": [
        """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: reviews, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  mtls: {mode: UNSET}
  portLevelMtls: {9080: {mode: DISABLE}}""",
    ],
    "ap": [
        """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews, namespace: default}
spec:
  selector: {matchLabels: {version: v2}}
  rules:
  - from: [{source: {namespaces: [other]}}]
    to: [{operation: {methods: [GET]}}]""",
        """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews, namespace: default}
spec:
  action: DENY
  rules: [{when: [{key: source.ip, values: [198.18.9.0/24]}]}]""",
    ],
    "vs-db": [
        """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: default}
spec:
  hosts: [db]
  tcp: [{route: [{destination: {host: db, port: {number: 5432}}}]}]""",
    ],
}
_POOL: dict[str, list[Resource[Any]]] = {
    name: [parse_many(text)[0] for text in texts] for name, texts in _POOL_TEXT.items()
}

_INSTANCES = [
    Instance(
        "reviews-v1.default",
        "reviews",
        "default",
        "198.18.0.10",
        15006,
        9080,
        labels=(("app", "reviews"), ("version", "v1")),
    ),
    Instance(
        "reviews-v2.default",
        "reviews",
        "default",
        "198.18.0.11",
        15006,
        9080,
        labels=(("app", "reviews"), ("version", "v2")),
    ),
    Instance(
        "reviews-v3.default",
        "reviews",
        "default",
        "198.18.0.12",
        15006,
        9080,
        labels=(("app", "reviews"), ("version", "v3")),
    ),
    Instance(
        "reviews-admin.default",
        "reviews",
        "default",
        "198.18.0.14",
        15006,
        9081,
        labels=(("app", "reviews"), ("version", "v2")),
    ),
    Instance("db-1.default", "db", "default", "198.18.0.13", 15006, 5432, "tcp"),
    Instance("web-1.other", "web", "other", "198.18.1.10", 15006, 8080),
    Instance("legacy-1.other", "legacy", "other", "198.18.1.11", 8000, 8000, meshed=False),
]

# One step: which variant of each pool entry is present (None: absent), whether to
# re-parse it into a new but equal object, which instances exist and are healthy.
_step = st.tuples(
    st.fixed_dictionaries(
        {name: st.none() | st.integers(0, len(variants) - 1) for name, variants in _POOL.items()}
    ),
    st.sets(st.sampled_from(sorted(_POOL))),
    st.lists(
        st.sampled_from(["present", "unhealthy", "absent"]),
        min_size=len(_INSTANCES),
        max_size=len(_INSTANCES),
    ),
)


def _inputs(
    step: tuple[dict[str, int | None], set[str], list[str]],
) -> tuple[list[Resource[Any]], RegistryView]:
    chosen, reparse, states = step
    resources = []
    for name, variant in chosen.items():
        if variant is None:
            continue
        r = _POOL[name][variant]
        if name in reparse:
            r = parse_resource(r.model_dump(mode="json", by_alias=True))
        resources.append(r)
    insts = [
        replace(inst, healthy=state == "present")
        for inst, state in zip(_INSTANCES, states, strict=True)
        if state != "absent"
    ]
    return resources, registry_of(insts)


def _same(a: CompileResult, b: CompileResult, keys: list[ResourceKey]) -> None:
    assert a.snapshots == b.snapshots
    assert a.errors == b.errors
    for key in keys:
        assert a.dependents(key) == b.dependents(key), key


def test_a_sidecar_that_changes_nothing_still_shapes_its_proxies() -> None:
    compiler = Compiler()
    resources, registry = _inputs(({"sidecar": None}, set(), ["present"] * len(_INSTANCES)))
    compiler.compile(resources, registry, SETTINGS)
    sidecar = _POOL["sidecar"][1]  # egress */*: sees what it saw without a Sidecar
    result = compiler.compile([sidecar], registry, SETTINGS)
    assert result.dependents(sidecar.key) == {"web-1.other"}
    assert result.stats.pieces_built == 0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_step, min_size=1, max_size=6))
def test_incremental_equals_from_scratch_over_any_history(
    steps: list[tuple[dict[str, int | None], set[str], list[str]]],
) -> None:
    compiler = Compiler()
    keys = sorted({r.key for variants in _POOL.values() for r in variants})
    previous: dict[str, str] = {}
    for step in steps:
        resources, registry = _inputs(step)
        incremental = compiler.compile(resources, registry, SETTINGS)
        scratch = compile_mesh(resources, registry, SETTINGS)
        _same(incremental, scratch, keys)
        expected_changed = {
            pid for pid, snap in incremental.snapshots.items() if previous.get(pid) != snap.version
        }
        assert incremental.changed == expected_changed
        # A proxy whose new snapshot failed is still served its previous version.
        kept = {pid: v for pid, v in previous.items() if pid in incremental.errors}
        previous = kept | {pid: snap.version for pid, snap in incremental.snapshots.items()}
