"""``make run``'s demo (``python -m meshd.demo``), as a user runs it.

With ``--no-wait`` it sets the mesh up (meshd over HTTPS, the demo's rules, a join token
per service, three apps with their sidecars, every sidecar SYNCED with a certificate),
checks that the frontend answers through the mesh, prints what to try, and stops
everything. Left running, every printed command works when pasted (the first one, the
frontend's answers, and then the split, the retry and the denial), and Ctrl-C (SIGINT)
stops it all."""

from __future__ import annotations

import collections
import functools
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.sidecar.sidecar_process import eventually
from tests.support.processes import REPO_ROOT, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ANSWER = re.compile(r"^frontend -> backend (v1|v2) \(backend-\1\)$")
INSTANCES = ("frontend-1.default", "backend-v1.default", "backend-v2.default")


@dataclass(frozen=True)
class DemoPorts:
    meshd: int
    apps: int
    sidecars: int

    @property
    def frontend(self) -> int:
        """The frontend sidecar's inbound port (PERMISSIVE: plain curl works)."""
        return self.sidecars

    def argv(self, data_dir: Path) -> list[str]:
        return [sys.executable, "-m", "meshd.demo", "--listen", f"127.0.0.1:{self.meshd}",
                "--data-dir", str(data_dir), "--app-base-port", str(self.apps),
                "--sidecar-base-port", str(self.sidecars)]  # fmt: skip


def demo_ports() -> DemoPorts:
    """meshd on a free port; the apps and sidecars on two blocks of 100 ports below
    Linux's ephemeral range (so no outgoing connection holds one)."""
    apps, sidecars = random.sample(range(20000, 32000, 100), 2)
    return DemoPorts(free_port(), apps, sidecars)


def version(answer: str) -> str:
    """The backend version in one of the frontend's answers."""
    match = ANSWER.match(answer.strip())
    assert match is not None, answer
    return match.group(1)


def demo_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_demo_sets_up_the_mesh_and_stops(tmp_path: Path) -> None:
    ports = demo_ports()
    data_dir = tmp_path / "run" / "meshd"
    done = subprocess.run(
        [*ports.argv(data_dir), "--no-wait"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        cwd=REPO_ROOT,
        env=demo_env(),
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert f"starting meshd on https://127.0.0.1:{ports.meshd}" in out
    # One line per step.
    steps = re.findall(r"^==> (\S+ \S+)", out, re.MULTILINE)
    assert steps == [
        "starting meshd", "applying the", "creating a", "starting the", "starting 3",
        "waiting until", "the sidecars'", "calling the", "stopping the",
    ], out  # fmt: skip
    for kind, name in [("DestinationRule", "backend"), ("VirtualService", "backend"),
                       ("PeerAuthentication", "frontend-permissive")]:  # fmt: skip
        assert re.search(rf"^    {kind} default/{name}: (created|configured|unchanged)$", out,
                         re.MULTILINE), out  # fmt: skip
    # One join token per service: frontend, backend.
    assert len(re.findall(r"^ +\S+ +join token \S+ for spiffe://", out, re.MULTILINE)) == 2, out
    assert sorted(re.findall(r"^ +(\S+) +SYNCED +\S+$", out, re.MULTILINE)) == sorted(INSTANCES)
    # Every sidecar holds a certificate for its service's identity (GET /v1/certs).
    certs = re.findall(r"^ +(\S+\.default) +(spiffe://\S+) +expires in ", out, re.MULTILINE)
    assert sorted(certs) == sorted(
        (proxy, f"spiffe://cluster.local/ns/default/sa/{proxy.split('-')[0]}")
        for proxy in INSTANCES
    ), out
    assert "3 of 3 sidecars hold a certificate" in out
    # The demo called the frontend through the mesh and both versions answered.
    seen = {text: int(n) for n, text in re.findall(r"^ +(\d+) x (.+)$", out, re.MULTILINE)}
    assert set(seen) == {"frontend -> backend v1 (backend-v1)",
                         "frontend -> backend v2 (backend-v2)"}, out  # fmt: skip
    assert sum(seen.values()) == 20
    # What to try: meshctl against HTTPS meshd, with the env that finds it.
    assert f"export MESHD_ADDR=https://127.0.0.1:{ports.meshd} MESHD_DATA_DIR=" in out
    assert "meshctl proxy-status" in out
    assert "stopping the sidecars, the apps and meshd" in out
    assert (data_dir / "admin.token").stat().st_mode & 0o777 == 0o600
    for sidecar in (data_dir.parent / "sidecars").iterdir():
        assert (sidecar / "identity.json").stat().st_mode & 0o777 == 0o600, sidecar
    # The join tokens went through the environment, not the command line or the output.
    assert "mjt_" not in out
    # Everything stopped.
    for port in (ports.meshd, ports.frontend, ports.apps, ports.sidecars + 22):
        assert refused(port), port


# --- the demo left running -----------------------------------------------------------------


@dataclass
class RunningDemo:
    """The demo as a background process, its output read line by line."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, line: str, timeout: float) -> None:
        def there() -> bool:
            if self.process.poll() is not None and line not in self.lines:
                raise AssertionError(f"the demo exited ({self.process.returncode})")
            return line in self.lines

        eventually(there, f"the demo printing {line!r}", timeout=timeout,
                   describe=lambda: self.output)  # fmt: skip

    def commands(self) -> list[str]:
        """The commands it printed to try, in order (comments and blank lines left out)."""
        start = self.lines.index("Try these in another shell, from this directory:")
        end = self.lines.index("Ctrl-C stops the demo.")
        return [s.strip() for s in self.lines[start + 1 : end]
                if s.strip() and not s.strip().startswith("#")]  # fmt: skip


@pytest.fixture
def running_demo(tmp_path: Path) -> Iterator[tuple[RunningDemo, DemoPorts]]:
    ports = demo_ports()
    process = subprocess.Popen(
        ports.argv(tmp_path / "run" / "meshd"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO_ROOT,
        env=demo_env(),
    )
    demo = RunningDemo(process)
    try:
        yield demo, ports
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if demo.reader is not None:
            demo.reader.join(10)
        assert process.stdout is not None
        process.stdout.close()


@dataclass
class Shell:
    """Runs printed commands as a user pasting them would: bash, in the checkout, with
    the ``export`` lines seen so far, and a HOME of its own (no meshctl config)."""

    home: Path
    exports: list[str] = field(default_factory=list)

    def run(self, command: str) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESHD_")}
        env["HOME"] = str(self.home)
        script = "\n".join([*self.exports, command])
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=REPO_ROOT,
            env=env,
        )
        assert done.returncode == 0, (
            f"{command}\nexit {done.returncode}\n{done.stdout}{done.stderr}"
        )
        return done.stdout

    def until(self, command: str, ok: Callable[[str], bool], what: str) -> str:
        """Run ``command`` until its output is ``ok`` (the answers are random: give a
        statistically unlucky run two more chances)."""
        outputs = []
        for _ in range(3):
            outputs.append(self.run(command))
            if ok(outputs[-1]):
                return outputs[-1]
        raise AssertionError(f"{command}: {what} in none of\n" + "\n---\n".join(outputs))


def counted(output: str) -> collections.Counter[str]:
    """``sort | uniq -c`` output as a Counter."""
    counts: collections.Counter[str] = collections.Counter()
    for line in output.splitlines():
        n, _, text = line.strip().partition(" ")
        counts[text] += int(n)
    return counts


@pytest.mark.slow
def test_the_printed_commands_work_and_ctrl_c_stops_the_demo(
    tmp_path: Path, running_demo: tuple[RunningDemo, DemoPorts]
) -> None:
    demo, ports = running_demo
    demo.wait_for_line("Ctrl-C stops the demo.", timeout=60)
    commands = demo.commands()
    shell = Shell(tmp_path)

    # The first command: ten calls of the frontend, each answered through the mesh.
    first = commands[0]
    assert first.startswith("for i in $(seq 10); do curl -s 127.0.0.1:"), first
    answers = shell.run(first).splitlines()
    assert len(answers) == 10, answers
    assert all(ANSWER.match(a) for a in answers), answers

    # 40 requests through the mesh: both versions answer (50/50).
    with httpx.Client(timeout=10, trust_env=False) as client:
        replies = [client.get(f"http://127.0.0.1:{ports.frontend}/") for _ in range(40)]
    assert {r.status_code for r in replies} == {200}
    versions = collections.Counter(version(r.text) for r in replies)
    assert set(versions) == {"v1", "v2"}, versions

    # Every other command, in order, with what it should show at that point.
    split, failing, retrying, denied = "50/50", False, False, False

    def answers_ok(command: str, out: str) -> bool:
        counts = counted(out) if "uniq -c" in command else collections.Counter(out.splitlines())
        errors = sum(n for text, n in counts.items() if not ANSWER.match(text))
        if denied:
            return "frontend -> backend: 403 RBAC: access denied" in counts
        if split == "90/10":
            return errors == 0 and counts["frontend -> backend v1 (backend-v1)"] >= 38
        if failing and not retrying:
            return any("500 backend-v2 failed this request" in text for text in counts)
        return errors == 0

    ran = []
    for command in commands[1:]:
        ran.append(command)
        if command.startswith("export "):
            shell.exports.append(command)
            continue
        if "curl -s 127.0.0.1:" in command and "/stats/" not in command:
            expected = f"the answers expected ({split=}, {failing=}, {retrying=}, {denied=})"
            shell.until(command, functools.partial(answers_ok, command), expected)
            continue
        out = shell.run(command)
        if " apply -f " in command:
            assert re.search(r" (created|configured)$", out, re.MULTILINE), out
            split = {"split-90-10": "90/10", "mesh": "50/50"}.get(
                Path(command.split()[-1]).stem, split
            )
            retrying = retrying or "retries" in command
            denied = denied or "deny-frontend" in command
        elif " delete -f " in command:
            assert "deny-frontend deleted" in out
            denied = False
        elif "/fail?rate=" in command:
            failing = "rate=0.5" in command
            assert out == f"backend-v2 now fails {'50' if failing else '0'}% of its requests\n"
        elif command.endswith("proxy-status"):
            assert sorted(re.findall(r"^(\S+) +\S+ +SYNCED ", out, re.MULTILINE)) == sorted(
                INSTANCES
            ), out
        elif " proxy-config " in command:
            assert "frontend-1.default" in out, out
            assert "backend.default.svc.cluster.local" in out, out
        elif command.endswith(" certs"):
            for sa in ("frontend", "backend"):
                assert f"spiffe://cluster.local/ns/default/sa/{sa}" in out, out
        elif "/stats/prometheus" in command:
            assert 'istio_requests_total{reporter="source"' in out, out
        else:
            raise AssertionError(f"a printed command this test does not know: {command}")
    assert (split, retrying, failing, denied) == ("50/50", True, False, False), ran
    assert len(ran) >= 15, ran

    # Ctrl-C stops everything.
    demo.process.send_signal(signal.SIGINT)
    assert demo.process.wait(30) == 0
    demo.wait_for_line("==> stopping the sidecars, the apps and meshd", timeout=5)
    deadline = time.monotonic() + 10
    ports_used = (ports.meshd, ports.frontend, ports.apps, ports.sidecars + 10, ports.sidecars + 22)
    while not all(refused(p) for p in ports_used):
        assert time.monotonic() < deadline, [p for p in ports_used if not refused(p)]
        time.sleep(0.1)
