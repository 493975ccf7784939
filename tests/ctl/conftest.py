"""A real ``meshd serve`` for meshctl's end-to-end tests, and helpers to run meshctl.

``meshd_server`` (session): meshd on a free loopback port with a known bootstrap admin
token and a 20 ms debounce; ready once ``/readyz`` answers 200; stopped with SIGTERM
(SIGKILL after 10 s). A failing test that used it gets the tail of its log in the report.
``meshd_tls`` (session): the same serving HTTPS with a certificate from a private CA.
``namespace`` (function): a namespace no other test uses, so tests sharing the server
never see each other's resources.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import ssl
import subprocess
import sys
import time
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.processes import (
    LOOPBACK,
    REPO_ROOT,
    ManagedProcess,
    ProcessError,
    free_port,
    wait_for_http,
)

START_ATTEMPTS = 3
READY_TIMEOUT = 30.0
COMMAND_TIMEOUT = 30.0


def venv_script(name: str) -> Path:
    """A console script of the virtualenv running the tests (``.venv/bin/<name>``)."""
    for candidate in (Path(sys.executable).parent / name, REPO_ROOT / ".venv" / "bin" / name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(f"{name} is not installed in the test virtualenv: run `make setup`")


@dataclass(frozen=True, slots=True)
class Meshd:
    url: str
    token: str
    data_dir: Path
    home: Path
    """An empty HOME for meshctl runs, so no user config file is read."""
    process: ManagedProcess

    def env(self, **extra: str) -> dict[str, str]:
        """An environment for meshctl aimed at this server with the admin token; nothing
        of the caller's ``MESHD_*`` settings or config file leaks in."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESHD_")}
        env.pop("XDG_CONFIG_HOME", None)
        env.update(HOME=str(self.home), MESHD_ADDR=self.url, MESHD_TOKEN=self.token)
        env.update(extra)
        return env


@dataclass(frozen=True, slots=True)
class Run:
    code: int
    out: str
    err: str


def meshctl(
    server: Meshd,
    *argv: str,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
    drop_token: bool = False,
) -> Run:
    """Run ``.venv/bin/meshctl`` as a real process against ``server``."""
    environ = server.env(**dict(env or {}))
    if drop_token:
        environ.pop("MESHD_TOKEN")
    done = subprocess.run(
        [str(venv_script("meshctl")), *argv],
        input=stdin,
        capture_output=True,
        text=True,
        env=environ,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return Run(done.returncode, done.stdout, done.stderr)


@dataclass(frozen=True, slots=True)
class Tls:
    """A private CA and a certificate for 127.0.0.1 signed by it (PEM files)."""

    ca: Path
    cert: Path
    key: Path


def make_tls(directory: Path) -> Tls:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshctl test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshd")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    tls = Tls(ca=directory / "ca.pem", cert=directory / "meshd.pem", key=directory / "meshd.key")
    tls.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    tls.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tls.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    tls.key.chmod(0o600)
    return tls


def _start(binary: Path, data_dir: Path, token: str, tls: Tls | None) -> tuple[ManagedProcess, str]:
    port = free_port()
    argv: list[str | Path] = [
        binary,
        "serve",
        "--data-dir",
        data_dir,
        "--listen",
        f"{LOOPBACK}:{port}",
        "--bootstrap-token",
        token,
        "--debounce-ms",
        "20",
    ]
    if tls is not None:
        argv += ["--tls-cert", tls.cert, "--tls-key", tls.key]
    process = ManagedProcess(argv, name="meshd", log_dir=data_dir.parent)
    url = f"{'https' if tls else 'http'}://{LOOPBACK}:{port}"
    try:
        if tls is None:
            wait_for_http(f"{url}/readyz", timeout=READY_TIMEOUT, process=process)
        else:
            _wait_https(f"{url}/readyz", tls, process)
    except BaseException:
        process.stop()
        raise
    return process, url


def _wait_https(url: str, tls: Tls, process: ManagedProcess) -> None:
    context = ssl.create_default_context(cafile=str(tls.ca))
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer yet"
    with httpx.Client(verify=context, timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if not process.alive:
                raise ProcessError(
                    f"meshd exited before {url} answered ({last})\n{process.describe()}"
                )
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.05)
    raise TimeoutError(
        f"{url} was not ready after {READY_TIMEOUT:.0f}s ({last})\n{process.describe()}"
    )


def _serve(root: Path, tls: Tls | None) -> Iterator[Meshd]:
    binary = venv_script("meshd")
    token = f"mshd_e2e_{secrets.token_hex(16)}"
    home = root / "home"
    home.mkdir()
    failure = ""
    for attempt in range(START_ATTEMPTS):
        data_dir = root / f"data-{attempt}"
        data_dir.mkdir()
        try:
            process, url = _start(binary, data_dir, token, tls)
        except (ProcessError, TimeoutError) as exc:
            failure = str(exc)
            if "address already in use" not in failure.lower():
                break
            continue
        try:
            yield Meshd(url=url, token=token, data_dir=data_dir, home=home, process=process)
        finally:
            process.stop(timeout=10)
        return
    pytest.fail(f"could not start meshd serve:\n{failure}")


@pytest.fixture(scope="session")
def meshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Meshd]:
    yield from _serve(tmp_path_factory.mktemp("meshd-e2e"), None)


@pytest.fixture(scope="session")
def meshd_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Meshd, Tls]]:
    """meshd serving HTTPS on loopback with a certificate from a private CA."""
    root = tmp_path_factory.mktemp("meshd-e2e-tls")
    tls = make_tls(root)
    for server in _serve(root, tls):
        yield server, tls


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    """A DNS-label namespace unique to this test."""
    slug = "".join(c if c.isalnum() else "-" for c in request.node.name.lower()).strip("-")
    return f"{slug[:40].rstrip('-')}-{secrets.token_hex(4)}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        funcargs = getattr(item, "funcargs", {})
        for name in ("meshd_server", "meshd_tls"):
            server = funcargs.get(name)
            if isinstance(server, tuple):
                server = server[0]
            if isinstance(server, Meshd):
                report.sections.append(
                    (f"{name} log ({server.process.log_path})", server.process.log_tail(60))
                )
    return report
