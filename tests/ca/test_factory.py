"""``open_ca``: what ``meshd serve --ca embedded|vault`` calls at startup."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshd.ca.base import SignRequest
from meshd.ca.embedded import EmbeddedCA
from meshd.ca.factory import open_ca
from meshd.ca.vault import VaultCA
from meshd.errors import ConfigError
from tests.ca.conftest import sqlite_store
from tests.ca.helpers import (
    TRUST_DOMAIN,
    WEB,
    ec_key,
    key_pem,
    make_ca,
    make_csr,
    pem,
    write_plugin_dir,
)
from tests.support.components import BaoServer

pytestmark = pytest.mark.anyio


async def test_embedded_in_the_store(tmp_path: Path) -> None:
    store = await sqlite_store(tmp_path / "data")
    try:
        ca = await open_ca("embedded", store=store, trust_domain=TRUST_DOMAIN)
        assert isinstance(ca, EmbeddedCA)
        assert ca.backend == "embedded"
        assert ca.plugin_dir is None
        issued = await ca.sign(SignRequest(make_csr(ec_key()), WEB))
        assert issued.root_id == (await ca.bundle()).signing_root
        await ca.aclose()
    finally:
        await store.aclose()


async def test_embedded_plugin_dir(tmp_path: Path) -> None:
    root = make_ca("root")
    inter = make_ca("intermediate", root, path_length=0)
    directory = write_plugin_dir(
        tmp_path / "cacerts",
        ca_cert=pem(inter.cert),
        ca_key=key_pem(inter.key),
        root_cert=pem(root.cert),
        cert_chain=pem(inter.cert, root.cert),
    )
    ca = await open_ca("embedded", store=None, trust_domain=TRUST_DOMAIN, plugin_dir=directory)
    assert isinstance(ca, EmbeddedCA)
    assert ca.plugin_dir == directory


@dataclass(frozen=True)
class Flags:
    """The Vault flags as meshd's settings hold them (``meshd.config.VaultSettings``)."""

    addr: str
    token: str | None
    mount: str
    role_id: str | None = None
    secret_id: str | None = None
    role: str = "meshd-workload"
    ca_file: Path | None = None


@pytest.mark.integration
async def test_vault(bao_server: BaoServer, bao_mount_path: str) -> None:
    flags = Flags(addr=bao_server.url, token=bao_server.token, mount=bao_mount_path)
    ca = await open_ca("vault", store=None, trust_domain=TRUST_DOMAIN, vault=flags)
    try:
        assert isinstance(ca, VaultCA)
        assert ca.backend == "vault"
        assert ca.settings.mount == bao_mount_path
        await ca.sign(SignRequest(make_csr(ec_key()), WEB))
    finally:
        await ca.aclose()


@pytest.mark.parametrize(
    ("kind", "kwargs", "message"),
    [
        ("embedded", {"store": None}, "needs a store"),
        ("embedded", {"store": None, "trust_domain": "Not A Domain"}, "invalid --trust-domain"),
        ("vault", {"store": None, "plugin_dir": Path("/x")}, "--ca-plugin-dir is for the embedded"),
        ("vault", {"store": None}, "needs Vault settings"),
        (
            "vault",
            {"store": None, "vault": Flags(addr="http://127.0.0.1:1", token=None, mount="pki")},
            "exactly one of the two",
        ),
        ("pki", {"store": None}, "unknown CA 'pki'"),
    ],
)
async def test_settings_that_cannot_work(kind: Any, kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"trust_domain": TRUST_DOMAIN, **kwargs}
    with pytest.raises(ConfigError, match=message):
        await open_ca(kind, **arguments)
