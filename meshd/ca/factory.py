"""Open the CA ``meshd serve --ca`` names.

``open_ca`` is async and opens the CA at once (makes or loads the embedded CA, checks the
plug-in files, logs in to Vault and sets up its mount and roles), so a CA that cannot
work fails at startup with a clear message rather than at the first CSR. Close it with
``await ca.aclose()``; the store stays the caller's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol

import anyio.to_thread

from meshd.ca.base import CertificateAuthority
from meshd.ca.embedded import EmbeddedCA
from meshd.ca.vault import VaultCA, VaultSettings
from meshd.errors import ConfigError
from meshd.spiffe import spiffe_id
from meshd.store.base import Store

__all__ = ["CaKind", "VaultOptions", "open_ca"]

CaKind = Literal["embedded", "vault"]


class VaultOptions(Protocol):
    """The Vault flags of ``meshd serve`` (``meshd.config.VaultSettings`` has them; so
    has ``meshd.ca.vault.VaultSettings``, which is used as it is, with its extras)."""

    @property
    def addr(self) -> str: ...
    @property
    def token(self) -> str | None: ...
    @property
    def role_id(self) -> str | None: ...
    @property
    def secret_id(self) -> str | None: ...
    @property
    def mount(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def ca_file(self) -> Path | None: ...


def vault_settings(options: VaultOptions) -> VaultSettings:
    """``options`` as the Vault backend's settings (the other fields at their defaults)."""
    if isinstance(options, VaultSettings):
        return options
    return VaultSettings(
        addr=options.addr,
        token=options.token,
        role_id=options.role_id,
        secret_id=options.secret_id,
        mount=options.mount,
        role=options.role,
        ca_file=options.ca_file,
    )


async def open_ca(
    kind: CaKind,
    *,
    store: Store | None,
    trust_domain: str,
    plugin_dir: Path | None = None,
    vault: VaultOptions | None = None,
    vault_setup: bool = True,
) -> CertificateAuthority:
    """The opened CA.

    - ``embedded``: a plug-in CA from ``plugin_dir`` when given (``ca-cert.pem``,
      ``ca-key.pem``, ``root-cert.pem``, ``cert-chain.pem``), else the CA kept in
      ``store`` (made at first start).
    - ``vault``: Vault/OpenBao as ``vault`` says (address, token or AppRole, mount,
      role, CA file); with ``vault_setup`` it enables the mount, generates a root and
      creates the roles when they are missing and the token may.

    Raises ``ConfigError`` for settings that cannot work and ``CaUnavailable`` when the
    backend cannot be reached.
    """
    try:
        spiffe_id(trust_domain, "default", "default")
    except ValueError as exc:
        raise ConfigError(f"invalid --trust-domain: {exc}", setting="trust_domain") from exc
    if kind == "embedded":
        if plugin_dir is not None:
            directory = plugin_dir
            return await anyio.to_thread.run_sync(
                lambda: EmbeddedCA.from_files(directory, trust_domain)
            )
        if store is None:
            raise ConfigError("the embedded CA needs a store", setting="store")
        return await EmbeddedCA(store, trust_domain).open()
    if kind == "vault":
        if plugin_dir is not None:
            raise ConfigError(
                "--ca-plugin-dir is for the embedded CA; with --ca vault, Vault holds the "
                "keys (import a CA into the Vault mount instead)",
                setting="ca_plugin_dir",
            )
        if vault is None:
            raise ConfigError(
                "--ca vault needs Vault settings (--vault-addr and a token or AppRole)",
                setting="vault_addr",
            )
        ca = VaultCA(vault_settings(vault), trust_domain)
        try:
            return await ca.open(setup=vault_setup)
        except BaseException:
            await ca.aclose()
            raise
    raise ConfigError(f"unknown CA {kind!r}: use 'embedded' or 'vault'", setting="ca")
