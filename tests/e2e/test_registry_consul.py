"""``meshd serve --registry consul`` against a real Consul agent: instances registered
straight into Consul (as a Consul user would, in meshd's Meta format) reach
``/v1/services`` and the proxies' endpoints; a failing or expired TTL check takes an
endpoint out within two check intervals and a passing one brings it back; a restarted
meshd recovers the catalog by itself; two replicas see the same catalog."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.registry.e2e_support import (
    ProxyWatch,
    consul_deregister_all,
    consul_put,
    consul_register,
    endpoint_ids,
    fqdn,
)
from tests.support.components import ConsulAgent
from tests.support.meshd_process import MeshdProcess

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

INTERVAL_S = 1.0
"""The sidecars' (simulated) check interval; their TTL checks last two of them."""
PUSH_SLACK_S = 0.5
"""Consul's agent syncing the check, meshd's watch, debounce, compile and the push."""


@pytest.fixture
def names(consul_agent: ConsulAgent) -> Iterator[tuple[str, str]]:
    """(service name prefix, namespace) of one test; its instances are removed after."""
    prefix = f"r{secrets.token_hex(3)}-"
    yield prefix, f"ns{secrets.token_hex(3)}"
    consul_deregister_all(consul_agent, prefix)


def consul_args(agent: ConsulAgent) -> list[str]:
    return ["--registry", "consul", "--consul-addr", agent.http_addr]


def test_consul_instances_reach_services_and_proxies(
    consul_agent: ConsulAgent,
    names: tuple[str, str],
    tmp_path: Path,
    meshd_factory: type[MeshdProcess],
) -> None:
    prefix, ns = names
    web, api_svc = f"{prefix}web", f"{prefix}api"
    ttl = f"{2 * INTERVAL_S:g}s"
    consul_register(consul_agent, f"{web}-1", web, ns, 21001, labels={"version": "v1"})
    checks = {
        n: consul_register(
            consul_agent,
            f"{api_svc}-{n}",
            api_svc,
            ns,
            21010 + n,
            ttl=ttl,
            labels={"version": f"v{n}"},
        )
        for n in (1, 2)
    }
    meshd = meshd_factory(tmp_path / "meshd", extra_args=consul_args(consul_agent)).start()
    # As the instances' sidecars would: a loaded machine may take longer than the TTL
    # to start meshd.
    for check in checks.values():
        consul_put(consul_agent, f"/v1/agent/check/pass/{check}")
    with meshd.client() as api:
        # /v1/services: the backend, instances, health, labels, and who sees the service.
        body = api.get(f"/v1/services/{api_svc}", params={"namespace": ns}).json()
        assert body["registry"] == "consul"
        assert [(i["id"], i["healthy"], i["labels"]) for i in body["instances"]] == [
            (f"{api_svc}-1", True, {"version": "v1"}),
            (f"{api_svc}-2", True, {"version": "v2"}),
        ]
        assert body["instances"][0]["address"] == "127.0.0.1:21011"
        assert f"{web}-1" in body["seenBy"]["proxies"]
        listed = api.get("/v1/services", params={"namespace": ns}).json()
        assert {s["name"] for s in listed["items"]} == {web, api_svc}

        # The proxy's snapshot holds both endpoints.
        proxy = ProxyWatch(api, f"{web}-1")
        host = fqdn(api_svc, ns)
        both = frozenset({f"{api_svc}-1", f"{api_svc}-2"})
        proxy.until(host, lambda ids: ids == both, within=10)

        # A failing TTL check: out of the next snapshot within two intervals.
        consul_put(consul_agent, f"/v1/agent/check/fail/{checks[2]}?note=HTTP+503")
        _, took = proxy.until(host, lambda ids: ids == {f"{api_svc}-1"}, within=2 * INTERVAL_S)
        print(f"failed check -> endpoint removed in {took * 1000:.0f} ms")
        down = api.get(f"/v1/services/{api_svc}", params={"namespace": ns}).json()
        (two,) = [i for i in down["instances"] if i["id"] == f"{api_svc}-2"]
        assert (two["healthy"], two["healthOutput"]) == (False, "HTTP 503")

        # Recovered: back.
        consul_put(consul_agent, f"/v1/agent/check/pass/{checks[2]}")
        proxy.until(host, lambda ids: ids == both, within=2 * INTERVAL_S)

        # Vanished: its sidecar stops renewing the check; api-1's keeps renewing.
        renewed_at = time.monotonic()
        consul_put(consul_agent, f"/v1/agent/check/pass/{checks[2]}")
        while True:
            consul_put(consul_agent, f"/v1/agent/check/pass/{checks[1]}")
            if (
                proxy.poll(INTERVAL_S / 2)
                and proxy.snapshot is not None
                and endpoint_ids(proxy.snapshot, host) == {f"{api_svc}-1"}
            ):
                break
            assert time.monotonic() - renewed_at < 2 * INTERVAL_S + PUSH_SLACK_S + 1, (
                "the vanished instance is still an endpoint"
            )
        gone_after = time.monotonic() - renewed_at
        print(f"last renewal -> endpoint removed in {gone_after * 1000:.0f} ms")
        assert gone_after <= 2 * INTERVAL_S + PUSH_SLACK_S


def test_a_restarted_meshd_recovers_the_catalog(
    consul_agent: ConsulAgent,
    names: tuple[str, str],
    tmp_path: Path,
    meshd_factory: type[MeshdProcess],
) -> None:
    prefix, ns = names
    web, api_svc = f"{prefix}web", f"{prefix}api"
    consul_register(consul_agent, f"{web}-1", web, ns, 21101)
    for n in (1, 2, 3):
        consul_register(consul_agent, f"{api_svc}-{n}", api_svc, ns, 21110 + n)
    meshd = meshd_factory(tmp_path / "meshd", extra_args=consul_args(consul_agent)).start()
    every = frozenset(f"{api_svc}-{n}" for n in (1, 2, 3))
    with meshd.client() as api:
        ProxyWatch(api, f"{web}-1").until(fqdn(api_svc, ns), lambda ids: ids == every, within=10)
        meshd.kill()
        # While meshd is down, the catalog changes.
        consul_register(consul_agent, f"{api_svc}-4", api_svc, ns, 21114)
        meshd.start()
        # Ready means the catalog was read whole: the very first snapshot has it all.
        first = ProxyWatch(api, f"{web}-1")
        assert first.poll(0)
        got, _ = first.until(fqdn(api_svc, ns), lambda ids: True, within=1)
        assert got == every | {f"{api_svc}-4"}
        ids = [
            i["id"]
            for i in api.get(f"/v1/services/{api_svc}", params={"namespace": ns}).json()[
                "instances"
            ]
        ]
        assert ids == [f"{api_svc}-{n}" for n in (1, 2, 3, 4)]


def test_two_replicas_see_the_same_catalog(
    consul_agent: ConsulAgent,
    consul_prefix: str,
    names: tuple[str, str],
    tmp_path: Path,
    meshd_factory: type[MeshdProcess],
) -> None:
    prefix, ns = names
    svc = f"{prefix}api"
    args = [*consul_args(consul_agent), "--store", "consul", "--consul-prefix", consul_prefix]
    token = "mshd_shared_" + secrets.token_hex(8)
    a = meshd_factory(tmp_path / "a", extra_args=args, token=token).start()
    b = meshd_factory(tmp_path / "b", extra_args=args, token=token).start()
    consul_register(consul_agent, f"{svc}-1", svc, ns, 21201)
    with a.client() as on_a, b.client() as on_b:
        # Registered through replica a's REST API: meshd writes it to Consul's agent.
        body = {
            "service": svc,
            "namespace": ns,
            "address": "127.0.0.1",
            "port": 21202,
            "appPort": 8080,
            "labels": {"version": "v2"},
            "ttlSeconds": 30,
        }
        reply = on_a.put(f"/v1/instances/{svc}-2.{ns}", json=body)
        assert reply.status_code == 200, reply.text
        assert reply.json()["registry"] == "consul"
        deadline = time.monotonic() + 10

        def catalog(client: httpx.Client) -> list[tuple[str, bool, dict[str, str]]]:
            got = client.get(f"/v1/services/{svc}", params={"namespace": ns})
            if got.status_code != 200:
                return []
            return [(i["id"], i["healthy"], i["labels"]) for i in got.json()["instances"]]

        want = [(f"{svc}-1", True, {}), (f"{svc}-2.{ns}", True, {"version": "v2"})]
        assert catalog(on_a) == want, "a answers once its own write is visible"
        while catalog(on_b) != want:
            assert time.monotonic() < deadline, f"replica b sees {catalog(on_b)}"
            time.sleep(0.05)
        # A heartbeat through replica b (same body, unhealthy now) shows on a.
        body["healthy"] = False
        assert on_b.put(f"/v1/instances/{svc}-2.{ns}", json=body).status_code == 200
        while catalog(on_a)[-1][1]:
            assert time.monotonic() < deadline, "replica a never saw the health change"
            time.sleep(0.05)
        assert on_a.delete(f"/v1/instances/{svc}-2.{ns}").status_code == 204
        while len(catalog(on_b)) != 1:
            assert time.monotonic() < deadline, "replica b never saw the deregistration"
            time.sleep(0.05)
