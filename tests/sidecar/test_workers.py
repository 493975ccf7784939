"""``--workers N``: the control channel's framing and payloads, metric merging, the
flag, and the supervisor driving real worker processes (``python -m sidecar.workers``)
on real SO_REUSEPORT sockets, in the test's Trio loop."""

from __future__ import annotations

import datetime
import json
import os
import random
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from meshd.spiffe import parse_spiffe_id
from registry.latest import Latest
from sidecar.config_store import ConfigStore
from sidecar.errors import ConfigError
from sidecar.identity import Identity
from sidecar.proxy import ProxyServer, ProxyState, TelemetrySink
from sidecar.settings import UpstreamSpec
from sidecar.telemetry import AccessLog, Reporter, ResponseFlag, SecurityPolicy, TcpLabels
from sidecar.telemetry.metrics import MetricState, merge_states, render_state
from sidecar.tls_contexts import build_contexts
from sidecar.workers import channel
from sidecar.workers.channel import (
    MAX_HEAD_BYTES,
    ChannelError,
    FrameDecoder,
    IdentityMaterial,
    Message,
    WorkerSpec,
    decode_identity,
    decode_metric_state,
    decode_spec,
    encode,
    encode_identity,
    encode_metric_state,
    encode_spec,
)
from sidecar.workers.supervisor import Supervisor
from tests.proxy.support import Client
from tests.sidecar.support import PROXY, make_settings, make_snapshot
from tests.sidecar.test_identity_support import TestCa, key_pem, pem
from tests.telemetry.support import PEER, REVIEWS, parse_strict, request, telemetry

# --- framing -------------------------------------------------------------------------------


def test_frames_round_trip_whatever_the_chunking() -> None:
    messages = [
        Message(channel.CONFIG, {"version": "v1"}, b'{"a": "\\u00e9 \xff"}' * 100),
        Message(channel.STATS, {"seq": 3}),
        Message(channel.DRAIN, {"timeout": 2.5}),
    ]
    wire = b"".join(encode(m) for m in messages)
    for chunk in (1, 7, len(wire)):
        decoder = FrameDecoder()
        got = []
        for i in range(0, len(wire), chunk):
            decoder.feed(wire[i : i + chunk])
            while (m := decoder.next_message()) is not None:
                got.append(m)
        assert got == messages
        assert decoder.buffered == 0


@given(st.lists(st.tuples(st.text(max_size=20), st.binary(max_size=300)), max_size=5))
def test_any_message_sequence_round_trips(items: list[tuple[str, bytes]]) -> None:
    messages = [Message("k", {"text": text}, body) for text, body in items]
    decoder = FrameDecoder()
    decoder.feed(b"".join(encode(m) for m in messages))
    got = []
    while (m := decoder.next_message()) is not None:
        got.append(m)
    assert got == messages


def test_a_broken_peer_is_told_apart_from_a_slow_one() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode(Message("x"))[:5])
    assert decoder.next_message() is None  # incomplete: wait for more

    huge = FrameDecoder()
    huge.feed((MAX_HEAD_BYTES + 1).to_bytes(4, "big") + (0).to_bytes(4, "big"))
    with pytest.raises(ChannelError, match="the peer is broken"):
        huge.next_message()

    not_json = FrameDecoder()
    not_json.feed((3).to_bytes(4, "big") + (0).to_bytes(4, "big") + b"{x}")
    with pytest.raises(ChannelError, match="not JSON"):
        not_json.next_message()

    no_kind = FrameDecoder()
    no_kind.feed((2).to_bytes(4, "big") + (0).to_bytes(4, "big") + b"{}")
    with pytest.raises(ChannelError, match="'kind'"):
        no_kind.next_message()

    with pytest.raises(ChannelError, match="field 'version' is missing"):
        Message(channel.APPLIED, {}).text("version")


def test_spec_identity_and_metric_state_payloads_round_trip() -> None:
    spec = WorkerSpec(
        index=3,
        proxy_id=PROXY,
        service="reviews",
        namespace="default",
        labels=(("app", "reviews"), ("version", "v1")),
        inbound_address="0.0.0.0",
        inbound_port=15006,
        outbound_port=15001,
        app_address="127.0.0.2",
        upstreams=(UpstreamSpec("db", 5432, 15432), UpstreamSpec("cache.ns", None, 16379)),
        access_log="-",
        log_level="debug",
        state_dir="/var/lib/mesh-sidecar/reviews.default",
    )
    assert decode_spec(_wire(encode_spec(spec))) == spec
    with pytest.raises(ChannelError, match="expected a start message"):
        decode_spec(Message(channel.STATS, {"seq": 1}))

    material = IdentityMaterial(
        generation=4,
        key_pem="-----BEGIN PRIVATE KEY-----\n...",
        cert_pem="cert",
        chain_pem="chain",
        roots=("root-a", "root-b"),
        trust_bundle="abc",
        issued_at=1_700_000_000.25,
        source="saved",
    )
    assert decode_identity(_wire(encode_identity(material))) == material
    assert "PRIVATE" not in repr(material)  # never in a log line

    t = telemetry()
    t.record(request(duration_ms=3.5))
    t.tcp_opened(TcpLabels(Reporter.SOURCE, PEER, REVIEWS, SecurityPolicy.MUTUAL_TLS))
    state = t.state()
    back = decode_metric_state(encode_metric_state(state))
    assert back == state
    assert render_state(back) == t.render()  # counts stay integers, sums exact


def _wire(message: Message) -> Message:
    decoder = FrameDecoder()
    decoder.feed(encode(message))
    got = decoder.next_message()
    assert got is not None
    return got


# --- merging ---------------------------------------------------------------------------------


def test_merged_processes_render_as_one_process_that_saw_everything() -> None:
    rng = random.Random(7)
    one = telemetry()
    parts = [telemetry() for _ in range(3)]
    tcp = TcpLabels(Reporter.DESTINATION, PEER, REVIEWS, SecurityPolicy.MUTUAL_TLS)
    for _ in range(300):
        record = request(
            response_code=rng.choice((200, 200, 503)),
            duration_ms=rng.choice((0.25, 4.0, 70.0, 2_000.5)),  # exact binary sums
            request_bytes=rng.randrange(5000),
            response_flags=rng.choice(("-", ResponseFlag.UPSTREAM_CONNECTION_FAILURE)),
        )
        target = rng.choice(parts)
        for t in (one, target):
            t.record(record)
            t.tcp_opened(tcp)
            t.tcp_closed(tcp, sent=10, received=3)
    merged = merge_states(p.state() for p in parts)
    # Series may come in another order (first seen by another process); nothing else differs.
    assert sorted(render_state(merged).splitlines()) == sorted(one.render().splitlines())
    assert merged.requests == 300
    families = parse_strict(render_state(merged))
    assert sum(v for _, _, v in families["istio_requests_total"].samples) == 300
    # The inputs are not changed by merging.
    assert sum(p.state().requests for p in parts) == 300


def test_merging_nothing_and_keeping_access_log_errors() -> None:
    assert merge_states([]) == MetricState({}, {}, 0, None)
    a = MetricState({}, {}, dropped=2, access_log_errors=None)
    b = MetricState({}, {}, dropped=1, access_log_errors=5)
    assert merge_states([a, b]) == MetricState({}, {}, 3, 5)


def test_processes_sharing_an_access_log_write_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    logs = [AccessLog.to_path(path, shared=True, flush_interval_s=3600) for _ in range(2)]
    long_path = "/" + "x" * 3000  # lines longer than a stdio buffer's remainder
    for i in range(400):
        logs[i % 2].write(request(path=f"{long_path}?n={i}"))
        if i % 37 == 0:
            logs[(i + 1) % 2].flush()
    for log in logs:
        log.close()
    lines = path.read_text().splitlines()
    assert sorted(int(json.loads(line)["path"].rpartition("=")[2]) for line in lines) == list(
        range(400)
    )


# --- the flag ----------------------------------------------------------------------------------


def test_workers_flag(tmp_path: Path) -> None:
    assert make_settings(tmp_path).workers == 1
    assert make_settings(tmp_path, workers="4").workers == 4
    assert make_settings(tmp_path, workers="64").workers == 64
    for bad in ("0", "65", "two", "-1", "1.5"):
        with pytest.raises(ConfigError, match=r"--workers \(or MESH_WORKERS\).*from 1 to 64"):
            make_settings(tmp_path, workers=bad)


# --- the supervisor with real worker processes ------------------------------------------------


class Identities:
    """An identity source as the main process has one: the current identity and its key."""

    def __init__(self) -> None:
        self.current: Latest[Identity | None] = Latest(None)
        self.key = ""

    def private_key_pem(self) -> str:
        return self.key

    def publish(self, ca: TestCa, directory: Path, generation: int) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        spiffe = "spiffe://cluster.local/ns/default/sa/reviews"
        leaf = ca.issue(key.public_key(), spiffe, lifetime=datetime.timedelta(hours=1))
        self.key = key_pem(key)
        contexts = build_contexts(
            directory, (self.key + pem(leaf) + ca.chain_pem).encode(), [ca.root_pem]
        )
        self.current.set(
            Identity(
                spiffe_id=parse_spiffe_id(spiffe),
                serial=f"{leaf.serial_number:x}",
                not_before=leaf.not_valid_before_utc,
                not_after=leaf.not_valid_after_utc,
                issued_at=datetime.datetime.now(datetime.UTC),
                trust_bundle="test",
                generation=generation,
                source="meshd",
                cert_pem=pem(leaf),
                chain_pem=ca.chain_pem,
                roots=(ca.root_pem,),
                server_context=contexts.server,
                client_context=contexts.client,
                control_context=contexts.control,
            )
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _until(check: Callable[[], bool], what: str, limit_s: float = 15.0) -> None:
    with trio.move_on_after(limit_s):
        # Polling: what changes is another process's state, reported over its channel.
        while not check():  # noqa: ASYNC110
            await trio.sleep(0.02)
        return
    raise AssertionError(f"{what} did not happen within {limit_s} s")


@pytest.mark.integration
@pytest.mark.timeout(45)
def test_supervisor_feeds_gates_sums_restarts_and_drains_real_workers(tmp_path: Path) -> None:
    outbound = _free_port()
    settings = make_settings(
        tmp_path,
        workers="3",
        inbound_address="127.0.0.1",
        inbound_port=str(_free_port()),
        outbound_port=str(outbound),
    )
    store = ConfigStore(tmp_path, PROXY)
    identities = Identities()
    sink = TelemetrySink(telemetry())
    proxy = ProxyServer(
        ProxyState(),
        identities.current,
        inbound_host="127.0.0.1",
        inbound_port=settings.inbound_port,
        outbound_port=outbound,
        telemetry=sink,
        reuse_port=True,
    )
    supervisor = Supervisor(settings, PROXY, store, identities, proxy, lambda: sink.telemetry)
    ca = TestCa()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.serve)
            proxy.apply(make_snapshot("v1"))
            await nursery.start(supervisor.run)
            await trio.sleep(1.5)  # time enough for the workers to start (and to bind, if
            # they wrongly did before holding a config and a certificate)
            assert [s.state for s in supervisor.slots] == ["starting", "starting"]
            reason = supervisor.not_ready_reason()
            assert reason == "worker(s) not serving yet: 1 (starting), 2 (starting)"

            # A config without a certificate: still nobody serves.
            assert await supervisor.distribute(make_snapshot("v1")) is None
            assert [s.version for s in supervisor.slots] == ["v1", "v1"]
            assert all(s.state == "starting" for s in supervisor.slots)

            # The certificate: now they bind and serve.
            identities.publish(ca, tmp_path / "main", generation=1)
            await _until(lambda: supervisor.not_ready_reason() is None, "workers serving")
            assert all(s.generation == 1 for s in supervisor.slots)
            # The workers loaded their credentials and left no copy of the key behind.
            assert list((tmp_path / "tls").iterdir()) == []

            # A config a worker refuses is reported (for the NACK) and not kept.
            refused = await supervisor.distribute(make_snapshot("v2", proxy_id="other.default"))
            assert refused is not None
            assert "worker 1: proxy_id: 'other.default' is not this proxy" in refused
            assert "worker 2: " in refused
            assert [s.version for s in supervisor.slots] == ["v1", "v1"]

            # A renewal reaches every worker before the next config is settled.
            identities.publish(ca, tmp_path / "main", generation=2)
            assert await supervisor.distribute(make_snapshot("v3")) is None
            assert [(s.version, s.generation) for s in supervisor.slots] == [("v3", 2)] * 2
            proxy.apply(make_snapshot("v3"))

            # Fresh connections spread over the three processes; the sum is exact.
            requests = 150
            for _ in range(requests):
                client = Client(outbound)
                try:
                    reply = await client.request("GET", "/", host="reviews")  # 503: no one there
                    assert reply.status in (404, 502, 503), reply
                finally:
                    await client.aclose()
            await supervisor.refresh()
            table = supervisor.workers_json()
            assert [w["worker"] for w in table] == [0, 1, 2]
            assert sum(w["requests"] for w in table) == requests
            assert sum(w["connections"] for w in table) == requests
            busy = [w for w in table if w["connections"] > 0]
            assert len(busy) >= 2, table  # the kernel spread them
            families = parse_strict(supervisor.render_metrics())
            assert sum(v for _, _, v in families["istio_requests_total"].samples) == requests

            # SIGKILL one: restarted with the current config and identity, the sum kept.
            victim = supervisor.slots[0]
            pid, before = victim.pid, victim.connections
            assert pid is not None
            os.kill(pid, 9)
            await _until(
                lambda: victim.pid != pid and victim.state == "serving", "the worker restarted"
            )
            assert (victim.version, victim.generation, victim.restarts) == ("v3", 2, 1)
            await supervisor.refresh()
            assert victim.retired_connections == before
            assert sum(w["requests"] for w in supervisor.workers_json()) == requests

            # Drain: every worker exits.
            pids = [s.pid for s in supervisor.slots]
            await supervisor.drain(1.0)
            assert all(s.link is None for s in supervisor.slots)
            for p in pids:
                assert p is not None
                with pytest.raises(ProcessLookupError):
                    os.kill(p, 0)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert [s.state for s in supervisor.slots] == ["stopped", "stopped"]
