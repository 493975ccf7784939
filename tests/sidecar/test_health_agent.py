"""How the agent reports the app's health, against a scripted meshd (a fake ``send``)
and a recording registrar: every registration and heartbeat carries ``healthy``,
``ttlSeconds`` (two intervals) and ``healthOutput``; a flip is reported at once, not at
the next heartbeat; a failed report is retried within the interval and a flip during an
outage does not spin; with ``--registry consul`` a 404 from meshd (it has not seen the
instance in Consul yet) is waited out, not answered by re-registering in a loop. Then
the admin port's ``health`` section and ``mesh_sidecar_app_healthy``, and the health and
registry flags."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from meshd.compile import codec
from sidecar import agent as agent_module
from sidecar.admin import AdminApp
from sidecar.agent import Agent, Registrar
from sidecar.cli import build_parser
from sidecar.config_store import ConfigStore
from sidecar.control_client import Backoff, Connectivity, ControlClient, HealthReport, Registration
from sidecar.errors import ConfigError, ConnectError, ControlPlaneUnavailable
from sidecar.health import CheckResult, HealthCheckConfig, HealthChecker
from sidecar.http_client import HttpRequest, HttpResponse
from sidecar.settings import Settings, build_settings
from tests.sidecar.support import PROXY, FakeIdentity, make_settings, make_snapshot

MESHD = "https://meshd.test:15012"
CHECK = HealthCheckConfig("http", "/healthz", interval_s=1.0, timeout_s=0.5)


class FastBackoff(Backoff):
    def __init__(self) -> None:
        super().__init__(initial=0.001, maximum=0.004)


@dataclass
class Meshd:
    """PUT /v1/instances answers from ``put_script`` (then 200); polls answer from
    ``poll_script`` (then hang)."""

    put_script: list[HttpResponse | Exception] = field(default_factory=list)
    poll_script: list[HttpResponse] = field(default_factory=list)
    puts: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    polls: int = 0

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method == "PUT":
            self.puts.append((trio.current_time(), request.json()))
            reply = self.put_script.pop(0) if self.put_script else HttpResponse.of(200)
            if isinstance(reply, Exception):
                raise reply
            return reply
        if request.method == "GET":
            self.polls += 1
            if self.poll_script:
                return self.poll_script.pop(0)
            await trio.sleep_forever()
        return HttpResponse.of(418)


async def until(predicate: Callable[[], bool]) -> None:
    """Until another task made ``predicate`` true."""
    while not predicate():  # noqa: ASYNC110 — the state is plain attributes, no event
        await trio.sleep(0.001)


def checker() -> HealthChecker:
    return HealthChecker(CHECK, "127.0.0.1", 9080)


def result(passed: bool, output: str) -> CheckResult:
    return CheckResult(passed, output, at=1.0)


async def with_agent(
    tmp_path: Path,
    meshd: Meshd,
    health: HealthChecker | None,
    body: Any,
    *,
    heartbeat_s: float = 30.0,
    registrar: Registrar | None = None,
) -> Agent:
    identity = FakeIdentity()
    async with ControlClient(MESHD, identity.control_plane_context, send=meshd) as client:
        agent = Agent(
            make_settings(tmp_path, poll_wait="1"),
            PROXY,
            ConfigStore(tmp_path, PROXY),
            client,
            Connectivity(MESHD),
            identity,
            heartbeat_s=heartbeat_s,
            backoff=FastBackoff,
            health=health,
            registrar=registrar,
        )
        with trio.fail_after(10):
            await body(agent)
    return agent


def test_registration_and_heartbeats_carry_the_health(tmp_path: Path) -> None:
    meshd = Meshd()
    health = checker()
    health.take(result(True, "GET /healthz: 200 OK"))

    async def body(agent: Agent) -> None:
        await agent.register()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent.heartbeat)
            await until(lambda: len(meshd.puts) >= 3)
            nursery.cancel_scope.cancel()

    agent = trio.run(functools.partial(with_agent, heartbeat_s=0.05), tmp_path, meshd, health, body)
    first = meshd.puts[0][1]
    assert first["healthy"] is True
    assert first["ttlSeconds"] == 2.0  # two intervals
    assert first["healthOutput"] == "GET /healthz: 200 OK"
    assert first["service"] == "reviews"
    assert all(body == first for _, body in meshd.puts)
    gaps = [b[0] - a[0] for a, b in zip(meshd.puts, meshd.puts[1:], strict=False)]
    assert all(gap >= 0.04 for gap in gaps), gaps
    assert agent.reported == HealthReport(True, "GET /healthz: 200 OK", 2.0)
    doc = agent.health_json()
    assert doc["registry"]["backend"] == "meshd"
    assert doc["registry"]["reportedHealthy"] is True
    assert doc["registry"]["lastReportAt"].endswith("Z")


def test_the_first_registration_waits_for_the_first_check(tmp_path: Path) -> None:
    meshd = Meshd()
    health = checker()

    async def body(agent: Agent) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent.register)
            await trio.sleep(0.05)
            assert meshd.puts == []  # waiting for the check
            health.take(result(False, "GET /healthz: connection refused"))
            await until(lambda: agent.registered)

    trio.run(with_agent, tmp_path, meshd, health, body)
    (put,) = meshd.puts
    assert (put[1]["healthy"], put[1]["healthOutput"]) == (
        False,
        "GET /healthz: connection refused",
    )


def test_a_flip_is_reported_at_once_and_output_alone_waits(tmp_path: Path) -> None:
    meshd = Meshd()
    health = checker()
    health.take(result(True, "GET /healthz: 200 OK"))

    async def body(agent: Agent) -> None:
        await agent.register()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent.heartbeat)
            await trio.sleep(0.05)
            health.take(result(True, "GET /healthz: 200 OK (slow)"))  # no flip
            health.take(result(False, "GET /healthz: 503 Service Unavailable"))  # 1 of 2
            await trio.sleep(0.05)
            assert len(meshd.puts) == 1  # nothing new to say yet
            flipped_at = trio.current_time()
            health.take(result(False, "GET /healthz: 503 Service Unavailable"))
            await until(lambda: len(meshd.puts) >= 2)
            assert meshd.puts[1][0] - flipped_at < 0.1  # not 30 s later
            health.take(result(True, "GET /healthz: 200 OK"))
            await until(lambda: len(meshd.puts) >= 3)
            nursery.cancel_scope.cancel()

    trio.run(with_agent, tmp_path, meshd, health, body)
    assert [(p["healthy"], p["healthOutput"]) for _, p in meshd.puts] == [
        (True, "GET /healthz: 200 OK"),
        (False, "GET /healthz: 503 Service Unavailable"),
        (True, "GET /healthz: 200 OK"),
    ]


def test_failed_reports_are_retried_within_the_interval_without_spinning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar")
    refused = ConnectError("PUT", MESHD, "[Errno 111] Connection refused")
    meshd = Meshd()
    health = checker()
    health.take(result(True, "ok"))

    async def body(agent: Agent) -> None:
        await agent.register()
        meshd.put_script.extend([refused] * 5)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent.heartbeat)
            # The health flips while meshd is down: the retries stay paced.
            health.take(result(False, "down"))
            health.take(result(False, "down"))
            await trio.sleep(0.2)
            nursery.cancel_scope.cancel()

    agent = trio.run(functools.partial(with_agent, heartbeat_s=10.0), tmp_path, meshd, health, body)
    # 1 registration, 5 refused reports (backoff of a few ms each), then one that went
    # through; with a 10 s heartbeat, nothing more in 0.2 s.
    assert len(meshd.puts) == 7, len(meshd.puts)
    assert meshd.puts[-1][1]["healthy"] is False
    assert agent.reported is not None
    assert not agent.reported.healthy
    assert agent.connectivity.connected
    assert caplog.text.count("is unreachable") == 1


def test_without_a_checker_the_body_is_the_old_one(tmp_path: Path) -> None:
    meshd = Meshd()

    async def body(agent: Agent) -> None:
        await agent.register()

    agent = trio.run(with_agent, tmp_path, meshd, None, body)
    assert "healthy" not in meshd.puts[0][1]
    assert "ttlSeconds" not in meshd.puts[0][1]
    assert agent.app_healthy
    assert agent.health_json()["check"] == "none"


# --- --registry consul: meshd learns of the instance from Consul --------------------------------


@dataclass
class RecordingRegistrar:
    backend: str = "consul"
    where: str = "http://127.0.0.1:8500"
    calls: list[tuple[str, bool | None]] = field(default_factory=list)
    last_error: str | None = None

    async def register(
        self, proxy_id: str, registration: Registration, health: HealthReport | None
    ) -> None:
        self.calls.append(("register", health.healthy if health else None))

    async def report(
        self, proxy_id: str, registration: Registration, health: HealthReport | None
    ) -> None:
        self.calls.append(("report", health.healthy if health else None))

    async def deregister(self, proxy_id: str, *, timeout_s: float) -> bool:
        self.calls.append(("deregister", None))
        return True


def test_consul_mode_waits_for_meshd_to_see_the_instance(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar")
    monkeypatch.setattr(agent_module, "NOT_SEEN_WARN_S", 0.02)
    not_known = HttpResponse.of(404, json_body={"detail": "proxy is not known"})
    snapshot = make_snapshot("v1")
    meshd = Meshd(
        poll_script=[not_known] * 30
        + [HttpResponse.of(200, body=codec.dumps(snapshot), headers={"X-Mesh-Version": "v1"})]
    )
    registrar = RecordingRegistrar()
    health = checker()
    health.take(result(True, "ok"))

    async def body(agent: Agent) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent.control_loop)
            await until(lambda: agent.store.version == "v1")
            nursery.cancel_scope.cancel()

    agent = trio.run(
        functools.partial(with_agent, registrar=registrar), tmp_path, meshd, health, body
    )
    assert meshd.puts == []  # nothing registered through meshd
    assert meshd.polls in (31, 32)  # (the next poll, the ACK, may have started)
    # Registered once, then renewed (idempotent) at the backoff's pace while waiting.
    assert registrar.calls[0] == ("register", True)
    assert {c for c in registrar.calls} == {("register", True)}
    assert agent.registered
    assert caplog.text.count("has not seen instance") == 1
    assert "meshd must run with --registry consul" in caplog.text
    assert "meshd sees instance" in caplog.text


# --- the admin port ---------------------------------------------------------------------------


def test_admin_shows_the_health(tmp_path: Path) -> None:
    meshd = Meshd()
    health = checker()
    health.take(result(True, "GET /healthz: 200 OK"))
    health.take(result(False, "GET /healthz: 500 Internal Server Error"))
    health.take(result(False, "GET /healthz: 500 Internal Server Error"))
    settings = make_settings(tmp_path)
    store = ConfigStore(tmp_path, PROXY)
    store.apply(make_snapshot("v1"))

    async def body(agent: Agent) -> None:
        await agent.register()
        app = AdminApp(settings, PROXY, store, Connectivity(MESHD), FakeIdentity(), health=agent)
        dump = json.loads(app.config_dump().body)["health"]
        assert dump["check"] == "http:/healthz"
        assert (dump["healthy"], dump["status"]) == (False, "unhealthy")
        assert (dump["consecutiveFailures"], dump["consecutiveSuccesses"]) == (2, 0)
        assert dump["lastResult"]["output"] == "GET /healthz: 500 Internal Server Error"
        assert dump["lastResult"]["passed"] is False
        assert dump["registry"]["reportedHealthy"] is False
        metrics = app.prometheus().body.decode()
        assert "# TYPE mesh_sidecar_app_healthy gauge" in metrics
        assert "\nmesh_sidecar_app_healthy 0\n" in metrics
        health.take(result(True, "GET /healthz: 200 OK"))
        assert "\nmesh_sidecar_app_healthy 1\n" in app.prometheus().body.decode()

    trio.run(with_agent, tmp_path, meshd, health, body)
    # Without the health view (older callers): no section, no gauge.
    app = AdminApp(settings, PROXY, store, Connectivity(MESHD), FakeIdentity())
    assert json.loads(app.config_dump().body)["health"] is None
    assert "mesh_sidecar_app_healthy" not in app.prometheus().body.decode()


# --- flags --------------------------------------------------------------------------------------

REQUIRED = [
    "--service", "reviews", "--app-port", "9080", "--token", "mjt_t0k",
    "--ca-file", "/etc/mesh/ca-bundle.pem",
]  # fmt: skip


def settings_of(
    argv: list[str], env: dict[str, str] | None = None, consul_env: dict[str, str] | None = None
) -> Settings:
    args = build_parser(env or {}).parse_args(["run", *REQUIRED, *argv])
    raw = {k: v for k, v in vars(args).items() if k != "command"}
    raw.update(consul_env or {})
    return build_settings(raw)


def test_health_and_registry_defaults() -> None:
    s = settings_of([])
    assert s.health == HealthCheckConfig("none", "", 10.0, 2.0, 1, 2)
    assert s.health.ttl_s == 20.0
    assert (s.registry, s.consul_addr, s.consul_token, s.consul_ca_file) == (
        "meshd",
        "127.0.0.1:8500",
        "",
        None,
    )


def test_health_flags() -> None:
    s = settings_of([
        "--health-check", "http:/healthz", "--health-interval", "1",
        "--health-timeout", "500ms", "--healthy-threshold", "3", "--unhealthy-threshold", "4",
    ])  # fmt: skip
    assert s.health == HealthCheckConfig("http", "/healthz", 1.0, 0.5, 3, 4)
    s = settings_of(["--health-check", "tcp", "--health-interval", "1m"])
    assert (s.health.kind, s.health.interval_s, s.health.timeout_s) == ("tcp", 60.0, 2.0)
    # A short interval brings the default timeout down with it.
    assert settings_of(["--health-check", "tcp", "--health-interval", "1s"]).health.timeout_s == 1
    # none with an interval: the heartbeat's pace.
    assert settings_of(["--health-interval", "5"]).health == HealthCheckConfig(interval_s=5.0)
    env = {"MESH_HEALTH_CHECK": "tcp", "MESH_HEALTH_INTERVAL": "3", "MESH_REGISTRY": "consul"}
    s = settings_of([], env)
    assert (s.health.kind, s.health.interval_s, s.registry) == ("tcp", 3.0, "consul")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--health-check", "http"], r"--health-check \(or MESH_HEALTH_CHECK\): 'http' needs"),
        (["--health-check", "exec:/bin/true"], r"is not a health check"),
        (["--health-interval", "0.1"], r"--health-interval .* between 0.5 s and 3600 s"),
        (["--health-interval", "soon"], r"'soon' is not a duration"),
        (["--health-timeout", "1"], r"--health-timeout .* has no effect with --health-check none"),
        (["--unhealthy-threshold", "3"], r"--unhealthy-threshold .* has no effect"),
        (
            ["--health-check", "tcp", "--health-interval", "1", "--health-timeout", "2"],
            r"2 s is longer than the interval \(1 s",
        ),
        (["--health-check", "tcp", "--healthy-threshold", "0"], r"not a whole number from 1"),
        (["--health-check", "tcp", "--unhealthy-threshold", "x"], r"not a whole number"),
        (["--registry", "etcd"], r"--registry .* 'etcd' is not one of meshd, consul"),
        (["--consul-addr", "127.0.0.1:8500"], r"--consul-addr .* only used with --registry"),
        (["--consul-token", "t"], r"--consul-token .* only used with --registry consul"),
        (
            ["--registry", "consul", "--consul-addr", "198.18.0.9:8500", "--consul-token", "t"],
            r"the ACL token would cross the network in cleartext",
        ),
        (["--registry", "consul", "--consul-addr", "ftp://x"], r"unsupported scheme"),
        (["--registry", "consul", "--consul-addr", "h:port"], r"is not host:port"),
        (
            ["--registry", "consul", "--consul-addr", "http://a:1", "--consul-ca-file", "c"],
            r"is plain HTTP: use an https:// address",
        ),
    ],
)
def test_invalid_health_and_registry_flags(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_of(argv)


def test_consul_flags_and_consuls_own_variables() -> None:
    s = settings_of(["--registry", "consul"])
    assert (s.registry, s.consul_addr, s.consul_token) == ("consul", "http://127.0.0.1:8500", "")
    s = settings_of(
        ["--registry", "consul"],
        consul_env={"consul_http_addr": "127.0.0.1:18500", "consul_http_token": "secret"},
    )
    assert (s.consul_addr, s.consul_token) == ("http://127.0.0.1:18500", "secret")
    s = settings_of(
        ["--registry", "consul", "--consul-addr", "localhost:8500", "--consul-token", "mine"],
        consul_env={"consul_http_addr": "127.0.0.1:18500", "consul_http_token": "secret"},
    )
    assert (s.consul_addr, s.consul_token) == ("http://localhost:8500", "mine")
    s = settings_of([
        "--registry", "consul", "--consul-addr", "consul.example:8501",
        "--consul-ca-file", "/etc/consul/ca.pem", "--consul-token", "t",
    ])  # fmt: skip
    assert (s.consul_addr, s.consul_ca_file) == (
        "https://consul.example:8501",
        Path("/etc/consul/ca.pem"),
    )
    # Consul's variables are ignored with --registry meshd (they may be set host-wide).
    s = settings_of([], consul_env={"consul_http_addr": "198.18.0.9:8500"})
    assert s.registry == "meshd"


def test_consul_mode_refuses_labels_consul_cannot_hold(tmp_path: Path) -> None:
    labels = ",".join(f"k{n}=v" for n in range(61))
    settings = build_settings({
        "service": "reviews", "app_port": "9080", "token": "mjt_x", "ca_file": "/x",
        "labels": labels, "registry": "consul", "id": PROXY,
    })  # fmt: skip
    with pytest.raises(ConfigError, match=r"--labels \(or MESH_LABELS\): .*64"):
        agent_module.check_consul_meta(PROXY, agent_module.registration_of(settings))


def test_the_control_plane_error_is_what_meshd_mode_raises() -> None:
    assert issubclass(ControlPlaneUnavailable, agent_module.REGISTRATION_ERRORS[0])
