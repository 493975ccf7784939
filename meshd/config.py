"""meshd's settings: every flag of ``meshd serve`` also as a ``MESHD_*`` variable."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from meshd.errors import ConfigError
from meshd.netaddr import is_loopback_host

StoreKind = Literal["sqlite", "consul"]
RegistryKind = Literal["embedded", "consul"]
CaKind = Literal["embedded", "vault"]
MtlsMode = Literal["STRICT", "PERMISSIVE", "DISABLE"]
DOCKER_HOST_SCHEMES = ("unix://", "tcp://")


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
    docker_onboarding: bool = False
    docker_host: str = "unix:///var/run/docker.sock"
    sidecar_image: str = "meshd:local"
    onboarding_meshd_url: str | None = None

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
        if self.docker_onboarding:
            self._check_docker_onboarding()

    def _check_docker_onboarding(self) -> None:
        if not self.docker_host.startswith(DOCKER_HOST_SCHEMES):
            raise ConfigError(
                f"--docker-host {self.docker_host!r}: expected unix:///path/to/docker.sock, or "
                "tcp://HOST:PORT for a socket proxy (plaintext: keep it on the host)"
            )
        if not self.sidecar_image.strip():
            raise ConfigError("--sidecar-image must name an image, e.g. meshd:local")
        url = self.onboarding_meshd_url
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/"):
                raise ConfigError(
                    f"--onboarding-meshd-url {url!r}: expected https://HOST:PORT, meshd's "
                    "address as containers reach it (meshd serves HTTPS only)"
                )
            if is_loopback_host(parts.hostname):
                raise ConfigError(
                    f"--onboarding-meshd-url {url!r}: a sidecar's loopback is its app's "
                    "container, not meshd's host; give an address containers reach"
                )
        elif is_loopback_host(self.listen_host):
            raise ConfigError(
                f"--docker-onboarding: meshd listens on {self.listen_host}, which containers "
                "cannot reach; listen on an address they can (--listen 0.0.0.0:15012, or the "
                "engine's bridge gateway such as 172.17.0.1:15012), or set "
                "--onboarding-meshd-url to one that leads to meshd"
            )


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (loopback)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:15012")
    return (host.strip("[]") or "127.0.0.1"), int(port)
