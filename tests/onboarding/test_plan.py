"""Docker onboarding's pure part: labels -> sidecar spec, and the reconciliation
decisions (start, remove, orphans, idempotency). No Docker here."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import pytest

from meshd.onboarding.plan import (
    CA_TARGET,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_SIDECAR_FOR,
    LABEL_SPEC,
    Action,
    AppContainer,
    FailureTracker,
    OnboardingConfig,
    OnboardingError,
    RemoveSidecar,
    ReportInvalid,
    ReportStopped,
    SidecarContainer,
    StartSidecar,
    decide,
    parse_app_labels,
    reconcile,
    sidecar_spec,
)

CONFIG = OnboardingConfig(
    image="meshd:local",
    meshd_url="https://198.18.0.1:15012",
    ca_file="/var/lib/meshd/ca-bundle.pem",
)
APP_ID = "a1b2c3d4e5f6" + "0" * 52
OTHER_ID = "ffeeddcc" + "1" * 56


def app(
    labels: Mapping[str, str] | None = None,
    *,
    id: str = APP_ID,
    name: str = "shop_web_1",
    running: bool = True,
    networks: Sequence[tuple[str, str]] = (("shop_default", "198.18.1.5"),),
    exposed: Sequence[str] = (),
    network_mode: str = "shop_default",
) -> AppContainer:
    return AppContainer(
        id=id,
        name=name,
        labels=dict(labels if labels is not None else {"mesh.service": "web", "mesh.port": "8080"}),
        running=running,
        network_mode=network_mode,
        networks=tuple(networks),
        exposed_ports=tuple(exposed),
    )


def sidecar_of(a: AppContainer, *, status: str = "running", exit_code: int = 0) -> SidecarContainer:
    """The sidecar :func:`decide` would have started for ``a``, as the engine shows it."""
    spec = sidecar_spec(a, CONFIG)
    return SidecarContainer(
        id=f"sc-{a.id[:8]}-{status}",
        name=spec.name,
        app_id=a.id,
        status=status,
        spec=spec.digest,
        instance_id=spec.instance_id,
        exit_code=exit_code,
    )


# --- labels -> spec ---------------------------------------------------------------------


def test_minimal_labels_get_the_defaults() -> None:
    spec = parse_app_labels("web-1", {"mesh.service": "web", "mesh.port": "8080"})
    assert spec.service == "web"
    assert spec.namespace == "default"
    assert spec.app_port == 8080
    assert spec.protocol == "http"
    assert spec.labels == ()
    assert spec.service_account is None
    assert spec.network is None


def test_every_label() -> None:
    spec = parse_app_labels(
        "web-1",
        {
            "mesh.service": "reviews",
            "mesh.port": "9080",
            "mesh.version": "v2",
            "mesh.namespace": "shop",
            "mesh.protocol": "HTTP2",
            "mesh.labels": "tier=backend, zone=a",
            "mesh.service-account": "bookinfo-reviews",
            "mesh.network": "shop_back",
            "com.docker.compose.service": "reviews",  # not ours: ignored
        },
    )
    assert (spec.service, spec.namespace, spec.app_port) == ("reviews", "shop", 9080)
    assert spec.protocol == "http2"
    assert spec.labels == (("tier", "backend"), ("version", "v2"), ("zone", "a"))
    assert spec.service_account == "bookinfo-reviews"
    assert spec.network == "shop_back"


def test_port_from_the_single_exposed_port() -> None:
    spec = parse_app_labels("web-1", {"mesh.service": "web"}, ["8080/tcp"])
    assert spec.app_port == 8080


BASE = {"mesh.service": "web", "mesh.port": "80"}


@pytest.mark.parametrize(
    ("labels", "exposed", "bad", "said"),
    [
        ({"mesh.service": ""}, (), "mesh.service", "empty"),
        ({"mesh.service": "Web_1"}, (), "mesh.service", "service name"),
        ({"mesh.port": ""}, (), "mesh.port", "exposes no port"),
        ({"mesh.port": ""}, ("80/tcp", "443/tcp"), "mesh.port", "exposes 443, 80"),
        ({"mesh.port": "http"}, (), "mesh.port", "not a port"),
        ({"mesh.port": "70000"}, (), "mesh.port", "not a port"),
        ({"mesh.port": "15006"}, (), "mesh.port", "inbound port"),
        ({"mesh.port": "15001"}, (), "mesh.port", "outbound port"),
        ({"mesh.namespace": "A"}, (), "mesh.namespace", "namespace"),
        ({"mesh.protocol": "udp"}, (), "mesh.protocol", "http, http2"),
        ({"mesh.version": "v 2"}, (), "mesh.version", "label value"),
        ({"mesh.labels": "tier"}, (), "mesh.labels", "k=v"),
        ({"mesh.labels": "a=1,a=2"}, (), "mesh.labels", "twice"),
        ({"mesh.labels": "-x=1"}, (), "mesh.labels", "label key"),
        ({"mesh.labels": "x=a b"}, (), "mesh.labels", "label value"),
        ({"mesh.version": "v1", "mesh.labels": "version=v2"}, (), "mesh.labels", "keep one"),
        ({"mesh.service-account": "Admin"}, (), "mesh.service-account", "service account"),
    ],
)
def test_errors_name_the_bad_label(
    labels: dict[str, str], exposed: tuple[str, ...], bad: str, said: str
) -> None:
    with pytest.raises(OnboardingError, match=said) as caught:
        parse_app_labels("shop_web_1", BASE | labels, exposed)
    assert caught.value.label == bad
    assert bad in str(caught.value)
    assert "shop_web_1" in str(caught.value)


def test_sidecar_spec_runs_in_the_apps_namespace_with_its_identity() -> None:
    a = app({"mesh.service": "web", "mesh.port": "8080", "mesh.version": "v1"})
    spec = sidecar_spec(a, CONFIG)
    assert spec.name == "shop_web_1-mesh-sidecar"
    assert spec.instance_id == "web-a1b2c3d4.default"
    assert spec.address == "198.18.1.5"
    kwargs = spec.container_kwargs("mjt_secret")
    assert kwargs["network_mode"] == f"container:{APP_ID}"
    assert kwargs["command"] == ["mesh-sidecar", "run"]
    assert kwargs["image"] == "meshd:local"
    assert kwargs["restart_policy"]["Name"] == "on-failure"
    env = kwargs["environment"]
    assert env == {
        "MESH_MESHD": "https://198.18.0.1:15012",
        "MESH_TOKEN": "mjt_secret",
        "MESH_CA_FILE": CA_TARGET,
        "MESH_SERVICE": "web",
        "MESH_NAMESPACE": "default",
        "MESH_APP_PORT": "8080",
        "MESH_PROTOCOL": "http",
        "MESH_LABELS": "version=v1",
        "MESH_ADDRESS": "198.18.1.5",
        "MESH_ID": "web-a1b2c3d4.default",
        "MESH_STATE_DIR": "/var/lib/mesh-sidecar/web.default",
    }
    assert kwargs["labels"] == {
        LABEL_SIDECAR_FOR: APP_ID,
        LABEL_MANAGED_BY: "meshd",
        LABEL_INSTANCE: "web-a1b2c3d4.default",
        LABEL_SPEC: spec.digest,
        "mesh.sidecar-service": "web.default",
    }
    ca, state = kwargs["mounts"]
    assert ca == {
        "Type": "bind",
        "Source": "/var/lib/meshd/ca-bundle.pem",
        "Target": CA_TARGET,
        "ReadOnly": True,
    }
    assert state["Type"] == "volume"
    assert state["Target"] == "/var/lib/mesh-sidecar"


def test_the_token_is_not_part_of_the_spec() -> None:
    spec = sidecar_spec(app(), CONFIG)
    assert "MESH_TOKEN" not in dict(spec.environment)
    assert spec.digest == sidecar_spec(app(), CONFIG).digest
    moved = dataclasses.replace(CONFIG, meshd_url="https://meshd.example:15012")
    assert sidecar_spec(app(), moved).digest != spec.digest


def test_address_on_the_named_network_else_the_first() -> None:
    nets = (("back", "198.18.2.7"), ("front", "198.18.3.9"))
    assert sidecar_spec(app(networks=nets), CONFIG).address == "198.18.2.7"
    labels = {"mesh.service": "web", "mesh.port": "80", "mesh.network": "front"}
    assert sidecar_spec(app(labels, networks=nets), CONFIG).address == "198.18.3.9"
    labels["mesh.network"] = "elsewhere"
    with pytest.raises(OnboardingError, match="it is on back, front") as caught:
        sidecar_spec(app(labels, networks=nets), CONFIG)
    assert caught.value.label == "mesh.network"


@pytest.mark.parametrize("mode", ["host", "none", "container:abc"])
def test_network_modes_without_an_own_address_are_refused(mode: str) -> None:
    with pytest.raises(OnboardingError, match="network mode"):
        sidecar_spec(app(network_mode=mode, networks=()), CONFIG)


# --- decisions ---------------------------------------------------------------------------


def test_a_running_app_without_a_sidecar_gets_one() -> None:
    actions = decide(APP_ID, app(), [], CONFIG)
    assert actions == [StartSidecar(sidecar_spec(app(), CONFIG))]


def test_a_running_sidecar_of_the_current_spec_is_kept() -> None:
    assert decide(APP_ID, app(), [sidecar_of(app())], CONFIG) == []
    assert decide(APP_ID, app(), [sidecar_of(app(), status="restarting")], CONFIG) == []


@pytest.mark.parametrize("running", [False, None])
def test_the_apps_end_removes_its_sidecar_and_its_registration(running: bool | None) -> None:
    sc = sidecar_of(app())
    gone = None if running is None else app(running=False)
    (action,) = decide(APP_ID, gone, [sc], CONFIG)
    assert isinstance(action, RemoveSidecar)
    assert action.sidecar == sc
    assert action.deregister, "the sidecar lost its network with the app: meshd deregisters"


def test_nothing_to_do_for_a_stopped_app_without_sidecar() -> None:
    assert decide(APP_ID, app(running=False), [], CONFIG) == []
    assert decide(APP_ID, None, [], CONFIG) == []


def test_a_changed_spec_replaces_the_sidecar() -> None:
    old = dataclasses.replace(sidecar_of(app()), spec="0123456789abcdef")
    actions = decide(APP_ID, app(), [old], CONFIG)
    assert [type(a) for a in actions] == [RemoveSidecar, StartSidecar]
    removal = actions[0]
    assert isinstance(removal, RemoveSidecar)
    assert not removal.deregister, "the new sidecar takes the instance over"
    assert "spec changed" in removal.reason


def test_duplicates_are_removed_keeping_the_live_one() -> None:
    live = sidecar_of(app())
    twin = dataclasses.replace(live, id="sc-twin", name="other-name")
    dead = dataclasses.replace(live, id="sc-dead", status="created")
    actions = decide(APP_ID, app(), [dead, twin, live], CONFIG)
    assert {a.sidecar.id for a in actions if isinstance(a, RemoveSidecar)} == {"sc-twin", "sc-dead"}
    assert not any(isinstance(a, StartSidecar) for a in actions)


def test_a_stopped_sidecar_is_reported_on_events_and_replaced_on_reconciliation() -> None:
    stopped = sidecar_of(app(), status="exited", exit_code=1)
    assert decide(APP_ID, app(), [stopped], CONFIG) == [ReportStopped(app(), stopped)]
    fresh = decide(APP_ID, app(), [stopped], CONFIG, fresh=True)
    assert [type(a) for a in fresh] == [RemoveSidecar, StartSidecar]


def test_invalid_labels_are_reported_and_leave_no_sidecar() -> None:
    bad = app({"mesh.service": "web", "mesh.port": "nope"})
    sc = dataclasses.replace(sidecar_of(app()), app_id=APP_ID)
    actions = decide(APP_ID, bad, [sc], CONFIG)
    assert isinstance(actions[0], RemoveSidecar)
    assert isinstance(actions[-1], ReportInvalid)
    assert actions[-1].error.label == "mesh.port"


def test_a_replaced_apps_sidecar_gives_up_its_name() -> None:
    """Compose recreates a container under the same name with a new id: the old app's
    sidecar holds the name the new one needs."""
    old_app = app(id=OTHER_ID, running=False)
    holder = sidecar_of(dataclasses.replace(old_app, running=True))
    actions = decide(APP_ID, app(), [], CONFIG, name_holders=[holder])
    assert [type(a) for a in actions] == [RemoveSidecar, StartSidecar]
    assert actions[0] == RemoveSidecar(holder, actions[0].reason, deregister=False)  # type: ignore[union-attr]


def _apply(
    actions: dict[str, list[Action]],
    apps: list[AppContainer],
    sidecars: list[SidecarContainer],
) -> list[SidecarContainer]:
    """What the engine holds after the watcher carried ``actions`` out."""
    by_id = {a.id: a for a in apps}
    out = list(sidecars)
    for acts in actions.values():
        for action in acts:
            if isinstance(action, RemoveSidecar):
                out = [s for s in out if s.id != action.sidecar.id]
            elif isinstance(action, StartSidecar):
                out.append(sidecar_of(by_id[action.spec.app_id]))
    return out


def test_reconcile_starts_missing_removes_orphans_and_is_idempotent() -> None:
    web = app()
    api = app({"mesh.service": "api", "mesh.port": "9000"}, id=OTHER_ID, name="shop_api_1")
    stopped = app(id="5" * 64, name="shop_old_1", running=False)
    orphan = dataclasses.replace(sidecar_of(app(id="9" * 64, name="gone")), id="sc-orphan")
    of_stopped = dataclasses.replace(
        sidecar_of(dataclasses.replace(stopped, running=True)), id="sc-of-stopped"
    )
    apps = [web, api, stopped]
    sidecars = [sidecar_of(web), orphan, of_stopped]

    plan = reconcile(apps, sidecars, CONFIG)
    assert set(plan) == {api.id, orphan.app_id, stopped.id}
    (start,) = plan[api.id]
    assert isinstance(start, StartSidecar)
    assert start.spec.app.service == "api"
    for app_id, sc in ((orphan.app_id, orphan), (stopped.id, of_stopped)):
        (removal,) = plan[app_id]
        assert isinstance(removal, RemoveSidecar)
        assert removal.sidecar == sc
        assert removal.deregister

    after = _apply(plan, apps, sidecars)
    assert sorted(s.app_id for s in after) == sorted([web.id, api.id])
    assert reconcile(apps, after, CONFIG) == {}, "a second pass finds nothing to do"


def test_reconcile_of_a_matching_engine_does_nothing() -> None:
    web = app()
    assert reconcile([web], [sidecar_of(web)], CONFIG) == {}
    assert reconcile([], [], CONFIG) == {}


# --- failures ---------------------------------------------------------------------------


def test_failures_are_reported_once_per_episode() -> None:
    tracker = FailureTracker(window_s=600, threshold=3)
    assert tracker.record("sc", 0) == (1, False)
    assert tracker.record("sc", 10) == (2, False)
    assert tracker.record("sc", 20) == (3, True)
    assert tracker.record("sc", 30) == (4, False), "reported already"
    # Much later: the old exits have left the window; a new episode is reported again.
    assert tracker.record("sc", 2000) == (1, False)
    tracker.record("sc", 2001)
    assert tracker.record("sc", 2002) == (3, True)
    tracker.forget("sc")
    assert tracker.record("sc", 2003) == (1, False)
