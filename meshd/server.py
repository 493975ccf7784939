"""Runs the app under uvicorn with meshd's settings."""

from __future__ import annotations

import logging
import socket

import uvicorn

from meshd.app import create_app
from meshd.config import Settings

log = logging.getLogger("meshd")


def uvicorn_config(settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(settings),
        host=settings.listen_host,
        port=settings.listen_port,
        log_config=None,
        log_level=settings.log_level,
        access_log=settings.access_log,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
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
        "meshd starting: listen %s, store %s, registry %s, data dir %s",
        settings.url,
        settings.store,
        settings.registry,
        settings.data_dir,
    )
    MeshdServer(uvicorn_config(settings)).run()
    log.info("meshd stopped")
