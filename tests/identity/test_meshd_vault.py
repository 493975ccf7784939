"""``meshd serve --ca vault`` against a real OpenBao: meshd sets up the PKI mount and
roles, serves HTTPS with a certificate from it, and sidecars' certificates chain to the
Vault root."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from cryptography import x509

from tests.support.components import BaoServer
from tests.support.meshd_process import MeshdProcess
from tests.support.workload import certificate, make_csr, mtls_client, uri_sans

pytestmark = pytest.mark.e2e


def test_meshd_with_openbao(
    tmp_path: Path, meshd_factory: type[MeshdProcess], bao_server: BaoServer, bao_mount_path: str
) -> None:
    server = meshd_factory(
        tmp_path / "data",
        extra_args=[
            "--ca", "vault", "--vault-addr", bao_server.url, "--vault-token", bao_server.token,
            "--vault-mount", bao_mount_path,
        ],
    ).start()  # fmt: skip
    vault_root = httpx.get(f"{bao_server.url}/v1/{bao_mount_path}/ca/pem", timeout=10).text
    roots = httpx.get(f"{server.url}/v1/ca/roots", verify=server.verify()).json()["roots"]
    assert [r["pem"].strip() for r in roots] == [vault_root.strip()]

    with server.client() as api:
        token = api.post("/v1/tokens", json={"service": "ratings", "namespace": "prod"}).json()[
            "token"
        ]
    key, csr = make_csr()
    with httpx.Client(base_url=server.url, verify=server.verify()) as anon:
        reply = anon.post(
            "/v1/ca/sign",
            json={"csr": csr, "proxy": "ratings-1.prod"},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert reply.status_code == 200, reply.text
    signed = reply.json()
    cert = certificate(signed)
    assert uri_sans(cert) == ["spiffe://cluster.local/ns/prod/sa/ratings"]
    root = x509.load_pem_x509_certificate(vault_root.encode())
    assert cert.issuer == root.subject

    # Renewal over mTLS works with the Vault-issued certificate.
    with mtls_client(server.url, server.ca_file, signed, key, tmp_path / "client") as workload:
        renewed = workload.post(
            "/v1/ca/sign", json={"csr": make_csr()[1], "proxy": "ratings-1.prod"}
        )
        assert renewed.status_code == 200, renewed.text

    # Asking for another identity is refused by meshd's policy before Vault is asked.
    with server.client() as api:
        multi = api.post(
            "/v1/tokens", json={"service": "ratings", "namespace": "prod", "uses": "multi"}
        ).json()["token"]
    with httpx.Client(base_url=server.url, verify=server.verify()) as anon:
        bad = anon.post(
            "/v1/ca/sign",
            json={"csr": make_csr(("spiffe://cluster.local/ns/prod/sa/admin",))[1]},
            headers={"Authorization": f"Bearer {multi}"},
        )
    assert bad.status_code == 400, bad.text
    assert bad.json()["type"] == "urn:meshd:problem:csr-rejected"
