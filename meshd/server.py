"""Runs the app under uvicorn with meshd's settings: HTTPS always, with the serving
certificate and client-certificate checks of ``meshd.tls``."""

from __future__ import annotations

import logging
import socket

import uvicorn

from meshd.app import create_app
from meshd.config import Settings
from meshd.tls import PeerCertProtocol, ServingTls

log = logging.getLogger("meshd")


def uvicorn_config(settings: Settings) -> uvicorn.Config:
    serving = ServingTls(settings.data_dir / "tls")
    return uvicorn.Config(
        create_app(settings, serving),
        host=settings.listen_host,
        port=settings.listen_port,
        log_config=None,
        log_level=settings.log_level,
        access_log=settings.access_log,
        # uvicorn keeps this context for the listener's life; it hands every new
        # connection the current certificate and trust roots (see meshd.tls).
        ssl_context_factory=lambda _config, _default: serving.dispatcher,
        http=PeerCertProtocol,
        lifespan="on",
        # Long polls hold connections open; keep idle ones longer than a poll's wait.
        timeout_keep_alive=75,
        timeout_graceful_shutdown=5,
        backlog=4096,
        server_header=False,
    )


class MeshdServer(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn waits for open requests before the app's shutdown runs; answer the
        # parked config polls first, or every connected proxy delays the exit.
        mesh = getattr(getattr(self.config.app, "state", None), "mesh", None)
        if mesh is not None:
            mesh.control.hub.close()
        await super().shutdown(sockets)


def serve(settings: Settings) -> None:
    log.info(
        "meshd starting: listen %s, store %s, registry %s, CA %s, data dir %s",
        settings.url,
        settings.store,
        settings.registry,
        settings.ca,
        settings.data_dir,
    )
    MeshdServer(uvicorn_config(settings)).run()
    log.info("meshd stopped")
