"""A sidecar restarted while meshd is down serves from its saved state, end to end with
real processes: meshd, a ``web`` backend with its sidecar, and a ``client`` sidecar the
test plays the app of. Both sidecars are restarted while meshd is dead (SIGKILL), so each
must come back on its saved config (routes, endpoints, policies) and its saved
certificate (mTLS between them); then meshd returns and confirms the saved config."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from tests.e2e.mesh import Mesh

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

RULES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /old}}]
    rewrite: {uri: /new}
    route: [{destination: {host: web}}]
  - route: [{destination: {host: web}}]
"""


def test_a_sidecar_restarted_while_meshd_is_down_serves_from_saved_state(
    tmp_path: Path,
) -> None:
    with Mesh(tmp_path) as mesh:
        web = mesh.sidecar("web", app=mesh.backend("web"))
        client = mesh.sidecar("client")
        mesh.wait_ready()
        mesh.apply(RULES)
        mesh.wait_synced()
        with mesh.http_client(client) as http:
            mesh.eventually(
                lambda: http.get("http://web/old").json()["target"] == "/new",
                "the client's sidecar applying the rewrite",
            )
        served = {s.service: s.dump() for s in (client, web)}
        assert {d["source"] for d in served.values()} == {"meshd"}

        mesh.kill_meshd()
        for sidecar in (client, web):
            assert sidecar.stop() == 0
        for sidecar in (client, web):
            sidecar.start()
        mesh.wait_ready([client, web])
        for sidecar in (client, web):
            dump = sidecar.dump()
            before = served[sidecar.service]
            assert dump["source"] == "saved", dump
            assert dump["version"] == before["version"]
            # The same certificate as before the restart, from the state dir.
            assert dump["identity"]["serial"] == before["identity"]["serial"]
            assert dump["controlPlane"]["connected"] is False
        assert "serving saved config" in client.log_text()

        with mesh.http_client(client) as http:
            replies = [http.get("http://web/old") for _ in range(200)]
        statuses = collections.Counter(r.status_code for r in replies)
        assert statuses == {200: 200}, statuses
        assert {r.json()["target"] for r in replies} == {"/new"}  # the saved route table
        metrics = client.metrics()
        assert any(
            k.startswith("istio_requests_total{")
            and 'connection_security_policy="mutual_tls"' in k
            and 'destination_principal="spiffe://cluster.local/ns/' in k
            for k in metrics
        ), metrics

        # meshd returns (same data dir and port): the sidecars register again and it
        # confirms the config they serve.
        mesh.start_meshd()
        mesh.eventually(
            lambda: all(s.dump()["source"] == "meshd" for s in (client, web)),
            "meshd confirming the saved configs",
            timeout=20,
        )
        mesh.wait_synced([client, web])
        with mesh.http_client(client) as http:
            assert http.get("http://web/old").json()["target"] == "/new"
