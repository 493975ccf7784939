"""``mesh-sidecar run`` as a real process: against a real ``meshd serve`` (its certificate
with a join token, config push, ACK over mTLS, meshd's crash and return, restart from
saved config and saved certificate, deregistration, a used-up join token), against a
tiny fake meshd over HTTPS that sends tampered snapshots (NACK), and its exit statuses.

The sidecars here hold no admin token at all: every registration, poll and NACK that
meshd accepts was authenticated by the workload certificate."""

from __future__ import annotations

import json
import secrets
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from sidecar.tls_contexts import bundle_digest
from tests.sidecar.sidecar_process import SidecarProcess, eventually
from tests.sidecar.support import (
    JOIN_TOKEN,
    PROXY,
    SPIFFE,
    dangling_route_snapshot,
    encode,
    make_snapshot,
)
from tests.sidecar.test_identity_support import FakeMeshdCa, TestCa
from tests.support.meshd_process import MeshdProcess
from tests.support.processes import LOOPBACK, REPO_ROOT, free_port

VIRTUAL_SERVICE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: {ns}}}
spec:
  hosts: [reviews]
  http:
  - timeout: 3s
    route:
    - destination: {{host: reviews}}
"""


def vhost_sources(dump: dict[str, Any]) -> list[str | None]:
    return [vh["source"] for vh in dump["snapshot"]["outbound"]["virtual_hosts"]]


def join_token(api: httpx.Client, namespace: str, uses: str = "multi") -> str:
    created = api.post(
        "/v1/tokens", json={"service": "reviews", "namespace": namespace, "uses": uses}
    )
    assert created.status_code == 201, created.text
    return str(created.json()["token"])


def instance_ids(api: httpx.Client) -> list[str]:
    return [i["id"] for i in api.get("/v1/instances").json()["items"]]


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sidecar_follows_meshd_and_rides_out_its_outage(
    tmp_path: Path, meshd_factory: type[MeshdProcess]
) -> None:
    ns = "sc-" + secrets.token_hex(3)
    meshd = meshd_factory(tmp_path / "meshd").start()
    api = meshd.client()
    state = tmp_path / "state"
    sidecar = SidecarProcess(
        meshd.url, join_token(api, ns), state, namespace=ns, ca_file=meshd.ca_file
    ).start()

    def describe() -> str:
        return f"{sidecar.describe()}\n{meshd.describe()}"

    try:
        # 1. It gets its certificate, registers over mTLS, gets its config: ready.
        eventually(lambda: sidecar.get("/ready").status_code == 200, "ready", describe=describe)
        first = sidecar.dump()
        proxy = first["proxy"]
        assert proxy.startswith("reviews-")
        assert proxy.endswith(f".{ns}")
        assert first["source"] == "meshd"
        assert first["snapshot"]["proxy_id"] == proxy
        assert first["sidecar"]["outboundPort"] == sidecar.outbound_port
        identity = first["identity"]
        assert identity["spiffeId"] == f"spiffe://cluster.local/ns/{ns}/sa/reviews"
        assert identity["secondsToExpiry"] > 3600
        assert identity["trustBundle"] == first["snapshot"]["trust_bundle"]
        assert "PRIVATE KEY" not in json.dumps(first)
        for private in (state / "snapshot.json", state / "identity.json"):
            assert private.stat().st_mode & 0o777 == 0o600
        assert state.stat().st_mode & 0o777 == 0o700
        instances = api.get("/v1/instances").json()["items"]
        (mine,) = [i for i in instances if i["id"] == proxy]
        assert (mine["port"], mine["app_port"]) == (sidecar.inbound_port, 9080)
        (cert,) = [c for c in api.get("/v1/certs").json()["items"] if c["proxy"] == proxy]
        assert (cert["serial"], cert["via"]) == (identity["serial"], "join-token")
        assert float(sidecar.metrics()["mesh_sidecar_certificate_expiry_seconds"]) > 3600
        assert "certificate obtained for" in sidecar.log_text()

        # 2. A rule change reaches it within seconds; meshd sees it ACKed.
        applied = api.post(
            "/v1/apply",
            content=VIRTUAL_SERVICE.format(ns=ns),
            headers={"Content-Type": "application/yaml"},
        )
        assert applied.status_code == 200, applied.text
        updated = eventually(
            lambda: (
                (d := sidecar.dump())["version"] != first["version"]
                and f"{ns}/reviews" in vhost_sources(d)
                and d
            ),
            "the VirtualService reaching the sidecar",
            timeout=10,
            describe=describe,
        )
        version = updated["version"]
        eventually(
            lambda: (
                (s := api.get(f"/v1/proxies/{proxy}").json())["state"] == "SYNCED"
                and s["ackedVersion"] == version
            ),
            "meshd seeing the new version ACKed",
            timeout=10,
            describe=describe,
        )

        # 3. meshd crashes: the sidecar keeps serving and says it lost meshd.
        meshd.kill()
        eventually(
            lambda: sidecar.metrics()["mesh_sidecar_control_plane_connected"] == "0",
            "connected 0",
            describe=describe,
        )
        assert sidecar.get("/ready").status_code == 200
        assert sidecar.dump()["version"] == version
        metrics = sidecar.metrics()
        assert metrics[f'mesh_sidecar_config_version_info{{version="{version}"}}'] == "1"
        assert int(metrics["mesh_sidecar_config_updates_total"]) >= 2

        # 4. Restarted while meshd is down, it serves the saved config and certificate.
        assert sidecar.stop() == 0
        assert "could not deregister" in sidecar.log_text()
        sidecar.start()
        eventually(
            lambda: sidecar.get("/ready").status_code == 200, "ready from saved state",
            describe=describe,
        )  # fmt: skip
        saved = sidecar.dump()
        assert (saved["proxy"], saved["version"], saved["source"]) == (proxy, version, "saved")
        assert saved["identity"]["serial"] == identity["serial"]
        assert sidecar.metrics()["mesh_sidecar_control_plane_connected"] == "0"
        log = sidecar.log_text()
        assert f"serving saved config version {version}" in log
        assert f"serving the saved certificate for {identity['spiffeId']}" in log

        # 5. meshd comes back: the sidecar registers again over mTLS (it holds no other
        #    credential) and gets its config from it.
        meshd.start()
        eventually(
            lambda: (
                (d := sidecar.dump())["source"] == "meshd"
                and d["controlPlane"]["connected"]
                and f"{ns}/reviews" in vhost_sources(d)
            ),
            "config from the restarted meshd",
            timeout=20,
            describe=describe,
        )
        assert proxy in instance_ids(api)
        back = sidecar.dump()["version"]
        eventually(
            lambda: api.get(f"/v1/proxies/{proxy}").json()["ackedVersion"] == back,
            "meshd seeing the config ACKed after its restart",
            timeout=10,
            describe=describe,
        )

        # 6. meshd restarts under a connected sidecar and forgets its in-memory catalog:
        #    the sidecar notices (404 or a broken poll) and registers again.
        meshd.kill()
        meshd.start()
        eventually(
            lambda: (
                proxy in instance_ids(api)
                and api.get(f"/v1/proxies/{proxy}").json()["state"] == "SYNCED"
            ),
            "registration with the restarted meshd",
            timeout=20,
            describe=describe,
        )
        assert sidecar.get("/ready").status_code == 200

        # 7. SIGTERM: it deregisters (over mTLS) and exits 0.
        assert sidecar.stop() == 0
        assert proxy not in instance_ids(api)
        log = sidecar.log_text()
        assert f"deregistered instance {proxy}" in log
        assert "mesh-sidecar stopped" in log
        assert "HTTP Request" not in log  # no line per request
    finally:
        api.close()
        sidecar.kill()


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(90)
def test_not_ready_until_it_has_a_certificate(
    tmp_path: Path, meshd_factory: type[MeshdProcess]
) -> None:
    """meshd down at the first start: no certificate, so 503 with the reason; the
    sidecar keeps trying, and is ready soon after meshd is back."""
    ns = "sc-" + secrets.token_hex(3)
    meshd = meshd_factory(tmp_path / "meshd").start()
    with meshd.client() as api:
        token = join_token(api, ns)
    meshd.stop()
    sidecar = SidecarProcess(
        meshd.url, token, tmp_path / "state", namespace=ns, ca_file=meshd.ca_file
    ).start()
    try:
        not_ready = sidecar.get("/ready")
        assert not_ready.status_code == 503
        assert "not ready: no certificate yet (" in not_ready.text
        eventually(
            lambda: f"meshd at {meshd.url} is unreachable" in sidecar.get("/ready").text,
            "the reason on /ready",
            describe=sidecar.describe,
        )
        dump = sidecar.dump()
        assert dump["identity"]["spiffeId"] is None
        assert "mesh_sidecar_certificate_expiry_seconds" not in sidecar.metrics()
        assert "getting the first certificate failed" in sidecar.log_text()
        meshd.start()
        eventually(
            lambda: sidecar.get("/ready").status_code == 200,
            "ready once meshd is back",
            timeout=45,  # the first-certificate backoff grows to 30 s
            describe=lambda: f"{sidecar.describe()}\n{meshd.describe()}",
        )
        assert (
            sidecar.dump()["identity"]["spiffeId"] == f"spiffe://cluster.local/ns/{ns}/sa/reviews"
        )
        assert sidecar.stop() == 0
    finally:
        sidecar.kill()


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_used_single_use_join_token_is_fatal_on_a_fresh_state_dir(
    tmp_path: Path, meshd_server: MeshdProcess
) -> None:
    ns = "sc-" + secrets.token_hex(3)
    with meshd_server.client() as api:
        token = join_token(api, ns, uses="single")
    first = SidecarProcess(
        meshd_server.url, token, tmp_path / "first", namespace=ns, ca_file=meshd_server.ca_file
    ).start()
    try:
        eventually(lambda: first.get("/ready").status_code == 200, "ready", describe=first.describe)
        # The used token does not matter to a restart: it has its saved certificate.
        assert first.stop() == 0
        first.start()
        eventually(
            lambda: first.get("/ready").status_code == 200, "ready again", describe=first.describe
        )
        assert "serving the saved certificate" in first.log_text()
        assert first.stop() == 0
    finally:
        first.kill()
    done = run_sidecar(
        [
            "--meshd", meshd_server.url, "--ca-file", str(meshd_server.ca_file),
            "--service", "reviews", "--namespace", ns, "--app-port", "9080",
            "--admin-port", str(free_port()), "--state-dir", str(tmp_path / "fresh"),
        ],
        tmp_path,
        token=token,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "meshd refused the join token" in done.stderr
    assert (
        f"a new join token is needed: meshctl token create --service reviews --namespace {ns}"
        in done.stderr
    )
    assert "Traceback" not in done.stderr


# --- a fake meshd over HTTPS that sends tampered snapshots ------------------------------------


class FakeMeshd(ThreadingHTTPServer):
    """meshd's sidecar API over HTTPS, with a test CA: signs CSRs (``FakeMeshdCa``),
    answers polls from ``answers`` ((version, body) pairs, in order), then 304 at the end
    of each wait. Records polled versions, NACKs, and for every request whether it came
    with a verified client certificate and which Authorization header."""

    daemon_threads = True

    def __init__(self, answers: list[tuple[str, bytes]], directory: Path) -> None:
        super().__init__((LOOPBACK, 0), FakeHandler)
        self.ca = TestCa("fake meshd root")
        self.signer = FakeMeshdCa(self.ca)
        self.ca_file = directory / "ca-bundle.pem"
        directory.mkdir(parents=True, exist_ok=True)
        self.ca_file.write_text(self.ca.root_pem)
        credentials = self.ca.credentials(directory, None, ips=(LOOPBACK,), name="server.pem")
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(credentials)
        self.context.load_verify_locations(cadata=self.ca.root_pem)
        self.context.verify_mode = ssl.CERT_OPTIONAL
        self.answers = answers
        self.polls: list[str] = []
        self.nacks: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str, bool, str | None]] = []
        self.deleted = threading.Event()
        self.closing = threading.Event()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.server_address[1]}"

    @property
    def bundle(self) -> tuple[tuple[str, ...], str]:
        roots = (self.ca.root_pem,)
        return roots, bundle_digest(roots)

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            FakeHandler(tls, client_address, self)
        finally:
            tls.close()


class FakeHandler(BaseHTTPRequestHandler):
    server: FakeMeshd
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, body: Any) -> None:
        self._reply(status, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def _record(self) -> None:
        assert isinstance(self.connection, ssl.SSLSocket)
        mtls = bool(self.connection.getpeercert())
        with self.server.lock:
            self.server.requests.append(
                (self.command, urlsplit(self.path).path, mtls, self.headers.get("Authorization"))
            )

    def do_PUT(self) -> None:
        self._record()
        self._body()
        self._json(200, {})

    def do_DELETE(self) -> None:
        self._record()
        self.server.deleted.set()
        self._reply(204)

    def do_POST(self) -> None:
        self._record()
        body = json.loads(self._body())
        if self.path == "/v1/ca/sign":
            self._json(200, self.server.signer.sign(body["csr"]))
            return
        with self.server.lock:
            self.server.nacks.append(body)
        self._reply(204)

    def do_GET(self) -> None:
        self._record()
        if self.path == "/v1/ca/roots":
            self._json(200, {"trustDomain": "cluster.local", "roots": []})
            return
        query = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
        with self.server.lock:
            self.server.polls.append(query["version"][0])
            answer = self.server.answers.pop(0) if self.server.answers else None
        if answer is None:
            # a long poll with nothing new: 304 at the end of the wait
            self.server.closing.wait(float(query["wait"][0]))
            self._reply(304)
            return
        version, body = answer
        self._reply(200, body, {"X-Mesh-Version": version, "Content-Type": "application/json"})


@pytest.fixture
def fake_meshd(tmp_path: Path) -> Iterator[FakeMeshd]:
    server = FakeMeshd([], tmp_path / "fake-meshd")
    roots, digest = server.bundle
    server.answers += [
        ("bad1", encode(dangling_route_snapshot("bad1"))),
        ("good1", encode(make_snapshot("good1", trust_roots=roots, trust_bundle=digest))),
        ("bad2", encode(dangling_route_snapshot("bad2"))),
    ]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.closing.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.integration
def test_tampered_snapshots_are_nacked_and_the_last_good_one_kept(
    tmp_path: Path, fake_meshd: FakeMeshd
) -> None:
    sidecar = SidecarProcess(
        fake_meshd.url,
        JOIN_TOKEN,
        tmp_path / "state",
        ca_file=fake_meshd.ca_file,
        extra_args=["--id", PROXY],
    ).start()
    try:
        eventually(
            lambda: len(fake_meshd.nacks) == 2 and len(fake_meshd.polls) >= 4,
            "two NACKs",
            describe=sidecar.describe,
        )
        assert [n["version"] for n in fake_meshd.nacks] == ["bad1", "bad2"]
        for nack in fake_meshd.nacks:
            assert "is not in the snapshot" in nack["error"]
        # after bad1 it polls with the old version (none), after bad2 with good1
        assert fake_meshd.polls[:4] == ["", "", "good1", "good1"]
        assert sidecar.get("/ready").status_code == 200
        dump = sidecar.dump()
        assert (dump["version"], dump["source"]) == ("good1", "meshd")
        assert dump["lastRejection"]["version"] == "bad2"
        assert dump["identity"]["spiffeId"] == SPIFFE
        assert dump["identity"]["trustBundle"] == fake_meshd.bundle[1]
        metrics = sidecar.metrics()
        assert metrics["mesh_sidecar_config_rejections_total"] == "2"
        assert metrics["mesh_sidecar_config_updates_total"] == "1"
        assert "config version bad2 rejected, keeping version good1" in sidecar.log_text()
        assert sidecar.stop() == 0
        assert fake_meshd.deleted.is_set()
        # Only the first certificate used the join token; everything else was mTLS.
        with fake_meshd.lock:
            requests = list(fake_meshd.requests)
        signs = [r for r in requests if r[1] == "/v1/ca/sign"]
        assert signs == [("POST", "/v1/ca/sign", False, f"Bearer {JOIN_TOKEN}")]
        agent_requests = [r for r in requests if r[1].startswith(("/v1/instances", "/v1/xds"))]
        assert {r[0] for r in agent_requests} == {"PUT", "GET", "POST", "DELETE"}
        assert all(mtls and auth is None for _, _, mtls, auth in agent_requests), agent_requests
    finally:
        sidecar.kill()


# --- exit statuses --------------------------------------------------------------------------


def run_sidecar(
    args: list[str], tmp_path: Path, token: str = JOIN_TOKEN
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "run", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MESH_TOKEN": token},
    )


@pytest.mark.integration
def test_bad_flags_exit_2(tmp_path: Path) -> None:
    done = run_sidecar(["--app-port", "9080"], tmp_path)
    assert done.returncode == 2
    assert "--service (or MESH_SERVICE) is required" in done.stderr
    done = run_sidecar(["--service", "reviews", "--app-port", "9080"], tmp_path)
    assert done.returncode == 2
    assert "--ca-file (or MESH_CA_FILE) is required" in done.stderr


@pytest.mark.integration
def test_an_unreadable_ca_file_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "ca-bundle.pem"
    done = run_sidecar(
        ["--service", "reviews", "--app-port", "9080", "--ca-file", str(missing),
         "--state-dir", str(tmp_path / "s"), "--admin-port", str(free_port())],
        tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"--ca-file (or MESH_CA_FILE): cannot read {missing}" in done.stderr


@pytest.mark.integration
def test_sigterm_while_waiting_for_the_first_certificate_exits_0(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(TestCa().root_pem)
    sidecar = SidecarProcess(
        f"https://{LOOPBACK}:{free_port()}", JOIN_TOKEN, tmp_path / "state", ca_file=ca_file
    ).start()
    try:
        assert sidecar.get("/ready").status_code == 503
        eventually(
            lambda: "getting the first certificate failed" in sidecar.log_text(),
            "a failed attempt",
            describe=sidecar.describe,
        )
        assert sidecar.stop() == 0
        log = sidecar.log_text()
        assert "stopped before this sidecar got a certificate: nothing to deregister" in log
        assert "mesh-sidecar stopped" in log
    finally:
        sidecar.kill()


@pytest.mark.integration
def test_a_taken_admin_port_exits_1(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(TestCa().root_pem)
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_sidecar(
            [
                "--service", "reviews", "--app-port", "9080", "--ca-file", str(ca_file),
                "--admin-port", str(port), "--state-dir", str(tmp_path / "s"),
                "--meshd", f"https://{LOOPBACK}:{free_port()}",
            ],
            tmp_path,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "--admin-port" in done.stderr
