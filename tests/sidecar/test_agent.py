"""The agent's protocol logic against a scripted meshd (a fake ``send``): apply and
ACK, NACK and keep the old config, hand every snapshot's trust roots to the identity
before the ACK, re-register on 404, ride out an unreachable meshd, confirm a saved
config, heartbeat, deregister; the control client's TLS context following the identity;
and the backoff it paces retries with. The identity is a fake (``FakeIdentity``): its
real counterpart is tested in ``test_identity*.py`` and end to end."""

from __future__ import annotations

import json
import logging
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.testing

from meshd.compile import codec
from sidecar.agent import Agent, registration_of
from sidecar.config_store import SNAPSHOT_FILE, ConfigStore
from sidecar.control_client import Backoff, Connectivity, ControlClient, Unchanged
from sidecar.errors import ConnectError, ControlPlaneRejected, ControlPlaneUnavailable
from sidecar.http_client import HttpRequest, HttpResponse
from sidecar.identity import IdentityError
from tests.sidecar.support import (
    PROXY,
    FakeIdentity,
    dangling_route_snapshot,
    encode,
    make_settings,
    make_snapshot,
)
from tests.support.processes import LOOPBACK, free_port

MESHD = "https://meshd.test:15012"
ROOT = "-----BEGIN CERTIFICATE-----\nroot\n-----END CERTIFICATE-----\n"
Reply = HttpResponse | Exception


def snapshot_reply(body: bytes, version: str) -> HttpResponse:
    return HttpResponse.of(200, body=body, headers={"X-Mesh-Version": version})


def problem(status: int, detail: str) -> HttpResponse:
    return HttpResponse.of(status, json_body={"status": status, "detail": detail})


def ok(status: int = 200) -> HttpResponse:
    return HttpResponse.of(status)


def refused() -> ConnectError:
    return ConnectError("GET", MESHD, "[Errno 111] Connection refused")


@dataclass
class FakeMeshd:
    """Answers polls from ``polls_script`` in order (then hangs, as a long poll with
    nothing new does) and registrations from ``register_script`` (then 200)."""

    polls_script: list[Reply] = field(default_factory=list)
    register_script: list[Reply] = field(default_factory=list)
    delete_reply: Reply = field(default_factory=lambda: ok(204))
    polls: list[str] = field(default_factory=list)
    registrations: list[dict[str, object]] = field(default_factory=list)
    nacks: list[dict[str, object]] = field(default_factory=list)
    deletes: int = 0
    _tick: trio.Event | None = None

    async def next_request(self) -> None:
        """Wait until the next request has been recorded."""
        if self._tick is None:
            self._tick = trio.Event()
        await self._tick.wait()

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            return await self._answer(request)
        finally:
            self._notify()

    def _notify(self) -> None:
        tick = self._tick
        self._tick = None
        if tick is not None:
            tick.set()

    async def _answer(self, request: HttpRequest) -> HttpResponse:
        # The workload certificate authenticates (mTLS): no bearer token, ever.
        assert request.header("authorization") is None
        path = request.path
        reply: Reply
        if request.method == "PUT" and path == f"/v1/instances/{PROXY}":
            self.registrations.append(request.json())
            reply = self.register_script.pop(0) if self.register_script else ok()
        elif request.method == "GET" and path == f"/v1/xds/{PROXY}":
            self.polls.append(request.params["version"])
            if not self.polls_script:
                self._notify()  # recorded: tell the test before hanging
                await trio.sleep_forever()
            reply = self.polls_script.pop(0)
        elif request.method == "POST" and path == f"/v1/xds/{PROXY}/ack":
            self.nacks.append(request.json())
            reply = ok(204)
        elif request.method == "DELETE" and path == f"/v1/instances/{PROXY}":
            self.deletes += 1
            reply = self.delete_reply
        else:
            reply = problem(418, f"unexpected {request.method} {path}")
        if isinstance(reply, Exception):
            raise reply
        return reply


class CountingBackoff(Backoff):
    made: list[CountingBackoff] = []  # noqa: RUF012 — a test registry of instances

    def __init__(self) -> None:
        super().__init__(initial=0.001, maximum=0.004)
        self.delays = 0
        CountingBackoff.made.append(self)

    def next_delay(self) -> float:
        self.delays += 1
        return super().next_delay()


def drive(
    tmp_path: Path,
    fake: FakeMeshd,
    until: Callable[[], bool],
    *,
    store: ConfigStore | None = None,
    task: str = "control_loop",
    heartbeat_s: float = 30.0,
    registered: bool = False,
    identity: FakeIdentity | None = None,
) -> Agent:
    """Run one of the agent's tasks against ``fake`` until ``until()`` holds (or fail
    after a deadline), then cancel it."""
    settings = make_settings(tmp_path, poll_wait="1", labels="version=v1")
    store = store or ConfigStore(tmp_path, PROXY)
    identity = identity or FakeIdentity()
    agent_box: list[Agent] = []

    async def main() -> None:
        async with ControlClient(MESHD, identity.control_plane_context, send=fake) as client:
            agent = Agent(
                settings,
                PROXY,
                store,
                client,
                Connectivity(MESHD, serving=lambda: store.version),
                identity,
                heartbeat_s=heartbeat_s,
                backoff=CountingBackoff,
            )
            agent.registered = registered
            agent_box.append(agent)
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(getattr(agent, task))
                    while not until():
                        await fake.next_request()
                    nursery.cancel_scope.cancel()

    trio.run(main)
    return agent_box[0]


@pytest.fixture(autouse=True)
def _fresh_backoffs_and_info_logs(caplog: pytest.LogCaptureFixture) -> None:
    CountingBackoff.made.clear()
    caplog.set_level(logging.INFO, logger="sidecar")


def test_a_valid_config_is_applied_saved_and_acked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    snap = make_snapshot("v1")
    fake = FakeMeshd(polls_script=[snapshot_reply(encode(snap), "v1")])
    agent = drive(tmp_path, fake, lambda: len(fake.polls) == 2)
    assert fake.polls == ["", "v1"]  # the second poll carries v1: the ACK
    assert fake.nacks == []
    assert fake.registrations == [
        {
            "service": "reviews",
            "namespace": "default",
            "address": "127.0.0.1",
            "port": 15006,
            "appPort": 9080,
            "protocol": "http",
            "labels": {"version": "v1"},
            "serviceAccount": "",
            "meshed": True,
        }
    ]
    applied = agent.store.current.value
    assert applied is not None
    assert (applied.snapshot, applied.source) == (snap, "meshd")
    assert agent.store.updates_total == 1
    assert (tmp_path / SNAPSHOT_FILE).read_bytes() == codec.dumps(snap)
    assert agent.connectivity.connected
    assert "config version v1 applied (1 virtual hosts, 1 clusters)" in caplog.text
    assert caplog.text.count("registered instance") == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (encode(dangling_route_snapshot("v2")), "cluster 'outbound|9080||reviews"),
        (encode(make_snapshot("v2", proxy_id="ratings-1.default")), "is not this proxy"),
        (
            json.dumps({**codec.to_plain(make_snapshot("v2")), "schema": 99}).encode(),
            "schema: 99 is not supported",
        ),
        (b"<html>proxy error</html>", "not JSON"),
    ],
)
def test_an_invalid_config_is_nacked_and_the_old_one_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, body: bytes, reason: str
) -> None:
    store = ConfigStore(tmp_path, PROXY)
    store.apply(make_snapshot("v1"))
    fake = FakeMeshd(polls_script=[snapshot_reply(body, "v2")])
    agent = drive(tmp_path, fake, lambda: len(fake.polls) == 2, store=store)
    assert fake.polls == ["v1", "v1"]  # polls on with the old version
    assert len(fake.nacks) == 1
    assert fake.nacks[0]["version"] == "v2"
    assert reason in str(fake.nacks[0]["error"])
    assert agent.store.version == "v1"
    assert agent.store.rejections_total == 1
    assert agent.store.last_rejection is not None
    assert agent.store.last_rejection.version == "v2"
    assert not (tmp_path / SNAPSHOT_FILE).exists()
    assert "config version v2 rejected, keeping version v1" in caplog.text


def test_a_version_refused_again_is_not_spun_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = snapshot_reply(encode(dangling_route_snapshot("v2")), "v2")
    fake = FakeMeshd(polls_script=[bad, bad, bad])
    agent = drive(tmp_path, fake, lambda: len(fake.polls) == 4)
    assert fake.polls == ["", "", "", ""]
    assert [n["version"] for n in fake.nacks] == ["v2", "v2", "v2"]
    assert agent.store.current.value is None
    assert caplog.text.count("rejected, keeping version none") == 1  # logged once
    assert sum(b.delays for b in CountingBackoff.made) >= 2  # the repeats were paced


def test_a_404_registers_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeMeshd(
        polls_script=[
            problem(404, "proxy 'x' is not known: register its instance first"),
            snapshot_reply(encode(make_snapshot("v1")), "v1"),
        ]
    )
    agent = drive(tmp_path, fake, lambda: len(fake.polls) == 3)
    assert len(fake.registrations) == 2
    assert fake.polls == ["", "", "v1"]
    assert agent.store.version == "v1"
    assert "does not know instance reviews-0a1b2c3d.default" in caplog.text
    assert caplog.text.count("registered instance") == 2


def test_an_unreachable_meshd_leaves_the_config_in_place(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = ConfigStore(tmp_path, PROXY)
    store.apply(make_snapshot("v1"))
    fake = FakeMeshd(polls_script=[refused(), refused(), problem(503, "shutting down"), ok(304)])
    agent = drive(tmp_path, fake, lambda: len(fake.polls) == 5, store=store)
    assert fake.polls == ["v1"] * 5
    assert agent.store.version == "v1"
    assert agent.connectivity.connected
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    # one line when it went down, one when it failed differently (503); none per retry
    assert len(warnings) == 2, [r.getMessage() for r in warnings]
    assert "is unreachable" in warnings[0].getMessage()
    assert "serving config version v1" in warnings[0].getMessage()
    assert caplog.text.count("answers again") == 1


def test_a_saved_config_is_confirmed_by_meshd(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = ConfigStore(tmp_path, PROXY)
    snap = make_snapshot("v1")
    store.apply(snap, "saved")
    fake = FakeMeshd(polls_script=[snapshot_reply(encode(snap), "v1")])
    agent = drive(tmp_path, fake, lambda: len(fake.polls) == 2, store=store)
    assert fake.polls == ["", "v1"]  # asks for meshd's current version, then ACKs it
    applied = agent.store.current.value
    assert applied is not None
    assert applied.source == "meshd"
    assert agent.store.updates_total == 0
    assert "meshd confirmed the saved config version v1" in caplog.text


def test_a_saved_config_is_replaced_by_a_newer_one(tmp_path: Path) -> None:
    store = ConfigStore(tmp_path, PROXY)
    store.apply(make_snapshot("v1"), "saved")
    fake = FakeMeshd(polls_script=[snapshot_reply(encode(make_snapshot("v2")), "v2")])
    agent = drive(tmp_path, fake, lambda: len(fake.polls) == 2, store=store)
    assert fake.polls == ["", "v2"]
    assert agent.store.version == "v2"


def test_registration_retries_until_meshd_accepts_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeMeshd(
        register_script=[
            refused(),
            refused(),
            problem(401, "no credential: present a workload certificate of this mesh"),
            problem(401, "no credential: present a workload certificate of this mesh"),
        ]
    )
    agent = drive(tmp_path, fake, lambda: len(fake.polls) == 1)
    assert len(fake.registrations) == 5
    assert agent.registered
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2, warnings
    assert "unreachable" in warnings[0]
    assert "no config yet" in warnings[0]
    assert "401 no credential" in warnings[1]
    assert "did not accept this sidecar's certificate" in warnings[1]
    assert caplog.text.count("registered instance") == 1


def test_heartbeat_registers_again_periodically(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeMeshd(register_script=[refused(), ok()])
    agent = drive(
        tmp_path,
        fake,
        lambda: len(fake.registrations) >= 3,
        task="heartbeat",
        heartbeat_s=0.001,
        registered=True,
    )
    assert agent.connectivity.connected  # the third came after the second succeeded
    assert caplog.text.count("is unreachable") == 1
    assert caplog.text.count("answers now") == 1


def test_heartbeat_waits_while_unregistered(tmp_path: Path) -> None:
    """Registering is the control loop's job until it has succeeded once."""
    fake = FakeMeshd()
    settings = make_settings(tmp_path)

    async def main() -> None:
        identity = FakeIdentity()
        async with ControlClient(MESHD, identity.control_plane_context, send=fake) as client:
            agent = Agent(
                settings, PROXY, ConfigStore(tmp_path, PROXY), client, Connectivity(MESHD),
                identity, heartbeat_s=0.001,
            )  # fmt: skip
            with trio.move_on_after(0.05):
                await agent.heartbeat()
            assert fake.registrations == []
            agent.registered = True
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(agent.heartbeat)
                    await fake.next_request()
                    nursery.cancel_scope.cancel()
            assert len(fake.registrations) == 1

    trio.run(main)


@pytest.mark.parametrize(
    ("reply", "logged"),
    [
        (ok(204), "deregistered instance reviews-0a1b2c3d.default"),
        (problem(404, "no instance"), "nothing to deregister"),
        (refused(), "could not deregister instance"),
    ],
)
def test_deregister_is_best_effort(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, reply: Reply, logged: str
) -> None:
    fake = FakeMeshd(delete_reply=reply)
    settings = make_settings(tmp_path)

    async def main() -> None:
        identity = FakeIdentity()
        async with ControlClient(MESHD, identity.control_plane_context, send=fake) as client:
            agent = Agent(
                settings, PROXY, ConfigStore(tmp_path, PROXY), client, Connectivity(MESHD),
                identity,
            )  # fmt: skip
            await agent.deregister()

    trio.run(main)
    assert fake.deletes == 1
    assert logged in caplog.text


# --- trust roots ----------------------------------------------------------------------------


def test_trust_roots_reach_the_identity_before_the_snapshot_is_applied(tmp_path: Path) -> None:
    store = ConfigStore(tmp_path, PROXY)
    store.apply(make_snapshot("v1"))
    seen_versions: list[str] = []
    identity = FakeIdentity(on_update=lambda: seen_versions.append(store.version))
    snap = make_snapshot("v2", trust_roots=(ROOT,), trust_bundle="digest2")
    fake = FakeMeshd(polls_script=[snapshot_reply(encode(snap), "v2")])
    agent = drive(tmp_path, fake, lambda: len(fake.polls) == 2, store=store, identity=identity)
    assert identity.roots_updates == [((ROOT,), "digest2")]
    assert seen_versions == ["v1"]  # the roots were taken while v1 was still applied ...
    assert fake.polls == ["v1", "v2"]  # ... and before the poll that ACKs v2
    assert agent.store.version == "v2"


def test_a_confirmed_saved_config_still_hands_over_its_roots(tmp_path: Path) -> None:
    store = ConfigStore(tmp_path, PROXY)
    snap = make_snapshot("v1", trust_roots=(ROOT,), trust_bundle="d1")
    store.apply(snap, "saved")
    identity = FakeIdentity()
    fake = FakeMeshd(polls_script=[snapshot_reply(encode(snap), "v1")])
    drive(tmp_path, fake, lambda: len(fake.polls) == 2, store=store, identity=identity)
    assert identity.roots_updates == [((ROOT,), "d1")]


def test_roots_the_identity_refuses_are_nacked_and_the_old_config_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = ConfigStore(tmp_path, PROXY)
    store.apply(make_snapshot("v1"))
    identity = FakeIdentity(refuse_roots="trust root 1 is not a PEM certificate")
    snap = make_snapshot("v2", trust_roots=(ROOT,), trust_bundle="d2")
    fake = FakeMeshd(polls_script=[snapshot_reply(encode(snap), "v2")])
    agent = drive(tmp_path, fake, lambda: len(fake.polls) == 2, store=store, identity=identity)
    assert fake.polls == ["v1", "v1"]
    assert [n["version"] for n in fake.nacks] == ["v2"]
    assert "trust_roots: refusing the new trust roots" in str(fake.nacks[0]["error"])
    assert agent.store.version == "v1"
    assert "config version v2 rejected, keeping version v1" in caplog.text


# --- the control client ------------------------------------------------------------------------


def test_each_request_uses_the_tls_context_current_when_it_starts(tmp_path: Path) -> None:
    """A renewal (or a change of roots) publishes a new context: the next request goes
    out with it; a long poll that started with the old one is not cut off, and ends on
    the connection (and context) it started with."""
    release = trio.Event()
    seen: list[tuple[str, ssl.SSLContext | None]] = []

    async def meshd(request: HttpRequest) -> HttpResponse:
        assert request.header("authorization") is None
        seen.append((request.method, request.tls))
        if request.method == "GET":
            await release.wait()
            return ok(304)
        return ok()

    first, second = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    current = [first]
    polls: list[object] = []

    async def poll(client: ControlClient) -> None:
        polls.append(await client.poll(PROXY, "v1", 30.0))

    async def main() -> None:
        async with ControlClient(MESHD, lambda: current[0], send=meshd) as client:
            await client.register(PROXY, registration_of(make_settings(tmp_path)))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll, client)
                await trio.testing.wait_all_tasks_blocked()
                current[0] = second  # renewed
                await client.register(PROXY, registration_of(make_settings(tmp_path)))
                assert polls == []  # the poll still runs
                release.set()
        assert polls == [Unchanged()]  # and ended normally
        with pytest.raises(ControlPlaneUnavailable, match="closed"):
            await client.register(PROXY, registration_of(make_settings(tmp_path)))

    trio.run(main)
    assert seen == [("PUT", first), ("GET", first), ("PUT", second)]


def test_the_poll_waits_longer_than_the_wait(tmp_path: Path) -> None:
    """A long poll's deadline outlasts meshd's wait (ordinary requests keep theirs)."""
    seen: list[HttpRequest] = []

    async def meshd(request: HttpRequest) -> HttpResponse:
        seen.append(request)
        return ok(304)

    async def main() -> None:
        identity = FakeIdentity()
        async with ControlClient(MESHD, identity.control_plane_context, send=meshd) as client:
            await client.poll(PROXY, "v1", 30.0)
            await client.register(PROXY, registration_of(make_settings(tmp_path)))
            await client.deregister(PROXY, timeout_s=3.0)

    trio.run(main)
    poll, register, deregister = seen
    assert poll.params == {"version": "v1", "wait": "30"}
    assert poll.timeout_s > 30.0
    assert register.timeout_s == 10.0
    assert deregister.timeout_s == 3.0
    assert (register.header("user-agent") or "").startswith("mesh-sidecar/")
    assert register.header("content-type") == "application/json"


def test_transport_errors_say_why(tmp_path: Path) -> None:
    """The OS's reason reaches the message (a real connection to a closed port)."""
    url = f"https://{LOOPBACK}:{free_port()}"

    async def main() -> None:
        identity = FakeIdentity()
        async with ControlClient(url, identity.control_plane_context) as client:
            with pytest.raises(
                ControlPlaneUnavailable, match=r"ConnectError: \[Errno 111\] Connection refused"
            ) as caught:
                await client.poll(PROXY, "", 1.0)
            assert f"meshd at {url} is unreachable (GET {url}/v1/xds/" in str(caught.value)

    trio.run(main)


def test_no_tls_context_is_a_retriable_error(tmp_path: Path) -> None:
    """E.g. the certificate expired and the CA file for the bootstrap context is gone:
    the agent retries (and serves on) rather than crashing."""

    def no_context() -> ssl.SSLContext:
        raise IdentityError("cannot load the CA file /x/ca.pem to verify meshd with")

    async def main() -> None:
        async def meshd(request: HttpRequest) -> HttpResponse:
            raise AssertionError("no request goes out without a TLS context")

        async with ControlClient(MESHD, no_context, send=meshd) as client:
            with pytest.raises(ControlPlaneUnavailable, match=r"no TLS context .* /x/ca\.pem"):
                await client.register(PROXY, registration_of(make_settings(tmp_path)))

    trio.run(main)


def test_a_403_says_the_certificate_is_for_another_identity(tmp_path: Path) -> None:
    async def meshd(request: HttpRequest) -> HttpResponse:
        return problem(403, "spiffe://cluster.local/ns/default/sa/ratings may not act for instance")

    async def main() -> None:
        identity = FakeIdentity()
        async with ControlClient(MESHD, identity.control_plane_context, send=meshd) as client:
            with pytest.raises(
                ControlPlaneRejected, match="check --namespace and --service-account"
            ):
                await client.register(PROXY, registration_of(make_settings(tmp_path)))

    trio.run(main)


def test_backoff_grows_with_jitter_and_resets() -> None:
    backoff = Backoff(initial=0.2, maximum=5.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(12)]
    ceilings = [min(5.0, 0.2 * 2**i) for i in range(12)]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert max(delays) <= 5.0
    backoff.reset()
    assert backoff.next_delay() <= 0.2
    big = Backoff(initial=1.0, maximum=3.0, attempt=10_000)
    assert 1.5 <= big.next_delay() <= 3.0
