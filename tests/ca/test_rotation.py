"""Root rotation on each backend: add a root (trusted, not signing), activate it (new
leaves chain to it while the old ones still verify against the bundle, and old and new
leaves still handshake with each other), remove the old one; the signing root can never
be removed."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes

from meshd.ca.base import CertificateAuthority, SignRequest
from meshd.errors import Conflict, NotFound
from tests.ca.helpers import (
    REVIEWS,
    WEB,
    ChainError,
    Endpoint,
    ec_key,
    handshake,
    make_csr,
    verify_chain,
)

pytestmark = pytest.mark.anyio


async def test_full_rotation(ca: CertificateAuthority, tmp_path: Path) -> None:
    first = await ca.bundle()
    old_root = first.signing_root
    old_key = ec_key()
    old_leaf = await ca.sign(SignRequest(make_csr(old_key), WEB))

    # 1. add: two roots, the old one still signs.
    added = await ca.add_root()
    assert len(added.roots) == 2
    assert added.signing_root == old_root
    assert added.digest != first.digest, "the digest changes with the set of roots"
    new_root = next(r.id for r in added.roots if r.id != old_root)
    still_old = await ca.sign(SignRequest(make_csr(ec_key()), WEB))
    assert still_old.root_id == old_root
    verify_chain(still_old.cert_pem, still_old.chain_pem, added)
    assert await ca.bundle() == added

    # 2. activate: new leaves chain to the new root; old leaves still verify.
    activated = await ca.activate_root(new_root)
    assert activated.signing_root == new_root
    assert {r.id for r in activated.roots} == {old_root, new_root}
    assert activated.digest == added.digest, "moving the signing root changes no trust"
    new_key = ec_key()
    new_leaf = await ca.sign(SignRequest(make_csr(new_key), REVIEWS))
    assert new_leaf.root_id == new_root
    anchor = verify_chain(new_leaf.cert_pem, new_leaf.chain_pem, activated)
    assert anchor.fingerprint(hashes.SHA256()).hex() == new_root
    verify_chain(old_leaf.cert_pem, old_leaf.chain_pem, activated)
    # Mid-rotation, a proxy on an old leaf and one on a new leaf talk, both ways.
    seen = handshake(
        Endpoint.of(old_key, old_leaf), Endpoint.of(new_key, new_leaf), activated.pem(), tmp_path
    )
    assert seen == ([str(REVIEWS)], [str(WEB)])

    # Activating the signing root again changes nothing.
    assert await ca.activate_root(new_root) == activated

    # 3. remove the old root: one root left; old leaves no longer verify.
    removed = await ca.remove_root(old_root)
    assert [r.id for r in removed.roots] == [new_root]
    assert removed.signing_root == new_root
    assert await ca.bundle() == removed
    with pytest.raises(ChainError):
        verify_chain(old_leaf.cert_pem, old_leaf.chain_pem, removed)
    with pytest.raises(ssl.SSLError):
        handshake(
            Endpoint.of(new_key, new_leaf),
            Endpoint.of(old_key, old_leaf),
            removed.pem(),
            tmp_path / "after",
        )
    after = await ca.sign(SignRequest(make_csr(ec_key()), WEB))
    verify_chain(after.cert_pem, after.chain_pem, removed)


async def test_the_signing_root_cannot_be_removed(ca: CertificateAuthority) -> None:
    bundle = await ca.bundle()
    with pytest.raises(Conflict) as caught:
        await ca.remove_root(bundle.signing_root)
    assert "signs new certificates" in caught.value.detail
    assert "activate another root first" in caught.value.detail
    assert await ca.bundle() == bundle

    await ca.add_root()
    with pytest.raises(Conflict):
        await ca.remove_root(bundle.signing_root)
    assert len((await ca.bundle()).roots) == 2


async def test_unknown_root(ca: CertificateAuthority) -> None:
    with pytest.raises(NotFound):
        await ca.activate_root("0" * 64)
    with pytest.raises(NotFound):
        await ca.remove_root("0" * 64)
