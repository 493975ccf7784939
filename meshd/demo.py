"""``make run``: a demo mesh on one machine, on the embedded defaults.

Starts ``meshd serve`` on https://127.0.0.1:15012 (data in ``.run/meshd``), creates one
join token per service through meshd's API (with the bootstrap admin token from
``<data-dir>/admin.token``, verifying meshd with ``<data-dir>/ca-bundle.pem``), starts
one ``mesh-sidecar run`` per instance of a small bookinfo-shaped mesh (productpage,
details, ratings, reviews v1/v2/v3) with its service's join token and that CA bundle,
applies Istio's bookinfo ``reviews`` rules, waits until every sidecar has its
certificate and has ACKed its config, and prints what to try next. Ctrl-C stops
everything.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO

import httpx

TOKEN_FILE = "admin.token"  # noqa: S105 — a file name
CA_BUNDLE_FILE = "ca-bundle.pem"
JOIN_TTL = "1h"
"""Long enough to start the demo; the sidecars renew with their certificates after."""


@dataclass(frozen=True, slots=True)
class DemoInstance:
    id: str
    service: str
    version: str
    app_port: int


INSTANCES = (
    DemoInstance("productpage-1.default", "productpage", "v1", 9080),
    DemoInstance("details-1.default", "details", "v1", 9080),
    DemoInstance("ratings-1.default", "ratings", "v1", 9080),
    DemoInstance("reviews-v1.default", "reviews", "v1", 9080),
    DemoInstance("reviews-v2.default", "reviews", "v2", 9080),
    DemoInstance("reviews-v3.default", "reviews", "v3", 9080),
)
SIDECAR_BASE_PORT = 16000  # inbound 16000+10i, outbound +1, admin +2


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


class Processes:
    """Children started by the demo, stopped in reverse order whatever happens."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._children: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(
        self, name: str, argv: list[str], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **env} if env else None,
        )
        self._children.append((name, proc, log))
        return proc

    def check(self) -> None:
        for name, proc, _ in self._children:
            if proc.poll() is not None:
                log = self.log_dir / f"{name}.log"
                sys.exit(f"{name} exited with status {proc.returncode}; see {log}:\n"
                         + log.read_text()[-2000:])  # fmt: skip

    def stop_all(self) -> None:
        for _, proc, _ in reversed(self._children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc, log in reversed(self._children):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def wait_until(what: str, check: Processes, ready: Iterator[bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    for ok in ready:
        if ok:
            return
        check.check()
        if time.monotonic() > deadline:
            sys.exit(
                f"gave up waiting for {what} after {timeout:.0f} s; logs are in {check.log_dir}"
            )
        time.sleep(0.2)


def exists(path: Path) -> Iterator[bool]:
    while True:
        yield path.exists()


def probe(url: str, verify: ssl.SSLContext) -> Iterator[bool]:
    with httpx.Client(timeout=10, verify=verify, trust_env=False) as client:
        while True:
            try:
                yield client.get(url).status_code == 200
            except httpx.TransportError:
                yield False


def all_synced(api: httpx.Client) -> Iterator[bool]:
    while True:
        items = api.get("/v1/proxies").json()["items"]
        yield len(items) == len(INSTANCES) and all(p["state"] == "SYNCED" for p in items)


def create_join_tokens(api: httpx.Client) -> dict[str, str]:
    """One join token per service (multi-use: the three reviews instances share one)."""
    tokens: dict[str, str] = {}
    for service in dict.fromkeys(inst.service for inst in INSTANCES):
        body = {"service": service, "namespace": "default", "ttl": JOIN_TTL, "uses": "multi"}
        reply = api.post("/v1/tokens", json=body)
        reply.raise_for_status()
        created = reply.json()
        tokens[service] = created["token"]
        print(f"    {service:<12} join token {created['id']} for {created['spiffeId']}")
    return tokens


def print_certs(api: httpx.Client) -> int:
    """Each sidecar's certificate as meshd recorded it (``meshctl certs`` shows the same)."""
    items = [c for c in api.get("/v1/certs").json()["items"] if c.get("proxy")]
    for c in sorted(items, key=lambda c: str(c["proxy"])):
        hours = float(c["expiresIn"]) / 3600
        print(f"    {c['proxy']:<24} {c['spiffeId']:<48} expires in {hours:.1f} h")
    return len({c["proxy"] for c in items})


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--listen", default="127.0.0.1:15012")
    parser.add_argument("--data-dir", default=".run/meshd")
    parser.add_argument("--sidecar-base-port", type=int, default=SIDECAR_BASE_PORT)
    parser.add_argument("--no-wait", action="store_true", help="set up, then stop (for tests)")
    args = parser.parse_args()

    data_dir = Path(args.data_dir).resolve()
    run_dir = data_dir.parent
    data_dir.mkdir(parents=True, exist_ok=True)
    url = f"https://{args.listen}"
    ca_file = data_dir / CA_BUNDLE_FILE
    procs = Processes(run_dir)
    try:
        step(f"starting meshd on {url} (data in {data_dir}, logs in {run_dir})")
        procs.start("meshd", [sys.executable, "-m", "meshd.cli", "serve",
                              "--data-dir", str(data_dir), "--listen", args.listen])  # fmt: skip
        wait_until(f"meshd to write {ca_file}", procs, exists(ca_file))
        # meshd serves HTTPS with a certificate from its own CA: verify it with the mesh's
        # trust bundle, which meshd writes to its data dir before it listens.
        verify = ssl.create_default_context(cafile=str(ca_file))
        wait_until("meshd to be ready", procs, probe(f"{url}/readyz", verify))
        token = (data_dir / TOKEN_FILE).read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(
            base_url=url, timeout=10, headers=auth, verify=verify, trust_env=False
        ) as api:
            step("creating a join token per service (POST /v1/tokens)")
            join_tokens = create_join_tokens(api)
            step(
                f"starting {len(INSTANCES)} sidecars "
                "(productpage, details, ratings, reviews v1/v2/v3)"
            )
            for i, inst in enumerate(INSTANCES):
                base = args.sidecar_base_port + 10 * i
                procs.start(
                    f"sidecar-{inst.id}",
                    [
                        sys.executable, "-m", "sidecar.cli", "run",
                        "--meshd", url, "--ca-file", str(ca_file), "--id", inst.id,
                        "--service", inst.service, "--app-port", str(inst.app_port),
                        "--labels", f"app={inst.service},version={inst.version}",
                        "--inbound-port", str(base), "--outbound-port", str(base + 1),
                        "--admin-port", str(base + 2),
                        "--state-dir", str(run_dir / "sidecars" / inst.id),
                    ],
                    # The join token from the environment (--token would show in ps).
                    env={"MESH_TOKEN": join_tokens[inst.service]},
                )  # fmt: skip
            step("applying Istio's bookinfo reviews rules (DestinationRule + VirtualService)")
            rules = resources.files("meshd.demo_data").joinpath("bookinfo.yaml").read_bytes()
            reply = api.post(
                "/v1/apply", content=rules, headers={"Content-Type": "application/yaml"}
            )
            reply.raise_for_status()
            for r in reply.json()["results"]:
                print(f"    {r['kind']} {r['namespace']}/{r['name']}: {r['outcome']}")
            step("waiting until every sidecar has its certificate and has ACKed its config")
            wait_until("every sidecar to be SYNCED", procs, all_synced(api))
            for p in api.get("/v1/proxies").json()["items"]:
                print(f"    {p['proxy']:<24} {p['state']:<8} {p['version']}")
            step("the sidecars' certificates (GET /v1/certs)")
            certified = print_certs(api)
            print(f"    {certified} of {len(INSTANCES)} sidecars hold a certificate")
        admin = args.sidecar_base_port + 2
        print(
            f"""
The mesh is up: meshd at {url}, {len(INSTANCES)} sidecars. In another shell:

  export MESHD_ADDR={url} MESHD_TOKEN=$(cat {data_dir / TOKEN_FILE}) \\
         MESHD_CA_FILE={ca_file}
  .venv/bin/meshctl get virtualservices                  # the rules you just applied
  .venv/bin/meshctl proxy-status                         # every sidecar is SYNCED
  .venv/bin/meshctl certs                                # each sidecar's certificate
  .venv/bin/meshctl proxy-config productpage-1.default   # what productpage's sidecar runs
  curl -s 127.0.0.1:{admin}/config_dump | head -c 300       # the same, from the sidecar
  .venv/bin/meshctl apply -f - <<'EOF'                   # shift reviews to 50/50
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route:
    - {{destination: {{host: reviews, subset: v1}}, weight: 50}}
    - {{destination: {{host: reviews, subset: v3}}, weight: 40}}
EOF
  # ...rejected: "spec.http[0].route: weights sum to 90". Make it 50/50 and apply again,
  # then watch proxy-status move every sidecar to the new version.

Ctrl-C stops the demo.""",
            flush=True,
        )
        if args.no_wait:
            return 0
        stop = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop)
        signal.sigwait(stop)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        step("stopping the sidecars and meshd")
        with contextlib.suppress(KeyboardInterrupt):
            procs.stop_all()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
