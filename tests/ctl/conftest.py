"""Helpers to run meshctl against a real ``meshd serve`` (``tests.support.meshd_process``),
and the fake meshd of the unit tests.

``meshd_server`` (session): a meshd of tests/ctl's own, shadowing the suite-wide fixture
of that name: tests elsewhere leave proxies registered on the shared one, and meshctl's
tests check what proxy-status prints for an empty mesh. ``namespace`` (function): a
namespace no other test uses, so tests sharing a server never see each other's resources.
``fake`` (function): a fake meshd for ``tests.ctl.fake.run``, with a HOME of its own.
"""

from __future__ import annotations

import os
import secrets
import ssl
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from meshd.ctl import client as client_module
from meshd.ctl.trust import pin_path
from tests.ctl.fake import DEFAULT_SERVER, VERIFY, FakeMeshd
from tests.ctl.pki import CaRoot, make_root
from tests.support.meshd_process import MeshdProcess, running
from tests.support.processes import REPO_ROOT

COMMAND_TIMEOUT = 30.0


def venv_script(name: str) -> Path:
    """A console script of the virtualenv running the tests (``.venv/bin/<name>``)."""
    for candidate in (Path(sys.executable).parent / name, REPO_ROOT / ".venv" / "bin" / name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(f"{name} is not installed in the test virtualenv: run `make setup`")


@dataclass(frozen=True, slots=True)
class Run:
    code: int
    out: str
    err: str


def meshctl(
    server: MeshdProcess,
    *argv: str,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
    drop_token: bool = False,
    timeout: float = COMMAND_TIMEOUT,
) -> Run:
    """Run ``.venv/bin/meshctl`` as a real process against ``server``."""
    environ = server.env(**dict(env or {}))
    if drop_token:
        environ.pop("MESHD_TOKEN")
    done = subprocess.run(
        [str(venv_script("meshctl")), *argv],
        input=stdin,
        capture_output=True,
        text=True,
        env=environ,
        timeout=timeout,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return Run(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="session")
def meshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshdProcess]:
    with running(MeshdProcess(tmp_path_factory.mktemp("meshd-ctl") / "data")) as server:
        yield server


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    """A DNS-label namespace unique to this test."""
    slug = "".join(c if c.isalnum() else "-" for c in request.node.name.lower()).strip("-")
    return f"{slug[:40].rstrip('-')}-{secrets.token_hex(4)}"


@pytest.fixture(scope="session")
def default_root() -> CaRoot:
    return make_root("default test root")


@pytest.fixture
def fake(tmp_path: Path, default_root: CaRoot, monkeypatch: pytest.MonkeyPatch) -> FakeMeshd:
    """A fake meshd, and a HOME with ``default_root`` pinned for the default server.
    Every request is tagged with what its client verifies with (``VERIFY``)."""
    home = tmp_path / "home"
    pin = pin_path({"HOME": str(home)}, DEFAULT_SERVER)
    pin.parent.mkdir(parents=True)
    pin.write_text(default_root.pem)
    original = client_module.Client._new_http

    def tagged(self: client_module.Client, verify: ssl.SSLContext | bool) -> httpx.Client:
        http = original(self, verify)

        def tag(request: httpx.Request) -> None:
            request.extensions[VERIFY] = verify

        http.event_hooks = {"request": [tag], "response": []}
        return http

    monkeypatch.setattr(client_module.Client, "_new_http", tagged)
    return FakeMeshd(home=home)
