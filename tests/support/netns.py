"""Hosts of our own, for tests that need addresses other than loopback: a network
namespace joined to this one by a veth pair, numbered from 198.18.0.0/15 (the range
reserved for network tests). Needs root and iproute2, as CI has; without them the test
fails saying so — it never skips."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    host_ip: str
    """This side of the veth pair."""
    ip: str
    """The namespace's side: the address of the 'other host'."""

    def exec_argv(self) -> list[str]:
        """Prefix that runs a command inside the namespace."""
        return ["ip", "netns", "exec", self.name]


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@contextlib.contextmanager
def veth_namespace(index: int = 0) -> Iterator[Namespace]:
    """A fresh namespace at 198.18.<n>.2 reached from 198.18.<n>.1; removed afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail(
            "this test needs root and iproute2 (`ip`) to make a network namespace; "
            "run the suite as root on Linux (CI does)"
        )
    tag = f"{os.getpid() % 10000}{index}"
    subnet = 100 + (os.getpid() + index) % 150
    ns = Namespace(f"meshtest{tag}", f"198.18.{subnet}.1", f"198.18.{subnet}.2")
    host_if, ns_if = f"mth{tag}", f"mtn{tag}"
    try:
        _ip("netns", "add", ns.name)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", ns.name)
        _ip("addr", "add", f"{ns.host_ip}/24", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("netns", "exec", ns.name, "ip", "addr", "add", f"{ns.ip}/24", "dev", ns_if)
        _ip("netns", "exec", ns.name, "ip", "link", "set", ns_if, "up")
        _ip("netns", "exec", ns.name, "ip", "link", "set", "lo", "up")
    except RuntimeError as exc:
        _cleanup(ns.name, host_if)
        pytest.fail(f"could not make a network namespace for this test: {exc}")
    try:
        yield ns
    finally:
        _cleanup(ns.name, host_if)


def _cleanup(name: str, host_if: str) -> None:
    subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
