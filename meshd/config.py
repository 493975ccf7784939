"""meshd's settings: every flag of ``meshd serve`` also as a ``MESHD_*`` variable."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from meshd.errors import ConfigError

StoreKind = Literal["sqlite", "consul"]
RegistryKind = Literal["embedded", "consul"]
CaKind = Literal["embedded", "vault"]
MtlsMode = Literal["STRICT", "PERMISSIVE", "DISABLE"]


@dataclass(frozen=True, slots=True)
class VaultSettings:
    addr: str = "http://127.0.0.1:8200"
    token: str | None = None
    role_id: str | None = None
    secret_id: str | None = None
    mount: str = "pki"
    role: str = "meshd-workload"
    ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path = Path("/var/lib/meshd")
    listen_host: str = "127.0.0.1"
    listen_port: int = 15012
    sans: tuple[str, ...] = ()
    bootstrap_token: str | None = None
    store: StoreKind = "sqlite"
    consul_addr: str = "127.0.0.1:8500"
    consul_token: str | None = None
    consul_prefix: str = "meshd/"
    consul_ca_file: Path | None = None
    consul_cert_file: Path | None = None
    consul_key_file: Path | None = None
    consul_max_watches: int = 160
    registry: RegistryKind = "embedded"
    ca: CaKind = "embedded"
    ca_plugin_dir: Path | None = None
    vault: VaultSettings = field(default_factory=VaultSettings)
    cert_ttl_s: float = 24 * 3600.0
    sign_rate: float = 200.0
    trust_domain: str = "cluster.local"
    domain_suffix: str = "cluster.local"
    root_namespace: str = "istio-system"
    default_mtls_mode: MtlsMode = "STRICT"
    debounce_ms: int = 100
    debounce_max_ms: int = 1000
    poll_wait_max_s: float = 60.0
    access_log: bool = False
    log_level: str = "info"

    @property
    def url(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        if self.listen_host in ("0.0.0.0", "::"):  # noqa: S104 — naming, not binding
            host = "127.0.0.1"
        return f"https://{host}:{self.listen_port}"

    def check(self) -> None:
        """Refuse settings that cannot work, saying what to change."""
        if not 0 <= self.listen_port <= 65535:
            raise ConfigError(f"--listen port {self.listen_port} is out of range")
        if self.debounce_ms < 0 or self.debounce_max_ms < self.debounce_ms:
            raise ConfigError("debounce must be >= 0 and at most the debounce maximum")
        # Short lifetimes are for tests and drills; production wants hours.
        if not 10 <= self.cert_ttl_s <= 7 * 24 * 3600:
            raise ConfigError("--cert-ttl must be between 10s and 168h")
        if self.sign_rate <= 0:
            raise ConfigError("--sign-rate must be positive")
        if self.ca == "vault" and not (
            self.vault.token or (self.vault.role_id and self.vault.secret_id)
        ):
            raise ConfigError(
                "--ca vault needs --vault-token, or --vault-role-id and --vault-secret-id (AppRole)"
            )
        if self.consul_max_watches < 0:
            raise ConfigError("--consul-max-watches must be >= 0")
        if (self.consul_cert_file is None) != (self.consul_key_file is None):
            raise ConfigError(
                "--consul-cert-file and --consul-key-file go together (a client certificate "
                "for Consul's verify_incoming)"
            )
        if self.ca_plugin_dir is not None and self.ca != "embedded":
            raise ConfigError("--ca-plugin-dir is for --ca embedded; Vault keeps its own keys")


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (loopback)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:15012")
    return (host.strip("[]") or "127.0.0.1"), int(port)
