"""``meshd serve --docker-onboarding`` and its flags: parsing, env, refusals, and the
meshd URL sidecars are given."""

from __future__ import annotations

import pytest

from meshd.cli import build_parser, settings_from_args
from meshd.config import Settings
from meshd.errors import ConfigError
from meshd.onboarding.docker import certificate_names, meshd_url_for


def _settings(*argv: str) -> Settings:
    return settings_from_args(build_parser().parse_args(["serve", *argv]))


def test_off_by_default() -> None:
    settings = _settings()
    assert settings.docker_onboarding is False
    assert settings.docker_host == "unix:///var/run/docker.sock"
    assert settings.sidecar_image == "meshd:local"
    assert settings.onboarding_meshd_url is None
    settings.check()


def test_flags() -> None:
    settings = _settings(
        "--listen", "0.0.0.0:15012",
        "--docker-onboarding",
        "--docker-host", "unix:///run/user/1000/docker.sock",
        "--sidecar-image", "registry.example/meshd:1.0",
        "--onboarding-meshd-url", "https://meshd.internal:15012",
    )  # fmt: skip
    assert settings.docker_onboarding is True
    assert settings.docker_host == "unix:///run/user/1000/docker.sock"
    assert settings.sidecar_image == "registry.example/meshd:1.0"
    assert settings.onboarding_meshd_url == "https://meshd.internal:15012"
    settings.check()


def test_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHD_DOCKER_ONBOARDING", "true")
    monkeypatch.setenv("MESHD_DOCKER_HOST", "tcp://198.18.0.1:2376")
    monkeypatch.setenv("MESHD_SIDECAR_IMAGE", "meshd:test")
    monkeypatch.setenv("MESHD_ONBOARDING_MESHD_URL", "https://198.18.0.1:15012")
    settings = _settings()
    assert settings.docker_onboarding is True
    assert settings.docker_host == "tcp://198.18.0.1:2376"
    assert settings.sidecar_image == "meshd:test"
    assert settings.onboarding_meshd_url == "https://198.18.0.1:15012"


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--docker-onboarding"], "containers cannot reach"),  # meshd on loopback
        (["--listen", "0.0.0.0:1", "--docker-onboarding", "--docker-host", "/x.sock"], "unix://"),
        (
            [
                "--listen",
                "0.0.0.0:1",
                "--docker-onboarding",
                "--onboarding-meshd-url",
                "http://a:1",
            ],
            "https://HOST:PORT",
        ),
        (
            ["--docker-onboarding", "--onboarding-meshd-url", "https://127.0.0.1:15012"],
            "loopback",
        ),
    ],
)
def test_refusals_say_what_to_change(argv: list[str], said: str) -> None:
    with pytest.raises(ConfigError, match=said):
        _settings(*argv).check()


def test_meshd_url_containers_use() -> None:
    wildcard = Settings(listen_host="0.0.0.0", listen_port=15012)
    assert meshd_url_for(wildcard, "198.18.0.1") == "https://198.18.0.1:15012"
    bound = Settings(listen_host="198.18.0.1", listen_port=4443)
    assert meshd_url_for(bound, "172.17.0.1") == "https://198.18.0.1:4443"
    given = Settings(listen_host="0.0.0.0", onboarding_meshd_url="https://meshd:15012/")
    assert meshd_url_for(given, None) == "https://meshd:15012"


def test_certificate_must_name_the_url_host() -> None:
    bound = Settings(listen_host="198.18.0.1")
    assert certificate_names(bound, "https://198.18.0.1:15012") is None
    wildcard = Settings(listen_host="0.0.0.0")
    problem = certificate_names(wildcard, "https://198.18.0.77:15012")
    assert problem is not None
    assert "--san 198.18.0.77" in problem
    named = Settings(listen_host="0.0.0.0", sans=("198.18.0.77",))
    assert certificate_names(named, "https://198.18.0.77:15012") is None
