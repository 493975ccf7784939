"""``mesh-sidecar`` command line: ``mesh-sidecar run`` runs one sidecar.

Every flag can also be set as ``MESH_<FLAG>`` (``--app-port`` -> ``MESH_APP_PORT``); a
flag given on the command line wins. Exit status: 0 after an orderly stop (SIGTERM or
SIGINT), 2 for invalid flags (an unreadable CA file too), 1 when the sidecar cannot run
(state dir, admin port, a join token meshd refuses).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence

import trio

from meshd.fdlimit import raise_open_file_limit
from sidecar import __version__, agent
from sidecar.errors import ConfigError, SidecarError
from sidecar.native import data_path
from sidecar.settings import DEFAULT_MESHD_URL, STATE_ROOT, build_settings, env_name

log = logging.getLogger("sidecar")

DESCRIPTION = """\
Run one sidecar next to one service instance. Today the sidecar is meshd's client:
it gets its workload certificate (with the join token, then renewing it), registers
the instance, keeps the newest valid config for its proxy (validated, ACKed or NACKed,
saved to the state dir), keeps serving it and its certificate while meshd is down, and
shows its state on the admin port (127.0.0.1). With --health-check it checks the app
every --health-interval and reports the result to the registry (meshd's, or the local
Consul agent with --registry consul): an unhealthy app's instance leaves its peers'
endpoints, and returns once it passes again. It talks to meshd over HTTPS only,
verifying meshd with --ca-file and the mesh roots and authenticating with its
certificate (mTLS). It proxies the service's traffic: the inbound port (mTLS, or
also plaintext in PERMISSIVE mode) forwards to the app on 127.0.0.1, the outbound HTTP
port (HTTP_PROXY=http://127.0.0.1:15001) routes the app's calls by Host, and each
--upstream relays a TCP service. SIGTERM drains: nothing new is accepted and requests
in flight get --drain-timeout to finish. --workers N serves the proxy's ports from N
processes (SO_REUSEPORT) to use N cores.
"""

EPILOG = f"""\
Every flag can also be set in the environment as MESH_<FLAG>, e.g. MESH_SERVICE,
MESH_APP_PORT, MESH_TOKEN (prefer MESH_TOKEN to --token: flags show in ps).

First start:  export MESH_TOKEN=$(meshctl token create --service reviews)
              mesh-sidecar run --service reviews --app-port 9080 \\
                  --ca-file /path/to/meshd-data-dir/ca-bundle.pem

Admin endpoints (GET): /ready, /config_dump, /stats/prometheus, /clusters.
State dir default: {STATE_ROOT}/<service>.<namespace> (created mode 0700).
"""


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """``env`` supplies the ``MESH_*`` defaults (``os.environ`` when None)."""
    environ = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="mesh-sidecar",
        description="mesh-sidecar — the data plane of meshd, one per service instance.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"mesh-sidecar {__version__} (data path {data_path()})",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run one sidecar",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    def opt(flag: str, help_text: str, metavar: str | None = None) -> None:
        variable = env_name(flag)
        run.add_argument(
            flag,
            default=environ.get(variable),
            metavar=metavar,
            help=f"{help_text} [{variable}]",
        )

    opt("--meshd", f"meshd's URL, HTTPS only (default {DEFAULT_MESHD_URL})", "URL")
    opt(
        "--token",
        "the join token that gets this workload its first certificate; create one with "
        "meshctl token create --service NAME --namespace NS (it may be single-use: "
        "renewals use the certificate, and a restart the saved one). Required",
        "TOKEN",
    )
    opt(
        "--ca-file",
        "the CA bundle to verify meshd's certificate with on first contact: meshd's "
        "<data-dir>/ca-bundle.pem (afterwards the mesh roots from its snapshots are "
        "trusted too). Required",
        "PEM",
    )
    opt("--service", "the service this instance belongs to (required)", "NAME")
    opt("--namespace", "the service's namespace (default default)", "NS")
    opt(
        "--id",
        "instance id, also the proxy id (default <service>-<8 hex>.<namespace>, the hex "
        "chosen once and kept in the state dir)",
        "ID",
    )
    opt(
        "--address",
        "the IP address peers reach this instance at (default 127.0.0.1)",
        "IP",
    )
    opt(
        "--app-port",
        "the port the application listens on at 127.0.0.1; also the service port "
        "clients name, as in http://reviews:9080 (required)",
        "PORT",
    )
    opt("--inbound-port", "where peers connect to this sidecar (default 15006)", "PORT")
    opt(
        "--outbound-port",
        "the local outbound listener's port, for the proxy (default 15001)",
        "PORT",
    )
    opt("--admin-port", "admin server port (default 15000)", "PORT")
    opt(
        "--admin-address",
        "the address the admin server binds (default 127.0.0.1; 0.0.0.0 to be scraped "
        "from another host or container)",
        "IP",
    )
    opt("--protocol", "the application's protocol: http, http2, grpc or tcp (default http)", "P")
    opt("--labels", "instance labels that subsets select on, e.g. version=v1,track=a", "K=V,...")
    opt("--service-account", "identity's service account (default: the service name)", "NAME")
    opt(
        "--state-dir",
        f"saved config, certificate and instance id (default {STATE_ROOT}/<service>.<ns>)",
        "DIR",
    )
    opt(
        "--inbound-address",
        "the address the inbound listener binds (default 0.0.0.0: all of them)",
        "IP",
    )
    opt(
        "--app-address",
        "where the application listens (default 127.0.0.1): inbound traffic goes there",
        "IP",
    )
    run.add_argument(
        "--upstream",
        action="append",
        metavar="NAME[:PORT]=LOCALPORT",
        help="a local TCP listener on 127.0.0.1:LOCALPORT for the TCP service NAME "
        "(db, db.ns or an FQDN; PORT when it has several), relayed over mTLS; repeatable "
        f"[{env_name('--upstream')}: comma-separated]",
    )
    opt(
        "--drain-timeout",
        "seconds in-flight requests get to finish after SIGTERM (default 5)",
        "S",
    )
    opt(
        "--access-log",
        "write a JSON access log line per request to this file, or - for standard "
        "output (default: off)",
        "PATH",
    )
    opt(
        "--health-check",
        "how the app's health is checked: http:/PATH (GET on the app port; 2xx or 3xx "
        "passes), tcp (a connection is accepted) or none (healthy while the sidecar runs; "
        "the default). An unhealthy instance leaves its peers' endpoints",
        "CHECK",
    )
    opt(
        "--health-interval",
        "seconds between checks, also between health reports to the registry, whose "
        "registration lasts two of them (default 10; 10s, 500ms and 1m work too)",
        "S",
    )
    opt("--health-timeout", "a check not done within this fails (default 2 s)", "S")
    opt(
        "--healthy-threshold",
        "passed checks in a row that make an unhealthy app healthy again (default 1)",
        "N",
    )
    opt(
        "--unhealthy-threshold",
        "failed checks in a row that make a healthy app unhealthy (default 2)",
        "N",
    )
    opt(
        "--registry",
        "where the instance registers and reports its health: meshd (meshd's API, the "
        "default) or consul (the local Consul agent, directly; meshd then runs with "
        "--registry consul). The certificate and config come from meshd either way",
        "R",
    )
    opt(
        "--consul-addr",
        "with --registry consul: the local Consul agent, host:port or an http(s):// URL "
        "(default CONSUL_HTTP_ADDR, else 127.0.0.1:8500)",
        "ADDR",
    )
    opt(
        "--consul-token",
        "with --registry consul: the ACL token (service:write on the service); default "
        "CONSUL_HTTP_TOKEN. Prefer the environment: flags show in ps",
        "TOKEN",
    )
    opt(
        "--consul-ca-file",
        "with --registry consul over https://: the CA bundle that verifies the agent",
        "PEM",
    )
    opt(
        "--workers",
        "processes serving the inbound, outbound and --upstream ports (default 1). N > 1 "
        "starts N-1 worker processes that bind the same ports with SO_REUSEPORT (the "
        "kernel spreads connections over them) and serve the same config and certificate; "
        "the main process also talks to meshd and runs the admin port, whose metrics are "
        "the sum over all of them (1-64)",
        "N",
    )
    opt("--poll-wait", "seconds each config long-poll waits for a change (default 30)", "S")
    opt("--log-level", "debug, info, warning or error (default info)", "LEVEL")
    return parser


def _sidecar_error(exc: BaseException) -> SidecarError | None:
    """The SidecarError behind ``exc``, also inside an exception group of only those."""
    if isinstance(exc, SidecarError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        found = [_sidecar_error(e) for e in exc.exceptions]
        if found and all(f is not None for f in found):
            return found[0]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    raw = {k: v for k, v in vars(args).items() if k != "command"}
    # --upstream repeats; the environment gives the list comma-separated.
    upstream = raw.get("upstream")
    raw["upstream"] = ",".join(upstream) if upstream else os.environ.get(env_name("--upstream"))
    # Consul's own variables, for --registry consul (the MESH_ ones and flags win).
    raw["consul_http_addr"] = os.environ.get("CONSUL_HTTP_ADDR")
    raw["consul_http_token"] = os.environ.get("CONSUL_HTTP_TOKEN")
    try:
        settings = build_settings(raw)
    except ConfigError as exc:
        print(f"mesh-sidecar: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    raise_open_file_limit()
    try:
        trio.run(agent.run, settings)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        error = _sidecar_error(exc)
        if error is None:
            raise
        log.error("%s", error)
        return 2 if isinstance(error, ConfigError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
