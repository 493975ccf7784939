"""``meshd`` command line: ``meshd serve`` runs the control plane."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from meshd import __version__
from meshd.config import Settings, VaultSettings, parse_listen
from meshd.errors import ConfigError, MeshError
from meshd.fdlimit import raise_open_file_limit
from meshd.schema.base import duration_ms

ENV_PREFIX = "MESHD_"


def _env_default(flag: str, default: str | None) -> str | None:
    """``--data-dir`` falls back to ``MESHD_DATA_DIR``, then to ``default``."""
    return os.environ.get(ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper(), default)


def _env_flag(flag: str) -> bool:
    return (_env_default(flag, "") or "").lower() in ("1", "true", "yes")


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
    opt("--listen", "127.0.0.1:15012", "HOST:PORT to serve the API on (HTTPS, always)")
    opt(
        "--san",
        "",
        "extra names/IPs for meshd's certificate, comma-separated "
        "(loopback, this host's name and the listen address are always in it)",
    )
    opt("--bootstrap-token", None, "the first admin token; without it one is generated once")
    opt("--store", "sqlite", "where rules live", choices=["sqlite", "consul"])
    opt(
        "--consul-addr",
        "127.0.0.1:8500",
        "Consul HTTP address (host:port or http(s):// URL) for --store consul and "
        "--registry consul",
    )
    opt("--consul-token", None, "Consul ACL token")
    opt("--consul-prefix", "meshd/", "Consul KV prefix for meshd's data")
    opt("--consul-ca-file", None, "CA bundle to verify Consul's HTTPS certificate")
    opt("--consul-cert-file", None, "client certificate for Consul (verify_incoming)")
    opt("--consul-key-file", None, "the client certificate's key")
    opt(
        "--consul-max-watches",
        "160",
        "--registry consul: services with a blocking query each; keep it under Consul's "
        "limits.http_max_conns_per_client (200 by default)",
        type=int,
    )
    opt(
        "--registry",
        "embedded",
        "service discovery: embedded (sidecars register with meshd) or consul (Consul's catalog)",
        choices=["embedded", "consul"],
    )
    opt("--ca", "embedded", "who signs workload certificates", choices=["embedded", "vault"])
    opt(
        "--ca-plugin-dir",
        None,
        "use your own CA: a directory with Istio's cacerts files "
        "(ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem)",
    )
    opt("--vault-addr", "http://127.0.0.1:8200", "Vault/OpenBao address for --ca vault")
    opt("--vault-token", None, "Vault token (or use AppRole)")
    opt("--vault-role-id", None, "AppRole role_id")
    opt("--vault-secret-id", None, "AppRole secret_id")
    opt("--vault-mount", "pki", "PKI secrets engine mount")
    opt("--vault-role", "meshd-workload", "PKI role that signs workload certificates")
    opt("--vault-ca-file", None, "CA bundle to verify Vault's HTTPS certificate")
    opt("--cert-ttl", "24h", "lifetime of workload certificates (renewed at half-life)")
    opt("--sign-rate", "200", "certificate signs per second, mesh-wide, before 429", type=float)
    opt("--trust-domain", "cluster.local", "SPIFFE trust domain of workload identities")
    opt("--root-namespace", "istio-system", "namespace whose policies apply mesh-wide")
    opt(
        "--default-mtls",
        "STRICT",
        "mTLS mode without a PeerAuthentication",
        choices=["STRICT", "PERMISSIVE", "DISABLE"],
    )
    opt("--debounce-ms", "100", "wait this long for more changes before compiling", type=int)
    opt("--log-level", "info", "debug, info, warning or error")
    docker = serve.add_argument_group(
        "Docker onboarding",
        "Start a sidecar for every container labelled mesh.service (docs/onboarding.md). "
        "meshd then needs the Docker socket, which is root on the engine's host.",
    )
    docker.add_argument(
        "--docker-onboarding",
        action="store_true",
        default=_env_flag("--docker-onboarding"),
        help="watch the Docker engine and onboard labelled containers",
    )
    docker.add_argument(
        "--docker-host",
        default=_env_default("--docker-host", "unix:///var/run/docker.sock"),
        help="the Docker engine's API: unix:///path/docker.sock, or tcp://HOST:PORT of a "
        "socket proxy",
    )
    docker.add_argument(
        "--sidecar-image",
        default=_env_default("--sidecar-image", "meshd:local"),
        help="the image sidecar containers run (`mesh-sidecar run`)",
    )
    docker.add_argument(
        "--onboarding-meshd-url",
        default=_env_default("--onboarding-meshd-url", None),
        help="meshd's https URL as containers reach it (default: the listen address, or "
        "the engine's bridge gateway when listening on 0.0.0.0); meshd's certificate "
        "must name its host (--san)",
    )
    serve.add_argument(
        "--access-log",
        action="store_true",
        default=_env_default("--access-log", "") in ("1", "true", "yes"),
        help="log one line per API request",
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    host, port = parse_listen(args.listen)
    try:
        cert_ttl_s = duration_ms(args.cert_ttl) / 1000
    except ValueError as exc:
        raise ConfigError(f"--cert-ttl: {exc}") from None
    return Settings(
        data_dir=Path(args.data_dir),
        listen_host=host,
        listen_port=port,
        sans=tuple(s.strip() for s in (args.san or "").split(",") if s.strip()),
        bootstrap_token=args.bootstrap_token or None,
        store=args.store,
        consul_addr=args.consul_addr,
        consul_token=args.consul_token or None,
        consul_prefix=args.consul_prefix,
        consul_ca_file=Path(args.consul_ca_file) if args.consul_ca_file else None,
        consul_cert_file=Path(args.consul_cert_file) if args.consul_cert_file else None,
        consul_key_file=Path(args.consul_key_file) if args.consul_key_file else None,
        consul_max_watches=int(args.consul_max_watches),
        registry=args.registry,
        ca=args.ca,
        ca_plugin_dir=Path(args.ca_plugin_dir) if args.ca_plugin_dir else None,
        vault=VaultSettings(
            addr=args.vault_addr,
            token=args.vault_token or None,
            role_id=args.vault_role_id or None,
            secret_id=args.vault_secret_id or None,
            mount=args.vault_mount,
            role=args.vault_role,
            ca_file=Path(args.vault_ca_file) if args.vault_ca_file else None,
        ),
        cert_ttl_s=cert_ttl_s,
        sign_rate=float(args.sign_rate),
        trust_domain=args.trust_domain,
        root_namespace=args.root_namespace,
        default_mtls_mode=args.default_mtls,
        debounce_ms=int(args.debounce_ms),
        access_log=bool(args.access_log),
        log_level=args.log_level,
        docker_onboarding=bool(args.docker_onboarding),
        docker_host=args.docker_host,
        sidecar_image=args.sidecar_image,
        onboarding_meshd_url=args.onboarding_meshd_url or None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request at INFO: one line per Consul call (blocking queries
    # included) is noise, not a lifecycle event. Its warnings still show.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        settings = settings_from_args(args)
        settings.check()
        from meshd.server import serve  # noqa: PLC0415 — deferred so `meshd --help` stays fast

        raise_open_file_limit()
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
