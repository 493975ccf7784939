"""Fixtures of the CA tests: ``ca`` is each backend in turn — the embedded CA on a
sqlite store in a temporary directory, and Vault's PKI engine on a real OpenBao server
under a fresh mount (``integration``)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from pathlib import Path

import hvac
import pytest

from meshd.ca.base import CertificateAuthority
from meshd.ca.embedded import EmbeddedCA
from meshd.ca.vault import VaultCA, VaultSettings
from meshd.store.base import Store
from meshd.store.factory import open_store
from tests.ca.helpers import TRUST_DOMAIN
from tests.support.components import BaoServer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def sqlite_store(data_dir: Path) -> Store:
    return await open_store("sqlite", data_dir=data_dir, consul_addr="", consul_token=None)


def vault_settings(bao: BaoServer, mount: str, **overrides: object) -> VaultSettings:
    return VaultSettings(addr=bao.url, token=bao.token, mount=mount, **overrides)  # type: ignore[arg-type]


@pytest.fixture(params=["embedded", pytest.param("vault", marks=pytest.mark.integration)])
async def ca(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncGenerator[CertificateAuthority, None]:
    """Each CA backend, opened and set up, for trust domain ``cluster.local``."""
    opened: CertificateAuthority
    if request.param == "embedded":
        store = await sqlite_store(tmp_path / "data")
        try:
            opened = await EmbeddedCA(store, TRUST_DOMAIN).open()
            yield opened
            await opened.aclose()
        finally:
            await store.aclose()
    else:
        bao: BaoServer = request.getfixturevalue("bao_server")
        mount: str = request.getfixturevalue("bao_mount_path")
        vault = VaultCA(vault_settings(bao, mount), TRUST_DOMAIN)
        try:
            opened = await vault.open()
            yield opened
        finally:
            await vault.aclose()


@pytest.fixture
def bao_root(bao_server: BaoServer) -> Iterator[hvac.Client]:
    """An hvac client with the dev server's root token, to arrange and inspect Vault."""
    client = hvac.Client(url=bao_server.url, token=bao_server.token, timeout=10)
    client.session.trust_env = False
    try:
        yield client
    finally:
        client.session.close()
