"""``meshd serve`` as a real process, for API, CLI and end-to-end tests.

``MeshdProcess`` owns one server: its data dir, port, admin token and log. It can be
stopped, SIGKILLed and restarted on the same data dir and port (durability tests).
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from tests.support.processes import LOOPBACK, ManagedProcess, free_port, wait_for_http

READY_TIMEOUT = 30.0


class MeshdProcess:
    def __init__(
        self,
        data_dir: Path,
        *,
        extra_args: Sequence[str] = (),
        port: int | None = None,
        token: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.token = token or "mshd_test_" + secrets.token_urlsafe(24)
        self.extra_args = list(extra_args)
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> MeshdProcess:
        argv = [
            sys.executable, "-m", "meshd.cli", "serve",
            "--data-dir", str(self.data_dir),
            "--listen", f"{LOOPBACK}:{self.port}",
            "--bootstrap-token", self.token,
            "--debounce-ms", "20",
            *self.extra_args,
        ]  # fmt: skip
        self.process = ManagedProcess(argv, name="meshd", log_dir=self.data_dir.parent)
        wait_for_http(f"{self.url}/readyz", timeout=READY_TIMEOUT, process=self.process)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def kill(self) -> None:
        """SIGKILL: no shutdown path runs, as in a crash."""
        if self.process is not None:
            self.process.kill()

    def restart(self) -> MeshdProcess:
        self.stop()
        return self.start()

    def client(self, token: str | None = None, timeout: float = 10.0) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            timeout=timeout,
            headers={"Authorization": f"Bearer {token or self.token}"},
        )

    def describe(self) -> str:
        return self.process.describe() if self.process else "meshd was never started"


@pytest.fixture(scope="session")
def meshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshdProcess]:
    """One sqlite-backed meshd shared by a session's tests; tests keep to their own
    namespaces so they do not see each other's resources."""
    server = MeshdProcess(tmp_path_factory.mktemp("meshd") / "data").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def meshd_factory(tmp_path: Path) -> Iterator[type[MeshdProcess]]:
    """Start extra meshd processes (own data dirs, stores, flags); all stopped at the end."""
    started: list[MeshdProcess] = []

    class Tracked(MeshdProcess):
        def start(self) -> MeshdProcess:
            started.append(self)
            return super().start()

    try:
        yield Tracked
    finally:
        for server in started:
            server.stop()
