"""meshd's settings: every flag of ``meshd serve`` also as a ``MESHD_*`` variable."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from meshd.errors import ConfigError
from meshd.netaddr import is_loopback_host

StoreKind = Literal["sqlite", "consul"]
RegistryKind = Literal["embedded"]
MtlsMode = Literal["STRICT", "PERMISSIVE", "DISABLE"]


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path = Path("/var/lib/meshd")
    listen_host: str = "127.0.0.1"
    listen_port: int = 15012
    bootstrap_token: str | None = None
    store: StoreKind = "sqlite"
    consul_addr: str = "127.0.0.1:8500"
    consul_token: str | None = None
    consul_prefix: str = "meshd/"
    registry: RegistryKind = "embedded"
    trust_domain: str = "cluster.local"
    domain_suffix: str = "cluster.local"
    root_namespace: str = "istio-system"
    default_mtls_mode: MtlsMode = "STRICT"
    debounce_ms: int = 100
    debounce_max_ms: int = 1000
    poll_wait_max_s: float = 60.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    access_log: bool = False
    log_level: str = "info"

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{scheme}://{host}:{self.listen_port}"

    def check(self) -> None:
        """Refuse settings that cannot work or are unsafe, saying what to change."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together; pass both or neither")
        if not self.tls and not is_loopback_host(self.listen_host):
            raise ConfigError(
                f"refusing to serve plain HTTP on {self.listen_host}: bearer tokens would cross "
                "the network in cleartext. Listen on 127.0.0.1, or pass --tls-cert and --tls-key"
            )
        if not 0 <= self.listen_port <= 65535:
            raise ConfigError(f"--listen port {self.listen_port} is out of range")
        if self.debounce_ms < 0 or self.debounce_max_ms < self.debounce_ms:
            raise ConfigError("debounce must be >= 0 and at most the debounce maximum")


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (loopback)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:15012")
    return (host.strip("[]") or "127.0.0.1"), int(port)
