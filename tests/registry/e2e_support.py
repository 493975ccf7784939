"""Helpers for the registry's end-to-end tests (``tests/e2e/test_registry_*.py``): what a
proxy's snapshot says about a service's endpoints, and instances registered straight
into Consul as a Consul user would."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from meshd.compile import codec
from meshd.compile.snapshot import ProxySnapshot
from tests.support.components import ConsulAgent


def fqdn(service: str, namespace: str) -> str:
    return f"{service}.{namespace}.svc.cluster.local"


def endpoint_ids(snap: ProxySnapshot, host: str) -> frozenset[str]:
    """The instance ids behind ``host``'s default cluster(s) in a snapshot."""
    return frozenset(
        e.instance
        for c in snap.outbound.clusters
        if c.service == host and c.subset is None
        for e in c.endpoints
    )


class ProxyWatch:
    """Follows one proxy's config the way its sidecar does: long polls with the version
    it has, so each change is seen as soon as meshd publishes it."""

    def __init__(self, api: httpx.Client, proxy: str) -> None:
        self.api = api
        self.proxy = proxy
        self.version = ""
        self.snapshot: ProxySnapshot | None = None

    def poll(self, wait: float) -> bool:
        """One long poll; True when a new snapshot came."""
        reply = self.api.get(
            f"/v1/xds/{self.proxy}", params={"version": self.version, "wait": max(0.0, wait)}
        )
        if reply.status_code == 304:
            return False
        assert reply.status_code == 200, reply.text
        self.snapshot = codec.loads(ProxySnapshot, reply.content)
        self.version = self.snapshot.version
        return True

    def until(
        self, host: str, predicate: Callable[[frozenset[str]], bool], within: float
    ) -> tuple[frozenset[str], float]:
        """Poll until ``host``'s endpoint ids satisfy ``predicate``; returns them and the
        seconds it took. Fails after ``within`` seconds with what was seen last."""
        started = time.monotonic()
        deadline = started + within
        seen: frozenset[str] = frozenset()
        while True:
            if self.snapshot is not None:
                seen = endpoint_ids(self.snapshot, host)
                if predicate(seen):
                    return seen, time.monotonic() - started
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"{self.proxy}: {host} endpoints never matched within {within:.1f} s; "
                    f"last seen: {sorted(seen)}"
                )
            self.poll(min(left, 5.0))


def consul_put(agent: ConsulAgent, path: str, body: object = None) -> None:
    reply = httpx.put(f"{agent.url}{path}", json=body, timeout=10, trust_env=False)
    assert reply.status_code == 200, f"PUT {path}: {reply.status_code} {reply.text}"


def consul_register(
    agent: ConsulAgent,
    instance_id: str,
    service: str,
    namespace: str,
    port: int,
    *,
    ttl: str = "30s",
    labels: Mapping[str, str] | None = None,
    app_port: int = 8080,
    extra_meta: Mapping[str, str] | None = None,
) -> str:
    """Register an instance with the agent's own API in meshd's Meta format, with a TTL
    check that starts passing; returns the check id."""
    meta: dict[str, Any] = {"mesh-namespace": namespace, "mesh-app-port": str(app_port)}
    meta.update({f"mesh-label-{k}": v for k, v in (labels or {}).items()})
    meta.update(extra_meta or {})
    check = f"service:{instance_id}"
    consul_put(
        agent,
        "/v1/agent/service/register",
        {
            "ID": instance_id,
            "Name": service,
            "Address": "127.0.0.1",
            "Port": port,
            "Meta": meta,
            "Check": {"CheckID": check, "TTL": ttl, "Status": "passing"},
        },
    )
    return check


def consul_deregister_all(agent: ConsulAgent, prefix: str) -> None:
    services = httpx.get(f"{agent.url}/v1/catalog/services", timeout=10, trust_env=False).json()
    for name in services:
        if name.startswith(prefix):
            entries = httpx.get(
                f"{agent.url}/v1/health/service/{name}", timeout=10, trust_env=False
            ).json()
            for entry in entries:
                consul_put(agent, f"/v1/agent/service/deregister/{entry['Service']['ID']}")
