"""The Docker engine the tests start (scripts/docker.sh): it answers on this checkout's
socket, numbers its default bridge and the networks it creates from 198.18.0.0/15 (the
range reserved for network tests), and docker-compose drives it."""

from __future__ import annotations

import ipaddress
import secrets
from pathlib import Path

import pytest

from tests.support.docker_engine import (
    ADDRESS_POOL,
    BASE_IMAGE,
    BRIDGE_GATEWAY,
    BRIDGE_SUBNET,
    IMAGE_BUILD_TIMEOUT,
    DockerEngine,
    build_images,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(180)]


def test_engine_answers_on_its_own_socket(docker_engine: DockerEngine) -> None:
    version = docker_engine.docker("version", "--format", "{{.Server.Version}}").stdout.strip()
    assert version, "the engine answered `docker version` without a server version"
    if docker_engine.own:
        assert docker_engine.socket is not None
        assert docker_engine.socket.is_socket()
        assert docker_engine.socket.parent.parent.name == "docker"  # .deps/docker/run/…


def test_default_bridge_is_on_the_test_range(docker_engine: DockerEngine) -> None:
    bridge = docker_engine.inspect("bridge", kind="network")
    config = bridge["IPAM"]["Config"]
    assert [c.get("Subnet") for c in config] == [BRIDGE_SUBNET], (
        f"the default bridge is {config}; start dockerd with --bip {BRIDGE_GATEWAY}/24 "
        f"--default-address-pool base={ADDRESS_POOL},size=24 (scripts/docker.sh does)"
    )
    assert [c.get("Gateway") for c in config] == [BRIDGE_GATEWAY]


@pytest.mark.timeout(IMAGE_BUILD_TIMEOUT)
def test_compose_networks_come_from_the_test_range(
    docker_engine: DockerEngine, pytestconfig: pytest.Config, tmp_path: Path
) -> None:
    """docker-compose (Debian's v1) creates its project network from the engine's
    default address pool: 198.18.0.0/15, never a private range."""
    build_images(docker_engine, pytestconfig, "base")
    compose_file = tmp_path / "docker-compose.yml"
    compose_file.write_text(
        "version: '3.7'\n"
        "services:\n"
        "  idle:\n"
        f"    image: {BASE_IMAGE}\n"
        "    command: [sleep, '300']\n"
        "    init: true\n"
    )
    project = f"meshdtest{secrets.token_hex(3)}"
    try:
        docker_engine.compose("up", "--detach", "--no-build", files=[compose_file], project=project)
        network = docker_engine.inspect(f"{project}_default", kind="network")
        subnets = [ipaddress.IPv4Network(c["Subnet"]) for c in network["IPAM"]["Config"]]
        pool = ipaddress.IPv4Network(ADDRESS_POOL)
        assert subnets
        assert all(s.subnet_of(pool) for s in subnets), f"{subnets} not within {pool}"
        ps = docker_engine.compose("ps", "-q", files=[compose_file], project=project)
        (cid,) = ps.stdout.split()
        address = ipaddress.IPv4Address(docker_engine.container_ip(cid, f"{project}_default"))
        assert any(address in s for s in subnets)
    finally:
        docker_engine.compose(
            "down",
            "--volumes",
            "--timeout",
            "5",
            files=[compose_file],
            project=project,
            check=False,
        )
