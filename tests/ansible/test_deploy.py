"""ansible/site.yml, run for real against two "VMs" (docs/ansible.md).

The VMs are systemd containers (``meshd-vm:bookworm``, ``scripts/vm_image.sh``) on the
Docker network ``meshd-ansible`` (198.18.60.0/24) of this checkout's engine, reached
with ``docker exec`` through the community.docker collection's connection plugin
(``tests/ansible/inventory.yml``):

- ``meshd-ansible-a`` (198.18.60.10): Consul server, OpenBao (dev), meshd
  (``--store consul --registry consul --ca vault``), the demo backend v1 and its sidecar;
- ``meshd-ansible-b`` (198.18.60.11): Consul client, the demo frontend and a backend v2,
  each with its sidecar.

The module's fixture makes the image, the collections and the wheelhouse (each skipped
when current), starts both VMs, runs the playbook once (its output goes to the test's
log, ``--log-cli-level=INFO`` shows it live) and always removes the VMs and the network
afterwards (``MESHD_ANSIBLE_KEEP=1`` keeps them for a look: ``docker exec -it
meshd-ansible-a bash``). The tests then check the traffic, mTLS, a second run that
changes nothing, and ansible-lint.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.docker_engine import (
    IMAGE_BUILD_TIMEOUT,
    DockerEngine,
    build_images,
)
from tests.support.processes import REPO_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(IMAGE_BUILD_TIMEOUT)]

log = logging.getLogger("tests.ansible")

ANSIBLE_DIR = REPO_ROOT / "ansible"
INVENTORY = Path(__file__).with_name("inventory.yml")
VM_IMAGE_SH = REPO_ROOT / "scripts" / "vm_image.sh"
VM_IMAGE = "meshd-vm:bookworm"
COLLECTIONS = REPO_ROOT / ".deps" / "ansible" / "collections"
WHEELHOUSE = REPO_ROOT / ".deps" / "wheelhouse"
IMAGES_LOCK = REPO_ROOT / ".deps" / "images" / "images.lock"
VENV_BIN = REPO_ROOT / ".venv" / "bin"

NETWORK = "meshd-ansible"
SUBNET = "198.18.60.0/24"
GATEWAY = "198.18.60.1"
HOST_A, ADDRESS_A = "meshd-ansible-a", "198.18.60.10"
HOST_B, ADDRESS_B = "meshd-ansible-b", "198.18.60.11"
LABEL = "io.meshd.ansible-test=1"
TRUST_DOMAIN = "cluster.local"

PLAYBOOK_TIMEOUT = 600
"""Seconds one ansible-playbook run may take (about 50 s first, 30 s again, here)."""

# systemd as PID 1 in a container on this engine. Not --privileged (this machine's
# root lacks CAP_SYS_RESOURCE, which --privileged asks for): CAP_SYS_ADMIN lets systemd
# mount what it needs, a private cgroup namespace gives it its own cgroup tree (v1
# or v2), /run and /run/lock are tmpfs as on a booted machine, and SIGRTMIN+3 is
# systemd's "shut down cleanly" signal.
VM_RUN_ARGS = (
    "--cap-add=SYS_ADMIN",
    "--cgroupns=private",
    "--tmpfs=/run",
    "--tmpfs=/run/lock",
    "--tmpfs=/tmp",
    "--stop-signal=SIGRTMIN+3",
    f"--label={LABEL}",
)

RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)


@dataclass(frozen=True, slots=True)
class PlaybookRun:
    returncode: int
    output: str
    seconds: float

    def recap(self) -> dict[str, dict[str, int]]:
        """PLAY RECAP's counters per host."""
        return {
            m["host"]: {k: int(m[k]) for k in ("ok", "changed", "unreachable", "failed")}
            for m in RECAP.finditer(self.output)
        }

    def describe(self, lines: int = 80) -> str:
        tail = "\n".join(self.output.splitlines()[-lines:])
        return f"ansible-playbook exited {self.returncode} after {self.seconds:.0f}s:\n{tail}"


@dataclass(frozen=True, slots=True)
class Deployment:
    engine: DockerEngine
    workdir: Path
    env: dict[str, str]
    admin_token: str
    first_run: PlaybookRun

    def exec(self, host: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.engine.docker("exec", host, *argv, check=False, timeout=timeout)

    def python(self, host: str, code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run Python code on a VM (its /usr/bin/python3: the standard library only)."""
        return self.exec(host, "python3", "-c", textwrap.dedent(code), timeout=timeout)

    def playbook(self, *extra: str) -> PlaybookRun:
        return run_playbook(self.env, self.workdir, *extra)


# --- helpers --------------------------------------------------------------------------


def stream(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    timeout: float,
    on_line: Callable[[str], None],
) -> tuple[int, str]:
    """Run argv, handing each line of its output (stdout and stderr) to on_line as it
    comes; returns the exit status and the whole output. Killed (its process group)
    when it outlives the timeout or the test is interrupted."""
    lines: list[str] = []
    process = subprocess.Popen(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    finished = False
    try:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip("\n")
            lines.append(line)
            on_line(line)
            if time.monotonic() > deadline:
                lines.append(f"(killed: still running after {timeout:.0f}s)")
                break
        returncode = process.wait(timeout=max(1.0, deadline - time.monotonic()))
        finished = True
    except subprocess.TimeoutExpired:
        lines.append(f"(killed: still running after {timeout:.0f}s)")
        returncode = -1
    finally:
        if not finished:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            returncode = -1
        if process.stdout is not None:
            process.stdout.close()
    return returncode, "\n".join(lines)


def ansible_env(engine: DockerEngine, workdir: Path) -> dict[str, str]:
    """The environment ansible-playbook and ansible-lint run in: this engine, its own
    docker client first in PATH (the connection plugin runs `docker exec`), the
    collections of scripts/vm_image.sh, plain output."""
    bindir = workdir / "bin"
    bindir.mkdir(exist_ok=True)
    docker = bindir / "docker"
    if not docker.exists():
        docker.symlink_to(engine.client)
    return engine.env(
        {
            "PATH": f"{bindir}:{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
            "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-tmp"),
            "PYTHONUNBUFFERED": "1",
        }
    )


def run_playbook(env: Mapping[str, str], workdir: Path, *extra: str) -> PlaybookRun:
    argv = [
        str(VENV_BIN / "ansible-playbook"),
        "-i",
        str(INVENTORY),
        "-e",
        f"@{workdir / 'secrets.yml'}",
        str(ANSIBLE_DIR / "site.yml"),
        *extra,
    ]
    log.info("running %s", " ".join(argv))
    started = time.monotonic()
    returncode, output = stream(
        argv, env=env, cwd=ANSIBLE_DIR, timeout=PLAYBOOK_TIMEOUT, on_line=log.info
    )
    run = PlaybookRun(returncode, output, time.monotonic() - started)
    log.info("ansible-playbook exited %d after %.0fs", returncode, run.seconds)
    return run


def run_vm_image_script(config: pytest.Config, engine: DockerEngine) -> None:
    """scripts/vm_image.sh all: the VM image and the collections (seconds when current,
    a minute or two from nothing), its progress on the terminal."""
    reporter = config.pluginmanager.getplugin("terminalreporter")
    capman = config.pluginmanager.getplugin("capturemanager")
    tail: collections.deque[str] = collections.deque(maxlen=40)

    def show(line: str) -> None:
        tail.append(line)
        log.info("%s", line)
        quiet = (" is current " in line, " are current " in line, line.startswith("vm-image: done"))
        if reporter is None or any(quiet) or not line.startswith("vm-image: "):
            return
        if capman is None:
            reporter.write_line(line)
        else:
            with capman.global_and_fixture_disabled():
                reporter.write_line(line)

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if not engine.own:
        env["MESHD_DOCKER_HOST"] = engine.host
    started = time.monotonic()
    returncode, _ = stream(
        [str(VM_IMAGE_SH), "all"], env=env, cwd=REPO_ROOT, timeout=900, on_line=show
    )
    if returncode != 0:
        pytest.fail(
            f"`scripts/vm_image.sh all` failed after {time.monotonic() - started:.0f}s "
            f"(exit {returncode}); its last lines:\n" + "\n".join(tail),
            pytrace=False,
        )


def snapshot_wheelhouse(dest: Path) -> Path:
    """A copy of .deps/wheelhouse taken under scripts/images.sh's lock, so that a build
    running meanwhile (the compose tests share it) cannot change it between runs."""
    IMAGES_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with IMAGES_LOCK.open("wb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        shutil.copytree(WHEELHOUSE, dest, ignore=shutil.ignore_patterns(".*"))
    if not any(dest.glob("meshd-*.whl")):
        pytest.fail(f"no meshd wheel in {WHEELHOUSE}: run `scripts/images.sh wheelhouse`")
    return dest


def remove_vms(engine: DockerEngine) -> None:
    """Our containers and network, and nothing else."""
    for host in (HOST_A, HOST_B):
        engine.docker("rm", "--force", "--volumes", host, check=False, timeout=120)
    engine.docker("network", "rm", NETWORK, check=False)


def start_vms(engine: DockerEngine) -> None:
    remove_vms(engine)  # leftovers of an interrupted session
    done = engine.docker(
        "network",
        "create",
        f"--subnet={SUBNET}",
        f"--gateway={GATEWAY}",
        f"--label={LABEL}",
        NETWORK,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            f"could not create the Docker network {NETWORK} ({SUBNET}): {done.stderr.strip()}\n"
            f"another network may use that subnet: `docker network ls`, and remove it if "
            "it is a leftover",
            pytrace=False,
        )
    for host, address in ((HOST_A, ADDRESS_A), (HOST_B, ADDRESS_B)):
        engine.docker(
            "run",
            "--detach",
            f"--name={host}",
            f"--hostname={host}",
            f"--network={NETWORK}",
            f"--ip={address}",
            *VM_RUN_ARGS,
            VM_IMAGE,
        )
    for host in (HOST_A, HOST_B):
        wait_booted(engine, host)


def wait_booted(engine: DockerEngine, host: str, timeout: float = 60) -> None:
    """systemd finished booting (running, or degraded: a unit failed, which the playbook
    does not need)."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        done = engine.docker("exec", host, "systemctl", "is-system-running", check=False)
        state = done.stdout.strip()
        if state in ("running", "degraded"):
            log.info("%s booted (%s)", host, state)
            return
        time.sleep(0.5)
    logs = engine.docker("logs", "--tail", "40", host, check=False)
    pytest.fail(
        f"{host} did not finish booting within {timeout:.0f}s (systemd says {state!r}); "
        f"its console:\n{logs.stdout}{logs.stderr}\nsee docs/ansible.md (systemd in containers)",
        pytrace=False,
    )


def vm_journal(engine: DockerEngine) -> str:
    """The mesh's units' last log lines on both VMs, for a failure message."""
    parts = []
    for host in (HOST_A, HOST_B):
        done = engine.docker(
            "exec",
            host,
            "journalctl",
            "--no-pager",
            "-n",
            "60",
            "-u",
            "consul",
            "-u",
            "openbao",
            "-u",
            "meshd",
            "-u",
            "mesh-sidecar@*",
            "-u",
            "mesh-demo-*",
            check=False,
        )
        parts.append(f"--- {host} ---\n{done.stdout}{done.stderr}")
    return "\n".join(parts)


# --- the deployment ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployment(
    docker_engine: DockerEngine,
    pytestconfig: pytest.Config,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    workdir = tmp_path_factory.mktemp("ansible")
    run_vm_image_script(pytestconfig, docker_engine)
    build_images(docker_engine, pytestconfig, "wheelhouse")
    wheelhouse = snapshot_wheelhouse(workdir / "wheelhouse")
    admin_token = secrets.token_urlsafe(24)
    secrets_file = workdir / "secrets.yml"
    secrets_file.touch(mode=0o600)
    # What a user keeps in Ansible Vault (docs/ansible.md), and the test's own paths.
    secrets_file.write_text(
        json.dumps(
            {
                "meshd_admin_token": admin_token,
                "openbao_dev_root_token": secrets.token_urlsafe(24),
                "mesh_controller_dir": str(workdir / "controller"),
                "meshd_wheelhouse_src": str(wheelhouse),
            }
        )
    )
    env = ansible_env(docker_engine, workdir)
    try:
        start_vms(docker_engine)
        first = run_playbook(env, workdir)
        if first.returncode != 0:
            pytest.fail(
                f"the first run failed: {first.describe()}\n{vm_journal(docker_engine)}",
                pytrace=False,
            )
        yield Deployment(docker_engine, workdir, env, admin_token, first)
    finally:
        if os.environ.get("MESHD_ANSIBLE_KEEP") == "1":
            log.warning("MESHD_ANSIBLE_KEEP=1: leaving %s, %s and %s", HOST_A, HOST_B, NETWORK)
        else:
            remove_vms(docker_engine)


def get(deployment: Deployment, host: str, url: str, *, attempts: int = 20) -> tuple[int, str]:
    """GET url from inside a VM (retrying while the answer is not 200, for up to
    `attempts` seconds): (status, body)."""
    done = deployment.python(
        host,
        f"""
        import json, time, urllib.error, urllib.request
        for attempt in range({attempts}):
            try:
                with urllib.request.urlopen({url!r}, timeout=10) as answer:
                    status, body = answer.status, answer.read().decode()
            except urllib.error.HTTPError as exc:
                status, body = exc.code, exc.read().decode()
            except OSError as exc:
                status, body = 0, repr(exc)
            if status == 200:
                break
            time.sleep(1)
        print(json.dumps([status, body]))
        """,
    )
    assert done.returncode == 0, done.stderr
    status, body = json.loads(done.stdout)
    return int(status), str(body)


def call_frontend(deployment: Deployment) -> tuple[int, str]:
    """The frontend on B, which calls `backend` through its sidecar."""
    return get(deployment, HOST_B, "http://127.0.0.1:9080/")


ANSWER_A = f"frontend-{HOST_B} -> backend v1 (backend-{HOST_A})"
ANSWER_B = f"frontend-{HOST_B} -> backend v2 (backend-{HOST_B})"


def frontend_until_a_answers(deployment: Deployment, limit: int = 40) -> list[tuple[int, str]]:
    """Calls the frontend on B until A's backend answered (backend has an instance on
    each host; the frontend's sidecar balances over both): every answer, in order."""
    done = deployment.python(
        HOST_B,
        f"""
        import json, urllib.error, urllib.request
        answers = []
        for attempt in range({limit}):
            try:
                with urllib.request.urlopen("http://127.0.0.1:9080/", timeout=10) as answer:
                    answers.append([answer.status, answer.read().decode().strip()])
            except urllib.error.HTTPError as exc:
                answers.append([exc.code, exc.read().decode().strip()])
            if answers[-1] == [200, {ANSWER_A!r}]:
                break
        print(json.dumps(answers))
        """,
    )
    assert done.returncode == 0, done.stderr
    return [(int(status), str(body)) for status, body in json.loads(done.stdout)]


# --- the tests --------------------------------------------------------------------------


def test_first_run_deploys_both_hosts(deployment: Deployment) -> None:
    recap = deployment.first_run.recap()
    assert set(recap) == {HOST_A, HOST_B}, deployment.first_run.describe()
    for host, counts in recap.items():
        assert counts["failed"] == 0, (host, deployment.first_run.describe())
        assert counts["unreachable"] == 0, (host, deployment.first_run.describe())
        assert counts["changed"] > 0, (host, counts)
    log.info("first run: %.0fs, %s", deployment.first_run.seconds, recap)
    units_a = ["consul", "openbao", "meshd", "mesh-demo-backend", "mesh-sidecar@backend.default"]
    units_b = [
        "consul",
        "mesh-demo-frontend",
        "mesh-sidecar@frontend.default",
        "mesh-demo-backend",
        "mesh-sidecar@backend.default",
    ]
    for host, units in ((HOST_A, units_a), (HOST_B, units_b)):
        done = deployment.exec(host, "systemctl", "is-active", *units)
        assert done.stdout.split() == ["active"] * len(units), (host, done.stdout)
        enabled = deployment.exec(host, "systemctl", "is-enabled", *units)
        assert enabled.stdout.split() == ["enabled"] * len(units), (host, enabled.stdout)


def test_frontend_on_b_reaches_backend_on_a(deployment: Deployment) -> None:
    status, body = call_frontend(deployment)  # waits for the first 200
    assert status == 200, body
    answers = frontend_until_a_answers(deployment)
    # Every call succeeds, and the frontend names the backend version and instance that
    # answered: A's v1 (across hosts) or B's own v2 (on its host), nothing else.
    assert all(status == 200 for status, _ in answers), answers
    assert {body for _, body in answers} <= {ANSWER_A, ANSWER_B}, answers
    assert answers[-1][1] == ANSWER_A, answers


def test_traffic_between_the_hosts_is_mtls(deployment: Deployment) -> None:
    assert frontend_until_a_answers(deployment)[-1] == (200, ANSWER_A)
    # Plaintext from B to A's sidecar: the port is open, but STRICT mTLS (the default)
    # closes the connection unanswered.
    done = deployment.python(
        HOST_B,
        f"""
        import socket
        with socket.create_connection(({ADDRESS_A!r}, 15006), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\\r\\nHost: backend\\r\\n\\r\\n")
            try:
                print(repr(s.recv(4096)))
            except ConnectionResetError:
                print("reset")
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in ("b''", "reset"), done.stdout
    # A's sidecar counted the frontend's requests, authenticated by its certificate.
    _, metrics = get(deployment, HOST_A, "http://127.0.0.1:15000/stats/prometheus")
    frontend = f'source_principal="spiffe://{TRUST_DOMAIN}/ns/default/sa/frontend"'
    inbound = [
        line
        for line in metrics.splitlines()
        if line.startswith("istio_requests_total{") and 'reporter="destination"' in line
    ]
    assert any(
        frontend in line
        and 'connection_security_policy="mutual_tls"' in line
        and 'response_code="200"' in line
        for line in inbound
    ), "\n".join(inbound) or metrics[-2000:]
    # And B's sidecar checked A's identity on its side.
    _, metrics_b = get(deployment, HOST_B, "http://127.0.0.1:15000/stats/prometheus")
    backend = f'destination_principal="spiffe://{TRUST_DOMAIN}/ns/default/sa/backend"'
    assert any(
        line.startswith("istio_requests_total{") and 'reporter="source"' in line and backend in line
        for line in metrics_b.splitlines()
    ), metrics_b[-2000:]


def test_meshd_runs_on_consul_and_openbao(deployment: Deployment) -> None:
    """Both sidecars hold meshd's config (synced, ACKed), and the mesh's root is
    OpenBao's PKI root: meshd signs with --ca vault."""
    done = deployment.python(
        HOST_A,
        f"""
        import json, ssl, urllib.request
        context = ssl.create_default_context(cafile="/etc/mesh-sidecar/ca-bundle.pem")
        request = urllib.request.Request(
            "https://{ADDRESS_A}:15012/v1/proxies",
            headers={{"Authorization": "Bearer {deployment.admin_token}"}},
        )
        proxies = json.load(urllib.request.urlopen(request, context=context, timeout=10))
        root = urllib.request.urlopen("http://127.0.0.1:8200/v1/pki/ca/pem", timeout=10)
        bundle = open("/etc/mesh-sidecar/ca-bundle.pem").read()
        print(json.dumps({{"proxies": proxies["items"],
                           "openbao_root_in_bundle": root.read().decode().strip() in bundle}}))
        """,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["openbao_root_in_bundle"], "the mesh's trust bundle is not OpenBao's PKI root"
    services = sorted(p["service"].split(".")[0] for p in found["proxies"])
    assert services == ["backend", "backend", "frontend"], found["proxies"]
    for proxy in found["proxies"]:
        assert proxy["connected"], proxy
        assert proxy["ackedVersion"] == proxy["version"], proxy
    # Consul's catalog (on B, a client agent) holds both services: --registry consul.
    _, catalog = get(deployment, HOST_B, "http://127.0.0.1:8500/v1/catalog/services")
    assert {"backend", "frontend"} <= set(json.loads(catalog)), catalog


def test_second_run_changes_nothing(deployment: Deployment) -> None:
    second = deployment.playbook()
    assert second.returncode == 0, second.describe()
    recap = second.recap()
    log.info("second run: %.0fs, %s", second.seconds, recap)
    assert set(recap) == {HOST_A, HOST_B}, second.describe()
    changed = {host: counts["changed"] for host, counts in recap.items()}
    assert changed == {HOST_A: 0, HOST_B: 0}, second.describe(200)
    # Nothing was restarted: the mesh still serves.
    status, body = call_frontend(deployment)
    assert status == 200, body


def offline_env(tmp_path: Path) -> dict[str, str]:
    """For the Ansible tools that need no VMs."""
    return {
        **os.environ,
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path),
        "ANSIBLE_NOCOLOR": "1",
        "NO_COLOR": "1",
    }


def test_example_inventory_fits_the_playbook(tmp_path: Path) -> None:
    """inventory/example.yml (for real VMs over SSH) has the groups site.yml needs, and
    the playbook passes Ansible's syntax check with it."""
    env = offline_env(tmp_path)
    example = ANSIBLE_DIR / "inventory" / "example.yml"
    listed = subprocess.run(
        [str(VENV_BIN / "ansible-inventory"), "-i", str(example), "--list"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ANSIBLE_DIR,
        timeout=120,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    groups = json.loads(listed.stdout)
    hosts = {name: set(groups.get(name, {}).get("hosts", [])) for name in groups}
    assert hosts["meshd"] == {"vm1.example.internal"}
    assert hosts["consul_servers"] == {"vm1.example.internal"}
    assert hosts["openbao"] == {"vm1.example.internal"}
    assert set(groups["mesh"]["children"]) >= {"meshd", "consul_servers", "openbao"}
    syntax = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", str(example), "--syntax-check", "site.yml"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ANSIBLE_DIR,
        timeout=120,
        check=False,
    )
    assert syntax.returncode == 0, syntax.stdout + syntax.stderr


def test_ansible_lint_passes(tmp_path: Path) -> None:
    """ansible-lint (production profile, ansible/.ansible-lint), offline. No VMs needed."""
    returncode, output = stream(
        [str(VENV_BIN / "ansible-lint")],
        env=offline_env(tmp_path),
        cwd=ANSIBLE_DIR,
        timeout=300,
        on_line=log.info,
    )
    assert returncode == 0, output[-4000:]
    assert "Profile 'production' was required, and it passed" in output, output[-2000:]
