"""The embedded CA: its state in the store (persistence, replicas racing on Consul, a
rotation reaching other replicas), the root's name constraint, and plug-in CA files."""

from __future__ import annotations

import logging
import os
import ssl
import stat
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshd.ca.base import SignRequest, TrustBundle
from meshd.ca.embedded import RECORD_COLLECTION, RECORD_ID, EmbeddedCA
from meshd.errors import BadRequest, CaUnavailable, ConfigError, Conflict
from meshd.store.base import Store
from meshd.store.factory import SQLITE_FILENAME, open_store
from tests.ca.conftest import sqlite_store
from tests.ca.helpers import (
    REVIEWS,
    TRUST_DOMAIN,
    WEB,
    Endpoint,
    TestCa,
    ec_key,
    forge_leaf,
    handshake,
    key_pem,
    load,
    load_all,
    make_ca,
    make_csr,
    pem,
    uris,
    verify_chain,
    write_plugin_dir,
)
from tests.support.components import ConsulAgent

pytestmark = pytest.mark.anyio


# --- state in the store ---------------------------------------------------------------------


async def test_first_start_makes_root_and_intermediate(tmp_path: Path) -> None:
    store = await sqlite_store(tmp_path / "data")
    try:
        ca = await EmbeddedCA(store, TRUST_DOMAIN).open()
        bundle = await ca.bundle()
        record = await store.record_get(RECORD_COLLECTION, RECORD_ID)
    finally:
        await store.aclose()
    assert record is not None
    assert record["trust_domain"] == TRUST_DOMAIN
    assert record["signing_root"] == bundle.signing_root
    (entry,) = record["roots"]
    root, inter = load(entry["cert"]), load(entry["intermediate_cert"])

    assert root.subject == root.issuer
    assert f"meshd root {TRUST_DOMAIN} " in root.subject.rfc4514_string()
    bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca
    assert bc.value.path_length == 1
    ku = root.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_cert_sign
    assert ku.value.crl_sign
    nc = root.extensions.get_extension_for_class(x509.NameConstraints)
    assert nc.critical
    assert nc.value.permitted_subtrees == [x509.UniformResourceIdentifier(TRUST_DOMAIN)]
    root_life = root.not_valid_after_utc - root.not_valid_before_utc
    assert 3649 <= root_life.days <= 3651

    assert inter.issuer == root.subject
    inter.verify_directly_issued_by(root)
    bc = inter.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca
    assert bc.value.path_length == 0
    inter_life = inter.not_valid_after_utc - inter.not_valid_before_utc
    assert 5 * 365 - 1 <= inter_life.days <= 5 * 365 + 1
    for cert in (root, inter):
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert key.curve.name == "secp256r1"

    # The keys in the record are the certificates' keys.
    for cert_field, key_field in (("cert", "key"), ("intermediate_cert", "intermediate_key")):
        private = serialization.load_pem_private_key(entry[key_field].encode(), None)
        assert private.public_key() == load(entry[cert_field]).public_key()


async def test_state_survives_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store = await sqlite_store(data_dir)
    try:
        ca = await EmbeddedCA(store, TRUST_DOMAIN).open()
        before = await ca.add_root()
        leaf = await ca.sign(SignRequest(make_csr(ec_key()), WEB))
    finally:
        await store.aclose()
    db = data_dir / SQLITE_FILENAME
    assert stat.S_IMODE(db.stat().st_mode) == 0o600, "the file holding the CA keys is private"

    store = await sqlite_store(data_dir)
    try:
        again = await EmbeddedCA(store, TRUST_DOMAIN).open()
        assert await again.bundle() == before
        verify_chain(leaf.cert_pem, leaf.chain_pem, await again.bundle())
        later = await again.sign(SignRequest(make_csr(ec_key()), WEB))
        assert later.root_id == leaf.root_id
        assert later.chain_pem == leaf.chain_pem
    finally:
        await store.aclose()


async def test_open_is_idempotent_and_sign_opens(tmp_path: Path) -> None:
    store = await sqlite_store(tmp_path / "data")
    try:
        ca = EmbeddedCA(store, TRUST_DOMAIN)
        issued = await ca.sign(SignRequest(make_csr(ec_key()), WEB))  # opens on first use
        await ca.open()
        await ca.open()
        assert issued.root_id == (await ca.bundle()).signing_root
        assert len(await store.record_list(RECORD_COLLECTION)) == 1
    finally:
        await store.aclose()


async def test_a_rotation_reaches_other_replicas(tmp_path: Path) -> None:
    store = await sqlite_store(tmp_path / "data")
    try:
        a = await EmbeddedCA(store, TRUST_DOMAIN, refresh_interval=0).open()
        b = await EmbeddedCA(store, TRUST_DOMAIN, refresh_interval=0).open()
        added = await a.add_root()
        assert await b.bundle() == added
        new_root = next(r.id for r in added.roots if r.id != added.signing_root)
        await a.activate_root(new_root)
        assert (await b.sign(SignRequest(make_csr(ec_key()), WEB))).root_id == new_root
    finally:
        await store.aclose()


async def test_signing_goes_on_while_the_store_is_down(tmp_path: Path) -> None:
    store = await sqlite_store(tmp_path / "data")
    ca = await EmbeddedCA(store, TRUST_DOMAIN, refresh_interval=0).open()
    await store.aclose()  # every store call now raises StoreUnavailable
    issued = await ca.sign(SignRequest(make_csr(ec_key()), WEB))
    verify_chain(issued.cert_pem, issued.chain_pem, await ca.bundle())
    with pytest.raises(CaUnavailable, match="store"):
        await ca.add_root()


async def test_store_down_at_first_start(tmp_path: Path) -> None:
    store = await sqlite_store(tmp_path / "data")
    await store.aclose()
    with pytest.raises(CaUnavailable, match="cannot read its keys from the store"):
        await EmbeddedCA(store, TRUST_DOMAIN).open()


async def test_ca_of_another_trust_domain(tmp_path: Path) -> None:
    store = await sqlite_store(tmp_path / "data")
    try:
        await EmbeddedCA(store, TRUST_DOMAIN).open()
        with pytest.raises(ConfigError, match=r"trust domain 'cluster\.local'"):
            await EmbeddedCA(store, "example.org").open()
    finally:
        await store.aclose()


async def test_damaged_record(tmp_path: Path) -> None:
    store = await sqlite_store(tmp_path / "data")
    try:
        await EmbeddedCA(store, TRUST_DOMAIN).open()
        record = await store.record_get(RECORD_COLLECTION, RECORD_ID)
        assert record is not None
        record["roots"][0]["intermediate_key"] = key_pem(ec_key()).decode()
        await store.record_put(RECORD_COLLECTION, RECORD_ID, record)
        with pytest.raises(CaUnavailable, match=r"damaged.*does not match"):
            await EmbeddedCA(store, TRUST_DOMAIN).open()
    finally:
        await store.aclose()


async def test_keys_never_reach_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store = await sqlite_store(tmp_path / "data")
    try:
        ca = await EmbeddedCA(store, TRUST_DOMAIN).open()
        bundle = await ca.add_root()
        new_root = next(r.id for r in bundle.roots if r.id != bundle.signing_root)
        await ca.activate_root(new_root)
        await ca.remove_root(bundle.signing_root)
        record = await store.record_get(RECORD_COLLECTION, RECORD_ID)
    finally:
        await store.aclose()
    assert record is not None
    assert caplog.records, "the CA logs what it does"
    assert "PRIVATE KEY" not in caplog.text
    assert record["roots"][0]["key"].splitlines()[1] not in caplog.text


async def test_signing_in_a_worker_thread(tmp_path: Path) -> None:
    store = await sqlite_store(tmp_path / "data")
    try:
        ca = await EmbeddedCA(store, TRUST_DOMAIN, sign_in_thread=True).open()
        issued = await ca.sign(SignRequest(make_csr(ec_key()), WEB))
        verify_chain(issued.cert_pem, issued.chain_pem, await ca.bundle())
    finally:
        await store.aclose()


# --- the name constraint ---------------------------------------------------------------------


async def test_name_constraint_stops_other_trust_domains(tmp_path: Path) -> None:
    """A leaf for another trust domain made with the CA's own intermediate key (what a
    stolen key could do) fails OpenSSL's verification; one for this domain passes."""
    store = await sqlite_store(tmp_path / "data")
    try:
        ca = await EmbeddedCA(store, TRUST_DOMAIN).open()
        bundle = await ca.bundle()
        record = await store.record_get(RECORD_COLLECTION, RECORD_ID)
        peer_key = ec_key()
        peer = await ca.sign(SignRequest(make_csr(peer_key), REVIEWS))
    finally:
        await store.aclose()
    assert record is not None
    entry = record["roots"][0]
    inter = load(entry["intermediate_cert"])
    inter_key = serialization.load_pem_private_key(entry["intermediate_key"].encode(), None)
    assert isinstance(inter_key, ec.EllipticCurvePrivateKey)

    good_key, good = forge_leaf(str(WEB), inter, inter_key)
    good_end = Endpoint(good_key, good, pem(inter))
    assert handshake(good_end, Endpoint.of(peer_key, peer), bundle.pem(), tmp_path / "ok")

    evil_key, evil = forge_leaf("spiffe://evil.org/ns/default/sa/web", inter, inter_key)
    with pytest.raises(ssl.SSLCertVerificationError, match="permitted subtree violation"):
        handshake(
            Endpoint(evil_key, evil, pem(inter)),
            Endpoint.of(peer_key, peer),
            bundle.pem(),
            tmp_path / "evil",
        )


# --- replicas on one Consul -----------------------------------------------------------------


class _Barrier:
    """Holds every replica's create-only write until all of them have tried, so they
    truly race (none can see another's record first)."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self.all_in = anyio.Event()
        self.winners = 0

    def wrap(self, store: Store) -> Store:
        barrier = self

        class Racing:
            backend = store.backend

            async def record_get(self, collection: str, record_id: str) -> dict[str, Any] | None:
                return await store.record_get(collection, record_id)

            async def record_put(
                self,
                collection: str,
                record_id: str,
                data: Mapping[str, Any],
                *,
                create_only: bool = False,
            ) -> None:
                if create_only:
                    barrier.arrived += 1
                    if barrier.arrived == barrier.parties:
                        barrier.all_in.set()
                    await barrier.all_in.wait()
                await store.record_put(collection, record_id, data, create_only=create_only)
                if create_only:
                    barrier.winners += 1

        return cast(Store, Racing())


@pytest.mark.integration
async def test_replicas_starting_together_share_one_ca(
    consul_agent: ConsulAgent, consul_prefix: str, tmp_path: Path
) -> None:
    replicas = 4
    stores = [
        await open_store(
            "consul",
            data_dir=tmp_path,
            consul_addr=consul_agent.http_addr,
            consul_token=None,
            consul_prefix=consul_prefix,
        )
        for _ in range(replicas)
    ]
    barrier = _Barrier(replicas)
    bundles: list[TrustBundle] = []
    cas: list[EmbeddedCA] = []
    try:

        async def start(store: Store) -> None:
            ca = await EmbeddedCA(barrier.wrap(store), TRUST_DOMAIN).open()
            cas.append(ca)
            bundles.append(await ca.bundle())

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for store in stores:
                    tg.start_soon(start, store)
        assert barrier.arrived == replicas, "every replica tried to create the CA"
        assert barrier.winners == 1, "exactly one creation won"
        assert len({b.signing_root for b in bundles}) == 1
        assert all(b == bundles[0] for b in bundles)
        # A leaf from one replica verifies with another's bundle; their leaves handshake.
        key_a, key_b = ec_key(), ec_key()
        leaf_a = await cas[0].sign(SignRequest(make_csr(key_a), WEB))
        leaf_b = await cas[-1].sign(SignRequest(make_csr(key_b), REVIEWS))
        assert leaf_a.chain_pem == leaf_b.chain_pem
        handshake(
            Endpoint.of(key_a, leaf_a), Endpoint.of(key_b, leaf_b), bundles[1].pem(), tmp_path
        )
    finally:
        for store in stores:
            await store.aclose()


# --- plug-in CA files -----------------------------------------------------------------------


def _istio_layout(tmp_path: Path, *, levels: int = 1) -> tuple[Path, TestCa, list[TestCa]]:
    """root -> inter_1 -> ... -> inter_levels (the signing CA), as Istio's cacerts."""
    root = make_ca("plug-in root", path_length=levels)
    chain = [root]
    for level in range(levels):
        chain.append(
            make_ca(f"plug-in intermediate {level + 1}", chain[-1], path_length=levels - level - 1)
        )
    signing = chain[-1]
    directory = write_plugin_dir(
        tmp_path / "cacerts",
        ca_cert=pem(signing.cert),
        ca_key=key_pem(signing.key),
        root_cert=pem(root.cert),
        cert_chain=pem(*(c.cert for c in reversed(chain))),
    )
    return directory, root, chain[1:]


@pytest.mark.parametrize("levels", [1, 2])
async def test_plugin_ca_signs(tmp_path: Path, levels: int) -> None:
    directory, root, inters = _istio_layout(tmp_path, levels=levels)
    ca = EmbeddedCA.from_files(directory, TRUST_DOMAIN)
    assert ca.plugin_dir == directory
    bundle = await ca.bundle()
    assert [load(r.pem) for r in bundle.roots] == [root.cert]
    key, peer_key = ec_key(), ec_key()
    issued = await ca.sign(SignRequest(make_csr(key), WEB))
    peer = await ca.sign(SignRequest(make_csr(peer_key), REVIEWS))
    assert load_all(issued.chain_pem) == [i.cert for i in reversed(inters)]
    assert issued.root_id == bundle.signing_root
    verify_chain(issued.cert_pem, issued.chain_pem, bundle)
    assert uris(load(issued.cert_pem)) == [str(WEB)]
    handshake(Endpoint.of(key, issued), Endpoint.of(peer_key, peer), bundle.pem(), tmp_path)


async def test_plugin_root_signs_directly_and_extra_roots_are_trusted(tmp_path: Path) -> None:
    root = make_ca("plug-in root")
    next_root = make_ca("next plug-in root")
    directory = write_plugin_dir(
        tmp_path / "cacerts",
        ca_cert=pem(root.cert),
        ca_key=key_pem(root.key),
        root_cert=pem(root.cert, next_root.cert),
        cert_chain=pem(root.cert),
    )
    ca = EmbeddedCA.from_files(directory, TRUST_DOMAIN)
    bundle = await ca.bundle()
    assert len(bundle.roots) == 2
    issued = await ca.sign(SignRequest(make_csr(ec_key()), WEB))
    assert issued.chain_pem == ""
    assert verify_chain(issued.cert_pem, "", bundle) == root.cert


async def test_plugin_leaf_never_outlives_the_signing_ca(tmp_path: Path) -> None:
    root = make_ca("plug-in root")
    short = make_ca("short-lived intermediate", root, path_length=0, validity=timedelta(hours=2))
    directory = write_plugin_dir(
        tmp_path / "cacerts",
        ca_cert=pem(short.cert),
        ca_key=key_pem(short.key),
        root_cert=pem(root.cert),
        cert_chain=pem(short.cert, root.cert),
    )
    ca = EmbeddedCA.from_files(directory, TRUST_DOMAIN)
    issued = await ca.sign(SignRequest(make_csr(ec_key()), WEB, ttl=timedelta(hours=24)))
    assert issued.not_after == short.cert.not_valid_after_utc


async def test_plugin_ca_cannot_rotate(tmp_path: Path) -> None:
    directory, _, _ = _istio_layout(tmp_path)
    ca = EmbeddedCA.from_files(directory, TRUST_DOMAIN)
    root_id = (await ca.bundle()).signing_root
    for attempt in (ca.add_root(), ca.activate_root(root_id), ca.remove_root(root_id)):
        with pytest.raises(BadRequest, match=r"replace the files .* and restart meshd"):
            await attempt


def _bad_layouts(tmp_path: Path) -> dict[str, tuple[Path, str, str]]:
    """name -> (directory, the file the error must name, text it must hold)."""
    cases: dict[str, tuple[Path, str, str]] = {}

    def layout(name: str) -> Path:
        directory, _, _ = _istio_layout(tmp_path / name)
        return directory

    d = layout("missing-key")
    (d / "ca-key.pem").unlink()
    cases["missing-key"] = (d, "ca-key.pem", "missing")

    d = layout("missing-chain")
    (d / "cert-chain.pem").unlink()
    cases["missing-chain"] = (d, "cert-chain.pem", "missing")

    d = layout("key-mismatch")
    (d / "ca-key.pem").write_bytes(key_pem(ec_key()))
    cases["key-mismatch"] = (d, "ca-key.pem", "does not match")

    d = layout("garbage-cert")
    (d / "ca-cert.pem").write_text("not a certificate\n")
    cases["garbage-cert"] = (d, "ca-cert.pem", "not PEM certificates")

    d = layout("garbage-key")
    (d / "ca-key.pem").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    cases["garbage-key"] = (d, "ca-key.pem", "not a PEM private key")

    d = layout("encrypted-key")
    key = serialization.load_pem_private_key((d / "ca-key.pem").read_bytes(), None)
    (d / "ca-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    cases["encrypted-key"] = (d, "ca-key.pem", "encrypted")

    d = layout("other-root")
    (d / "root-cert.pem").write_text(pem(make_ca("unrelated root").cert))
    cases["other-root"] = (d, "cert-chain.pem", "does not reach a root")

    d = layout("root-not-self-signed")
    (d / "root-cert.pem").write_text((d / "ca-cert.pem").read_text())
    cases["root-not-self-signed"] = (d, "root-cert.pem", "not a self-signed root")

    root = make_ca("plug-in root")
    leaf = make_ca("not a CA", root, ca=False)
    cases["signing-cert-not-ca"] = (
        write_plugin_dir(
            tmp_path / "not-ca",
            ca_cert=pem(leaf.cert),
            ca_key=key_pem(leaf.key),
            root_cert=pem(root.cert),
            cert_chain=pem(leaf.cert, root.cert),
        ),
        "ca-cert.pem",
        "not a CA certificate",
    )
    return cases


BAD = [
    "missing-key",
    "missing-chain",
    "key-mismatch",
    "garbage-cert",
    "garbage-key",
    "encrypted-key",
    "other-root",
    "root-not-self-signed",
    "signing-cert-not-ca",
]


@pytest.mark.parametrize("case", BAD)
def test_plugin_files_that_do_not_fit(tmp_path: Path, case: str) -> None:
    directory, file, text = _bad_layouts(tmp_path)[case]
    with pytest.raises(ConfigError) as caught:
        EmbeddedCA.from_files(directory, TRUST_DOMAIN)
    detail = caught.value.detail
    assert str(directory / file) in detail, detail
    assert text in detail, detail
    assert caught.value.context["file"] == str(directory / file)
    assert "ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem" in detail


def test_plugin_key_readable_by_others_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory, _, _ = _istio_layout(tmp_path)
    os.chmod(directory / "ca-key.pem", 0o644)
    with caplog.at_level(logging.WARNING):
        EmbeddedCA.from_files(directory, TRUST_DOMAIN)
    assert "chmod 600" in caplog.text
    assert "PRIVATE KEY" not in caplog.text


async def test_conflicting_rotations_do_not_lose_a_root(tmp_path: Path) -> None:
    """Two replicas rotating at once: one wins, the other is told to retry."""
    store = await sqlite_store(tmp_path / "data")
    try:
        a = await EmbeddedCA(store, TRUST_DOMAIN).open()
        b = await EmbeddedCA(store, TRUST_DOMAIN, refresh_interval=0).open()

        real_get = store.record_get
        calls = 0

        async def get_then_change(collection: str, record_id: str) -> dict[str, Any] | None:
            # b's second read (just before its write) sees a's rotation.
            nonlocal calls
            calls += 1
            if calls == 2:
                await a.add_root()
            return await real_get(collection, record_id)

        store.record_get = get_then_change  # type: ignore[method-assign]
        with pytest.raises(Conflict, match="another meshd replica"):
            await b.add_root()
        store.record_get = real_get  # type: ignore[method-assign]
        assert len((await b.bundle()).roots) == 2
    finally:
        await store.aclose()
