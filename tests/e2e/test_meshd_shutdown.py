"""SIGTERM answers parked config polls at once instead of waiting them out."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.meshd_process import MeshdProcess

pytestmark = pytest.mark.e2e


def test_sigterm_with_parked_polls_exits_promptly(
    tmp_path: Path, meshd_factory: type[MeshdProcess]
) -> None:
    server = meshd_factory(tmp_path / "data").start()
    answers: list[int] = []
    with server.client(timeout=60) as api:
        instance = {"service": "a", "address": "127.0.0.1", "port": 15006, "appPort": 8080}
        assert api.put("/v1/instances/a-1.default", json=instance).status_code == 200
        version = api.get("/v1/xds/a-1.default", params={"wait": 10}).headers["X-Mesh-Version"]

        def park() -> None:
            reply = api.get("/v1/xds/a-1.default", params={"version": version, "wait": 55})
            answers.append(reply.status_code)

        poller = threading.Thread(target=park)
        poller.start()
        deadline = time.monotonic() + 10
        while api.get("/v1/proxies/a-1.default").json()["connected"] is not True:
            assert time.monotonic() < deadline
        time.sleep(0.2)  # let the poll park in the hub (nothing to observe it by)
        started = time.monotonic()
        assert server.process is not None
        # uvicorn shuts down cleanly, then re-raises the SIGTERM it caught, so the
        # supervisor sees the process end by the signal it sent.
        assert server.process.stop(timeout=30) in (0, -15)
        took = time.monotonic() - started
        poller.join(timeout=10)
    assert answers == [304], "the parked poll is answered, not cut off"
    assert took < 3, f"meshd took {took:.1f} s to stop with a parked poll"
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/healthz", timeout=1, verify=server.verify())
