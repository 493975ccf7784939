"""``mesh-sidecar run`` as a real process, for integration and end-to-end tests.

``SidecarProcess`` owns one sidecar: its ports, state dir and log. It can be stopped
(SIGTERM), killed and started again on the same state dir and ports. It gets its join
token from the environment (``MESH_TOKEN``, as the docs advise) and verifies meshd with
``ca_file`` (``MeshdProcess.ca_file``: meshd's ``<data-dir>/ca-bundle.pem``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.support.processes import (
    LOOPBACK,
    REPO_ROOT,
    ManagedProcess,
    free_ports,
    wait_for_http,
)

T = TypeVar("T")
READY_TIMEOUT = 20.0


class SidecarProcess:
    def __init__(
        self,
        meshd_url: str,
        token: str,
        state_dir: Path,
        *,
        ca_file: Path,
        service: str = "reviews",
        namespace: str = "default",
        app_port: int = 9080,
        extra_args: Sequence[str] = (),
        log_dir: Path | None = None,
    ) -> None:
        self.meshd_url = meshd_url
        self.token = token
        self.ca_file = ca_file
        self.state_dir = state_dir
        self.service = service
        self.namespace = namespace
        self.app_port = app_port
        self.admin_port, self.inbound_port, self.outbound_port = free_ports(3)
        self.extra_args = list(extra_args)
        self.log_dir = log_dir or state_dir.parent
        self.process: ManagedProcess | None = None

    @property
    def admin_url(self) -> str:
        return f"http://{LOOPBACK}:{self.admin_port}"

    def start(self) -> SidecarProcess:
        """Start and wait until the admin server answers (ready or not)."""
        argv = [
            sys.executable, "-m", "sidecar.cli", "run",
            "--meshd", self.meshd_url,
            "--ca-file", str(self.ca_file),
            "--service", self.service,
            "--namespace", self.namespace,
            "--app-port", str(self.app_port),
            "--admin-port", str(self.admin_port),
            "--inbound-port", str(self.inbound_port),
            "--outbound-port", str(self.outbound_port),
            "--state-dir", str(self.state_dir),
            "--poll-wait", "2",
            *self.extra_args,
        ]  # fmt: skip
        self.process = ManagedProcess(
            argv,
            name="sidecar",
            env={"MESH_TOKEN": self.token},  # the token from the environment, as documented
            cwd=REPO_ROOT,
            log_dir=self.log_dir,
        )
        wait_for_http(
            f"{self.admin_url}/ready",
            timeout=READY_TIMEOUT,
            ready=lambda r: r.status_code in (200, 503),
            process=self.process,
        )
        return self

    def stop(self) -> int:
        """SIGTERM; the exit status."""
        assert self.process is not None
        return self.process.stop()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()

    def get(self, path: str) -> httpx.Response:
        with httpx.Client(timeout=5.0, trust_env=False) as client:
            return client.get(self.admin_url + path)

    def dump(self) -> dict[str, Any]:
        response = self.get("/config_dump")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def metrics(self) -> dict[str, str]:
        """``name{labels}`` -> value of every sample on ``/stats/prometheus``."""
        text = self.get("/stats/prometheus").text
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = value
        return samples

    def log_text(self) -> str:
        return self.process.log_text() if self.process else ""

    def describe(self) -> str:
        return self.process.describe() if self.process else "the sidecar was never started"


def eventually(
    check: Callable[[], T | None],
    what: str,
    *,
    timeout: float = 15.0,
    describe: Callable[[], str] = lambda: "",
    interval: float = 0.05,
) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` saying
    ``what`` did not happen, with the last value and ``describe()``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = check()
        except (httpx.TransportError, AssertionError, KeyError) as exc:
            value, last = None, exc
        else:
            last = value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"{what} did not happen within {timeout:.0f}s (last: {last!r})\n{describe()}"
            )
        time.sleep(interval)
