"""``meshd serve`` as a real process, for API, CLI and end-to-end tests.

``MeshdProcess`` owns one server: its data dir, port, admin token and log. meshd always
serves HTTPS with a certificate from its own CA; clients verify it with the trust
bundle meshd writes to ``<data-dir>/ca-bundle.pem`` (``ca_file``). It can be stopped,
SIGKILLed and restarted on the same data dir and port (durability tests).

Fixtures: ``meshd_server`` (session) and ``meshd_factory`` (function, for servers with
their own data dirs and flags). A failing test that used any of them gets the tail of
each server's log in its report.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import ssl
import sys
import time
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from tests.support.processes import (
    LOOPBACK,
    ManagedProcess,
    ProcessError,
    free_port,
    wait_for_http,
)

READY_TIMEOUT = 30.0
START_ATTEMPTS = 3
REPORT_LOG_LINES = 60


class MeshdProcess:
    def __init__(
        self,
        data_dir: Path,
        *,
        extra_args: Sequence[str] = (),
        port: int | None = None,
        token: str | None = None,
        host: str = LOOPBACK,
        wrap: Sequence[str] = (),
    ) -> None:
        """``host`` is the address to listen on; ``wrap`` a command prefix to run meshd
        with (e.g. ``ip netns exec NAME`` to run it on another host of our own)."""
        self.data_dir = data_dir
        self.port = port or free_port()
        # A port the caller chose, or one clients have already been given (by a successful
        # start), stays; otherwise start() may move to a new one if another process took it.
        self._port_fixed = port is not None
        self.token = token or "mshd_test_" + secrets.token_urlsafe(24)
        self.extra_args = list(extra_args)
        self.host = host
        self.wrap = list(wrap)
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def ca_file(self) -> Path:
        """The mesh's trust bundle, written by meshd before it starts listening."""
        return self.data_dir / "ca-bundle.pem"

    @functools.cached_property
    def home(self) -> Path:
        """An empty HOME for meshctl runs (created on first use), so no user config
        file is read."""
        home = self.data_dir.parent / f"{self.data_dir.name}-home"
        home.mkdir(parents=True, exist_ok=True)
        return home

    def verify(self) -> ssl.SSLContext:
        """What an HTTP client should verify this server's certificate with (read anew
        each time: a root rotation changes it)."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def start(self) -> MeshdProcess:
        """Start ``meshd serve`` and wait until ``/readyz`` answers 200. If the port was
        taken meanwhile ("address already in use"), try again on a new one, unless the
        port is fixed (given by the caller, or in use by clients since an earlier start)."""
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._launch()
            except (ProcessError, TimeoutError) as exc:
                retry = not self._port_fixed and attempt < START_ATTEMPTS
                if not retry or "address already in use" not in str(exc).lower():
                    raise
                self.port = free_port()
            else:
                break
        self._port_fixed = True
        return self

    def _launch(self) -> None:
        argv = [
            *self.wrap, sys.executable, "-m", "meshd.cli", "serve",
            "--data-dir", str(self.data_dir),
            "--listen", f"{self.host}:{self.port}",
            "--bootstrap-token", self.token,
            "--debounce-ms", "20",
            *self.extra_args,
        ]  # fmt: skip
        self.process = ManagedProcess(argv, name="meshd", log_dir=self.data_dir.parent)
        try:
            self._wait_for_bundle()
            wait_for_http(
                f"{self.url}/readyz",
                timeout=READY_TIMEOUT,
                process=self.process,
                verify=self.verify(),
            )
        except BaseException:
            self.process.stop()
            raise

    def _wait_for_bundle(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.ca_file.exists():
            if not self.process.alive:
                raise ProcessError(
                    f"meshd exited before writing {self.ca_file}\n{self.process.describe()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"meshd wrote no {self.ca_file} in {READY_TIMEOUT:.0f}s\n"
                    + self.process.describe()
                )
            time.sleep(0.05)

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
            verify=self.verify(),
        )

    def env(self, **extra: str) -> dict[str, str]:
        """An environment for running meshctl against this server with the admin token
        and the mesh's CA bundle: an empty HOME, and none of the caller's ``MESHD_*``
        settings or config file."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESHD_")}
        env.pop("XDG_CONFIG_HOME", None)
        env.update(
            HOME=str(self.home),
            MESHD_ADDR=self.url,
            MESHD_TOKEN=self.token,
            MESHD_CA_FILE=str(self.ca_file),
        )
        env.update(extra)
        return env

    def describe(self) -> str:
        return self.process.describe() if self.process else "meshd was never started"


@contextlib.contextmanager
def running(server: MeshdProcess) -> Iterator[MeshdProcess]:
    """``server`` started, and stopped again on leaving the block."""
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def meshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshdProcess]:
    """One sqlite-backed meshd shared by a session's tests; tests keep to their own
    namespaces so they do not see each other's resources."""
    with running(MeshdProcess(tmp_path_factory.mktemp("meshd") / "data")) as server:
        yield server


_FACTORY_STARTED = pytest.StashKey[list[MeshdProcess]]()


@pytest.fixture
def meshd_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[type[MeshdProcess]]:
    """Start extra meshd processes (own data dirs, stores, flags); all stopped at the end."""
    started = request.node.stash.setdefault(_FACTORY_STARTED, [])

    class Tracked(MeshdProcess):
        def start(self) -> MeshdProcess:
            if self not in started:
                started.append(self)
            return super().start()

    try:
        yield Tracked
    finally:
        for server in started:
            server.stop()


def _servers_of(item: pytest.Item) -> Iterator[tuple[str, MeshdProcess]]:
    """The meshd processes a test used: fixture values (alone or in a tuple) and the
    ones it started with ``meshd_factory``."""
    for name, value in getattr(item, "funcargs", {}).items():
        for part in value if isinstance(value, tuple) else (value,):
            if isinstance(part, MeshdProcess):
                yield name, part
    started: list[MeshdProcess] = item.stash.get(_FACTORY_STARTED, [])
    for n, server in enumerate(started):
        yield f"meshd_factory[{n}]", server


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Append the tail of each used meshd's log to a failing test's report."""
    report = yield
    if report.failed:
        for name, server in _servers_of(item):
            if server.process is not None:
                log = server.process
                report.sections.append(
                    (f"{name} log ({log.log_path})", log.log_tail(REPORT_LOG_LINES))
                )
    return report
