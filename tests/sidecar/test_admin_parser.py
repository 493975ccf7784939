"""The admin server's sans-IO layer: raw bytes -> request heads (or the status to answer),
responses -> bytes, and the endpoints' answers from a given state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.compile import codec
from sidecar.admin import (
    MAX_HEAD_BYTES,
    AdminApp,
    HeadParser,
    HttpError,
    RequestHead,
    Response,
    parse_head,
    render_response,
)
from sidecar.config_store import ConfigStore
from sidecar.control_client import Connectivity
from sidecar.errors import ControlPlaneUnavailable
from tests.sidecar.support import (
    CLUSTER,
    PROXY,
    SPIFFE,
    FakeIdentity,
    make_settings,
    make_snapshot,
)

GET_READY = b"GET /ready HTTP/1.1\r\nHost: 127.0.0.1:15000\r\n\r\n"


def heads(data: bytes) -> list[RequestHead]:
    parser = HeadParser()
    parser.feed(data)
    out = []
    while (head := parser.next_head()) is not None:
        out.append(head)
    return out


def error_of(data: bytes) -> HttpError:
    with pytest.raises(HttpError) as caught:
        heads(data)
    return caught.value


# --- parsing -------------------------------------------------------------------------------


def test_a_simple_get() -> None:
    (head,) = heads(GET_READY)
    assert (head.method, head.target, head.path, head.http_version) == (
        "GET",
        "/ready",
        "/ready",
        "HTTP/1.1",
    )
    assert head.headers == ((b"host", b"127.0.0.1:15000"),)
    assert head.keep_alive
    assert not head.has_body


def test_query_strings_are_not_part_of_the_path() -> None:
    (head,) = heads(b"GET /config_dump?include_eds HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.path == "/config_dump"


def test_incomplete_heads_wait_for_more() -> None:
    parser = HeadParser()
    for i in range(len(GET_READY) - 1):
        parser.feed(GET_READY[i : i + 1])
        assert parser.next_head() is None
    parser.feed(GET_READY[-1:])
    head = parser.next_head()
    assert head is not None
    assert head.path == "/ready"
    assert parser.buffered == 0


def test_pipelined_requests_come_out_in_order() -> None:
    data = GET_READY + b"\r\n" + b"GET /clusters HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    first, second = heads(data)
    assert (first.path, first.keep_alive) == ("/ready", True)
    assert (second.path, second.keep_alive) == ("/clusters", False)


@pytest.mark.parametrize(
    ("data", "keep_alive"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive, Close\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n\r\n", True),
    ],
)
def test_connection_persistence(data: bytes, keep_alive: bool) -> None:
    assert heads(data)[0].keep_alive is keep_alive


@pytest.mark.parametrize(
    "data",
    [
        b"POST /ready HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
        b"POST /ready HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
)
def test_a_body_is_noticed(data: bytes) -> None:
    assert heads(data)[0].has_body


def test_a_zero_length_body_is_no_body() -> None:
    assert not heads(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")[0].has_body


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (b"GET /ready\r\n\r\n", 400, "malformed request line"),
        (b"GET  /ready HTTP/1.1\r\nHost: x\r\n\r\n", 400, "malformed request line"),
        (b"G(T /ready HTTP/1.1\r\nHost: x\r\n\r\n", 400, "malformed method"),
        (b"GET /ready HTTP/2.0\r\nHost: x\r\n\r\n", 505, "only HTTP/1.1"),
        (b"GET /ready HTTQ/1.1\r\nHost: x\r\n\r\n", 400, "malformed HTTP version"),
        (b"GET http://x/ready HTTP/1.1\r\nHost: x\r\n\r\n", 400, "origin-form"),
        (b"GET /re\x01dy HTTP/1.1\r\nHost: x\r\n\r\n", 400, "origin-form"),
        (b"GET /ready HTTP/1.1\r\n\r\n", 400, "exactly one Host"),
        (b"GET /ready HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "exactly one Host"),
        (b"GET /ready HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n", 400, "obsolete line folding"),
        (b"GET /ready HTTP/1.1\r\nHost : x\r\n\r\n", 400, "malformed header field"),
        (b"GET /ready HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n", 400, "malformed header field"),
        (b"GET /ready HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400, "control bytes"),
        (b"GET /ready HTTP/1.1\r\nHost: x\r\nX: a\nb\r\n\r\n", 400, "control bytes"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400,
         "invalid Content-Length"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400, "invalid Content-Length"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
         400, "both Content-Length and Transfer-Encoding"),
    ],
)  # fmt: skip
def test_malformed_requests(data: bytes, status: int, reason: str) -> None:
    error = error_of(data)
    assert (error.status, reason in error.reason) == (status, True), error.reason


def test_a_head_over_8_kib_is_431() -> None:
    filler = b"X-Filler: " + b"a" * (MAX_HEAD_BYTES - 40) + b"\r\n"
    head = b"GET /ready HTTP/1.1\r\nHost: x\r\n" + filler + b"\r\n"
    assert len(head) > MAX_HEAD_BYTES
    assert error_of(head).status == 431
    # ... also while it is still arriving, without a terminator
    assert error_of(head[:-4]).status == 431
    # ... and right at the limit it is fine
    fitting = b"GET /ready HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 100 + b"\r\n\r\n"
    pad = MAX_HEAD_BYTES - len(fitting)
    fitting = fitting.replace(b"X: ", b"X: " + b"b" * pad)
    assert len(fitting) == MAX_HEAD_BYTES
    assert heads(fitting)[0].path == "/ready"


def test_too_many_header_fields_is_431() -> None:
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(101))
    assert error_of(b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n").status == 431


@given(st.binary(max_size=300), st.integers(min_value=1, max_value=50))
def test_any_bytes_give_heads_or_an_http_error(data: bytes, chunk: int) -> None:
    """Whatever arrives, in whatever pieces: heads or an HttpError, never a crash."""
    assert feed_in_pieces(data, chunk) in (None, 400, 431, 505)


def feed_in_pieces(data: bytes, chunk: int) -> int | None:
    """The error status the bytes end in, None when they parse (so far)."""
    parser = HeadParser()
    try:
        for i in range(0, len(data), chunk):
            parser.feed(data[i : i + chunk])
            while parser.next_head() is not None:
                pass
    except HttpError as exc:
        return exc.status
    return None


@given(st.lists(st.sampled_from(["/ready", "/clusters", "/x?y=1"]), min_size=1, max_size=5),
       st.integers(min_value=1, max_value=30))  # fmt: skip
def test_splitting_does_not_change_the_result(paths: list[str], chunk: int) -> None:
    data = b"".join(f"GET {p} HTTP/1.1\r\nHost: h\r\n\r\n".encode() for p in paths)
    parser = HeadParser()
    got: list[str] = []
    for i in range(0, len(data), chunk):
        parser.feed(data[i : i + chunk])
        while (head := parser.next_head()) is not None:
            got.append(head.target)
    assert got == paths


def test_parse_head_directly() -> None:
    head = parse_head(b"HEAD /stats/prometheus HTTP/1.1\r\nHost: x\r\nAccept: */*")
    assert (head.method, head.path) == ("HEAD", "/stats/prometheus")


# --- responses -------------------------------------------------------------------------


def test_render_response() -> None:
    out = render_response(Response(200, b"ready\n"), keep_alive=True)
    assert out == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 6\r\nCache-Control: no-store\r\n\r\nready\n"
    )
    closing = render_response(Response(404, b"no"), keep_alive=False, head_only=True)
    assert closing.endswith(
        b"Content-Length: 2\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
    )
    http10 = render_response(Response(200, b""), keep_alive=True, http_version="HTTP/1.0")
    assert b"Connection: keep-alive\r\n" in http10


# --- endpoints ----------------------------------------------------------------------------


@pytest.fixture
def app(tmp_path: Path) -> AdminApp:
    settings = make_settings(tmp_path, outbound_port="16001", labels="version=v1")
    return AdminApp(
        settings,
        PROXY,
        ConfigStore(tmp_path, PROXY),
        Connectivity(settings.meshd_url),
        FakeIdentity(),
    )


def fake_identity(app: AdminApp) -> FakeIdentity:
    assert isinstance(app.identity, FakeIdentity)
    return app.identity


def get(app: AdminApp, target: str, method: str = "GET") -> Response:
    return app.handle(heads(f"{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())[0])


def test_not_ready_without_config(app: AdminApp) -> None:
    response = get(app, "/ready")
    assert response.status == 503
    assert b"waiting for the first config from meshd" in response.body
    app.connectivity.failed(ControlPlaneUnavailable("meshd at https://x is unreachable"))
    assert b"meshd at https://x is unreachable" in get(app, "/ready").body
    dump = json.loads(get(app, "/config_dump").body)
    assert (dump["proxy"], dump["version"], dump["source"], dump["snapshot"]) == (
        PROXY,
        None,
        None,
        None,
    )
    assert get(app, "/clusters").body == b""
    assert b"mesh_sidecar_config_version_info{" not in get(app, "/stats/prometheus").body


def test_ready_and_dumps_with_config(app: AdminApp) -> None:
    snap = make_snapshot("v9", endpoints=2)
    app.store.apply(snap, "saved")
    app.store.record_rejection("v10", "outbound.clusters: bad")
    assert (get(app, "/ready").status, get(app, "/ready").body) == (200, b"ready\n")

    dump_response = get(app, "/config_dump")
    assert dump_response.content_type == "application/json"
    dump = json.loads(dump_response.body)
    assert dump["proxy"] == PROXY
    assert dump["version"] == "v9"
    assert dump["source"] == "saved"
    assert dump["appliedAt"].endswith("Z")
    assert dump["snapshot"] == codec.to_plain(snap)
    assert dump["sidecar"]["outboundPort"] == 16001
    assert dump["sidecar"]["labels"] == {"version": "v1"}
    assert dump["lastRejection"]["version"] == "v10"
    assert dump["controlPlane"] == {
        "url": "https://127.0.0.1:15012",
        "connected": False,
        "lastError": None,
        "caFile": str(app.settings.ca_file),
    }
    assert dump["identity"] == {
        "spiffeId": SPIFFE,
        "serial": "1a2b",
        "notAfter": dump["identity"]["notAfter"],
        "secondsToExpiry": 3600.0,
        "trustBundle": "0123456789abcdef",
        "roots": 1,
        "renewals": 0,
        "renewalFailures": 0,
        "lastError": None,
    }
    assert dump["identity"]["notAfter"].endswith("Z")
    assert "mjt_" not in dump_response.body.decode()  # never the join token
    assert "PRIVATE KEY" not in dump_response.body.decode()

    app.connectivity.succeeded()
    stats = get(app, "/stats/prometheus")
    assert stats.content_type.startswith("text/plain; version=0.0.4")
    lines = stats.body.decode().splitlines()
    assert "mesh_sidecar_config_updates_total 0" in lines
    assert "mesh_sidecar_config_rejections_total 1" in lines
    assert "mesh_sidecar_control_plane_connected 1" in lines
    assert 'mesh_sidecar_config_version_info{version="v9"} 1' in lines
    assert "# TYPE mesh_sidecar_config_updates_total counter" in lines
    assert "mesh_sidecar_certificate_renewals_total 0" in lines  # the identity's metrics

    clusters = get(app, "/clusters").body.decode().splitlines()
    assert f"{CLUSTER}::added_via_api::true" in clusters
    assert f"{CLUSTER}::127.0.0.1:15006::identity::{SPIFFE}" in clusters
    assert f"{CLUSTER}::127.0.0.2:15006::weight::1" in clusters
    assert f"{CLUSTER}::127.0.0.2:15006::instance::reviews-1.default" in clusters


def test_not_ready_without_a_certificate(app: AdminApp) -> None:
    app.store.apply(make_snapshot("v1"))
    identity = fake_identity(app)
    identity.seconds_left = None
    response = get(app, "/ready")
    assert response.status == 503
    assert response.body == b"not ready: no certificate yet (requesting the first one from meshd)\n"
    identity.last_error = "meshd at https://x is unreachable (ConnectError: refused)"
    assert b"no certificate yet (meshd at https://x is unreachable" in get(app, "/ready").body
    dump = json.loads(get(app, "/config_dump").body)
    assert dump["identity"]["spiffeId"] is None
    assert dump["identity"]["secondsToExpiry"] is None


def test_not_ready_with_an_expired_certificate(app: AdminApp) -> None:
    app.store.apply(make_snapshot("v1"))
    identity = fake_identity(app)
    identity.seconds_left = -5.0
    identity.last_error = "meshd at https://x is unreachable"
    response = get(app, "/ready")
    assert response.status == 503
    assert b"not ready: the certificate expired at 20" in response.body
    assert b"Z (meshd at https://x is unreachable)" in response.body


def test_every_reason_is_given(app: AdminApp) -> None:
    fake_identity(app).seconds_left = None
    body = get(app, "/ready").body.decode()
    assert body.startswith("not ready: no certificate yet (")
    assert "; no config yet (waiting for the first config from meshd)" in body


def test_unknown_paths_and_methods(app: AdminApp) -> None:
    missing = get(app, "/quitquitquit")
    assert missing.status == 404
    assert b"/ready" in missing.body
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        refused = get(app, "/ready", method)
        assert refused.status == 405
        assert ("Allow", "GET, HEAD") in refused.headers
    assert get(app, "/ready", "HEAD").status == 503
