"""``meshd serve`` flags, env and refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from meshd.cli import build_parser, main, settings_from_args
from meshd.config import Settings, parse_listen
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


def test_plain_http_off_loopback_is_refused() -> None:
    with pytest.raises(ConfigError, match="cleartext"):
        Settings(listen_host="0.0.0.0").check()
    with pytest.raises(ConfigError, match="go together"):
        Settings(tls_cert=Path("c.pem")).check()
    Settings(listen_host="0.0.0.0", tls_cert=Path("c.pem"), tls_key=Path("k.pem")).check()


def test_main_exits_2_with_the_reason(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["serve", "--listen", "0.0.0.0:15012", "--data-dir", str(tmp_path)]) == 2
    assert "--tls-cert" in capsys.readouterr().err


@pytest.mark.integration
def test_real_process_refuses_and_says_why(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshd.cli",
            "serve",
            "--listen",
            "198.18.0.1:15012",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "refusing to serve plain HTTP on 198.18.0.1" in done.stderr
