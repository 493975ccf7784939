"""Join tokens, signing, renewal over mTLS and workload authorization, against a real
``meshd serve`` (embedded CA) over real TLS."""

from __future__ import annotations

import secrets
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.meshd_process import MeshdProcess
from tests.support.workload import certificate, make_csr, mtls_client, uri_sans

pytestmark = pytest.mark.integration


@pytest.fixture
def ns() -> str:
    return "id-" + secrets.token_hex(4)


@pytest.fixture
def api(meshd_server: MeshdProcess) -> Iterator[httpx.Client]:
    with meshd_server.client() as client:
        yield client


def join_token(api: httpx.Client, service: str, ns: str, **extra: Any) -> str:
    reply = api.post("/v1/tokens", json={"service": service, "namespace": ns, **extra})
    assert reply.status_code == 201, reply.text
    assert "hash" not in reply.json()
    token: str = reply.json()["token"]
    return token


def sign(server: MeshdProcess, csr: str, token: str | None, proxy: str = "") -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=server.url, verify=server.verify(), timeout=10) as anon:
        return anon.post("/v1/ca/sign", json={"csr": csr, "proxy": proxy}, headers=headers)


def test_meshd_serves_https_with_a_certificate_from_its_ca(meshd_server: MeshdProcess) -> None:
    roots = httpx.get(f"{meshd_server.url}/v1/ca/roots", verify=meshd_server.verify()).json()
    assert roots["trustDomain"] == "cluster.local"
    assert [r["signing"] for r in roots["roots"]] == [True]
    assert meshd_server.ca_file.read_text() == "".join(r["pem"] for r in roots["roots"])
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{meshd_server.url}/healthz", verify=ssl.create_default_context())


def test_join_token_gets_exactly_its_identity(
    meshd_server: MeshdProcess, api: httpx.Client, ns: str
) -> None:
    token = join_token(api, "reviews", ns)
    _key, csr = make_csr()
    reply = sign(meshd_server, csr, token, proxy=f"reviews-1.{ns}")
    assert reply.status_code == 200, reply.text
    signed = reply.json()
    cert = certificate(signed)
    assert uri_sans(cert) == [f"spiffe://cluster.local/ns/{ns}/sa/reviews"]
    assert signed["spiffeId"] == f"spiffe://cluster.local/ns/{ns}/sa/reviews"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 23 * 3600 < lifetime.total_seconds() <= 24 * 3600 + 120
    again = sign(meshd_server, make_csr()[1], token)
    assert again.status_code == 403
    assert "single-use" in again.json()["detail"]


def test_policy_refusals(meshd_server: MeshdProcess, api: httpx.Client, ns: str) -> None:
    token = join_token(api, "reviews", ns, uses="multi")
    other = f"spiffe://cluster.local/ns/{ns}/sa/ratings"
    for csr, why in (
        (make_csr((other,))[1], "ratings"),
        (make_csr(dns_names=("evil.example",))[1], "evil.example"),
        (make_csr(ca=True)[1], "CA"),
        (make_csr(key_cert_sign=True)[1], "keyCertSign"),
        (make_csr(key=rsa.generate_private_key(65537, 1024))[1], "1024"),
        ("-----BEGIN CERTIFICATE REQUEST-----\nnope\n-----END CERTIFICATE REQUEST-----\n", "CSR"),
    ):
        reply = sign(meshd_server, csr, token)
        assert reply.status_code == 400, reply.text
        assert reply.json()["type"] == "urn:meshd:problem:csr-rejected"
        assert why.lower() in reply.json()["detail"].lower(), reply.json()["detail"]
    # The token still works: refusals do not use it up.
    assert sign(meshd_server, make_csr()[1], token).status_code == 200


def test_expired_revoked_and_wrong_credentials(
    meshd_server: MeshdProcess, api: httpx.Client, ns: str
) -> None:
    expiring = join_token(api, "a", ns, ttl="1s")
    time.sleep(1.1)
    reply = sign(meshd_server, make_csr()[1], expiring)
    assert reply.status_code == 403
    assert "expired" in reply.json()["detail"]
    revoked = api.post("/v1/tokens", json={"service": "b", "namespace": ns}).json()
    assert api.delete(f"/v1/tokens/{revoked['id']}").status_code == 204
    assert sign(meshd_server, make_csr()[1], revoked["token"]).status_code == 401
    assert sign(meshd_server, make_csr()[1], "mjt_made-up").status_code == 401
    admin = sign(meshd_server, make_csr()[1], meshd_server.token)
    assert admin.status_code == 403
    assert "join token" in admin.json()["detail"]
    assert sign(meshd_server, make_csr()[1], None).status_code == 401
    listed = api.get("/v1/tokens").json()["items"]
    assert any(t["id"] == revoked["id"] for t in listed) is False
    created = api.post("/v1/admin-tokens", json={"name": f"v-{ns}", "role": "viewer"}).json()
    with meshd_server.client(created["token"]) as viewer:
        assert viewer.post("/v1/tokens", json={"service": "c", "namespace": ns}).status_code == 403


def test_renewal_and_workload_authorization_over_mtls(
    meshd_server: MeshdProcess, api: httpx.Client, ns: str, tmp_path: Path
) -> None:
    proxy = f"reviews-1.{ns}"
    key, csr = make_csr()
    signed = sign(meshd_server, csr, join_token(api, "reviews", ns), proxy).json()
    with mtls_client(
        meshd_server.url, meshd_server.ca_file, signed, key, tmp_path / "a"
    ) as workload:
        new_key, new_csr = make_csr()
        renewed = workload.post("/v1/ca/sign", json={"csr": new_csr, "proxy": proxy})
        assert renewed.status_code == 200, renewed.text
        assert renewed.json()["spiffeId"] == signed["spiffeId"]
        assert renewed.json()["serial"] != signed["serial"]
        # Its own instance: yes. Another service account's: no.
        mine = {
            "service": "reviews",
            "namespace": ns,
            "address": "127.0.0.1",
            "port": 15006,
            "appPort": 9080,
        }
        assert workload.put(f"/v1/instances/{proxy}", json=mine).status_code == 200, "own instance"
        theirs = mine | {"service": "ratings"}
        refused = workload.put(f"/v1/instances/ratings-1.{ns}", json=theirs)
        assert refused.status_code == 403
        assert "may not act" in refused.json()["detail"]
        got = workload.get(f"/v1/xds/{proxy}", params={"wait": 10})
        assert got.status_code == 200, got.text
        assert api.put(f"/v1/instances/ratings-1.{ns}", json=theirs).status_code == 200
        assert workload.get(f"/v1/xds/ratings-1.{ns}", params={"wait": 0}).status_code == 403
        # Workload certificates are no admin credential.
        assert workload.get("/v1/resources").status_code == 403
        # Renewing with the renewed certificate works too.
        with mtls_client(
            meshd_server.url, meshd_server.ca_file, renewed.json(), new_key, tmp_path / "b"
        ) as again:
            assert (
                again.post("/v1/ca/sign", json={"csr": make_csr()[1], "proxy": proxy}).status_code
                == 200
            )
    certs = api.get("/v1/certs").json()
    mine_listed = [c for c in certs["items"] if c["proxy"] == proxy]
    assert len(mine_listed) == 1
    assert mine_listed[0]["via"] == "renewal"
    assert mine_listed[0]["rootTrusted"] is True
    assert mine_listed[0]["expiresIn"] > 23 * 3600


def test_sign_rate_limit_answers_429(tmp_path: Path, meshd_factory: type[MeshdProcess]) -> None:
    server = meshd_factory(tmp_path / "data", extra_args=["--sign-rate", "1"]).start()
    with server.client() as api:
        token = join_token(api, "burst", "default", uses="multi")
        codes = [sign(server, make_csr()[1], token).status_code for _ in range(8)]
    assert 429 in codes
    assert codes[0] == 200


def test_root_rotation_phases(tmp_path: Path, meshd_factory: type[MeshdProcess]) -> None:
    server = meshd_factory(tmp_path / "data", extra_args=["--cert-ttl", "10s"]).start()
    with server.client() as api:
        before = api.get("/v1/ca/roots").json()
        started = api.post("/v1/ca/rotate")
        assert started.status_code == 200, started.text
        assert api.post("/v1/ca/rotate").status_code == 409
        status = api.get("/v1/ca/rotation").json()
        assert status["rotation"]["phase"] in ("distributing", "switched")
        assert len(status["bundle"]["roots"]) == 2
        new = status["rotation"]["new"]
        deadline = time.monotonic() + 60
        while True:  # no proxies here: the switch happens at once, retirement after the TTL
            status = api.get("/v1/ca/rotation").json()
            if status["rotation"] is None:
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.5)
        roots = api.get("/v1/ca/roots").json()["roots"]
        assert [(r["id"], r["signing"]) for r in roots] == [(new, True)]
        assert before["roots"][0]["id"] != new
    # meshd's own certificate moved to the new root: a client trusting only it connects.
    with httpx.Client(base_url=server.url, verify=server.verify()) as fresh:
        assert fresh.get("/healthz").status_code == 200
