"""A real Docker engine for tests, and meshd's image on it.

- ``docker_engine`` (session): this checkout's own ``dockerd`` (``scripts/docker.sh``:
  data-root, exec-root, pidfile and socket under ``.deps/docker``; default bridge
  198.18.0.1/24, networks from 198.18.0.0/15), started if it is not running, reused if
  it is (another pytest session, ``make images``, ``scripts/docker.sh start``). An
  engine a test session started is stopped by the last session to finish; one a human
  started keeps running. Images and the build cache are kept either way.
  ``MESHD_DOCKER_HOST`` points the tests at an engine of your own instead.
- ``meshd_image`` (session): the ``meshd:local`` image, current with this checkout's
  sources: ``scripts/images.sh`` builds (or finds current) ``meshd-base:bookworm``,
  ``.deps/wheelhouse`` and ``meshd:local``, its progress shown on the terminal. The
  first build on a machine takes about two minutes (debootstrap); later ones seconds.

Neither skips: a machine without Docker fails the test with what to do (``make
docker``), and an engine that does not start fails it with the end of dockerd's log.

Use from a test directory's ``conftest.py`` (``tests/docker/conftest.py`` does)::

    from tests.support.docker_engine import docker_engine, meshd_image  # fixtures

and mark tests that may build images with a long ``pytest.mark.timeout``
(``IMAGE_BUILD_TIMEOUT``).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from tests.support.processes import REPO_ROOT

DOCKER_SH = REPO_ROOT / "scripts" / "docker.sh"
IMAGES_SH = REPO_ROOT / "scripts" / "images.sh"
STATE_DIR = REPO_ROOT / ".deps" / "docker"
SOCKET = STATE_DIR / "run" / "docker.sock"
DOCKERD_LOG = STATE_DIR / "dockerd.log"
USERS_LOCK = STATE_DIR / "users.lock"

MESHD_IMAGE = "meshd:local"
BASE_IMAGE = "meshd-base:bookworm"
BRIDGE_SUBNET = "198.18.0.0/24"
BRIDGE_GATEWAY = "198.18.0.1"
ADDRESS_POOL = "198.18.0.0/15"
IMAGE_BUILD_TIMEOUT = 1200
"""Seconds a test that may build the images from scratch needs (measured: about two
minutes here; debootstrap's downloads dominate)."""

HOW_TO_GET_DOCKER = (
    "install Debian's docker.io, docker-compose and debootstrap with `make docker` "
    "(as root); the tests then start their own engine (scripts/docker.sh start)"
)


class DockerError(RuntimeError):
    """A docker or docker-compose command failed; the message holds the command, its
    exit status and its output."""


def find_docker_client() -> Path | None:
    """The docker CLI to use: ``$MESHD_DOCKER_CLIENT``, else the one that came with the
    engine (Debian's docker.io puts ``/usr/bin/docker`` next to ``/usr/sbin/dockerd``; a
    newer CLI earlier in PATH works but matches the engine less well), else ``docker``."""
    if configured := os.environ.get("MESHD_DOCKER_CLIENT"):
        return Path(configured)
    if dockerd := shutil.which("dockerd"):
        for candidate in (Path(dockerd).parent / "docker", Path("/usr/bin/docker")):
            if os.access(candidate, os.X_OK):
                return candidate
    found = shutil.which("docker")
    return Path(found) if found else None


def find_compose(client: Path) -> list[str] | None:
    """How to run Compose: ``$MESHD_COMPOSE`` (e.g. ``docker compose``), else Debian's
    ``docker-compose`` (v1; bookworm has no v2 plugin), else ``docker compose``."""
    if configured := os.environ.get("MESHD_COMPOSE"):
        return shlex.split(configured)
    if found := shutil.which("docker-compose"):
        return [found]
    probe = subprocess.run(
        [str(client), "compose", "version"], capture_output=True, text=True, check=False
    )
    return [str(client), "compose"] if probe.returncode == 0 else None


@dataclass(frozen=True, slots=True)
class Container:
    """A container started by :meth:`DockerEngine.container`."""

    engine: DockerEngine
    id: str
    name: str

    def inspect(self) -> dict[str, Any]:
        return self.engine.inspect(self.id)

    def ip(self, network: str = "bridge") -> str:
        return self.engine.container_ip(self.id, network)

    def logs(self, tail: int = 60) -> str:
        done = self.engine.docker("logs", "--tail", str(tail), self.id, check=False)
        return done.stdout + done.stderr

    def exec(
        self, *argv: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return self.engine.docker("exec", self.id, *argv, check=check, timeout=timeout)

    def running(self) -> bool:
        return bool(self.inspect()["State"]["Running"])


@dataclass(frozen=True, slots=True)
class DockerEngine:
    """A Docker engine that answers on ``host``, and helpers that run the docker CLI and
    Compose against it (never against whatever ``DOCKER_HOST`` the caller has)."""

    host: str
    """``unix:///…/.deps/docker/run/docker.sock``, or ``$MESHD_DOCKER_HOST``."""
    client: Path
    compose_argv: tuple[str, ...] | None
    own: bool
    """This checkout's engine (``scripts/docker.sh``), not one named by MESHD_DOCKER_HOST."""
    log_path: Path | None = field(default=None)

    @property
    def socket(self) -> Path | None:
        return Path(self.host.removeprefix("unix://")) if self.host.startswith("unix://") else None

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment for a docker/compose process: ours, pointed at this engine."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")
        }
        env["DOCKER_HOST"] = self.host
        env.setdefault("COMPOSE_HTTP_TIMEOUT", "120")
        if extra:
            env.update(extra)
        return env

    def _run(
        self,
        argv: Sequence[str],
        *,
        check: bool,
        timeout: float,
        input: str | None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        try:
            done = subprocess.run(
                list(argv),
                capture_output=True,
                text=True,
                timeout=timeout,
                input=input,
                env=self.env(env),
                cwd=cwd,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise DockerError(f"`{shlex.join(argv)}` did not finish within {timeout:.0f}s") from exc
        if check and done.returncode != 0:
            raise DockerError(
                f"`{shlex.join(argv)}` exited with {done.returncode}\n"
                f"--- stdout ---\n{done.stdout.strip()}\n--- stderr ---\n{done.stderr.strip()}"
            )
        return done

    def docker(
        self, *args: str, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``docker ARGS`` against this engine; raises :class:`DockerError` on failure
        unless ``check=False``."""
        return self._run([str(self.client), *args], check=check, timeout=timeout, input=input)

    def compose(
        self,
        *args: str,
        files: Sequence[Path] = (),
        project: str | None = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess[str]:
        """``docker-compose [-f FILE]… [-p PROJECT] ARGS`` against this engine."""
        if self.compose_argv is None:
            pytest.fail(f"no docker-compose on this machine: {HOW_TO_GET_DOCKER}")
        argv = [*self.compose_argv]
        for f in files:
            argv += ["-f", str(f)]
        if project:
            argv += ["-p", project]
        return self._run([*argv, *args], check=check, timeout=timeout, input=None, cwd=cwd, env=env)

    def inspect(self, ref: str, *, kind: str | None = None) -> dict[str, Any]:
        """``docker [KIND] inspect REF`` as a dict (KIND: image, network, volume, ...)."""
        argv = [kind, "inspect", ref] if kind else ["inspect", ref]
        data = json.loads(self.docker(*argv).stdout)
        assert isinstance(data, list)
        assert data
        first = data[0]
        assert isinstance(first, dict)
        return first

    def image_exists(self, ref: str) -> bool:
        return self.docker("image", "inspect", ref, check=False).returncode == 0

    def container_ip(self, ref: str, network: str = "bridge") -> str:
        networks = self.inspect(ref)["NetworkSettings"]["Networks"]
        if network not in networks:
            raise DockerError(
                f"container {ref} is not on network {network!r} (it is on {sorted(networks)})"
            )
        ip = str(networks[network]["IPAddress"])
        if not ip:
            raise DockerError(f"container {ref} has no address on {network!r} (is it running?)")
        return ip

    def copy_from(self, ref: str, path: str, dest: Path) -> Path:
        """``docker cp REF:PATH DEST``."""
        self.docker("cp", f"{ref}:{path}", str(dest))
        return dest

    @contextlib.contextmanager
    def container(
        self, image: str, *command: str, run_args: Sequence[str] = (), name: str | None = None
    ) -> Iterator[Container]:
        """``docker run -d`` a container for the duration of the block; it is removed
        afterwards (with its anonymous volumes). ``name`` defaults to a unique one."""
        name = name or f"meshd-test-{secrets.token_hex(4)}"
        cid = self.docker("run", "-d", "--name", name, *run_args, image, *command).stdout.strip()
        try:
            yield Container(self, cid, name)
        finally:
            self.docker("rm", "--force", "--volumes", cid, check=False)

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None:
            return "(not this checkout's engine: its log is wherever you run it)"
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return f"(no log at {self.log_path})"
        return "\n".join(text.splitlines()[-lines:])


# --- the session: start or reuse the engine, release it at the end ---------------------


def _script(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
        cwd=REPO_ROOT,
    )


def _dockerd_log_tail(lines: int = 30) -> str:
    try:
        return "\n".join(DOCKERD_LOG.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"(no log at {DOCKERD_LOG})"


class EngineSession:
    """Holds ``.deps/docker/users.lock`` (shared) while the tests use the engine, so
    neither another session's release nor ``scripts/docker.sh stop`` stops it under them."""

    def __init__(self) -> None:
        self._lock: IO[bytes] | None = None

    def acquire(self) -> DockerEngine:
        client = find_docker_client()
        external = os.environ.get("MESHD_DOCKER_HOST")
        if client is None:
            pytest.fail(f"no docker client on this machine: {HOW_TO_GET_DOCKER}")
        if external:
            engine = DockerEngine(
                host=external, client=client, compose_argv=_compose(client), own=False
            )
            done = engine.docker("version", check=False, timeout=30)
            if done.returncode != 0:
                pytest.fail(
                    f"MESHD_DOCKER_HOST={external} names an engine that does not answer:\n"
                    f"{done.stderr.strip()}\nstart it, or unset MESHD_DOCKER_HOST to use "
                    "this checkout's own engine (scripts/docker.sh)"
                )
            return engine
        if shutil.which("dockerd") is None:
            pytest.fail(f"dockerd not found: {HOW_TO_GET_DOCKER}")
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        self._lock = USERS_LOCK.open("wb")
        fcntl.flock(self._lock, fcntl.LOCK_SH)
        started = time.monotonic()
        done = _script([str(DOCKER_SH), "start"], env={"MESHD_DOCKER_SESSION": "1"})
        if done.returncode != 0:
            self.release()
            said = done.stdout + done.stderr
            if "from its log" not in said:  # the script shows the log when dockerd ran
                said += f"\n--- end of dockerd's log ({DOCKERD_LOG}) ---\n{_dockerd_log_tail()}"
            pytest.fail(
                f"could not start the Docker engine (scripts/docker.sh start, "
                f"{time.monotonic() - started:.1f}s):\n{said}",
                pytrace=False,
            )
        return DockerEngine(
            host=f"unix://{SOCKET}",
            client=client,
            compose_argv=_compose(client),
            own=True,
            log_path=DOCKERD_LOG,
        )

    def release(self) -> str:
        """Drop the lock; stop the engine if a session started it and no other session
        uses it any more. Returns what scripts/docker.sh said."""
        if self._lock is None:
            return ""
        self._lock.close()
        self._lock = None
        done = _script([str(DOCKER_SH), "release"], timeout=120)
        return done.stdout + done.stderr


def _compose(client: Path) -> tuple[str, ...] | None:
    argv = find_compose(client)
    return tuple(argv) if argv else None


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    session = EngineSession()
    engine = session.acquire()
    try:
        yield engine
    finally:
        session.release()


# --- images -----------------------------------------------------------------------------


def _progress(config: pytest.Config) -> Callable[[str], None]:
    """Write a line to the terminal even while pytest captures output (as live logging
    does), so a long build shows its progress."""
    capman = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")

    def write(line: str) -> None:
        if reporter is None:
            return
        if capman is None:
            reporter.write_line(line)
            return
        with capman.global_and_fixture_disabled():
            reporter.write_line(line)

    return write


def build_images(engine: DockerEngine, config: pytest.Config, *args: str) -> None:
    """Run ``scripts/images.sh ARGS`` (idempotent: seconds when everything is current)
    with its output on the terminal; fail the test with its last lines if it fails."""
    write = _progress(config)
    tail: collections.deque[str] = collections.deque(maxlen=40)
    argv = [str(IMAGES_SH), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if not engine.own:
        env["MESHD_DOCKER_HOST"] = engine.host
    started = time.monotonic()
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        start_new_session=True,
    )
    finished = False
    shown = 0
    try:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip("\n")
            tail.append(line)
            # The terminal gets images.sh's progress when it has work to do (nothing when
            # all is current); all of docker build's output is in the failure message.
            if not line.startswith(("images: ", "docker: ")):
                continue
            if " is current " in line or "engine already running" in line:
                continue
            if line.startswith("images:   | ") and " Step " not in line:
                continue  # docker build's output: only its steps
            if line.startswith("images: done in") and not shown:
                continue
            if not shown:
                write("")
            write(line if len(line) <= 110 else line[:107] + "...")
            shown += 1
        returncode = process.wait()
        finished = True
    finally:
        if not finished:
            # Interrupted (Ctrl-C, pytest-timeout): stop the build we started.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()
    if returncode != 0:
        pytest.fail(
            f"`scripts/images.sh {' '.join(args)}` failed after {time.monotonic() - started:.0f}s "
            f"(exit {returncode}); its last lines:\n" + "\n".join(tail),
            pytrace=False,
        )


@pytest.fixture(scope="session")
def meshd_image(docker_engine: DockerEngine, pytestconfig: pytest.Config) -> str:
    """``meshd:local``, built from this checkout's sources (rebuilt when they changed)."""
    build_images(docker_engine, pytestconfig, "all")
    if not docker_engine.image_exists(MESHD_IMAGE):
        pytest.fail(f"scripts/images.sh finished but there is no {MESHD_IMAGE} image")
    return MESHD_IMAGE


def engine_report_sections(item: pytest.Item) -> list[tuple[str, str]]:
    """For a failed test that used ``docker_engine``: the end of dockerd's log."""
    engine = getattr(item, "funcargs", {}).get("docker_engine")
    if isinstance(engine, DockerEngine):
        return [(f"dockerd log ({engine.log_path or engine.host})", engine.log_tail(40))]
    return []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failing test that used the engine gets the end of dockerd's log."""
    report = yield
    if report.failed:
        report.sections.extend(engine_report_sections(item))
    return report
