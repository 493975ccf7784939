"""The Vault/OpenBao backend against a real ``bao server -dev``: setting up a mount and
its roles when allowed, using existing ones as they are, least-privilege tokens, AppRole
login and re-login, an intermediate mount under an external root, and the errors that
say what to do."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import hvac
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from meshd.ca.base import SignRequest
from meshd.ca.factory import open_ca
from meshd.ca.vault import VaultCA, VaultSettings
from meshd.errors import CaUnavailable, ConfigError
from tests.ca.conftest import vault_settings
from tests.ca.helpers import (
    REVIEWS,
    TRUST_DOMAIN,
    WEB,
    Endpoint,
    ec_key,
    handshake,
    load,
    load_all,
    make_csr,
    verify_chain,
)
from tests.support.components import BaoServer
from tests.support.processes import free_ports

pytestmark = pytest.mark.anyio

integration = pytest.mark.integration


def _enable_pki(root: hvac.Client, mount: str) -> None:
    root.sys.enable_secrets_engine("pki", path=mount, config={"max_lease_ttl": "87600h"})


def _generate_root(root: hvac.Client, mount: str, ttl: str = "87600h") -> x509.Certificate:
    response = root.write_data(
        f"{mount}/root/generate/internal",
        data={"common_name": "existing root", "key_type": "ec", "key_bits": 256, "ttl": ttl},
    )
    return load(response["data"]["certificate"])


# --- setup ---------------------------------------------------------------------------------


@integration
async def test_setup_creates_mount_root_and_roles(
    bao_server: BaoServer, bao_mount_path: str, bao_root: hvac.Client
) -> None:
    ca = await VaultCA(vault_settings(bao_server, bao_mount_path), TRUST_DOMAIN).open()
    try:
        bundle = await ca.bundle()
    finally:
        await ca.aclose()
    mount = bao_root.read(f"sys/mounts/{bao_mount_path}")
    assert mount["data"]["type"] == "pki"
    assert mount["data"]["config"]["max_lease_ttl"] == 10 * 365 * 24 * 3600

    issuers = bao_root.list(f"{bao_mount_path}/issuers")["data"]["keys"]
    assert len(issuers) == 1
    (root,) = bundle.roots
    cert = load(root.pem)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert f"meshd root {TRUST_DOMAIN}" in cert.subject.rfc4514_string()

    workload = bao_root.read(f"{bao_mount_path}/roles/meshd-workload")["data"]
    assert workload["allowed_uri_sans"] == [f"spiffe://{TRUST_DOMAIN}/*"]
    assert workload["require_cn"] is False
    assert workload["server_flag"]
    assert workload["client_flag"]
    assert workload["allow_ip_sans"] is False
    assert workload["allow_any_name"] is False
    assert workload["allowed_domains"] == []
    assert workload["key_type"] == "any"
    assert (workload["ttl"], workload["max_ttl"]) == (24 * 3600, 7 * 24 * 3600)
    server = bao_root.read(f"{bao_mount_path}/roles/meshd-server")["data"]
    assert server["allow_ip_sans"] is True
    assert server["allow_any_name"] is True
    assert server["allowed_uri_sans"] == [f"spiffe://{TRUST_DOMAIN}/*"]


@integration
async def test_existing_mount_and_roles_are_used_as_they_are(
    bao_server: BaoServer, bao_mount_path: str, bao_root: hvac.Client
) -> None:
    _enable_pki(bao_root, bao_mount_path)
    existing = _generate_root(bao_root, bao_mount_path)
    role = {
        "allowed_uri_sans": ["spiffe://cluster.local/ns/*", "spiffe://other.domain/*", "*"],
        "require_cn": False,
        "use_csr_sans": False,
        "use_csr_common_name": False,
        "key_type": "any",
        "ttl": "2h",
        "max_ttl": "168h",
        "basic_constraints_valid_for_non_ca": True,
    }
    for name in ("meshd-workload", "meshd-server"):
        bao_root.write_data(f"{bao_mount_path}/roles/{name}", data=role)

    ca = await VaultCA(vault_settings(bao_server, bao_mount_path), TRUST_DOMAIN).open()
    try:
        bundle = await ca.bundle()
        issued = await ca.sign(SignRequest(make_csr(ec_key()), WEB))
    finally:
        await ca.aclose()
    assert [load(r.pem) for r in bundle.roots] == [existing]
    assert verify_chain(issued.cert_pem, issued.chain_pem, bundle) == existing
    after = bao_root.read(f"{bao_mount_path}/roles/meshd-workload")["data"]
    assert after["ttl"] == 2 * 3600, "meshd leaves an existing role alone"
    assert len(bao_root.list(f"{bao_mount_path}/issuers")["data"]["keys"]) == 1


@integration
async def test_role_that_does_not_cover_the_trust_domain(
    bao_server: BaoServer, bao_mount_path: str, bao_root: hvac.Client
) -> None:
    _enable_pki(bao_root, bao_mount_path)
    _generate_root(bao_root, bao_mount_path)
    bao_root.write_data(
        f"{bao_mount_path}/roles/meshd-workload",
        data={"allowed_uri_sans": ["spiffe://cluster.local/ns/default/*"], "require_cn": False},
    )
    with pytest.raises(ConfigError) as caught:
        await open_ca(
            "vault",
            store=None,
            trust_domain=TRUST_DOMAIN,
            vault=vault_settings(bao_server, bao_mount_path),
        )
    detail = caught.value.detail
    assert "meshd-workload" in detail
    assert "do not cover spiffe://cluster.local/*" in detail
    assert "allowed_uri_sans=spiffe://cluster.local/*" in detail


@integration
async def test_mount_of_another_engine(
    bao_server: BaoServer, bao_mount_path: str, bao_root: hvac.Client
) -> None:
    bao_root.sys.enable_secrets_engine("kv", path=bao_mount_path)
    with pytest.raises(ConfigError, match="is a 'kv' engine, not pki"):
        await VaultCA(vault_settings(bao_server, bao_mount_path), TRUST_DOMAIN).open()


@integration
async def test_no_setup_when_told_not_to(bao_server: BaoServer, bao_mount_path: str) -> None:
    ca = VaultCA(vault_settings(bao_server, bao_mount_path), TRUST_DOMAIN)
    try:
        with pytest.raises(ConfigError, match="bao secrets enable"):
            await ca.open(setup=False)
    finally:
        await ca.aclose()


@integration
async def test_leaves_never_outlive_the_issuer(
    bao_server: BaoServer, bao_mount_path: str, bao_root: hvac.Client
) -> None:
    _enable_pki(bao_root, bao_mount_path)
    short = _generate_root(bao_root, bao_mount_path, ttl="2h")  # leaf_not_after_behavior=err
    ca = await VaultCA(vault_settings(bao_server, bao_mount_path), TRUST_DOMAIN).open()
    try:
        issued = await ca.sign(SignRequest(make_csr(ec_key()), WEB, ttl=timedelta(hours=24)))
    finally:
        await ca.aclose()
    assert issued.not_after <= short.not_valid_after_utc
    assert issued.not_after > datetime.now(UTC) + timedelta(hours=1, minutes=50)


@integration
async def test_vault_going_away_after_start(bao_server: BaoServer, bao_mount_path: str) -> None:
    """The bundle read last keeps being served; signing says Vault cannot be reached."""
    settings = vault_settings(bao_server, bao_mount_path, refresh_interval=0.0)
    ca = await VaultCA(settings, TRUST_DOMAIN).open()
    try:
        bundle = await ca.bundle()
        (port,) = free_ports(1)
        ca._client.url = f"http://127.0.0.1:{port}"  # as if Vault had stopped
        assert await ca.bundle() == bundle
        with pytest.raises(CaUnavailable, match="cannot reach Vault at"):
            await ca.sign(SignRequest(make_csr(ec_key()), WEB))
    finally:
        await ca.aclose()


# --- an intermediate mount -------------------------------------------------------------------


@integration
async def test_intermediate_mount_under_an_external_root(
    bao_server: BaoServer, bao_mount_path: str, bao_root: hvac.Client, tmp_path: Path
) -> None:
    """The bundle holds the external root at the end of the imported chain; leaves come
    with the intermediate as their chain."""
    root_mount, int_mount = bao_mount_path, f"{bao_mount_path}-int"
    _enable_pki(bao_root, root_mount)
    external_root = _generate_root(bao_root, root_mount)
    try:
        _enable_pki(bao_root, int_mount)
        csr = bao_root.write_data(
            f"{int_mount}/intermediate/generate/internal",
            data={"common_name": "meshd intermediate", "key_type": "ec", "key_bits": 256},
        )["data"]["csr"]
        signed = bao_root.write_data(
            f"{root_mount}/root/sign-intermediate",
            data={"csr": csr, "ttl": "8760h", "format": "pem"},
        )["data"]
        bao_root.write_data(
            f"{int_mount}/intermediate/set-signed",
            data={"certificate": signed["certificate"] + "\n" + signed["issuing_ca"]},
        )
        intermediate = load(signed["certificate"])

        ca = await VaultCA(vault_settings(bao_server, int_mount), TRUST_DOMAIN).open()
        try:
            bundle = await ca.bundle()
            key, peer_key = ec_key(), ec_key()
            issued = await ca.sign(SignRequest(make_csr(key), WEB))
            peer = await ca.sign(SignRequest(make_csr(peer_key), REVIEWS))
        finally:
            await ca.aclose()
        assert [load(r.pem) for r in bundle.roots] == [external_root]
        assert bundle.signing_root == external_root.fingerprint(hashes.SHA256()).hex()
        assert load_all(issued.chain_pem) == [intermediate]
        assert issued.root_id == bundle.signing_root
        assert verify_chain(issued.cert_pem, issued.chain_pem, bundle) == external_root
        handshake(Endpoint.of(key, issued), Endpoint.of(peer_key, peer), bundle.pem(), tmp_path)
    finally:
        bao_root.sys.disable_secrets_engine(int_mount)


# --- least privilege -------------------------------------------------------------------------


def _policy(mount: str, *, sign: bool = True) -> str:
    rules = [
        f'path "{mount}/roles/*" {{ capabilities = ["read"] }}',
        f'path "{mount}/issuers" {{ capabilities = ["list"] }}',
        f'path "{mount}/issuer/*" {{ capabilities = ["read"] }}',
        f'path "sys/mounts/{mount}" {{ capabilities = ["read"] }}',
    ]
    if sign:
        rules.append(f'path "{mount}/sign/meshd-workload" {{ capabilities = ["update"] }}')
    return "\n".join(rules)


@dataclass
class Limited:
    token: str
    policy: str


@pytest.fixture
def limited_token(
    bao_root: hvac.Client, bao_mount_path: str, request: pytest.FixtureRequest
) -> Iterator[Limited]:
    """A token that may sign and read, but not set anything up; with the indirect
    parameter ``False`` it may not even sign."""
    sign = getattr(request, "param", True)
    name = f"meshd-test-{secrets.token_hex(4)}"
    bao_root.sys.create_or_update_policy(name, _policy(bao_mount_path, sign=sign))
    token = bao_root.auth.token.create(policies=[name], ttl="10m")["auth"]["client_token"]
    try:
        yield Limited(token, name)
    finally:
        bao_root.sys.delete_policy(name)


@integration
async def test_least_privilege_token_signs_with_what_exists(
    bao_server: BaoServer, bao_mount_path: str, limited_token: Limited
) -> None:
    admin = await VaultCA(vault_settings(bao_server, bao_mount_path), TRUST_DOMAIN).open()
    await admin.aclose()
    settings = VaultSettings(addr=bao_server.url, token=limited_token.token, mount=bao_mount_path)
    ca = await VaultCA(settings, TRUST_DOMAIN).open()
    try:
        issued = await ca.sign(SignRequest(make_csr(ec_key()), WEB))
        verify_chain(issued.cert_pem, issued.chain_pem, await ca.bundle())
    finally:
        await ca.aclose()


@integration
@pytest.mark.parametrize("limited_token", [False], indirect=True)
async def test_token_that_may_not_sign(
    bao_server: BaoServer, bao_mount_path: str, limited_token: Limited
) -> None:
    admin = await VaultCA(vault_settings(bao_server, bao_mount_path), TRUST_DOMAIN).open()
    await admin.aclose()
    settings = VaultSettings(addr=bao_server.url, token=limited_token.token, mount=bao_mount_path)
    ca = await VaultCA(settings, TRUST_DOMAIN).open()
    try:
        with pytest.raises(CaUnavailable) as caught:
            await ca.sign(SignRequest(make_csr(ec_key()), WEB))
    finally:
        await ca.aclose()
    error = caught.value
    assert error.status == 503
    assert error.context["path"] == f"{bao_mount_path}/sign/meshd-workload"
    assert error.context["capability"] == "update"
    assert f"'{bao_mount_path}/sign/meshd-workload'" in error.detail
    assert "permission denied" in error.detail
    assert '"update"' in error.detail


@integration
async def test_token_that_may_not_create_the_mount(
    bao_server: BaoServer, bao_mount_path: str, limited_token: Limited
) -> None:
    settings = VaultSettings(addr=bao_server.url, token=limited_token.token, mount=bao_mount_path)
    ca = VaultCA(settings, TRUST_DOMAIN)
    try:
        with pytest.raises(ConfigError) as caught:
            await ca.open()
    finally:
        await ca.aclose()
    detail = caught.value.detail
    assert f"no PKI mount '{bao_mount_path}'" in detail
    assert f"'sys/mounts/{bao_mount_path}'" in detail
    assert "'create'" in detail
    assert "bao secrets enable" in detail


# --- AppRole ----------------------------------------------------------------------------------


@dataclass
class AppRole:
    mount: str
    role_id: str
    secret_id: str


@pytest.fixture
def approle(
    bao_server: BaoServer,
    bao_root: hvac.Client,
    bao_mount_path: str,
    request: pytest.FixtureRequest,
) -> Iterator[AppRole]:
    """AppRole at a fresh auth path whose tokens may sign on the test's mount (set up with
    the root token first); ``token_ttl`` from the test's parameter (default 10 min)."""
    token_ttl = getattr(request, "param", "10m")
    auth_path = f"approle-{secrets.token_hex(4)}"
    policy = f"meshd-approle-{secrets.token_hex(4)}"
    bao_root.sys.create_or_update_policy(policy, _policy(bao_mount_path))
    bao_root.sys.enable_auth_method("approle", path=auth_path)
    try:
        bao_root.auth.approle.create_or_update_approle(
            "meshd",
            token_policies=[policy],
            token_ttl=token_ttl,
            token_max_ttl=token_ttl,
            mount_point=auth_path,
        )
        role_id = bao_root.auth.approle.read_role_id("meshd", mount_point=auth_path)["data"][
            "role_id"
        ]
        secret_id = bao_root.auth.approle.generate_secret_id("meshd", mount_point=auth_path)[
            "data"
        ]["secret_id"]
        yield AppRole(auth_path, role_id, secret_id)
    finally:
        bao_root.sys.disable_auth_method(auth_path)
        bao_root.sys.delete_policy(policy)


async def _set_up_mount(bao: BaoServer, mount: str) -> None:
    admin = await VaultCA(vault_settings(bao, mount), TRUST_DOMAIN).open()
    await admin.aclose()


def _approle_settings(bao: BaoServer, mount: str, role: AppRole) -> VaultSettings:
    return VaultSettings(
        addr=bao.url,
        role_id=role.role_id,
        secret_id=role.secret_id,
        approle_mount=role.mount,
        mount=mount,
    )


@integration
async def test_approle_login_and_relogin_after_revocation(
    bao_server: BaoServer, bao_mount_path: str, approle: AppRole, bao_root: hvac.Client
) -> None:
    await _set_up_mount(bao_server, bao_mount_path)
    ca = await VaultCA(_approle_settings(bao_server, bao_mount_path, approle), TRUST_DOMAIN).open()
    try:
        await ca.sign(SignRequest(make_csr(ec_key()), WEB))
        first_token = ca._client.token
        assert first_token
        assert first_token != bao_server.token
        # The token dies under meshd (revoked, or expired while meshd was suspended):
        # Vault says "permission denied"; meshd logs in again and the request succeeds.
        bao_root.auth.token.revoke(first_token)
        issued = await ca.sign(SignRequest(make_csr(ec_key()), WEB))
        assert ca._client.token != first_token
        verify_chain(issued.cert_pem, issued.chain_pem, await ca.bundle())
    finally:
        await ca.aclose()


@integration
@pytest.mark.parametrize("approle", ["2s"], indirect=True)
async def test_approle_token_is_renewed_before_it_expires(
    bao_server: BaoServer, bao_mount_path: str, approle: AppRole, caplog: pytest.LogCaptureFixture
) -> None:
    await _set_up_mount(bao_server, bao_mount_path)
    caplog.set_level(logging.INFO, logger="meshd.ca.vault")
    ca = await VaultCA(_approle_settings(bao_server, bao_mount_path, approle), TRUST_DOMAIN).open()
    try:
        first_token = ca._client.token
        await anyio.sleep(2.5)
        started = time.monotonic()
        await ca.sign(SignRequest(make_csr(ec_key()), WEB))
        assert ca._client.token != first_token
        assert time.monotonic() - started < 5
    finally:
        await ca.aclose()
    logins = [r for r in caplog.records if "logged in with AppRole" in r.getMessage()]
    assert len(logins) == 2
    assert approle.secret_id not in caplog.text
    assert first_token not in caplog.text


@integration
async def test_approle_with_a_bad_secret(
    bao_server: BaoServer, bao_mount_path: str, approle: AppRole
) -> None:
    settings = VaultSettings(
        addr=bao_server.url,
        role_id=approle.role_id,
        secret_id="00000000-0000-0000-0000-000000000000",
        approle_mount=approle.mount,
        mount=bao_mount_path,
    )
    ca = VaultCA(settings, TRUST_DOMAIN)
    try:
        with pytest.raises(ConfigError, match=r"AppRole login .* failed.*--vault-secret-id"):
            await ca.open()
    finally:
        await ca.aclose()


# --- errors without a server ------------------------------------------------------------------


async def test_unreachable_vault() -> None:
    (port,) = free_ports(1)
    addr = f"http://127.0.0.1:{port}"
    with pytest.raises(CaUnavailable) as caught:
        await open_ca(
            "vault",
            store=None,
            trust_domain=TRUST_DOMAIN,
            vault=VaultSettings(addr=addr, token="any"),
        )
    error = caught.value
    assert error.status == 503
    assert f"cannot reach Vault at {addr}" in error.detail
    assert "Connection refused" in error.detail
    assert "running, unsealed and reachable" in error.detail


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"token": None}, "exactly one of the two"),
        ({"role_id": "r", "secret_id": "s"}, "exactly one of the two"),
        ({"token": None, "role_id": "r"}, "needs both"),
        ({"addr": "vault:8200"}, "is not a URL"),
        ({"mount": "../sys"}, "is not a Vault path"),
        ({"ca_file": Path("/nonexistent/ca.pem")}, "not a readable file"),
    ],
)
def test_settings_that_cannot_work(overrides: dict[str, object], message: str) -> None:
    values: dict[str, object] = {"addr": "http://127.0.0.1:8200", "token": "t", **overrides}
    settings = VaultSettings(**values)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=message):
        settings.check()


def test_secrets_stay_out_of_repr() -> None:
    settings = VaultSettings(addr="http://127.0.0.1:8200", role_id="rid", secret_id="s3cr3t")
    assert "s3cr3t" not in repr(settings)
    settings = VaultSettings(addr="http://127.0.0.1:8200", token="hvs.t0ken")
    assert "t0ken" not in repr(settings)
    assert "t0ken" not in repr(VaultCA(settings, TRUST_DOMAIN))
