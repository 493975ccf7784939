"""Flags and MESH_* env -> Settings: defaults, precedence, validation, id derivation, and
the CA file check."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sidecar.cli import build_parser
from sidecar.errors import ConfigError
from sidecar.settings import (
    Settings,
    build_settings,
    check_ca_file,
    derive_instance_id,
    env_name,
    is_id_suffix,
    new_id_suffix,
    parse_labels,
)

REQUIRED = [
    "--service", "reviews", "--app-port", "9080", "--token", "mjt_t0k",
    "--ca-file", "/etc/mesh/ca-bundle.pem",
]  # fmt: skip


def settings_of(argv: list[str], env: dict[str, str] | None = None) -> Settings:
    args = build_parser(env or {}).parse_args(["run", *argv])
    return build_settings({k: v for k, v in vars(args).items() if k != "command"})


def test_defaults() -> None:
    s = settings_of(REQUIRED)
    assert s.meshd_url == "https://127.0.0.1:15012"
    assert s.token == "mjt_t0k"
    assert s.ca_file == Path("/etc/mesh/ca-bundle.pem")
    assert s.service == "reviews"
    assert s.namespace == "default"
    assert s.instance_id is None
    assert s.address == "127.0.0.1"
    assert (s.app_port, s.inbound_port, s.outbound_port, s.admin_port) == (
        9080,
        15006,
        15001,
        15000,
    )
    assert s.protocol == "http"
    assert s.labels == ()
    assert s.service_account == ""
    assert s.state_dir == Path("/var/lib/mesh-sidecar/reviews.default")
    assert s.poll_wait_s == 30.0
    assert s.log_level == "info"
    assert s.admin_host == "127.0.0.1"


def test_every_flag() -> None:
    s = settings_of(
        [
            *REQUIRED,
            "--meshd", "https://meshd.example.com:15012/",
            "--namespace", "shop",
            "--id", "reviews-7.shop",
            "--address", "198.18.0.7",
            "--inbound-port", "16006",
            "--outbound-port", "16001",
            "--admin-port", "16000",
            "--admin-address", "0.0.0.0",
            "--protocol", "grpc",
            "--labels", "version=v2, track=canary",
            "--service-account", "reviews-sa",
            "--state-dir", "/tmp/x",
            "--poll-wait", "2.5",
            "--log-level", "DEBUG",
        ]
    )  # fmt: skip
    assert s.meshd_url == "https://meshd.example.com:15012"
    assert s.namespace == "shop"
    assert s.instance_id == "reviews-7.shop"
    assert s.address == "198.18.0.7"
    assert (s.inbound_port, s.outbound_port, s.admin_port) == (16006, 16001, 16000)
    assert s.admin_host == "0.0.0.0"
    assert s.protocol == "grpc"
    assert s.labels == (("track", "canary"), ("version", "v2"))
    assert s.service_account == "reviews-sa"
    assert s.state_dir == Path("/tmp/x")
    assert s.poll_wait_s == 2.5
    assert s.log_level == "debug"


def test_env_supplies_every_flag_and_flags_win() -> None:
    env = {
        "MESH_SERVICE": "ratings",
        "MESH_APP_PORT": "9081",
        "MESH_TOKEN": "from-env",
        "MESH_NAMESPACE": "shop",
        "MESH_MESHD": "https://localhost:1234",
        "MESH_CA_FILE": "/tmp/ca.pem",
        "MESH_LABELS": "version=v1",
        "MESH_ADMIN_PORT": "17000",
        "MESH_POLL_WAIT": "5",
        "MESH_STATE_DIR": "/tmp/state",
    }
    s = settings_of([], env)
    assert (s.service, s.app_port, s.token, s.namespace) == ("ratings", 9081, "from-env", "shop")
    assert s.meshd_url == "https://localhost:1234"
    assert s.ca_file == Path("/tmp/ca.pem")
    assert s.labels == (("version", "v1"),)
    assert s.admin_port == 17000
    assert s.poll_wait_s == 5.0
    assert s.state_dir == Path("/tmp/state")
    s = settings_of(["--service", "details", "--admin-port", "17001"], env)
    assert (s.service, s.admin_port, s.token) == ("details", 17001, "from-env")


def test_env_names() -> None:
    assert env_name("--app-port") == "MESH_APP_PORT"
    assert env_name("--meshd") == "MESH_MESHD"


def test_help_explains_the_token_and_env(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser({"MESH_TOKEN": "secret-value-must-not-show"})
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["run", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "join token" in text
    assert "meshctl token create" in text
    assert "editor" not in text  # the admin token is gone
    assert "MESH_TOKEN" in text
    assert "MESH_CA_FILE" in text
    assert "ca-bundle.pem" in text
    assert "https://127.0.0.1:15012" in text
    assert "/ready, /config_dump, /stats/prometheus, /clusters" in text
    assert "secret-value-must-not-show" not in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--app-port", "9080", "--token", "t"], r"--service \(or MESH_SERVICE\) is required"),
        (["--service", "reviews", "--token", "t"], r"--app-port .* is required"),
        (
            ["--service", "reviews", "--app-port", "9080", "--namespace", "shop"],
            r"--token \(or MESH_TOKEN\) is required: the join token .*: meshctl token create "
            r"--service reviews --namespace shop",
        ),
        (
            [*REQUIRED, "--token", "mshd_admin"],
            r"--token \(or MESH_TOKEN\) is an admin token; .* with a join token: meshctl token",
        ),
        (
            ["--service", "reviews", "--app-port", "9080", "--token", "mjt_x"],
            r"--ca-file \(or MESH_CA_FILE\) is required: .*<data-dir>/ca-bundle.pem on this host",
        ),
        (
            [
                "--service",
                "reviews",
                "--app-port",
                "9080",
                "--token",
                "mjt_x",
                "--meshd",
                "https://198.18.0.1:15012",
            ],
            r"--ca-file .* is required: .*ca-bundle.pem on meshd's host",
        ),
        ([*REQUIRED, "--app-port", "0"], r"'0' is not a port number"),
        ([*REQUIRED, "--admin-port", "http"], r"--admin-port .* not a port number"),
        ([*REQUIRED, "--inbound-port", "9080"], r"--inbound-port and --app-port are both 9080"),
        ([*REQUIRED, "--service", "Reviews"], r"not a valid service name"),
        ([*REQUIRED, "--namespace", "a_b"], r"not a valid namespace"),
        ([*REQUIRED, "--protocol", "udp"], r"'udp' is not one of http, http2, grpc, tcp"),
        ([*REQUIRED, "--address", "reviews.local"], r"not an IP address"),
        ([*REQUIRED, "--admin-address", "any"], r"--admin-address .* not an IP address"),
        ([*REQUIRED, "--meshd", "ftp://x"], r"not an https URL"),
        ([*REQUIRED, "--meshd", "https://user:pw@127.0.0.1"], r"must not carry credentials"),
        ([*REQUIRED, "--meshd", "http://198.18.0.1:15012"], r"meshd serves HTTPS only"),
        ([*REQUIRED, "--meshd", "http://127.0.0.1:15012"], r"plain HTTP.*use https://"),
        ([*REQUIRED, "--id", "Bad/Id"], r"not a valid instance id"),
        ([*REQUIRED, "--poll-wait", "0"], r"between 0.1 and 300"),
        ([*REQUIRED, "--poll-wait", "soon"], r"'soon' is not a number of seconds"),
        ([*REQUIRED, "--log-level", "loud"], r"'loud' is not one of"),
        ([*REQUIRED, "--service-account", "Bad SA"], r"not a valid name"),
    ],
)
def test_invalid_flags_are_reported_by_name(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_of(argv)


def test_https_urls() -> None:
    for url in (
        "https://127.0.0.1:1",
        "https://localhost:1",
        "https://[::1]:1",
        "https://m.example",
    ):
        assert settings_of([*REQUIRED, "--meshd", url]).meshd_url == url


def test_the_ca_file_must_hold_a_certificate(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError, match=r"--ca-file \(or MESH_CA_FILE\): cannot read .*missing"):
        check_ca_file(missing)
    empty = tmp_path / "empty.pem"
    empty.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"holds no PEM certificate; give meshd's CA bundle"):
        check_ca_file(empty)
    good = tmp_path / "ca.pem"
    good.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    check_ca_file(good)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        ("  ", ()),
        ("version=v1", (("version", "v1"),)),
        ("b=2,a=1", (("a", "1"), ("b", "2"))),
        ("app.example.com/tier=web", (("app.example.com/tier", "web"),)),
        ("empty=", (("empty", ""),)),
        ("x=A_b.c-D", (("x", "A_b.c-D"),)),
    ],
)
def test_labels(text: str, expected: tuple[tuple[str, str], ...]) -> None:
    assert parse_labels(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version", r"'version' has no '='"),
        ("a=1,,b=2", r"label 2 is empty"),
        ("a=1,", r"label 2 is empty"),
        ("=v1", r"'' is not a valid label key"),
        ("-a=1", r"'-a' is not a valid label key"),
        ("a=1,a=2", r"'a' is given twice"),
        ("a=has space", r"is not a valid label value"),
        ("a=" + "x" * 64, r"is not a valid label value"),
        ("Bad_Prefix/x=1", r"prefix of 'Bad_Prefix/x' must be a lowercase DNS name"),
        ("a=b=c", r"is not a valid label value"),
    ],
)
def test_label_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_labels(text)
    assert "--labels (or MESH_LABELS)" in str(caught.value)


def test_instance_id_derivation() -> None:
    suffix = new_id_suffix()
    assert is_id_suffix(suffix)
    assert re.fullmatch(r"[0-9a-f]{8}", suffix)
    assert new_id_suffix() != suffix or new_id_suffix() != suffix
    assert derive_instance_id("reviews", "default", "0a1b2c3d") == "reviews-0a1b2c3d.default"
    assert not is_id_suffix("0A1B2C3D")
    assert not is_id_suffix("0a1b2c3")
    with pytest.raises(ValueError, match="8 lowercase hex"):
        derive_instance_id("reviews", "default", "xyz")
