"""The sidecar's side of the registry contract, one suite run against both ways a
sidecar registers: ``--registry meshd`` (:class:`MeshdRegistrar`: meshd's API over mTLS
with a real workload certificate, meshd on its embedded registry) and ``--registry
consul`` (:class:`ConsulRegistrar` on the sidecar's own Consul client, as
``open_registrar`` builds it: a real ``consul agent -dev``, seen by a real ``meshd serve
--registry consul``). What meshd shows in ``/v1/services`` is the truth
both are held to:

register healthy -> healthy, with labels and output; report unhealthy -> unhealthy with
the check's output; healthy again -> back; no report for a TTL -> out of the endpoints;
a report after that -> back; the registry lost the instance -> the next report registers
it again; deregister -> gone (and a second deregister says it was not there); an
unreachable registry -> a typed, retriable error.
"""

from __future__ import annotations

import secrets
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from registry.consul_writer import ConsulWriter
from sidecar.agent import (
    REGISTRATION_ERRORS,
    ConsulRegistrar,
    MeshdRegistrar,
    Registrar,
    RegistryUnavailable,
)
from sidecar.consul_agent import ConsulAgentClient
from sidecar.control_client import Connectivity, ControlClient, HealthReport, Registration
from sidecar.errors import ControlPlaneUnavailable
from sidecar.identity import IdentityManager
from tests.support.components import ConsulAgent
from tests.support.meshd_process import MeshdProcess
from tests.support.processes import LOOPBACK, free_port

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

TTL_S = 2.0
"""Two check intervals of 1 s."""
SLACK_S = 1.5
"""Expiry sweep or Consul's TTL timer, meshd's watch, debounce and compile."""
OK = HealthReport(True, "GET /healthz: 200 OK", TTL_S)
BAD = HealthReport(False, "GET /healthz: 503 Service Unavailable", TTL_S)


@dataclass
class World:
    meshd: MeshdProcess
    registrar: Registrar
    ns: str
    service: str
    proxy: str
    forget: Callable[[], None]
    """Removes the instance behind the registrar's back (the registry lost it)."""

    def instance(self) -> dict[str, Any] | None:
        with self.meshd.client() as api:
            reply = api.get(f"/v1/services/{self.service}", params={"namespace": self.ns})
        if reply.status_code == 404:
            return None
        assert reply.status_code == 200, reply.text
        found = [i for i in reply.json()["instances"] if i["id"] == self.proxy]
        return found[0] if found else None

    async def until(
        self, what: str, predicate: Callable[[dict[str, Any] | None], bool], within: float = 10
    ) -> float:
        """Seconds until meshd's catalog shows ``predicate`` of the instance."""
        started = time.monotonic()
        last: dict[str, Any] | None = None
        while time.monotonic() - started < within:
            last = await trio.to_thread.run_sync(self.instance)
            if predicate(last):
                return time.monotonic() - started
            await trio.sleep(0.05)
        raise AssertionError(f"{what} not seen within {within:g} s; last: {last}")


def join_token(meshd: MeshdProcess, service: str, ns: str) -> str:
    with meshd.client() as api:
        made = api.post("/v1/tokens", json={"service": service, "namespace": ns, "uses": "multi"})
    assert made.status_code == 201, made.text
    return str(made.json()["token"])


@asynccontextmanager
async def world(
    backend: str,
    tmp_path: Path,
    meshd_factory: type[MeshdProcess],
    consul: ConsulAgent | None,
) -> AsyncIterator[World]:
    ns = f"rc{secrets.token_hex(3)}"
    service = f"svc{secrets.token_hex(3)}"
    proxy = f"{service}-1.{ns}"
    args = ["--registry", "consul", "--consul-addr", consul.http_addr] if consul else []
    meshd = meshd_factory(tmp_path / "meshd", extra_args=args).start()
    manager = IdentityManager(
        meshd_url=meshd.url,
        join_token=join_token(meshd, service, ns),
        proxy_id=proxy,
        service=service,
        namespace=ns,
        state_dir=tmp_path / "state",
        ca_file=meshd.ca_file,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        if backend == "meshd":
            async with ControlClient(meshd.url, manager.control_plane_context) as client:

                def forget() -> None:
                    with meshd.client() as api:
                        assert api.delete(f"/v1/instances/{proxy}").status_code == 204

                yield World(
                    meshd, MeshdRegistrar(client, Connectivity(meshd.url)), ns, service, proxy,
                    forget,
                )  # fmt: skip
        else:
            assert consul is not None

            def forget() -> None:
                reply = httpx.put(
                    f"{consul.url}/v1/agent/service/deregister/{proxy}", trust_env=False
                )
                assert reply.status_code == 200, reply.text

            consul_client = ConsulAgentClient(consul.http_addr)
            try:
                registrar = ConsulRegistrar(ConsulWriter(consul_client))
                yield World(meshd, registrar, ns, service, proxy, forget)
            finally:
                await consul_client.agent_service_deregister(proxy)
                await consul_client.aclose()
        nursery.cancel_scope.cancel()


@pytest.fixture(params=["meshd", "consul"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.timeout(90)
def test_the_registration_contract(
    backend: str,
    tmp_path: Path,
    meshd_factory: type[MeshdProcess],
    request: pytest.FixtureRequest,
) -> None:
    consul: ConsulAgent | None = (
        request.getfixturevalue("consul_agent") if backend == "consul" else None
    )
    times: dict[str, float] = {}

    async def main() -> None:
        async with world(backend, tmp_path, meshd_factory, consul) as w:
            registration = Registration(
                service=w.service,
                namespace=w.ns,
                address=LOOPBACK,
                port=free_port(),
                app_port=8080,
                protocol="http",
                labels=(("version", "v1"),),
            )
            r = w.registrar
            assert r.backend == backend

            # Registered healthy, with its labels and the check's output.
            await r.register(w.proxy, registration, OK)
            await w.until("healthy", lambda i: i is not None and i["healthy"])
            inst = w.instance()
            assert inst is not None
            assert inst["labels"] == {"version": "v1"}
            assert inst["address"] == f"{LOOPBACK}:{registration.port}"
            if backend == "meshd":
                # A Consul agent syncs an output-only change of a check (passing at
                # registration, passing with output after) lazily: check_update_interval.
                assert inst["healthOutput"] == OK.output
            assert r.last_error is None

            # Unhealthy, with its output; then healthy again.
            await r.report(w.proxy, registration, BAD)
            times["unhealthy"] = await w.until(
                "unhealthy", lambda i: i is not None and not i["healthy"]
            )
            inst = w.instance()
            assert inst is not None
            assert inst["healthOutput"] == BAD.output
            await r.report(w.proxy, registration, OK)
            times["healthy"] = await w.until("healthy", lambda i: i is not None and i["healthy"])

            # No report for a TTL (the sidecar was killed): out of the endpoints (the
            # embedded registry drops it; Consul's TTL check goes critical).
            await r.report(w.proxy, registration, OK)
            times["expired"] = await w.until(
                "expired",
                lambda i: i is None or not i["healthy"],
                within=TTL_S + SLACK_S,
            )
            assert times["expired"] >= TTL_S - 0.3  # not before its TTL
            # A report after that brings it back (the whole registration again).
            await r.report(w.proxy, registration, OK)
            await w.until("back", lambda i: i is not None and i["healthy"])

            # The registry lost it behind our back: the next report registers it again.
            await trio.to_thread.run_sync(w.forget)
            await w.until("forgotten", lambda i: i is None)
            await r.report(w.proxy, registration, OK)
            await w.until("registered again", lambda i: i is not None and i["healthy"])

            # Deregistered: gone; deregistering again finds nothing.
            assert await r.deregister(w.proxy, timeout_s=3.0) is True
            await w.until("gone", lambda i: i is None)
            assert await r.deregister(w.proxy, timeout_s=3.0) is False

    trio.run(main)
    print(f"{backend}: report -> meshd's catalog: {times}")


def test_an_unreachable_registry_is_a_retriable_error() -> None:
    registration = Registration("svc", "ns", LOOPBACK, 15006, 8080, "http")

    async def main() -> None:
        client = ConsulAgentClient(f"{LOOPBACK}:{free_port()}", timeout_s=2.0)
        consul = ConsulRegistrar(ConsulWriter(client))
        for call in (consul.register, consul.report):
            with pytest.raises(RegistryUnavailable, match="is unreachable") as caught:
                await call("svc-1.ns", registration, OK)
            assert isinstance(caught.value, REGISTRATION_ERRORS)
            assert "Connection refused" in str(caught.value)
        assert consul.last_error is not None
        with pytest.raises(RegistryUnavailable):
            await consul.deregister("svc-1.ns", timeout_s=2.0)
        url = f"https://{LOOPBACK}:{free_port()}"
        async with ControlClient(url, ssl.create_default_context) as control:
            meshd = MeshdRegistrar(control, Connectivity(url))
            with pytest.raises(ControlPlaneUnavailable, match="is unreachable"):
                await meshd.register("svc-1.ns", registration, OK)
            assert meshd.last_error is not None

    trio.run(main)
