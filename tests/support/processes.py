"""Helpers for tests that run real processes: find a binary, pick free loopback ports,
run a process with its output captured in a log file, wait for it to answer HTTP, and
stop it cleanly (SIGTERM, then SIGKILL).

Synchronous on purpose: session fixtures and plain tests use them without an event loop.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPS_BIN = REPO_ROOT / ".deps" / "bin"
LOOPBACK = "127.0.0.1"


def find_binary(name: str) -> Path | None:
    """``.deps/bin/<name>`` of this checkout (what ``make deps`` installs), else ``PATH``."""
    local = DEPS_BIN / name
    if local.is_file() and os.access(local, os.X_OK):
        return local
    found = shutil.which(name)
    return Path(found) if found else None


def _bindable(port: int, host: str, kinds: Sequence[int]) -> bool:
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def free_ports(
    count: int, host: str = LOOPBACK, *, udp: bool = False, consecutive: bool = False
) -> list[int]:
    """``count`` distinct ports free on ``host`` right now (TCP, and UDP too with ``udp``).

    With ``consecutive`` the ports are ``p, p+1, ...`` (OpenBao's dev server takes its
    cluster port as listen port + 1). Another process may still take a port before the
    caller binds it, so callers that start a server retry on "address already in use".
    """
    kinds = [socket.SOCK_STREAM, socket.SOCK_DGRAM] if udp else [socket.SOCK_STREAM]
    for _ in range(200):
        ports: list[int] = []
        # Holding the probe sockets open keeps the kernel from handing the same port out twice.
        with contextlib.ExitStack() as stack:
            while len(ports) < count:
                sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
                if port in ports:
                    continue
                if udp and not _bindable(port, host, [socket.SOCK_DGRAM]):
                    continue
                if consecutive:
                    block = [port + i for i in range(1, count)]
                    if all(p < 65536 and _bindable(p, host, kinds) for p in block):
                        return [port, *block]
                    break
                ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError(f"could not find {count} free ports on {host}")


def free_port(host: str = LOOPBACK, *, udp: bool = False) -> int:
    return free_ports(1, host, udp=udp)[0]


class ProcessError(RuntimeError):
    """A managed process exited early or did not become ready; the message holds the
    tail of its log."""


class ManagedProcess:
    """A child process whose stdout and stderr go to a log file that outlives it (so a
    failing test can show it). Use as a context manager, or call :meth:`stop`."""

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        name: str,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        log_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.argv = [os.fspath(a) for a in argv]
        self.name = name
        fd, path = tempfile.mkstemp(prefix=f"{name}-", suffix=".log", dir=log_dir)
        os.close(fd)
        self.log_path = Path(path)
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        with self.log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                # Own process group: a Ctrl-C in the terminal reaches pytest, which then
                # stops the child in order instead of the child dying mid-test.
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    @property
    def alive(self) -> bool:
        return self._popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def describe(self, lines: int = 40) -> str:
        state = "running" if self.alive else f"exited with {self.returncode}"
        return (
            f"{self.name} (pid {self.pid}, {state}); full log: {self.log_path}\n"
            f"--- last {lines} lines ---\n{self.log_tail(lines)}"
        )

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited after ``timeout`` seconds."""
        if self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._popen.send_signal(signal.SIGTERM)
            try:
                self._popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self._popen.kill()
                self._popen.wait(timeout=timeout)
        return self._popen.returncode

    def kill(self) -> int:
        """SIGKILL at once (a crash, as far as the process can tell)."""
        if self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._popen.kill()
        return self._popen.wait(timeout=30)

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def wait_for_http(
    url: str,
    *,
    timeout: float = 30.0,
    ready: Callable[[httpx.Response], bool] | None = None,
    process: ManagedProcess | None = None,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    content: bytes | None = None,
    interval: float = 0.05,
    verify: ssl.SSLContext | bool = True,
) -> httpx.Response:
    """Poll ``url`` until ``ready(response)`` (default: status 200) and return that response.

    ``verify`` is how an ``https`` URL's certificate is checked: an ``ssl.SSLContext``
    trusting a test CA (``ssl.create_default_context(cafile=...)``), or httpx's default.

    Raises :class:`ProcessError` as soon as ``process`` exits, and ``TimeoutError`` after
    ``timeout`` seconds, both with the last answer or error and the process's log tail.
    """
    check = ready or (lambda r: r.status_code == 200)
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    with httpx.Client(timeout=2.0, trust_env=False, verify=verify) as client:
        while True:
            if process is not None and not process.alive:
                raise ProcessError(
                    f"{process.name} exited before {url} answered ({last})\n{process.describe()}"
                )
            try:
                response = client.request(method, url, headers=headers, content=content)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if check(response):
                    return response
                last = f"HTTP {response.status_code}: {response.text[:200]}"
            if time.monotonic() >= deadline:
                where = f"\n{process.describe()}" if process is not None else ""
                raise TimeoutError(f"{url} was not ready after {timeout:.0f}s ({last}){where}")
            time.sleep(interval)
