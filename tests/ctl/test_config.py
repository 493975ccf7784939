"""Server, token and CA resolution (flag > env > config file > default) and the refusal
to send a token in cleartext off loopback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshd.ctl.config import (
    DEFAULT_SERVER,
    Flags,
    check_cleartext,
    default_config_path,
    resolve,
)
from meshd.ctl.errors import EXIT_USAGE, UsageError
from meshd.netaddr import is_loopback_host


def config_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    path.chmod(mode)
    return path


def env_with_home(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment whose default config file is under ``tmp_path`` (absent)."""
    return {"HOME": str(tmp_path / "home"), **extra}


def test_defaults(tmp_path: Path) -> None:
    settings = resolve(Flags(), env_with_home(tmp_path))
    assert settings.server == DEFAULT_SERVER
    assert settings.server_source == "default"
    assert settings.token is None
    assert settings.ca_file is None


def test_default_config_path_follows_xdg() -> None:
    assert default_config_path({"HOME": "/home/a"}) == Path("/home/a/.config/meshd/config.yaml")
    assert default_config_path({"HOME": "/home/a", "XDG_CONFIG_HOME": "/x"}) == Path(
        "/x/meshd/config.yaml"
    )


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    path = config_file(
        tmp_path,
        f"server: https://file.example:1\ntoken: file-token\ncaFile: {ca}\n",
    )
    env = env_with_home(tmp_path, MESHD_CONFIG=str(path))
    from_file = resolve(Flags(), env)
    assert (from_file.server, from_file.token) == ("https://file.example:1", "file-token")
    assert from_file.server_source == f"{path} (server)"
    assert from_file.token_source == f"{path} (token)"
    assert from_file.ca_file == ca

    env.update(MESHD_ADDR="https://env.example:2", MESHD_TOKEN="env-token")
    from_env = resolve(Flags(), env)
    assert (from_env.server, from_env.token) == ("https://env.example:2", "env-token")
    assert from_env.token_source == "MESHD_TOKEN"

    from_flags = resolve(Flags(server="https://flag.example:3/", token="flag-token"), env)
    assert (from_flags.server, from_flags.token) == ("https://flag.example:3", "flag-token")
    assert (from_flags.server_source, from_flags.token_source) == ("--server", "--token")


def test_config_flag_beats_the_config_env(tmp_path: Path) -> None:
    a = tmp_path / "a.yaml"
    a.write_text("token: from-a\n")
    b = tmp_path / "b.yaml"
    b.write_text("token: from-b\n")
    settings = resolve(Flags(config=str(a)), env_with_home(tmp_path, MESHD_CONFIG=str(b)))
    assert settings.token == "from-a"


def test_default_config_file_is_read_when_present(tmp_path: Path) -> None:
    path = tmp_path / "home" / ".config" / "meshd" / "config.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("token: t\n")
    path.chmod(0o600)
    assert resolve(Flags(), env_with_home(tmp_path)).token == "t"


def test_an_explicit_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"does not exist") as info:
        resolve(Flags(config=str(tmp_path / "nope.yaml")), env_with_home(tmp_path))
    assert info.value.exit_code == EXIT_USAGE


def test_unknown_config_keys_are_rejected(tmp_path: Path) -> None:
    path = config_file(tmp_path, "server: http://127.0.0.1:1\ncafile: x\n")
    with pytest.raises(UsageError, match=r"unknown key.*cafile.*server, token, caFile"):
        resolve(Flags(config=str(path)), env_with_home(tmp_path))


def test_invalid_config_yaml_names_the_file(tmp_path: Path) -> None:
    path = config_file(tmp_path, "server: [\n")
    with pytest.raises(UsageError, match=rf"config file {path} is not valid YAML"):
        resolve(Flags(config=str(path)), env_with_home(tmp_path))


def test_a_world_readable_config_with_a_token_warns(tmp_path: Path) -> None:
    path = config_file(tmp_path, "token: t\n", mode=0o644)
    settings = resolve(Flags(config=str(path)), env_with_home(tmp_path))
    assert any("chmod 600" in w for w in settings.warnings)


def test_relative_ca_file_in_config_is_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    path = config_file(tmp_path, "server: https://meshd.example:15012\ncaFile: ca.pem\n")
    settings = resolve(Flags(config=str(path)), env_with_home(tmp_path))
    assert settings.ca_file == tmp_path / "ca.pem"


def test_unreadable_ca_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"CA file .* \(from --ca-file\) cannot be read"):
        resolve(
            Flags(server="https://x:1", ca_file=str(tmp_path / "none.pem")), env_with_home(tmp_path)
        )


@pytest.mark.parametrize("server", ["127.0.0.1:15012", "ftp://x", "http://", "http://h:notaport"])
def test_bad_server_urls(tmp_path: Path, server: str) -> None:
    with pytest.raises(UsageError, match="from --server"):
        resolve(Flags(server=server), env_with_home(tmp_path))


def test_admin_token_from_the_data_dir_on_loopback(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "admin.token").write_text("mshd_secret\n")
    settings = resolve(Flags(data_dir=str(data)), env_with_home(tmp_path))
    assert settings.token == "mshd_secret"
    assert settings.token_source == str(data / "admin.token")
    from_env = resolve(Flags(), env_with_home(tmp_path, MESHD_DATA_DIR=str(data)))
    assert from_env.token == "mshd_secret"


def test_the_data_dir_is_not_used_when_a_token_is_given(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "admin.token").write_text("mshd_secret\n")
    settings = resolve(Flags(data_dir=str(data), token="given"), env_with_home(tmp_path))
    assert settings.token == "given"


def test_the_data_dir_is_not_used_for_a_remote_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "admin.token").write_text("mshd_secret\n")
    settings = resolve(
        Flags(data_dir=str(data), server="https://meshd.example"), env_with_home(tmp_path)
    )
    assert settings.token is None


def test_an_unreadable_admin_token_is_no_token(tmp_path: Path) -> None:
    settings = resolve(Flags(data_dir=str(tmp_path / "missing")), env_with_home(tmp_path))
    assert settings.token is None


def test_no_token_says_how_to_pass_one(tmp_path: Path) -> None:
    settings = resolve(Flags(), env_with_home(tmp_path))
    with pytest.raises(UsageError) as info:
        settings.authorization()
    text = "\n".join(info.value.lines())
    assert "no token" in text
    for way in ("--token", "MESHD_TOKEN", "config.yaml", "--data-dir"):
        assert way in text


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("meshd.localhost", True),
        ("10.0.0.1", False),
        ("198.18.0.1", False),
        ("::2", False),
        ("meshd.example.com", False),
        ("localhost.example.com", False),
        ("", False),
    ],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(
    "server", ["http://198.18.0.7:15012", "http://meshd:15012", "http://[2001:db8::1]:15012"]
)
def test_a_token_is_never_sent_in_cleartext_off_loopback(tmp_path: Path, server: str) -> None:
    settings = resolve(Flags(server=server, token="t"), env_with_home(tmp_path))
    with pytest.raises(UsageError) as info:
        settings.authorization()
    assert "cleartext" in info.value.message
    assert "(from --token)" in info.value.message
    assert any("https://" in line for line in info.value.lines())


@pytest.mark.parametrize(
    "server",
    ["http://127.0.0.1:15012", "http://localhost:1", "http://[::1]:2", "https://meshd.example"],
)
def test_a_token_may_go_to_loopback_or_https(server: str) -> None:
    check_cleartext(server)


def test_authorization_header(tmp_path: Path) -> None:
    settings = resolve(Flags(token=" mshd_x \n"), env_with_home(tmp_path))
    assert settings.authorization() == "Bearer mshd_x"


def test_no_config_needed_without_home(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MESHD_ADDR", "MESHD_TOKEN", "MESHD_CONFIG")
    }
    env["XDG_CONFIG_HOME"] = str(tmp_path)
    assert resolve(Flags(), env).server == DEFAULT_SERVER
