"""The FastAPI application: opens the store and the CA, issues meshd's serving
certificate, starts the control loop, mounts the routers."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING

import anyio
from fastapi import FastAPI

from meshd import __version__
from meshd.admin_tokens import AdminTokens
from meshd.api import admin, health, identity, problems, proxies, registry, resources
from meshd.api.deps import Services
from meshd.api.xds_poll import XdsPollMiddleware
from meshd.ca.factory import open_ca
from meshd.config import Settings
from meshd.control import ControlPlane
from meshd.errors import ConfigError
from meshd.identity import Identity
from meshd.metrics import Metrics
from meshd.rules import Rules
from meshd.schema.validate import MeshNames
from meshd.store.base import Store
from meshd.store.factory import open_store
from meshd.tls import ServingTls
from registry.base import Registry
from registry.consul import ConsulRegistry
from registry.consul_http import ConsulClient
from registry.embedded import (
    ConsulRecordsFeed,
    EmbeddedRegistry,
    PollingRecordsFeed,
    RecordsFeed,
)

if TYPE_CHECKING:
    from meshd.onboarding.docker import DockerWatcher

log = logging.getLogger("meshd")


def create_app(settings: Settings, serving: ServingTls) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        store = await open_store(
            settings.store,
            data_dir=settings.data_dir,
            consul_addr=settings.consul_addr,
            consul_token=settings.consul_token,
            consul_prefix=settings.consul_prefix,
            consul_ca_file=settings.consul_ca_file,
        )
        log.info("store opened: %s", store.backend)
        try:
            tokens = AdminTokens(store)
            generated = await tokens.ensure_bootstrap(settings.bootstrap_token, settings.data_dir)
            if generated:
                # Printed once, on purpose: the only other copy is the 0600 file.
                print(
                    "meshd: generated the first admin token "
                    f"(also in {settings.data_dir / 'admin.token'}):\n"
                    f"  export MESHD_TOKEN={generated}",
                    file=sys.stderr,
                    flush=True,
                )
            ca = await open_ca(
                settings.ca,
                store=store,
                trust_domain=settings.trust_domain,
                plugin_dir=settings.ca_plugin_dir,
                vault=settings.vault,
            )
            log.info("certificate authority opened: %s", ca.backend)
            try:
                metrics = Metrics()
                ident = Identity(settings, store, ca, metrics, serving)
                await ident.start()
                async with open_registry(settings, store) as catalog:
                    control = ControlPlane(settings, store, catalog, metrics, ident.bundle)
                    names = MeshNames(
                        domain_suffix=settings.domain_suffix,
                        root_namespace=settings.root_namespace,
                    )
                    rules = Rules(store, control.models, names)
                    app.state.mesh = Services(
                        settings, store, catalog, control, rules, tokens, metrics, ident
                    )
                    async with anyio.create_task_group() as tg:
                        await tg.start(catalog.run)
                        await tg.start(control.run)
                        await tg.start(ident.run, control.lagging)
                        if settings.docker_onboarding:
                            await tg.start(docker_watcher(settings, ident, catalog, store).run)
                        log.info("control loop started; serving %s", settings.url)
                        yield
                        log.info("stopping the control loop")
                        control.hub.close()
                        tg.cancel_scope.cancel()
            finally:
                await ca.aclose()
        finally:
            await store.aclose()
            log.info("store closed")

    app = FastAPI(
        title="meshd",
        version=__version__,
        summary="Control plane of a service mesh for Docker Compose and VMs",
        lifespan=lifespan,
    )
    problems.install(app)
    app.add_middleware(XdsPollMiddleware)
    for router in (
        health.router,
        resources.router,
        proxies.router,
        registry.router,
        identity.router,
        admin.router,
    ):
        app.include_router(router)
    return app


def docker_watcher(
    settings: Settings, ident: Identity, catalog: Registry, store: Store
) -> DockerWatcher:
    """``--docker-onboarding``: the watcher that starts sidecars for labelled containers.
    Imported only then: the Docker SDK is not needed otherwise."""
    from meshd.onboarding.docker import DockerWatcher  # noqa: PLC0415

    return DockerWatcher(settings, ident.tokens, catalog, store)


def consul_client(settings: Settings, *, max_connections: int = 100) -> ConsulClient:
    """A client for the Consul at ``--consul-addr`` with meshd's token and TLS settings."""
    try:
        return ConsulClient(
            settings.consul_addr,
            token=settings.consul_token,
            ca_file=settings.consul_ca_file,
            cert_file=settings.consul_cert_file,
            key_file=settings.consul_key_file,
            max_connections=max_connections,
        )
    except (ValueError, OSError) as exc:
        raise ConfigError(
            f"cannot use Consul at {settings.consul_addr!r}: {exc}; set --consul-addr to "
            "host:port or an http(s):// URL, and the --consul-*-file flags to readable PEM files",
            setting="consul_addr",
        ) from exc


@asynccontextmanager
async def open_registry(settings: Settings, store: Store) -> AsyncIterator[Registry]:
    """The registry ``--registry`` names, and the Consul clients it uses (closed on exit).

    ``embedded``: the catalog lives in ``store`` (records collection ``catalog``); with a
    shared store (Consul KV) heartbeats are written at half TTL and the other replicas'
    registrations are followed with a blocking query on the records
    (:class:`~registry.embedded.ConsulRecordsFeed`). ``consul``: Consul's catalog,
    watched with one blocking query per service (up to ``--consul-max-watches``)."""
    async with AsyncExitStack() as stack:
        registry: Registry
        if settings.registry == "embedded":
            shared = store.backend != "sqlite"
            feed: RecordsFeed | None = None
            if store.backend == "consul":
                feed_client = consul_client(settings, max_connections=4)
                stack.push_async_callback(feed_client.aclose)
                feed = ConsulRecordsFeed(feed_client, settings.consul_prefix)
            elif shared:
                feed = PollingRecordsFeed(store)
            registry = EmbeddedRegistry(store, shared=shared, feed=feed)
            log.info(
                "registry: embedded (catalog in the %s store%s)",
                store.backend,
                "; heartbeats shared with the other replicas" if shared else "",
            )
        elif settings.registry == "consul":
            writes = consul_client(settings)
            stack.push_async_callback(writes.aclose)
            registry = ConsulRegistry(
                writes,
                watch_clients=lambda pool: consul_client(settings, max_connections=pool),
                max_watches=settings.consul_max_watches,
            )
            log.info(
                "registry: consul at %s (up to %d services with a blocking query each)",
                writes.address,
                settings.consul_max_watches,
            )
        else:
            raise ConfigError(
                f"unknown registry {settings.registry!r}: use 'embedded' or 'consul'",
                setting="registry",
            )
        yield registry
