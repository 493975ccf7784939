"""``make run``: meshd on the embedded defaults with a small bookinfo-shaped mesh.

Starts ``meshd serve`` on 127.0.0.1:15012 with its data in ``.run/meshd``, registers
the demo's instances, applies Istio's bookinfo ``reviews`` rules, and prints what to
try next. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import httpx

DEMO_TOKEN_FILE = "admin.token"  # noqa: S105 — a file name
INSTANCES = [
    # (id, service, version, app port)
    ("productpage-1.default", "productpage", "v1", 9080),
    ("details-1.default", "details", "v1", 9080),
    ("ratings-1.default", "ratings", "v1", 9080),
    ("reviews-v1.default", "reviews", "v1", 9080),
    ("reviews-v2.default", "reviews", "v2", 9080),
    ("reviews-v3.default", "reviews", "v3", 9080),
]


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


def wait_ready(client: httpx.Client, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(
                f"meshd exited with status {proc.returncode}; its log is {log}:\n"
                + log.read_text()[-2000:]
            )
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    sys.exit(f"meshd did not become ready within 30 s; its log is {log}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--listen", default="127.0.0.1:15012")
    parser.add_argument("--data-dir", default=".run/meshd")
    parser.add_argument(
        "--no-wait", action="store_true", help="set up the demo, then stop (for tests)"
    )
    args = parser.parse_args()

    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "meshd.log"
    url = f"http://{args.listen}"
    step(f"starting meshd on {url} (data in {data_dir}, log in {log})")
    with log.open("ab") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "meshd.cli",
                "serve",
                "--data-dir",
                str(data_dir),
                "--listen",
                args.listen,
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        with httpx.Client(base_url=url, timeout=10) as anon:
            wait_ready(anon, proc, log)
        token = (data_dir / DEMO_TOKEN_FILE).read_text().strip()
        with httpx.Client(
            base_url=url, timeout=10, headers={"Authorization": f"Bearer {token}"}
        ) as api:
            step(
                f"registering {len(INSTANCES)} demo instances "
                "(productpage, details, ratings, reviews v1/v2/v3)"
            )
            for port_offset, (iid, service, version, app_port) in enumerate(INSTANCES):
                body = {
                    "service": service,
                    "address": "127.0.0.1",
                    "port": 16000 + port_offset,
                    "appPort": app_port,
                    "labels": {"app": service, "version": version},
                }
                api.put(f"/v1/instances/{iid}", json=body).raise_for_status()
            step("applying Istio's bookinfo reviews rules (DestinationRule + VirtualService)")
            rules = resources.files("meshd.demo_data").joinpath("bookinfo.yaml").read_bytes()
            reply = api.post(
                "/v1/apply", content=rules, headers={"Content-Type": "application/yaml"}
            )
            reply.raise_for_status()
            for r in reply.json()["results"]:
                print(f"    {r['kind']} {r['namespace']}/{r['name']}: {r['outcome']}")
        print(
            f"""
meshd is running. In another shell:

  export MESHD_ADDR={url} MESHD_TOKEN=$(cat {data_dir / DEMO_TOKEN_FILE})
  .venv/bin/meshctl get virtualservices           # the rules you just applied
  .venv/bin/meshctl proxy-status                  # every proxy and its config version
  .venv/bin/meshctl proxy-config productpage-1.default   # what productpage's sidecar would run
  .venv/bin/meshctl apply -f - <<< '{{"apiVersion":"networking.istio.io/v1","kind":"VirtualService",
      "metadata":{{"name":"bad"}},"spec":{{"hosts":["ratings"],"http":[{{"route":[
      {{"destination":{{"host":"ratings"}},"weight":90}},{{"destination":{{"host":"details"}}}}]}}]}}}}'
                                                  # rejected: weights sum to 90

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
        step("stopping meshd")
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
