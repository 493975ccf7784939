"""Fixtures that start real components on free loopback ports.

- ``consul_agent`` (session): ``consul agent -dev`` bound to 127.0.0.1, every port it
  opens chosen free; ready once a leader is elected and the KV store accepts writes.
- ``bao_server`` (session): ``bao server -dev`` with a known root token.
- ``consul_prefix`` / ``bao_mount_path`` (function): a fresh KV prefix / mount path per
  test, cleaned up afterwards, so tests sharing one agent never see each other's data.

A missing binary fails the test with how to get it (never a skip). When a test that used
a component fails, the tail of the component's log is added to the report.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.processes import (
    LOOPBACK,
    ManagedProcess,
    ProcessError,
    find_binary,
    free_ports,
    wait_for_http,
)

START_ATTEMPTS = 3
READY_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class ConsulAgent:
    http_addr: str
    """``127.0.0.1:PORT`` of the HTTP API."""
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"http://{self.http_addr}"

    @property
    def log_path(self) -> Path:
        return self.process.log_path


@dataclass(frozen=True, slots=True)
class BaoServer:
    addr: str
    """``127.0.0.1:PORT`` of the API listener (its cluster port is PORT + 1)."""
    token: str
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    @property
    def log_path(self) -> Path:
        return self.process.log_path


def _require(binary: str) -> Path:
    path = find_binary(binary)
    if path is None:
        pytest.fail(f"{binary} not found: run `make deps` (installs it into .deps/bin)")
    return path


def _collided(process: ManagedProcess) -> bool:
    return "address already in use" in process.log_text().lower()


def _start_with_retries(
    name: str, start: Callable[[], tuple[ManagedProcess, str]]
) -> tuple[ManagedProcess, str]:
    """Run ``start`` (choose ports, spawn, wait until ready); when another process took
    one of the chosen ports in between, try again with new ones."""
    failure = ""
    for _ in range(START_ATTEMPTS):
        try:
            return start()
        except (ProcessError, TimeoutError) as exc:
            failure = str(exc)
            if "address already in use" not in failure.lower():
                break
    pytest.fail(f"could not start {name}:\n{failure}")


# --- Consul ----------------------------------------------------------------------------


def _start_consul(binary: Path, http_port: int | None) -> tuple[ManagedProcess, str]:
    dns, serf_lan, serf_wan, server, grpc, http = free_ports(6, udp=True)
    if http_port is not None:
        http = http_port
    process = ManagedProcess(
        [
            binary,
            "agent",
            "-dev",
            f"-bind={LOOPBACK}",
            f"-client={LOOPBACK}",
            f"-http-port={http}",
            f"-dns-port={dns}",
            f"-serf-lan-port={serf_lan}",
            f"-serf-wan-port={serf_wan}",
            f"-server-port={server}",
            f"-grpc-port={grpc}",
            "-https-port=-1",
            f"-node=meshd-test-{secrets.token_hex(3)}",
            # Tests never reach the internet; do not let Consul try to phone home.
            "-hcl=disable_update_check = true",
        ],
        name="consul",
        env={"CHECKPOINT_DISABLE": "1"},
    )
    addr = f"{LOOPBACK}:{http}"
    try:
        wait_for_http(
            f"http://{addr}/v1/status/leader",
            timeout=READY_TIMEOUT,
            process=process,
            ready=lambda r: r.status_code == 200 and r.json() not in ("", None),
        )
        # A leader is elected; make sure it has also established leadership and serves KV.
        wait_for_http(
            f"http://{addr}/v1/kv/meshd-fixture/ready",
            method="PUT",
            content=b"ok",
            timeout=READY_TIMEOUT,
            process=process,
            ready=lambda r: r.status_code == 200,
        )
    except BaseException as exc:
        process.stop()
        if isinstance(exc, ProcessError | TimeoutError) and _collided(process):
            raise ProcessError(f"address already in use\n{process.describe()}") from exc
        raise
    return process, addr


def start_consul_agent(http_port: int | None = None) -> ConsulAgent:
    """Start a ``consul agent -dev`` of one's own (stop it with ``agent.process.stop()``),
    for tests that stop or restart Consul. ``http_port`` reuses a known HTTP port, e.g. to
    bring an agent back where clients expect it."""
    binary = _require("consul")
    process, addr = _start_with_retries(
        "consul agent -dev", lambda: _start_consul(binary, http_port)
    )
    return ConsulAgent(http_addr=addr, process=process)


@pytest.fixture(scope="session")
def consul_agent() -> Iterator[ConsulAgent]:
    agent = start_consul_agent()
    try:
        yield agent
    finally:
        agent.process.stop(timeout=10)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "test"


@pytest.fixture
def consul_prefix(consul_agent: ConsulAgent, request: pytest.FixtureRequest) -> Iterator[str]:
    """A KV prefix (ending in ``/``) no other test uses; deleted after the test."""
    prefix = f"meshd-test/{_slug(request.node.name)}-{secrets.token_hex(4)}/"
    yield prefix
    # The agent may have been stopped by the test itself; then there is nothing to clean.
    with contextlib.suppress(httpx.HTTPError):
        httpx.delete(f"{consul_agent.url}/v1/kv/{prefix}?recurse", timeout=10, trust_env=False)


# --- OpenBao ---------------------------------------------------------------------------


def _start_bao(binary: Path, token: str) -> tuple[ManagedProcess, str]:
    # The dev server listens on PORT and on PORT + 1 (its cluster address).
    port, _cluster = free_ports(2, consecutive=True)
    addr = f"{LOOPBACK}:{port}"
    process = ManagedProcess(
        [
            binary,
            "server",
            "-dev",
            f"-dev-root-token-id={token}",
            f"-dev-listen-address={addr}",
            # Do not write ~/.bao-token: tests must not touch the user's home.
            "-dev-no-store-token",
        ],
        name="bao",
        env={"BAO_ADDR": f"http://{addr}", "VAULT_ADDR": f"http://{addr}"},
    )
    try:
        wait_for_http(
            f"http://{addr}/v1/sys/health",
            timeout=READY_TIMEOUT,
            process=process,
            ready=lambda r: r.status_code == 200,
        )
    except BaseException as exc:
        process.stop()
        if isinstance(exc, ProcessError | TimeoutError) and _collided(process):
            raise ProcessError(f"address already in use\n{process.describe()}") from exc
        raise
    return process, addr


@pytest.fixture(scope="session")
def bao_server() -> Iterator[BaoServer]:
    binary = _require("bao")
    token = f"meshd-test-root-{secrets.token_hex(8)}"
    process, addr = _start_with_retries("bao server -dev", lambda: _start_bao(binary, token))
    try:
        yield BaoServer(addr=addr, token=token, process=process)
    finally:
        process.stop(timeout=10)


@pytest.fixture
def bao_mount_path(bao_server: BaoServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A mount path (``test-<name>-<hex>``) no other test uses. The test enables whatever
    engine it needs there; it is disabled again afterwards."""
    path = f"test-{_slug(request.node.name)}-{secrets.token_hex(4)}"
    yield path
    # The server may have been stopped by the test itself; then there is nothing to clean.
    with contextlib.suppress(httpx.HTTPError):
        httpx.delete(
            f"{bao_server.url}/v1/sys/mounts/{path}",
            headers={"X-Vault-Token": bao_server.token},
            timeout=10,
            trust_env=False,
        )


# --- show component logs when a test fails -----------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        funcargs = getattr(item, "funcargs", {})
        for name in ("consul_agent", "bao_server"):
            component = funcargs.get(name)
            if isinstance(component, ConsulAgent | BaoServer):
                report.sections.append(
                    (f"{name} log ({component.log_path})", component.process.log_tail(60))
                )
    return report
