"""A 200 from meshd means the change survives a crash; replicas on one Consul converge."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.support.components import ConsulAgent
from tests.support.meshd_process import MeshdProcess

pytestmark = pytest.mark.e2e

RULE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
  namespace: durable
spec:
  hosts: [ratings]
  http:
  - timeout: {timeout}
    route:
    - destination:
        host: ratings
"""


def apply(client: httpx.Client, timeout: str) -> None:
    reply = client.post(
        "/v1/apply",
        content=RULE.format(timeout=timeout),
        headers={"Content-Type": "application/yaml"},
    )
    assert reply.status_code == 200, reply.text


def store_args(store: str, consul: ConsulAgent | None, prefix: str) -> list[str]:
    if store == "sqlite":
        return []
    assert consul is not None
    return ["--store", "consul", "--consul-addr", consul.http_addr, "--consul-prefix", prefix]


@pytest.mark.parametrize("store", ["sqlite", "consul"])
def test_sigkill_right_after_apply_loses_nothing(
    store: str, tmp_path: Path, meshd_factory: type[MeshdProcess], request: pytest.FixtureRequest
) -> None:
    consul = request.getfixturevalue("consul_agent") if store == "consul" else None
    prefix = request.getfixturevalue("consul_prefix") if store == "consul" else ""
    server = meshd_factory(tmp_path / "data", extra_args=store_args(store, consul, prefix)).start()
    with server.client() as client:
        for i in range(1, 6):
            apply(client, f"{i}s")
            server.kill()  # the instant the 200 arrived
            server.start()
            got = client.get("/v1/resources/VirtualService/durable/ratings")
            assert got.status_code == 200, server.describe()
            assert got.json()["spec"]["http"][0]["timeout"] == f"{i}s"
            assert got.json()["metadata"]["resourceVersion"] == str(i)


def test_two_replicas_on_one_consul_converge_within_a_second(
    tmp_path: Path, meshd_factory: type[MeshdProcess], consul_agent: ConsulAgent, consul_prefix: str
) -> None:
    """An apply on replica A reaches a proxy watching replica B within 1 s."""
    args = store_args("consul", consul_agent, consul_prefix)
    a = meshd_factory(tmp_path / "a", extra_args=args, token="mshd_shared_token_for_both").start()
    b = meshd_factory(tmp_path / "b", extra_args=args, token="mshd_shared_token_for_both").start()
    proxy = "ratings-1.durable"
    instance = {
        "service": "ratings",
        "namespace": "durable",
        "address": "127.0.0.1",
        "port": 15006,
        "appPort": 9080,
    }
    with a.client() as on_a, b.client(timeout=30) as on_b:
        assert on_b.put(f"/v1/instances/{proxy}", json=instance).status_code == 200
        version = ""
        for i in range(1, 4):
            apply(on_a, f"{i}s")
            applied = time.monotonic()
            while True:
                left = 1.0 - (time.monotonic() - applied)
                assert left > 0, f"replica b did not push revision {i} within 1 s"
                reply = on_b.get(f"/v1/xds/{proxy}", params={"version": version, "wait": left})
                if reply.status_code == 304:
                    continue
                assert reply.status_code == 200, reply.text
                version = reply.headers["X-Mesh-Version"]
                if f'"timeout_ms":{i * 1000}' in reply.text:
                    break
        # The admin token created on one replica works on the other: tokens live in Consul.
        created = on_a.post("/v1/admin-tokens", json={"name": "ci", "role": "viewer"}).json()[
            "token"
        ]
        with b.client(created) as viewer_on_b:
            assert viewer_on_b.get("/v1/resources").status_code == 200
