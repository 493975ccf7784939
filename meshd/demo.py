"""``make run``: a demo mesh on one machine, on the embedded defaults.

Starts ``meshd serve`` on https://127.0.0.1:15012 (data in ``.run/meshd``), creates a
join token per service through meshd's API (with the bootstrap admin token from
``<data-dir>/admin.token``, verifying meshd with ``<data-dir>/ca-bundle.pem``), applies
the demo's rules (``meshd/demo_data/mesh.yaml``), and starts three small services from
``meshd.demo_apps``, each with its ``mesh-sidecar run``:

- ``frontend`` (127.0.0.1): for each ``GET /`` it calls ``http://backend/`` through
  its sidecar (``HTTP_PROXY``) and answers which backend version answered;
- ``backend`` v1 (127.0.0.2) and v2 (127.0.0.3): two instances of one service, with
  labels ``version=v1`` / ``version=v2``, on the same app port.

It waits until every sidecar has its certificate and has ACKed its config, calls the
frontend through the mesh until both versions have answered, and prints commands to
try: a split, a retry, a denial, and what meshctl and the sidecars show. Everything
listens on loopback only. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO

import httpx

TOKEN_FILE = "admin.token"  # noqa: S105 — a file name
CA_BUNDLE_FILE = "ca-bundle.pem"
JOIN_TTL = "1h"
"""Long enough to start the demo; the sidecars renew with their certificates after."""
DEMO_DATA = Path(__file__).with_name("demo_data")
RULES = DEMO_DATA / "mesh.yaml"
OPTIONAL_RULES = {"AuthorizationPolicy": "deny-frontend"}
"""Rules the printed commands add: removed at start, so each run begins the same."""
SETUP_TIMEOUT_S = 30.0
CHECK_CALLS = 20


@dataclass(frozen=True, slots=True)
class DemoInstance:
    id: str
    service: str
    version: str
    address: str
    """The loopback address its app listens on."""
    slot: int
    """Its place in the sidecar port block (see :class:`Ports`)."""


INSTANCES = (
    DemoInstance("frontend-1.default", "frontend", "v1", "127.0.0.1", 0),
    DemoInstance("backend-v1.default", "backend", "v1", "127.0.0.2", 1),
    DemoInstance("backend-v2.default", "backend", "v2", "127.0.0.3", 2),
)
FRONTEND = INSTANCES[0]


@dataclass(frozen=True, slots=True)
class Ports:
    """Every address and port the demo uses, all on loopback. The apps listen on
    ``app_base`` (frontend) and ``app_base + 10`` (both backends, each on its own
    address); sidecar ``i`` has inbound ``sidecar_base + 10*i``, outbound ``+1`` and
    admin ``+2``."""

    meshd: str = "127.0.0.1:15012"
    app_base: int = 9080
    sidecar_base: int = 16000

    def app(self, inst: DemoInstance) -> int:
        return self.app_base if inst.service == "frontend" else self.app_base + 10

    def inbound(self, inst: DemoInstance) -> int:
        return self.sidecar_base + 10 * inst.slot

    def outbound(self, inst: DemoInstance) -> int:
        return self.inbound(inst) + 1

    def admin(self, inst: DemoInstance) -> int:
        return self.inbound(inst) + 2


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


def detail(text: str) -> None:
    print(f"    {text}", flush=True)


class Processes:
    """Children started by the demo, each in its own session (the terminal's Ctrl-C
    reaches only the demo), stopped by kind: sidecars, then apps, then meshd."""

    STOP_ORDER = ("sidecar", "app", "meshd")

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._children: list[tuple[str, str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(
        self, kind: str, name: str, argv: list[str], env: Mapping[str, str] | None = None
    ) -> None:
        log = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **env} if env else None,
        )
        self._children.append((kind, name, proc, log))

    def check(self) -> None:
        for _, name, proc, _ in self._children:
            if proc.poll() is not None:
                log = self.log_dir / f"{name}.log"
                sys.exit(f"{name} exited with status {proc.returncode}; see {log}:\n"
                         + log.read_text(errors="replace")[-2000:])  # fmt: skip

    def stop_all(self) -> None:
        for kind in self.STOP_ORDER:
            children = [c for c in self._children if c[0] == kind]
            for _, _, proc, _ in children:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for _, _, proc, log in children:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                log.close()


def wait_until(what: str, procs: Processes, ready: Callable[[], bool]) -> None:
    """Poll ``ready`` until it holds; exit with what failed (a child that died, or the
    time it took) and where the logs are."""
    deadline = time.monotonic() + SETUP_TIMEOUT_S
    while not ready():
        procs.check()
        if time.monotonic() > deadline:
            sys.exit(
                f"gave up waiting for {what} after {SETUP_TIMEOUT_S:.0f} s; "
                f"the logs are in {procs.log_dir}"
            )
        time.sleep(0.1)


def listening(host: str, port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            socket.create_connection((host, port), timeout=1).close()
        except OSError:
            return False
        return True

    return check


def answers(client: httpx.Client, url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return client.get(url).status_code == 200
        except httpx.TransportError:
            return False

    return check


def all_synced(api: httpx.Client) -> Callable[[], bool]:
    ids = {inst.id for inst in INSTANCES}

    def check() -> bool:
        items = api.get("/v1/proxies").json()["items"]
        states = {p["proxy"]: p["state"] for p in items if p["proxy"] in ids}
        return len(states) == len(ids) and set(states.values()) == {"SYNCED"}

    return check


def create_join_tokens(api: httpx.Client) -> dict[str, str]:
    """One join token per service (multi-use: the two backend instances share one)."""
    tokens: dict[str, str] = {}
    for service in dict.fromkeys(inst.service for inst in INSTANCES):
        body = {"service": service, "namespace": "default", "ttl": JOIN_TTL, "uses": "multi"}
        reply = api.post("/v1/tokens", json=body)
        reply.raise_for_status()
        created = reply.json()
        tokens[service] = created["token"]
        detail(f"{service:<10} join token {created['id']} for {created['spiffeId']}")
    return tokens


def apply_rules(api: httpx.Client) -> None:
    for kind, name in OPTIONAL_RULES.items():
        gone = api.delete(f"/v1/resources/{kind}/default/{name}")
        if gone.status_code != 404:
            gone.raise_for_status()
            detail(f"{kind} default/{name}: deleted (left from an earlier run)")
    reply = api.post(
        "/v1/apply", content=RULES.read_bytes(), headers={"Content-Type": "application/yaml"}
    )
    reply.raise_for_status()
    for r in reply.json()["results"]:
        detail(f"{r['kind']} {r['namespace']}/{r['name']}: {r['outcome']}")


def print_certs(api: httpx.Client) -> int:
    """Each sidecar's certificate as meshd recorded it (``meshctl certs`` shows the same)."""
    ids = {inst.id for inst in INSTANCES}
    items = [c for c in api.get("/v1/certs").json()["items"] if c.get("proxy") in ids]
    for c in sorted(items, key=lambda c: str(c["proxy"])):
        hours = float(c["expiresIn"]) / 3600
        detail(f"{c['proxy']:<20} {c['spiffeId']:<44} expires in {hours:.1f} h")
    return len({c["proxy"] for c in items})


def check_frontend(url: str, procs: Processes) -> collections.Counter[str]:
    """Call the frontend until both backend versions have answered; then count the
    answers of ``CHECK_CALLS`` calls."""
    with httpx.Client(timeout=10, trust_env=False) as client:

        def lines(n: int) -> list[str]:
            return [client.get(url).text.strip() for _ in range(n)]

        wait_until(
            "the frontend to reach both backend versions through the mesh",
            procs,
            lambda: (
                {line.rpartition(" ")[0] for line in lines(10)}
                == {"frontend -> backend v1", "frontend -> backend v2"}
            ),
        )
        return collections.Counter(lines(CHECK_CALLS))


def shown(path: Path) -> str:
    """``path`` as it can be pasted in a shell here: relative below the working dir."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def meshctl() -> str:
    beside = Path(sys.executable).parent / "meshctl"
    if beside.exists():
        return shown(beside)
    return shutil.which("meshctl") or "meshctl"


def try_text(ports: Ports, data_dir: Path, run_dir: Path) -> str:
    front = f"127.0.0.1:{ports.inbound(FRONTEND)}"
    v2 = next(i for i in INSTANCES if i.version == "v2" and i.service == "backend")
    fail = f"{v2.address}:{ports.app(v2)}/fail"
    ctl = meshctl()
    rules = {name: shown(DEMO_DATA / f"{name}.yaml") for name in
             ("mesh", "split-90-10", "retries", "deny-frontend")}  # fmt: skip
    table = "\n".join(
        f"  {i.id:<20} {i.address}:{ports.app(i):<8} 127.0.0.1:{ports.inbound(i):<9}"
        f" 127.0.0.1:{ports.outbound(i):<9} 127.0.0.1:{ports.admin(i)}"
        for i in INSTANCES
    )
    calls = "do curl -s " + front + "/; done"
    return f"""
The mesh is up: meshd at https://{ports.meshd}, three services with their sidecars
(logs in {shown(run_dir)}):

  {"instance":<20} {"app":<18} {"inbound":<19} {"outbound":<19} admin
{table}

Try these in another shell, from this directory:

  # 1. Call the frontend through its sidecar's inbound port (plaintext is allowed there:
  #    PERMISSIVE, for the demo); it calls http://backend/ through its own sidecar
  #    (HTTP_PROXY), which picks v1 or v2 50/50 and connects with mTLS.
  for i in $(seq 10); {calls}

  # meshctl finds meshd, its admin token and CA bundle with these:
  export MESHD_ADDR=https://{ports.meshd} MESHD_DATA_DIR={shown(data_dir)}

  # 2. A 90/10 split: apply it and count the answers; then back to 50/50. (New rules
  #    reach the sidecars within a second: hence the sleeps.)
  {ctl} apply -f {rules["split-90-10"]}
  sleep 1; for i in $(seq 50); {calls} | sort | uniq -c
  {ctl} apply -f {rules["mesh"]}

  # 3. A retry: backend v2 fails half of its requests; see the errors, then retry
  #    5xx answers (on another instance), see none, and heal v2.
  curl -s '{fail}?rate=0.5'
  sleep 1; for i in $(seq 20); {calls} | sort | uniq -c
  {ctl} apply -f {rules["retries"]}
  sleep 1; for i in $(seq 20); {calls} | sort | uniq -c
  curl -s '{fail}?rate=0'

  # 4. A denial: the backends refuse the frontend's identity (403); then allow it again.
  {ctl} apply -f {rules["deny-frontend"]}
  sleep 1; curl -s {front}/
  {ctl} delete -f {rules["deny-frontend"]}

  # 5. What the mesh knows, and the frontend sidecar's Istio metrics.
  {ctl} proxy-status
  {ctl} proxy-config {FRONTEND.id}
  {ctl} certs
  curl -s 127.0.0.1:{ports.admin(FRONTEND)}/stats/prometheus | grep istio_requests_total

Ctrl-C stops the demo."""


def run(args: argparse.Namespace, procs: Processes) -> int:
    ports = Ports(args.listen, args.app_base_port, args.sidecar_base_port)
    data_dir = Path(args.data_dir).resolve()
    run_dir = procs.log_dir
    url = f"https://{ports.meshd}"
    ca_file = data_dir / CA_BUNDLE_FILE
    py = sys.executable

    step(f"starting meshd on {url} (data in {shown(data_dir)}, logs in {shown(run_dir)})")
    meshd = [py, "-m", "meshd.cli", "serve", "--data-dir", str(data_dir), "--listen", ports.meshd]
    procs.start("meshd", "meshd", meshd)
    wait_until(f"meshd to write {ca_file}", procs, ca_file.exists)
    # meshd serves HTTPS with a certificate from its own CA: verify it with the mesh's
    # trust bundle, which meshd writes to its data dir before it listens.
    verify = ssl.create_default_context(cafile=str(ca_file))
    with httpx.Client(timeout=10, verify=verify, trust_env=False) as probe:
        wait_until("meshd to be ready", procs, answers(probe, f"{url}/readyz"))
    token = (data_dir / TOKEN_FILE).read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(
        base_url=url, timeout=10, headers=auth, verify=verify, trust_env=False
    ) as api:
        step(f"applying the demo's rules ({shown(RULES)}: subsets v1/v2, a 50/50 split, "
             "plaintext allowed into the frontend)")  # fmt: skip
        apply_rules(api)
        step("creating a join token per service (POST /v1/tokens)")
        join_tokens = create_join_tokens(api)

        apps = ", ".join(f"{i.service} {i.version} on {i.address}:{ports.app(i)}"
                         for i in INSTANCES)  # fmt: skip
        step(f"starting the apps (python -m meshd.demo_apps): {apps}")
        for inst in INSTANCES:
            argv = [py, "-m", "meshd.demo_apps", inst.service, "--host", inst.address,
                    "--port", str(ports.app(inst))]  # fmt: skip
            env = None
            if inst.service == "frontend":
                argv += ["--backend", "http://backend/"]
                env = {"HTTP_PROXY": f"http://127.0.0.1:{ports.outbound(inst)}"}
            else:
                argv += ["--version", inst.version, "--name", f"backend-{inst.version}"]
            procs.start("app", f"app-{inst.id}", argv, env)
        for inst in INSTANCES:
            wait_until(f"{inst.id}'s app to listen", procs,
                       listening(inst.address, ports.app(inst)))  # fmt: skip

        step(f"starting {len(INSTANCES)} sidecars (mesh-sidecar run), one per app")
        for inst in INSTANCES:
            procs.start(
                "sidecar",
                f"sidecar-{inst.id}",
                [
                    py, "-m", "sidecar.cli", "run",
                    "--meshd", url, "--ca-file", str(ca_file), "--id", inst.id,
                    "--service", inst.service,
                    "--app-address", inst.address, "--app-port", str(ports.app(inst)),
                    "--labels", f"app={inst.service},version={inst.version}",
                    "--inbound-address", "127.0.0.1",
                    "--inbound-port", str(ports.inbound(inst)),
                    "--outbound-port", str(ports.outbound(inst)),
                    "--admin-port", str(ports.admin(inst)),
                    "--state-dir", str(run_dir / "sidecars" / inst.id),
                ],
                # The join token from the environment (--token would show in ps).
                env={"MESH_TOKEN": join_tokens[inst.service]},
            )  # fmt: skip
            detail(f"{inst.id:<20} inbound 127.0.0.1:{ports.inbound(inst)}, "
                   f"outbound 127.0.0.1:{ports.outbound(inst)}, "
                   f"admin 127.0.0.1:{ports.admin(inst)}")  # fmt: skip

        step("waiting until every sidecar has its certificate and has ACKed its config")
        wait_until("every sidecar to be SYNCED", procs, all_synced(api))
        for p in api.get("/v1/proxies").json()["items"]:
            if p["proxy"] in {inst.id for inst in INSTANCES}:
                detail(f"{p['proxy']:<20} {p['state']:<8} {p['version']}")
        step("the sidecars' certificates (GET /v1/certs)")
        certified = print_certs(api)
        detail(f"{certified} of {len(INSTANCES)} sidecars hold a certificate")

    front = f"http://127.0.0.1:{ports.inbound(FRONTEND)}/"
    step(f"calling the frontend through the mesh ({front})")
    for line, count in sorted(check_frontend(front, procs).items()):
        detail(f"{count:>3} x {line}")
    print(try_text(ports, data_dir, run_dir), flush=True)
    if args.no_wait:
        return 0
    stop = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    signal.sigwait(stop)
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    defaults = Ports()
    parser = argparse.ArgumentParser(
        prog="python -m meshd.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--listen", default=defaults.meshd, help="meshd's address")
    parser.add_argument("--data-dir", default=".run/meshd", help="meshd's data dir")
    parser.add_argument(
        "--app-base-port",
        type=int,
        default=defaults.app_base,
        help="the frontend's app port; the backends' is 10 more",
    )
    parser.add_argument(
        "--sidecar-base-port",
        type=int,
        default=defaults.sidecar_base,
        help="the first sidecar's inbound port; each sidecar takes a block of 10",
    )
    parser.add_argument("--no-wait", action="store_true", help="set up, then stop (for tests)")
    args = parser.parse_args(argv)

    # SIGTERM during set-up stops the children as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    procs = Processes(data_dir.parent)
    try:
        return run(args, procs)
    except KeyboardInterrupt:
        return 0
    finally:
        with contextlib.suppress(OSError):  # our output may be gone (a closed pipe)
            step("stopping the sidecars, the apps and meshd")
        with contextlib.suppress(KeyboardInterrupt):
            procs.stop_all()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
