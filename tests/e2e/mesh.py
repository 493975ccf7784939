"""A whole mesh of real processes on loopback, for end-to-end tests: ``meshd serve``,
one ``mesh-sidecar run`` per service instance, and the test backends behind them
(``python -m tests.support.apps``: HTTP echo, WebSocket echo, TCP echo).

``Mesh`` owns them all and stops them in reverse order (``stop``, or leaving
``with Mesh(root) as mesh:``). A test (or a module-scoped fixture) builds its topology::

    with Mesh(tmp_path) as mesh:
        web = mesh.backend("web-v1", version="v1")
        server = mesh.sidecar("web", app=web, labels={"version": "v1"})
        client = mesh.sidecar("client")
        mesh.wait_ready()
        with mesh.http_client(client) as http:            # the test plays client's app
            http.get(f"http://web:{web.port}/")

Everything lives in one namespace of its own (``mesh.namespace``), so several meshes, or
tests sharing a meshd, do not see each other's rules.
"""

from __future__ import annotations

import secrets
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.sidecar.sidecar_process import SidecarProcess, eventually
from tests.support.meshd_process import MeshdProcess
from tests.support.processes import LOOPBACK, REPO_ROOT, ManagedProcess, free_port

APP_START_TIMEOUT = 15.0
READY_TIMEOUT = 30.0
CONFIG_TIMEOUT = 15.0
STAGE_SIDECARS, STAGE_BACKENDS, STAGE_MESHD = range(3)


@dataclass(frozen=True, slots=True)
class Backend:
    """A test backend process (``tests.support.apps``) listening on ``host:port``."""

    name: str
    kind: str
    host: str
    port: int
    process: ManagedProcess


def shared_port(*hosts: str) -> int:
    """A port free on every one of ``hosts`` (two instances of one service listen on
    the same app port, each on its own loopback address)."""
    for _ in range(100):
        port = free_port()
        try:
            for host in hosts:
                with socket.socket() as sock:
                    sock.bind((host, port))
        except OSError:
            continue
        return port
    raise AssertionError("no port free on all of " + ", ".join(hosts))


def wait_listening(host: str, port: int, process: ManagedProcess, what: str) -> None:
    deadline = time.monotonic() + APP_START_TIMEOUT
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if not process.alive or time.monotonic() > deadline:
                raise AssertionError(f"{what} did not start\n{process.describe()}") from None
            time.sleep(0.05)


class Mesh:
    """meshd, sidecars and backends as real processes (see the module docstring).

    ``meshd``: a ``MeshdProcess`` to use (e.g. from the ``meshd_factory`` fixture, so a
    failing test's report carries its log); by default one with its data under ``root``.
    """

    def __init__(
        self, root: Path, *, namespace: str | None = None, meshd: MeshdProcess | None = None
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.namespace = namespace or "e2e-" + secrets.token_hex(3)
        self.meshd = meshd or MeshdProcess(root / "meshd")
        self.sidecars: list[SidecarProcess] = []
        self.backends: list[Backend] = []
        self._api: httpx.Client | None = None
        self._tokens: dict[str, str] = {}
        # What to stop, by stage: the sidecars (they drain and deregister from meshd),
        # then the backends, then meshd; the processes of one stage stop in parallel.
        self._stops: dict[int, list[Callable[[], object]]] = {}

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> Mesh:
        """Start meshd (sidecars and backends start when asked for)."""
        self._on_stop(STAGE_MESHD, self.meshd.stop)
        self.meshd.start()
        return self

    def kill_meshd(self) -> None:
        """SIGKILL meshd (a crash); the sidecars keep what they have."""
        self._close_api()
        self.meshd.kill()

    def start_meshd(self) -> None:
        """Start meshd again, on the same data dir and port."""
        self._close_api()
        self.meshd.start()

    def _close_api(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None

    def _on_stop(self, stage: int, stop: Callable[[], object]) -> None:
        self._stops.setdefault(stage, []).append(stop)

    def stop(self) -> None:
        """Stop everything started: the sidecars, then the backends, then meshd (each
        stage's processes at once)."""
        stages, self._stops = self._stops, {}
        errors: list[BaseException] = []

        def run(stop: Callable[[], object]) -> None:
            try:
                stop()
            except BaseException as exc:  # reported below, after every process was stopped
                errors.append(exc)

        for stage in sorted(stages):
            if stage == STAGE_MESHD:  # meshd waits for clients' keep-alive connections
                self._close_api()
            threads = [threading.Thread(target=run, args=(stop,)) for stop in stages[stage]]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        self._close_api()
        if errors:
            raise errors[0]

    def __enter__(self) -> Mesh:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def api(self) -> httpx.Client:
        """meshd's REST API with the admin token (made again after a restart of meshd)."""
        if self._api is None:
            self._api = self.meshd.client()
        return self._api

    # --- processes ---------------------------------------------------------------------

    def join_token(self, service: str) -> str:
        """A multi-use join token for ``service`` in the mesh's namespace (one per service)."""
        if service not in self._tokens:
            created = self.api.post(
                "/v1/tokens",
                json={"service": service, "namespace": self.namespace, "uses": "multi"},
            )
            assert created.status_code == 201, created.text
            self._tokens[service] = str(created.json()["token"])
        return self._tokens[service]

    def backend(
        self,
        name: str,
        *,
        kind: str = "http",
        host: str = LOOPBACK,
        port: int | None = None,
        version: str = "v1",
        fail_rate: float = 0.0,
        delay_s: float = 0.0,
    ) -> Backend:
        """Start a test backend (``kind``: http, ws or tcp) and wait until it listens."""
        port = port or free_port(host)
        argv = [
            sys.executable, "-m", "tests.support.apps", kind, "--host", host,
            "--port", str(port), "--name", name, "--version", version,
            "--fail-rate", str(fail_rate), "--delay", str(delay_s),
        ]  # fmt: skip
        process = ManagedProcess(argv, name=name, cwd=REPO_ROOT, log_dir=self.root)
        self._on_stop(STAGE_BACKENDS, process.stop)
        wait_listening(host, port, process, f"backend {name}")
        backend = Backend(name, kind, host, port, process)
        self.backends.append(backend)
        return backend

    def sidecar(
        self,
        service: str,
        *,
        app: Backend | None = None,
        app_port: int | None = None,
        labels: Mapping[str, str] | None = None,
        protocol: str | None = None,
        upstreams: Mapping[str, int] | None = None,
        name: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> SidecarProcess:
        """Start ``mesh-sidecar run`` for an instance of ``service`` in front of ``app``
        (or of nothing: a client the test plays the app of). Labels default to
        ``app=<service>``; ``upstreams`` maps a TCP service to a local port
        (``--upstream``). Returns once its admin port answers; ``wait_ready`` waits
        for its config and certificate."""
        all_labels = {"app": service, **(labels or {})}
        args = ["--labels", ",".join(f"{k}={v}" for k, v in all_labels.items())]
        if app is not None:
            args += ["--app-address", app.host]
        if protocol is not None:
            args += ["--protocol", protocol]
        for upstream, local_port in (upstreams or {}).items():
            args += ["--upstream", f"{upstream}={local_port}"]
        instance = name or f"{service}-{len(self.sidecars)}"
        sidecar = SidecarProcess(
            self.meshd.url,
            self.join_token(service),
            self.root / "sidecars" / instance,
            ca_file=self.meshd.ca_file,
            service=service,
            namespace=self.namespace,
            app_port=app.port if app is not None else (app_port or free_port()),
            extra_args=[*args, "--id", f"{instance}.{self.namespace}", *extra_args],
            log_dir=self.root,
        )
        self._on_stop(STAGE_SIDECARS, lambda: sidecar.process and sidecar.stop())
        sidecar.start()
        self.sidecars.append(sidecar)
        return sidecar

    # --- waiting -----------------------------------------------------------------------

    def describe(self) -> str:
        """Every process's state and log tail, for failure messages."""
        parts = [s.describe() for s in self.sidecars]
        parts += [b.process.describe(lines=10) for b in self.backends]
        parts.append(self.meshd.describe())
        return "\n".join(parts)

    def eventually(self, check: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
        return eventually(check, what, timeout=timeout, describe=self.describe)

    def wait_ready(self, sidecars: Iterable[SidecarProcess] | None = None) -> None:
        """Until every sidecar's ``/ready`` answers 200 (a config and a certificate)."""
        for sidecar in list(sidecars or self.sidecars):

            def ready(s: SidecarProcess = sidecar) -> bool:
                return s.get("/ready").status_code == 200

            self.eventually(ready, f"{sidecar.service} sidecar ready", timeout=READY_TIMEOUT)

    def proxy_id(self, sidecar: SidecarProcess) -> str:
        return str(sidecar.dump()["proxy"])

    def wait_synced(self, sidecars: Iterable[SidecarProcess] | None = None) -> None:
        """Until meshd shows every sidecar SYNCED (it ACKed meshd's latest config)."""
        ids = [self.proxy_id(s) for s in (sidecars or self.sidecars)]

        def synced() -> bool:
            items = {i["proxy"]: i for i in self.api.get("/v1/proxies").json()["items"]}
            return all(items.get(i, {}).get("state") == "SYNCED" for i in ids)

        self.eventually(synced, "meshd showing every proxy SYNCED")

    # --- rules -------------------------------------------------------------------------

    def apply(self, text: str) -> list[dict[str, Any]]:
        """``POST /v1/apply`` of YAML in the mesh's namespace; the per-resource results."""
        reply = self.api.post(
            "/v1/apply",
            params={"namespace": self.namespace},
            content=text,
            headers={"Content-Type": "application/yaml"},
        )
        assert reply.status_code == 200, reply.text
        results: list[dict[str, Any]] = reply.json()["results"]
        return results

    def apply_and_wait(self, text: str, sidecars: Iterable[SidecarProcess]) -> float:
        """Apply rules that change ``sidecars``' config; return ``time.monotonic()`` once
        every one of them serves a config version other than the one it had before."""
        watched = list(sidecars)
        before = {id(s): s.dump()["version"] for s in watched}
        results = self.apply(text)
        assert any(r["outcome"] != "unchanged" for r in results), results

        def switched() -> bool:
            return all(s.dump()["version"] != before[id(s)] for s in watched)

        self.eventually(switched, "the sidecars applying the new rules", timeout=CONFIG_TIMEOUT)
        return time.monotonic()

    def delete(self, kind: str, name: str) -> None:
        reply = self.api.delete(f"/v1/resources/{kind}/{self.namespace}/{name}")
        assert reply.status_code in (200, 204), reply.text

    # --- clients -----------------------------------------------------------------------

    def http_client(self, sidecar: SidecarProcess, timeout: float = 10.0) -> httpx.Client:
        """An HTTP client that sends through ``sidecar``'s outbound listener, as an app
        with ``HTTP_PROXY=http://127.0.0.1:<outbound-port>`` does (absolute-form)."""
        return httpx.Client(
            proxy=f"http://{LOOPBACK}:{sidecar.outbound_port}", timeout=timeout, trust_env=False
        )

    def workload_tls(self, service: str) -> ssl.SSLContext:
        """A TLS client context holding a mesh certificate for ``service``'s identity
        (a CSR signed by meshd with the service's join token) and trusting the mesh
        roots: what a peer sidecar presents on another sidecar's inbound port."""
        key = ec.generate_private_key(ec.SECP256R1())
        spiffe = f"spiffe://cluster.local/ns/{self.namespace}/sa/{service}"
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe)]),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        with httpx.Client(base_url=self.meshd.url, verify=self.meshd.verify()) as client:
            signed = client.post(
                "/v1/ca/sign",
                json={"csr": csr.public_bytes(serialization.Encoding.PEM).decode()},
                headers={"Authorization": f"Bearer {self.join_token(service)}"},
            )
        assert signed.status_code == 200, signed.text
        body = signed.json()
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.check_hostname = False  # SPIFFE IDs, not host names
        context.load_verify_locations(cadata="".join(body["roots"]))
        with tempfile.TemporaryDirectory(dir=self.root) as tmp:
            pem = Path(tmp) / "workload.pem"
            pem.write_text(key_pem + body["certificate"] + body.get("chain", ""))
            context.load_cert_chain(pem)
        return context
