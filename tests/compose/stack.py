"""meshd's Compose stack (compose/docker-compose.yml) for the tests: brought up with
``scripts/compose.sh`` on the test session's Docker engine, driven with Compose and
``meshctl`` inside the meshd container, as docs/compose.md tells users to."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from tests.support.docker_engine import DockerEngine
from tests.support.processes import REPO_ROOT

COMPOSE_DIR = REPO_ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
COMPOSE_SH = REPO_ROOT / "scripts" / "compose.sh"
PROJECT = "meshd-compose"
WEB_PORT = 8080
WEB_URL = f"http://127.0.0.1:{WEB_PORT}/"
LOCAL_IMAGES: Mapping[str, str] = {
    "MESHD_IMAGE": "meshd:local",
    "CONSUL_IMAGE": "meshd-consul:local",
    "OPENBAO_IMAGE": "meshd-openbao:local",
    "PROMETHEUS_IMAGE": "meshd-prometheus:local",
}
SIDECARS: Mapping[str, str] = {  # proxy id -> its container's compose service
    "web.default": "web-sidecar",
    "api-v1.default": "api-v1-sidecar",
    "api-v2.default": "api-v2-sidecar",
    "counter.default": "counter-sidecar",
}
ANSWER = re.compile(
    r"^web -> api (?P<version>v[12]) \((?P<instance>api-v[12])\) -> counter \(counter-1\): "
    r"visits=(?P<visits>\d+)$"
)
UP_TIMEOUT_S = 420.0
WAIT_S = 60.0
T = TypeVar("T")


def eventually(
    what: str,
    probe: Callable[[], T | None],
    timeout: float = WAIT_S,
    context: Callable[[], str] | None = None,
    interval: float = 0.5,
) -> T:
    """``probe()`` until it returns something other than None or False; on timeout fail
    with ``context()`` in the message."""
    deadline = time.monotonic() + timeout
    while True:
        last = probe()
        if last is not None and last is not False:
            return last
        if time.monotonic() > deadline:
            said = f"\n{context()}" if context else ""
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}{said}", pytrace=False)
        time.sleep(interval)


def get(url: str = WEB_URL, timeout: float = 10) -> tuple[int, str]:
    """GET without any proxy from the environment: (status, body); (0, why) when nothing
    answered."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as answer:
            return answer.status, answer.read().decode(errors="replace").strip()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace").strip()
    except OSError as exc:
        return 0, str(exc)


def port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@dataclass(frozen=True, slots=True)
class Stack:
    engine: DockerEngine

    def compose(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return self.engine.compose(
            *args,
            files=[COMPOSE_FILE],
            project=PROJECT,
            cwd=COMPOSE_DIR,
            env=LOCAL_IMAGES,
            check=check,
            timeout=timeout,
        )

    def exec(self, service: str, *argv: str, check: bool = True, timeout: float = 60) -> str:
        """``compose exec -T SERVICE ARGV`` (the way docs/compose.md runs meshctl)."""
        return self.compose("exec", "-T", service, *argv, check=check, timeout=timeout).stdout

    def meshctl(self, *args: str) -> str:
        return self.exec("meshd", "meshctl", *args)

    def python(self, service: str, code: str, timeout: float = 60) -> Any:
        """Run ``code`` with the image's Python in SERVICE's container; it prints one JSON
        value, returned decoded."""
        out = self.exec(service, "python", "-c", code, timeout=timeout)
        return json.loads(out.strip().splitlines()[-1])

    def proxies(self) -> dict[str, dict[str, Any]]:
        listed = json.loads(self.meshctl("proxy-status", "-o", "json"))
        return {p["proxy"]: p for p in listed["items"]}

    def synced(self) -> dict[str, dict[str, Any]] | None:
        """Every sidecar of the demo SYNCED, on the current version ACKed; else None."""
        try:
            proxies = self.proxies()
        except Exception:
            return None
        if set(proxies) != set(SIDECARS):
            return None
        for p in proxies.values():
            if p["state"] != "SYNCED" or not p["connected"] or p["ackedVersion"] != p["version"]:
                return None
        return proxies

    def container(self, service: str) -> str:
        ids = self.compose("ps", "-q", service).stdout.split()
        assert len(ids) == 1, f"expected one container for {service}, found {ids}"
        return ids[0]

    def health(self, service: str) -> str:
        state = self.engine.inspect(self.container(service))["State"]
        if not state["Running"]:
            return f"{state['Status']}:{state['ExitCode']}"
        health = state.get("Health")
        return str(health["Status"]) if health else "running"

    def wait_healthy(self, *services: str, timeout: float = WAIT_S) -> None:
        for service in services:
            eventually(
                f"{service} to be healthy",
                lambda s=service: self.health(s) == "healthy",  # type: ignore[misc]
                timeout=timeout,
                context=lambda s=service: self.logs(s),  # type: ignore[misc]
            )

    def logs(self, *services: str, tail: int = 30) -> str:
        done = self.compose(
            "--profile",
            "monitoring",
            "logs",
            "--no-color",
            "--tail",
            str(tail),
            *services,
            check=False,
        )
        return done.stdout + done.stderr

    def report(self) -> str:
        """``compose ps`` and the logs of every service not healthy (all of them when
        each is), for a failing test's report."""
        ps = self.compose("--profile", "monitoring", "ps", check=False)
        unwell = [
            line.split()[0]
            for line in ps.stdout.splitlines()
            if line.startswith(PROJECT) and "(healthy)" not in line and "Exit 0" not in line
        ]
        services = []
        for name in unwell:
            # meshd-compose_api-v1-sidecar_1 (v1) or meshd-compose-api-v1-sidecar-1 (v2)
            services.append(re.sub(r"[_-]\d+$", "", name[len(PROJECT) + 1 :]))
        return f"{ps.stdout}\n{self.logs(*services, tail=40)}"


def compose_sh(
    engine: DockerEngine, *args: str, timeout: float = UP_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """``scripts/compose.sh ARGS`` on the test session's engine (a session of it, so the
    engine is not marked as started by a human)."""
    env = {**os.environ, "MESHD_DOCKER_SESSION": "1", **LOCAL_IMAGES}
    if not engine.own:
        env["MESHD_DOCKER_HOST"] = engine.host
    if engine.compose_argv:
        env["MESHD_COMPOSE"] = " ".join(engine.compose_argv)
    with contextlib.suppress(KeyError):
        del env["DOCKER_HOST"]
    try:
        return subprocess.run(
            [str(COMPOSE_SH), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=REPO_ROOT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode()
        pytest.fail(f"scripts/compose.sh {' '.join(args)} did not finish in {timeout:.0f}s\n{out}")
