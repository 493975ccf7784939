"""Docker onboarding on a real engine (issue 5's acceptance): meshd runs on the host with
``--docker-onboarding``, listening on the engine's bridge gateway; containers started
with ``mesh.*`` labels get a sidecar container in their network namespace, which
registers them, gets a certificate and syncs its config; a stopped app takes its
sidecar and registration with it; a restarted meshd adopts what runs; two meshed
containers talk over mTLS and plaintext to a sidecar is refused."""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support.docker_engine import (
    BRIDGE_GATEWAY,
    IMAGE_BUILD_TIMEOUT,
    DockerEngine,
)
from tests.support.meshd_process import MeshdProcess
from tests.support.processes import free_port

# The first test to ask for meshd_image may build it from scratch (about two minutes).
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(IMAGE_BUILD_TIMEOUT)]

PYTHON = "/opt/meshd/bin/python"
WAIT_S = 45.0
T = TypeVar("T")


def eventually(
    what: str,
    probe: Callable[[], T | None],
    timeout: float = WAIT_S,
    context: Callable[[], str] | None = None,
) -> T:
    """``probe()`` until it returns something other than None (or False); on timeout,
    fail with ``context()`` (e.g. the sidecars' logs) in the message."""
    deadline = time.monotonic() + timeout
    while True:
        last = probe()
        if last is not None and last is not False:
            return last
        if time.monotonic() > deadline:
            said = f"\n{context()}" if context else ""
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}{said}")
        time.sleep(0.25)


class Mesh:
    """meshd on the host with Docker onboarding, and the containers a test started."""

    def __init__(self, engine: DockerEngine, image: str, server: MeshdProcess) -> None:
        self.engine = engine
        self.image = image
        self.server = server
        self.apps: list[str] = []

    # -- containers ----------------------------------------------------------------------

    def run_app(self, service: str, port: int, **labels: str) -> tuple[str, str]:
        """An app (``python -m http.server PORT``) labelled for the mesh: (id, name)."""
        name = f"onb-{service}-{secrets.token_hex(3)}"
        label_args: list[str] = [
            "--label", f"mesh.service={service}", "--label", f"mesh.port={port}",
        ]  # fmt: skip
        for key, value in labels.items():
            label_args += ["--label", f"mesh.{key.replace('_', '-')}={value}"]
        cid = self.engine.docker(
            "run", "-d", "--name", name, *label_args, self.image,
            PYTHON, "-m", "http.server", str(port),
        ).stdout.strip()  # fmt: skip
        self.apps.append(cid)
        return cid, name

    def sidecar_ids(self, app_id: str) -> list[str]:
        return self.engine.docker(
            "ps", "-a", "-q", "--no-trunc", "--filter", f"label=mesh.sidecar-for={app_id}"
        ).stdout.split()

    def sidecars(self, app_id: str) -> list[dict[str, Any]]:
        found = []
        for cid in self.sidecar_ids(app_id):
            done = self.engine.docker("inspect", cid, check=False)
            if done.returncode == 0:  # else removed meanwhile
                found.extend(json.loads(done.stdout))
        return found

    def sidecar_logs(self) -> str:
        """The end of every sidecar's log, for failure messages."""
        out = []
        for app_id in self.apps:
            for cid in self.sidecar_ids(app_id):
                done = self.engine.docker("logs", "--tail", "30", cid, check=False)
                out.append(
                    f"--- sidecar {cid[:12]} of {app_id[:12]} ---\n{done.stdout}{done.stderr}"
                )
        return "\n".join(out) or "(no sidecar containers)"

    def wait_sidecar(self, app_id: str) -> dict[str, Any]:
        def running() -> dict[str, Any] | None:
            found = self.sidecars(app_id)
            return found[0] if len(found) == 1 and found[0]["State"]["Running"] else None

        return eventually(
            f"a running sidecar for {app_id[:12]}", running, context=self.sidecar_logs
        )

    def exec(self, container: str, *argv: str, env: dict[str, str] | None = None) -> str:
        env_args = [a for k, v in (env or {}).items() for a in ("-e", f"{k}={v}")]
        done = self.engine.docker("exec", *env_args, container, *argv, check=False, timeout=30)
        return done.stdout + done.stderr

    def cleanup(self) -> None:
        for app_id in self.apps:
            sidecars = self.sidecar_ids(app_id)
            self.engine.docker("rm", "-f", "-v", app_id, check=False)
            if sidecars:  # meshd may be removing them at the same time: no check
                self.engine.docker("rm", "-f", "-v", *sidecars, check=False)

    # -- meshd ---------------------------------------------------------------------------

    def get(self, path: str) -> Any:
        with self.server.client() as http:
            answer = http.get(path)
        return answer.json() if answer.status_code == 200 else None

    def instance(self, service: str) -> dict[str, Any] | None:
        found = self.get(f"/v1/services/{service}")
        return found["instances"][0] if found and found["instances"] else None

    def proxy_state(self, proxy: str) -> str | None:
        for item in (self.get("/v1/proxies") or {}).get("items", []):
            if item["proxy"] == proxy:
                return str(item["state"])
        return None

    def wait_synced(self, proxy: str) -> None:
        eventually(
            f"proxy {proxy} SYNCED",
            lambda: self.proxy_state(proxy) == "SYNCED",
            context=self.sidecar_logs,
        )


@contextlib.contextmanager
def onboarding_mesh(
    engine: DockerEngine,
    image: str,
    factory: type[MeshdProcess],
    data_dir: Path,
    docker_host: str | None = None,
) -> Iterator[Mesh]:
    server = factory(
        data_dir,
        host=BRIDGE_GATEWAY,  # an address of this host that containers reach
        port=free_port(BRIDGE_GATEWAY),
        extra_args=[
            "--docker-onboarding",
            "--docker-host", docker_host or engine.host,
            "--sidecar-image", image,
        ],
    )  # fmt: skip
    server.start()
    mesh = Mesh(engine, image, server)
    try:
        yield mesh
    finally:
        # meshd first, while the sidecars still have their network and close their
        # connections to it; then the containers.
        server.stop()
        mesh.cleanup()


@pytest.fixture
def mesh(
    docker_engine: DockerEngine,
    meshd_image: str,
    meshd_factory: type[MeshdProcess],
    tmp_path: Path,
) -> Iterator[Mesh]:
    with onboarding_mesh(docker_engine, meshd_image, meshd_factory, tmp_path / "meshd") as m:
        yield m


class SocketRelay:
    """A stand-in for the engine's socket that can go away and come back: relays a unix
    socket of its own to the engine's, so a test can cut meshd off from a shared engine
    without stopping it."""

    def __init__(self, engine: DockerEngine, path: Path) -> None:
        if engine.socket is None:
            pytest.fail(f"the relay needs the engine on a unix socket, not {engine.host}")
        self.target = str(engine.socket)
        self.path = path
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def start(self) -> None:
        self.path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        """As if the engine died: no new connections, the open ones cut."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self.path.unlink(missing_ok=True)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _log(server: MeshdProcess) -> str:
    assert server.process is not None
    return server.process.log_path.read_text(errors="replace")


def test_a_labelled_container_gets_a_sidecar_and_leaves_with_it(mesh: Mesh) -> None:
    started = time.monotonic()
    app_id, name = mesh.run_app("web", 8080, version="v1")
    ip = mesh.engine.container_ip(app_id)

    sidecar = mesh.wait_sidecar(app_id)
    assert sidecar["Name"] == f"/{name}-mesh-sidecar"
    host = sidecar["HostConfig"]
    assert host["NetworkMode"] == f"container:{app_id}"
    assert host["RestartPolicy"]["Name"] == "on-failure"
    labels = sidecar["Config"]["Labels"]
    assert labels["mesh.managed-by"] == "meshd"
    assert labels["mesh.sidecar-for"] == app_id
    env = dict(e.split("=", 1) for e in sidecar["Config"]["Env"])
    assert env["MESH_MESHD"] == mesh.server.url
    assert env["MESH_ADDRESS"] == ip
    assert env["MESH_LABELS"] == "version=v1"
    assert env["MESH_TOKEN"].startswith("mjt_"), "a join token, never an admin token"
    assert sidecar["Config"]["Cmd"] == ["mesh-sidecar", "run"]

    instance = eventually(
        "web in the catalog", lambda: mesh.instance("web"), context=mesh.sidecar_logs
    )
    proxy = f"web-{app_id[:8]}.default"
    assert instance["id"] == proxy
    assert instance["address"] == f"{ip}:15006"
    assert instance["appPort"] == 8080
    assert instance["labels"] == {"version": "v1"}
    certs = mesh.get("/v1/certs")["items"]
    mine = [c for c in certs if c["proxy"] == proxy]
    assert mine, f"no certificate for {proxy}: {json.dumps(certs)[:400]}"
    assert mine[0]["spiffeId"] == "spiffe://cluster.local/ns/default/sa/web"
    mesh.wait_synced(proxy)
    joined = time.monotonic() - started

    tokens = mesh.get("/v1/tokens")["items"]
    assert [t["uses"] for t in tokens if t["service"] == "web"] == ["single"]

    # A restarted app (new network namespace) gets a new sidecar; the instance stays.
    mesh.engine.docker("restart", "-t", "2", app_id)
    eventually(
        "a new sidecar after the app's restart",
        lambda: (
            [s["Id"] for s in mesh.sidecars(app_id) if s["State"]["Running"]]
            not in ([], [sidecar["Id"]])
        ),
        context=mesh.sidecar_logs,
    )
    mesh.wait_synced(proxy)
    assert len(mesh.sidecars(app_id)) == 1

    mesh.engine.docker("stop", "-t", "5", app_id)
    stopped = time.monotonic()
    eventually("the sidecar removed", lambda: mesh.sidecars(app_id) == [])
    eventually("web gone from the catalog", lambda: mesh.instance("web") is None)
    left = time.monotonic() - stopped

    log = _log(mesh.server)
    assert "docker onboarding: started sidecar" in log
    assert "docker onboarding: removed sidecar" in log
    print(f"joined the mesh in {joined:.1f}s; gone {left:.1f}s after docker stop")


def test_meshd_restarted_adopts_the_running_sidecar(mesh: Mesh) -> None:
    app_id, _ = mesh.run_app("api", 9000)
    before = mesh.wait_sidecar(app_id)
    proxy = f"api-{app_id[:8]}.default"
    mesh.wait_synced(proxy)

    mesh.server.restart()
    eventually(
        "the reconciliation after the restart",
        lambda: _log(mesh.server).count("docker onboarding: reconciling") >= 1,
    )
    mesh.wait_synced(proxy)  # the sidecar found meshd again
    after = mesh.sidecars(app_id)
    assert [s["Id"] for s in after] == [before["Id"]], "adopted, not replaced or duplicated"
    assert after[0]["RestartCount"] == 0

    # A sidecar removed behind meshd's back is replaced with a new one.
    mesh.engine.docker("rm", "-f", before["Id"])
    replaced = mesh.wait_sidecar(app_id)
    assert replaced["Id"] != before["Id"]


def test_two_meshed_containers_talk_over_mtls_and_plaintext_is_refused(mesh: Mesh) -> None:
    web_id, _ = mesh.run_app("web", 8080, version="v1")
    client_id, _ = mesh.run_app("client", 8081)
    for app_id, service in ((web_id, "web"), (client_id, "client")):
        mesh.wait_sidecar(app_id)
        mesh.wait_synced(f"{service}-{app_id[:8]}.default")
    web_ip = mesh.engine.container_ip(web_id)

    call = (
        "import urllib.request as u\n"
        "with u.urlopen('http://web:8080/', timeout=5) as r:\n"
        "    print('STATUS', r.status)\n"
    )

    def through_the_mesh() -> str | None:
        said = mesh.exec(
            client_id, PYTHON, "-c", call, env={"HTTP_PROXY": "http://127.0.0.1:15001"}
        )
        return said if "STATUS 200" in said else None

    eventually(
        "200 from web through the client's sidecar", through_the_mesh, context=mesh.sidecar_logs
    )

    stats = mesh.exec(
        web_id,
        PYTHON,
        "-c",
        "import urllib.request as u; "
        "print(u.urlopen('http://127.0.0.1:15000/stats/prometheus', timeout=5).read().decode())",
    )
    inbound = [
        line
        for line in stats.splitlines()
        if line.startswith("istio_requests_total{") and 'reporter="destination"' in line
    ]
    assert inbound, f"no inbound request metric on web's sidecar:\n{stats[:2000]}"
    assert all('connection_security_policy="mutual_tls"' in line for line in inbound), inbound
    assert any('source_workload="client"' in line for line in inbound) or any(
        "ns/default/sa/client" in line for line in inbound
    ), inbound

    probe = (
        "import socket, sys\n"
        f"s = socket.create_connection(('{web_ip}', 15006), timeout=5)\n"
        "s.sendall(b'GET / HTTP/1.1\\r\\nHost: web\\r\\n\\r\\n')\n"
        "try:\n"
        "    data = s.recv(1024)\n"
        "except ConnectionResetError:\n"
        "    data = b''\n"
        "print('ANSWER', repr(data))\n"
    )
    # From a container outside the mesh (no sidecar, no certificate).
    done = mesh.engine.docker(
        "run", "--rm", mesh.image, PYTHON, "-c", probe, check=False, timeout=60
    )  # fmt: skip
    said = done.stdout + done.stderr
    assert "ANSWER b''" in said, f"STRICT mTLS must close plaintext unanswered; got: {said}"


def test_a_failing_sidecar_is_reported_with_its_log(mesh: Mesh) -> None:
    """The app holds the sidecar's admin port (15000), so every sidecar start fails:
    Docker restarts it a few times, then gives up; meshd's log says so, once, with the
    sidecar's last lines, and leaves it (no restart loop of its own)."""
    name = f"onb-busy-{secrets.token_hex(3)}"
    both = f"{PYTHON} -m http.server 15000 & exec {PYTHON} -m http.server 8080"
    app_id = mesh.engine.docker(
        "run", "-d", "--name", name,
        "--label", "mesh.service=busy", "--label", "mesh.port=8080",
        mesh.image, "sh", "-c", both,
    ).stdout.strip()  # fmt: skip
    mesh.apps.append(app_id)

    def gave_up() -> bool:
        log = _log(mesh.server)
        return "Docker does not restart it" in log and "keeps failing" in log

    eventually("meshd to report the failing sidecar", gave_up, timeout=60)
    log = _log(mesh.server)
    assert log.count("keeps failing") == 1
    assert log.count("Docker does not restart it") == 1
    assert "  | " in log, "the sidecar's own log lines are quoted"
    (sidecar,) = mesh.sidecars(app_id)
    assert sidecar["State"]["Status"] == "exited"
    assert sidecar["State"]["ExitCode"] != 0


def test_the_engine_going_away_and_back(
    docker_engine: DockerEngine,
    meshd_image: str,
    meshd_factory: type[MeshdProcess],
    tmp_path: Path,
) -> None:
    """meshd loses the engine (its socket goes away), an app stops meanwhile; when the
    engine is back, meshd reconnects on its own and reconciles: the orphaned sidecar and
    the instance are removed."""
    relay = SocketRelay(docker_engine, tmp_path / "engine.sock")
    relay.start()
    try:
        with onboarding_mesh(
            docker_engine, meshd_image, meshd_factory, tmp_path / "meshd", relay.url
        ) as mesh:
            app_id, _ = mesh.run_app("db", 5432)
            mesh.wait_sidecar(app_id)
            mesh.wait_synced(f"db-{app_id[:8]}.default")

            relay.stop()
            eventually("meshd to notice", lambda: "lost the engine" in _log(mesh.server))
            mesh.engine.docker("stop", "-t", "2", app_id)  # unseen by meshd
            time.sleep(1.0)
            assert len(mesh.sidecars(app_id)) == 1, "meshd cannot have acted on it"

            relay.start()
            eventually("meshd to reconnect", lambda: "answers again" in _log(mesh.server))
            eventually("the orphaned sidecar removed", lambda: mesh.sidecars(app_id) == [])
            eventually("db gone from the catalog", lambda: mesh.instance("db") is None)
            assert _log(mesh.server).count("docker onboarding: reconciling") == 2
    finally:
        relay.stop()
