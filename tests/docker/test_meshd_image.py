"""meshd:local, built without a registry (scripts/images.sh: debootstrap base, host
wheelhouse, compose/Dockerfile): one image whose command chooses meshd, mesh-sidecar or
meshctl; it runs as an unprivileged user under tini, and a meshd in it serves HTTPS on
its bridge address, verified with the CA bundle copied out of the container."""

from __future__ import annotations

import ipaddress
import ssl
import time
from pathlib import Path

import httpx
import pytest

from tests.native.support import load_setup
from tests.support.docker_engine import (
    BRIDGE_SUBNET,
    IMAGE_BUILD_TIMEOUT,
    MESHD_IMAGE,
    Container,
    DockerEngine,
)

# The first test to ask for meshd_image may build it from scratch (about two minutes).
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(IMAGE_BUILD_TIMEOUT)]

MESHD_HOSTNAME = "meshd-docker-test"
READY_TIMEOUT = 30.0


def test_image_exists_with_its_layout(docker_engine: DockerEngine, meshd_image: str) -> None:
    assert meshd_image == MESHD_IMAGE
    config = docker_engine.inspect(meshd_image, kind="image")["Config"]
    assert config["User"] == "meshd"
    assert config["Entrypoint"] == ["/usr/local/bin/meshd-entrypoint"]
    assert config["Cmd"] == ["meshd", "serve", "--listen", "0.0.0.0:15012"]
    assert config["Healthcheck"]["Test"] == ["CMD", "meshd-healthcheck"]
    assert "MESHD_DATA_DIR=/var/lib/meshd" in config["Env"]
    assert config["Labels"]["io.meshd.inputs"], "scripts/images.sh labels what it built from"


@pytest.mark.parametrize(
    ("command", "expect"),
    [
        (["meshd", "--version"], "meshd "),
        (["mesh-sidecar", "--help"], "usage: mesh-sidecar"),
        (["meshctl", "--help"], "usage: meshctl"),
    ],
)
def test_each_command_runs(
    docker_engine: DockerEngine, meshd_image: str, command: list[str], expect: str
) -> None:
    done = docker_engine.docker("run", "--rm", meshd_image, *command)
    assert expect in done.stdout


def test_the_sidecar_in_the_image_runs_compiled_where_the_wheel_could_be(
    docker_engine: DockerEngine, meshd_image: str
) -> None:
    # scripts/images.sh builds meshd's wheel on this machine: with mypyc's extensions
    # when it has a C compiler (setup.py, docs/native.md).
    why_not = load_setup().why_not_native()
    done = docker_engine.docker("run", "--rm", meshd_image, "mesh-sidecar", "--version")
    expect = "(data path compiled)" if why_not is None else "(data path interpreted)"
    assert expect in done.stdout, why_not


def test_runs_unprivileged_under_tini(docker_engine: DockerEngine, meshd_image: str) -> None:
    done = docker_engine.docker(
        "run", "--rm", meshd_image, "sh", "-c", "id -u; cat /proc/1/comm; python3 --version"
    )
    uid, pid1, python = done.stdout.split("\n")[:3]
    assert uid != "0"
    assert pid1 == "tini"
    assert python.startswith("Python 3.11")


def _wait_for_bundle(container: Container, dest: Path) -> Path:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        done = container.engine.docker(
            "cp", f"{container.id}:/var/lib/meshd/ca-bundle.pem", str(dest), check=False
        )
        if done.returncode == 0:
            return dest
        if not container.running() or time.monotonic() > deadline:
            pytest.fail(f"meshd wrote no ca-bundle.pem; its log:\n{container.logs()}")
        time.sleep(0.2)


def _get(url: str, verify: ssl.SSLContext) -> httpx.Response:
    """GET ``url`` (an IP address), checking the certificate against the container's
    host name: meshd's certificate names its host, loopback and its listen address."""
    with httpx.Client(verify=verify, timeout=5, trust_env=False) as client:
        return client.get(url, extensions={"sni_hostname": MESHD_HOSTNAME})


def _get_ready(url: str, verify: ssl.SSLContext, container: Container) -> httpx.Response:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            response = _get(url, verify)
            if response.status_code == 200:
                return response
        except httpx.TransportError:
            pass
        if not container.running() or time.monotonic() > deadline:
            pytest.fail(
                f"{url} did not answer 200 within {READY_TIMEOUT:.0f}s; "
                f"meshd's log:\n{container.logs()}"
            )
        time.sleep(0.2)


def test_meshd_serves_https_on_its_bridge_address(
    docker_engine: DockerEngine, meshd_image: str, tmp_path: Path
) -> None:
    with docker_engine.container(
        meshd_image,
        "meshd", "serve", "--listen", "0.0.0.0:15012",
        run_args=["--hostname", MESHD_HOSTNAME],
    ) as meshd:  # fmt: skip
        ip = meshd.ip()
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(BRIDGE_SUBNET)
        bundle = _wait_for_bundle(meshd, tmp_path / "ca-bundle.pem")
        verify = ssl.create_default_context(cafile=str(bundle))
        response = _get_ready(f"https://{ip}:15012/readyz", verify, meshd)
        assert response.json()["status"] == "ready"
        # The certificate chains to the copied bundle; a client trusting only the
        # system roots refuses it.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            _get(f"https://{ip}:15012/readyz", ssl.create_default_context())
        # What compose users do: meshctl inside the container, with the data dir's
        # admin token and CA bundle; and the image's HEALTHCHECK command.
        assert meshd.exec("meshctl", "get", "services").returncode == 0
        assert meshd.exec("meshd-healthcheck").returncode == 0
