"""``mesh-sidecar run`` as a real process: against a real ``meshd serve`` (config push,
ACK, meshd's crash and return, restart from saved state, deregistration), against a
tiny fake meshd that sends tampered snapshots (NACK), and its exit statuses."""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.sidecar.sidecar_process import SidecarProcess, eventually
from tests.sidecar.support import PROXY, dangling_route_snapshot, encode, make_snapshot
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


@pytest.mark.e2e
@pytest.mark.slow
def test_sidecar_follows_meshd_and_rides_out_its_outage(
    tmp_path: Path, meshd_factory: type[MeshdProcess]
) -> None:
    ns = "sc-" + secrets.token_hex(3)
    meshd = meshd_factory(tmp_path / "meshd").start()
    state = tmp_path / "state"
    sidecar = SidecarProcess(meshd.url, meshd.token, state, namespace=ns).start()
    api = meshd.client()

    def describe() -> str:
        return f"{sidecar.describe()}\n{meshd.describe()}"

    try:
        # 1. It registers, gets its config and becomes ready.
        eventually(lambda: sidecar.get("/ready").status_code == 200, "ready", describe=describe)
        first = sidecar.dump()
        proxy = first["proxy"]
        assert proxy.startswith("reviews-")
        assert proxy.endswith(f".{ns}")
        assert first["source"] == "meshd"
        assert first["snapshot"]["proxy_id"] == proxy
        assert first["sidecar"]["outboundPort"] == sidecar.outbound_port
        assert (state / "snapshot.json").stat().st_mode & 0o777 == 0o600
        assert state.stat().st_mode & 0o777 == 0o700
        instances = api.get("/v1/instances").json()["items"]
        (mine,) = [i for i in instances if i["id"] == proxy]
        assert (mine["port"], mine["app_port"]) == (sidecar.inbound_port, 9080)

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

        # 4. Restarted while meshd is down, it serves the saved config.
        assert sidecar.stop() == 0
        assert "could not deregister" in sidecar.log_text()
        sidecar.start()
        eventually(
            lambda: sidecar.get("/ready").status_code == 200, "ready from saved state",
            describe=describe,
        )  # fmt: skip
        saved = sidecar.dump()
        assert (saved["proxy"], saved["version"], saved["source"]) == (proxy, version, "saved")
        assert sidecar.metrics()["mesh_sidecar_control_plane_connected"] == "0"
        assert f"serving saved config version {version}" in sidecar.log_text()

        # 5. meshd comes back: the sidecar registers again and gets its config from it.
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
        assert proxy in [i["id"] for i in api.get("/v1/instances").json()["items"]]
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
                proxy in [i["id"] for i in api.get("/v1/instances").json()["items"]]
                and api.get(f"/v1/proxies/{proxy}").json()["state"] == "SYNCED"
            ),
            "registration with the restarted meshd",
            timeout=20,
            describe=describe,
        )
        assert sidecar.get("/ready").status_code == 200

        # 7. SIGTERM: it deregisters and exits 0.
        assert sidecar.stop() == 0
        assert proxy not in [i["id"] for i in api.get("/v1/instances").json()["items"]]
        log = sidecar.log_text()
        assert f"deregistered instance {proxy}" in log
        assert "mesh-sidecar stopped" in log
        assert "HTTP Request" not in log  # no line per request
    finally:
        api.close()
        sidecar.kill()


# --- a fake meshd that sends tampered snapshots ---------------------------------------------


class FakeMeshd(ThreadingHTTPServer):
    """Answers polls from ``answers`` ((version, body) pairs, in order), then 304 at the
    end of each wait. Records polled versions and NACKs."""

    daemon_threads = True

    def __init__(self, answers: list[tuple[str, bytes]]) -> None:
        super().__init__((LOOPBACK, 0), FakeHandler)
        self.answers = answers
        self.polls: list[str] = []
        self.nacks: list[dict[str, Any]] = []
        self.deleted = threading.Event()
        self.closing = threading.Event()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.server_address[1]}"


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

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def do_PUT(self) -> None:
        self._body()
        self._reply(200, b"{}", {"Content-Type": "application/json"})

    def do_DELETE(self) -> None:
        self.server.deleted.set()
        self._reply(204)

    def do_POST(self) -> None:
        with self.server.lock:
            self.server.nacks.append(json.loads(self._body()))
        self._reply(204)

    def do_GET(self) -> None:
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
def fake_meshd() -> Iterator[FakeMeshd]:
    bad = encode(dangling_route_snapshot("bad1"))
    server = FakeMeshd(
        [
            ("bad1", bad),
            ("good1", encode(make_snapshot("good1"))),
            ("bad2", encode(dangling_route_snapshot("bad2"))),
        ]
    )
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
        fake_meshd.url, "tok", tmp_path / "state", extra_args=["--id", PROXY]
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
        metrics = sidecar.metrics()
        assert metrics["mesh_sidecar_config_rejections_total"] == "2"
        assert metrics["mesh_sidecar_config_updates_total"] == "1"
        assert "config version bad2 rejected, keeping version good1" in sidecar.log_text()
        assert sidecar.stop() == 0
        assert fake_meshd.deleted.is_set()
    finally:
        sidecar.kill()


# --- exit statuses --------------------------------------------------------------------------


def run_sidecar(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "run", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )


@pytest.mark.integration
def test_bad_flags_exit_2(tmp_path: Path) -> None:
    done = run_sidecar(["--app-port", "9080", "--token", "t"], tmp_path)
    assert done.returncode == 2
    assert "--service (or MESH_SERVICE) is required" in done.stderr


@pytest.mark.integration
def test_a_taken_admin_port_exits_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_sidecar(
            [
                "--service", "reviews", "--app-port", "9080", "--token", "t",
                "--admin-port", str(port), "--state-dir", str(tmp_path / "s"),
                "--meshd", f"http://{LOOPBACK}:{free_port()}",
            ],
            tmp_path,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "--admin-port" in done.stderr
