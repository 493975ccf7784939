"""Open the store ``meshd serve --store`` names.

``open_store`` is async: it opens the store at once (the sqlite file, or a round trip to
Consul), so a bad data directory or a wrong Consul address fails at startup with a clear
message instead of on the first request. Close the store with ``await store.aclose()``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import anyio
import anyio.to_thread

from meshd.errors import ConfigError, StoreUnavailable
from meshd.store.base import Store
from meshd.store.consul import ConsulStore
from meshd.store.sqlite import SqliteStore
from registry.consul_http import ConsulClient

__all__ = ["SQLITE_FILENAME", "StoreKind", "open_store"]

StoreKind = Literal["sqlite", "consul"]

SQLITE_FILENAME = "meshd.db"
"""The sqlite store's file inside ``--data-dir``."""


def _prepare_data_dir(data_dir: Path) -> None:
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnavailable(
            f"sqlite store: cannot create the data directory {data_dir}: {exc}; "
            "choose a writable --data-dir",
            backend="sqlite",
            path=str(data_dir),
        ) from exc


async def open_store(
    kind: StoreKind,
    *,
    data_dir: Path,
    consul_addr: str,
    consul_token: str | None,
    consul_prefix: str = "meshd/",
    consul_ca_file: Path | None = None,
) -> Store:
    """The opened store: ``sqlite`` in ``<data_dir>/meshd.db`` (the directory is created,
    mode 0700), or ``consul`` at ``consul_addr`` (``host:port`` or an http(s) URL) under
    ``consul_prefix``, with ``consul_token`` as the ACL token and ``consul_ca_file`` to
    verify Consul's TLS certificate. Raises ``StoreUnavailable`` when it cannot be opened
    and ``ConfigError`` for settings that cannot work."""
    if kind == "sqlite":
        await anyio.to_thread.run_sync(_prepare_data_dir, data_dir)
        sqlite = SqliteStore(data_dir / SQLITE_FILENAME)
        await sqlite.open()
        return sqlite
    if kind == "consul":
        try:
            client = ConsulClient(consul_addr, token=consul_token, ca_file=consul_ca_file)
        except (ValueError, OSError) as exc:
            raise ConfigError(
                f"cannot use Consul at {consul_addr!r}: {exc}; set --consul-addr to host:port "
                "or an http(s):// URL (and --consul-ca-file to a readable PEM file)",
                setting="consul_addr",
            ) from exc
        try:
            consul = ConsulStore(client, consul_prefix, owns_client=True)
        except ValueError as exc:
            await client.aclose()
            raise ConfigError(f"invalid Consul KV prefix: {exc}", setting="consul_prefix") from exc
        try:
            await consul.open()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await consul.aclose()
            raise
        return consul
    raise ConfigError(f"unknown store {kind!r}: use 'sqlite' or 'consul'", setting="store")
