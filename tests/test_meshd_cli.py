"""``meshd serve`` flags, env and refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from meshd.cli import build_parser, main, settings_from_args
from meshd.config import Settings, VaultSettings, parse_listen
from meshd.errors import ConfigError
from meshd.netaddr import is_loopback_host as is_loopback


def test_flags_fall_back_to_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHD_STORE", "consul")
    monkeypatch.setenv("MESHD_LISTEN", "127.0.0.2:9999")
    settings = settings_from_args(build_parser().parse_args(["serve", "--data-dir", "/tmp/x"]))
    assert settings.store == "consul"
    assert (settings.listen_host, settings.listen_port) == ("127.0.0.2", 9999)
    assert settings.data_dir == Path("/tmp/x")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:15012", ("127.0.0.1", 15012)),
        ("[::1]:80", ("::1", 80)),
        (":8080", ("127.0.0.1", 8080)),
    ],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


def test_parse_listen_rejects_garbage() -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_listen("localhost")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("198.18.0.1", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_settings_refuse_what_cannot_work() -> None:
    with pytest.raises(ConfigError, match="cert-ttl"):
        Settings(cert_ttl_s=5).check()
    with pytest.raises(ConfigError, match="AppRole"):
        Settings(ca="vault").check()
    with pytest.raises(ConfigError, match="ca-plugin-dir"):
        Settings(ca="vault", vault=VaultSettings(token="t"), ca_plugin_dir=Path("x")).check()
    Settings(ca="vault", vault=VaultSettings(role_id="r", secret_id="s")).check()


def test_url_is_https_and_names_a_reachable_host() -> None:
    assert Settings(listen_host="0.0.0.0", listen_port=1).url == "https://127.0.0.1:1"
    assert Settings(listen_host="::1", listen_port=2).url == "https://[::1]:2"


def test_main_exits_2_with_the_reason(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["serve", "--cert-ttl", "soon", "--data-dir", str(tmp_path)]) == 2
    assert "--cert-ttl" in capsys.readouterr().err


@pytest.mark.integration
def test_real_process_refuses_and_says_why(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "meshd.cli", "serve", "--ca", "vault", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "--vault-token" in done.stderr
