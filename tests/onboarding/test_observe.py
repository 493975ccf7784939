"""What the watcher reads from ``docker inspect`` and from engine events (no engine:
shapes as Docker 20.10's API 1.41 returns them)."""

from __future__ import annotations

from typing import Any

from meshd.onboarding.docker import app_from_attrs, is_sidecar, sidecar_from_attrs

APP: dict[str, Any] = {
    "Id": "3f9a0c1d" + "0" * 56,
    "Name": "/shop_reviews_1",
    "State": {"Status": "running", "Running": True, "Restarting": False, "ExitCode": 0},
    "HostConfig": {"NetworkMode": "shop_default"},
    "Config": {
        "Labels": {"mesh.service": "reviews", "com.docker.compose.project": "shop"},
        "ExposedPorts": {"9080/tcp": {}},
    },
    "NetworkSettings": {
        "Networks": {
            "shop_back": {"IPAddress": "198.18.2.4"},
            "shop_default": {"IPAddress": "198.18.1.3"},
        }
    },
}


def test_an_app() -> None:
    app = app_from_attrs(APP)
    assert app.id == APP["Id"]
    assert app.name == "shop_reviews_1"
    assert app.running
    assert app.labels["mesh.service"] == "reviews"
    assert app.network_mode == "shop_default"
    assert app.networks == (("shop_back", "198.18.2.4"), ("shop_default", "198.18.1.3"))
    assert app.exposed_ports == ("9080/tcp",)


def test_a_restarting_app_is_not_running() -> None:
    attrs = APP | {"State": {"Running": True, "Restarting": True}}
    assert not app_from_attrs(attrs).running


def test_a_stopped_app_has_no_addresses() -> None:
    attrs = APP | {
        "State": {"Running": False},
        "NetworkSettings": {"Networks": {"shop_default": {"IPAddress": ""}}},
    }
    app = app_from_attrs(attrs)
    assert not app.running
    assert app.networks == (("shop_default", ""),)


def test_a_sidecar() -> None:
    attrs = {
        "Id": "8c1e" + "0" * 60,
        "Name": "/shop_reviews_1-mesh-sidecar",
        "State": {"Status": "exited", "Running": False, "ExitCode": 1},
        "Config": {
            "Labels": {
                "mesh.managed-by": "meshd",
                "mesh.sidecar-for": APP["Id"],
                "mesh.sidecar-spec": "0123456789abcdef",
                "mesh.instance": "reviews-3f9a0c1d.default",
            }
        },
    }
    sidecar = sidecar_from_attrs(attrs)
    assert sidecar.name == "shop_reviews_1-mesh-sidecar"
    assert sidecar.app_id == APP["Id"]
    assert sidecar.status == "exited"
    assert sidecar.failed
    assert not sidecar.alive
    assert sidecar.exit_code == 1
    assert sidecar.spec == "0123456789abcdef"
    assert sidecar.instance_id == "reviews-3f9a0c1d.default"


def test_sidecars_are_never_taken_for_apps() -> None:
    """An event's attributes hold the container's labels: a sidecar (even one whose
    image carried mesh.service) is never onboarded itself."""
    assert is_sidecar({"mesh.managed-by": "meshd", "mesh.service": "x"})
    assert is_sidecar({"mesh.sidecar-for": "abc"})
    assert not is_sidecar({"mesh.service": "reviews", "name": "shop_reviews_1"})
