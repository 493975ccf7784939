"""``meshd`` command line: ``meshd serve`` runs the control plane."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from meshd import __version__
from meshd.config import Settings, parse_listen
from meshd.errors import ConfigError, MeshError

ENV_PREFIX = "MESHD_"


def _env_default(flag: str, default: str | None) -> str | None:
    """``--data-dir`` falls back to ``MESHD_DATA_DIR``, then to ``default``."""
    return os.environ.get(ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper(), default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshd",
        description="meshd — the control plane of a service mesh for Docker Compose and VMs.",
    )
    parser.add_argument("--version", action="version", version=f"meshd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="run the control plane",
        description=(
            "Run the control plane: stores rules, compiles them per sidecar, pushes them. "
            "Every flag can also be set as MESHD_<FLAG> (e.g. MESHD_DATA_DIR)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )

    def opt(flag: str, default: str | None, help_text: str, **kw: object) -> None:
        serve.add_argument(flag, default=_env_default(flag, default), help=help_text, **kw)  # type: ignore[arg-type]

    opt("--data-dir", "/var/lib/meshd", "directory for the sqlite store and the admin token")
    opt(
        "--listen", "127.0.0.1:15012", "HOST:PORT to serve the API on (plain HTTP only on loopback)"
    )
    opt("--bootstrap-token", None, "the first admin token; without it one is generated once")
    opt("--store", "sqlite", "where rules live", choices=["sqlite", "consul"])
    opt("--consul-addr", "127.0.0.1:8500", "Consul HTTP address for --store consul")
    opt("--consul-token", None, "Consul ACL token")
    opt("--consul-prefix", "meshd/", "Consul KV prefix for meshd's data")
    opt("--registry", "embedded", "service discovery backend", choices=["embedded"])
    opt("--trust-domain", "cluster.local", "SPIFFE trust domain of workload identities")
    opt("--root-namespace", "istio-system", "namespace whose policies apply mesh-wide")
    opt(
        "--default-mtls",
        "STRICT",
        "mTLS mode without a PeerAuthentication",
        choices=["STRICT", "PERMISSIVE", "DISABLE"],
    )
    opt("--debounce-ms", "100", "wait this long for more changes before compiling", type=int)
    opt("--tls-cert", None, "PEM certificate to serve HTTPS with (required off loopback)")
    opt("--tls-key", None, "PEM private key for --tls-cert")
    opt("--log-level", "info", "debug, info, warning or error")
    serve.add_argument(
        "--access-log",
        action="store_true",
        default=_env_default("--access-log", "") in ("1", "true", "yes"),
        help="log one line per API request",
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    host, port = parse_listen(args.listen)
    return Settings(
        data_dir=Path(args.data_dir),
        listen_host=host,
        listen_port=port,
        bootstrap_token=args.bootstrap_token or None,
        store=args.store,
        consul_addr=args.consul_addr,
        consul_token=args.consul_token or None,
        consul_prefix=args.consul_prefix,
        registry=args.registry,
        trust_domain=args.trust_domain,
        root_namespace=args.root_namespace,
        default_mtls_mode=args.default_mtls,
        debounce_ms=int(args.debounce_ms),
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
        access_log=bool(args.access_log),
        log_level=args.log_level,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = settings_from_args(args)
        settings.check()
        from meshd.server import serve  # noqa: PLC0415 — deferred so `meshd --help` stays fast

        serve(settings)
    except ConfigError as exc:
        print(f"meshd: {exc}", file=sys.stderr)
        return 2
    except MeshError as exc:
        print(f"meshd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
