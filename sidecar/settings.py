"""The sidecar's settings: one frozen dataclass built from the flags and ``MESH_*`` env.

Parsing is pure (no I/O): :func:`build_settings` takes the raw strings argparse collected
and returns :class:`Settings` or raises :class:`ConfigError` naming the flag, its
environment variable, what is wrong and what would be right. :func:`check_ca_file` is the
one check that reads a file (the agent runs it first, in a worker thread).

meshd serves HTTPS only. The sidecar verifies it with ``--ca-file`` (meshd's
``<data-dir>/ca-bundle.pem``) on first contact and with the mesh roots it holds
afterwards, and authenticates with its workload certificate; ``--token`` is the join
token that gets the first certificate. There is deliberately no trust on first use: the
join token is a bearer secret, and sending it to whatever answers on meshd's port before
anything was verified would hand it to any process that got there first.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast
from urllib.parse import urlsplit

from meshd.netaddr import is_loopback_url
from registry.consul_api import DEFAULT_ADDRESS as DEFAULT_CONSUL_ADDR
from registry.consul_api import base_url as consul_base_url
from sidecar.errors import ConfigError
from sidecar.health import (
    DEFAULT_HEALTHY_THRESHOLD,
    DEFAULT_INTERVAL_S,
    DEFAULT_TIMEOUT_S,
    DEFAULT_UNHEALTHY_THRESHOLD,
    MAX_INTERVAL_S,
    MAX_THRESHOLD,
    MIN_INTERVAL_S,
    MIN_TIMEOUT_S,
    NO_CHECK,
    HealthCheckConfig,
    parse_check,
)

ENV_PREFIX = "MESH_"
DEFAULT_MESHD_URL = "https://127.0.0.1:15012"
ADMIN_TOKEN_PREFIX = "mshd_"  # noqa: S105 — meshd's admin tokens start so (not a secret)
CA_BUNDLE_HINT = (
    "meshd's CA bundle: <data-dir>/ca-bundle.pem on meshd's host (meshd writes it at "
    "start; copy it to the sidecar's host over a channel you trust)"
)
PROTOCOLS = ("http", "http2", "grpc", "tcp")
REGISTRIES = ("meshd", "consul")
LOG_LEVELS = ("debug", "info", "warning", "error")
STATE_ROOT = Path("/var/lib/mesh-sidecar")
MAX_WORKERS = 64
"""More processes than this would not find a core each on any machine a sidecar runs on,
and each one costs its own memory and config compile."""

Protocol = Literal["http", "http2", "grpc", "tcp"]
RegistryKind = Literal["meshd", "consul"]

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_ID_SUFFIX = re.compile(r"[0-9a-f]{8}")
_INSTANCE_ID = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")


def env_name(flag: str) -> str:
    """``--app-port`` -> ``MESH_APP_PORT``."""
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def _where(flag: str) -> str:
    return f"{flag} (or {env_name(flag)})"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything ``mesh-sidecar run`` was told. ``instance_id`` None means "derive it"
    (``<service>-<8 hex>.<namespace>``, the suffix kept in the state dir). ``token`` is the
    join token; ``ca_file`` the CA bundle that verifies meshd on first contact."""

    meshd_url: str
    token: str
    ca_file: Path
    service: str
    namespace: str
    instance_id: str | None
    address: str
    app_port: int
    inbound_port: int
    outbound_port: int
    admin_port: int
    protocol: Protocol
    labels: tuple[tuple[str, str], ...]
    service_account: str
    state_dir: Path
    poll_wait_s: float
    log_level: str = "info"
    inbound_address: str = "0.0.0.0"  # noqa: S104 — peers on other hosts connect to it
    app_address: str = "127.0.0.1"
    upstreams: tuple[UpstreamSpec, ...] = ()
    drain_timeout_s: float = 5.0
    access_log: str = ""  # "" off, "-" standard output, else a file path
    health: HealthCheckConfig = NO_CHECK
    registry: RegistryKind = "meshd"
    """Where the instance registers: ``meshd`` (meshd's API, whatever its backend) or
    ``consul`` (the local Consul agent at ``consul_addr``, directly)."""
    consul_addr: str = DEFAULT_CONSUL_ADDR
    consul_token: str = ""
    consul_ca_file: Path | None = None

    admin_address: str = "127.0.0.1"
    """Where the admin server binds: loopback by default because it shows the whole
    config; ``0.0.0.0`` lets a Prometheus on another host or container scrape it."""
    workers: int = 1
    """Processes serving the proxy's listeners (``--workers``): the main one and
    ``workers - 1`` children sharing its ports with SO_REUSEPORT."""

    @property
    def admin_host(self) -> str:
        return self.admin_address


@dataclass(frozen=True, slots=True)
class UpstreamSpec:
    """``--upstream NAME[:PORT]=LOCALPORT``: a listener on ``127.0.0.1:LOCALPORT`` for the
    TCP service NAME (resolved like a host in the sidecar's namespace: ``db``, ``db.ns``
    or an FQDN), on its port PORT (which may be left out when it has one TCP port)."""

    name: str
    port: int | None
    local_port: int

    def __str__(self) -> str:
        where = f"{self.name}:{self.port}" if self.port is not None else self.name
        return f"{where}={self.local_port}"


# --- single values ----------------------------------------------------------------------


def parse_port(flag: str, text: str) -> int:
    value = text.strip()
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise ConfigError(f"{_where(flag)}: {text!r} is not a port number (1-65535)")
    return int(value)


def parse_ip(flag: str, text: str, what: str) -> str:
    """An IP address flag in its canonical form; ``what`` says what it is for."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError as exc:
        raise ConfigError(f"{_where(flag)}: {text!r} is not an IP address; give {what}") from exc


def parse_labels(text: str) -> tuple[tuple[str, str], ...]:
    """``version=v1,track=stable`` -> sorted pairs. Keys and values follow Kubernetes'
    label syntax (subsets select on them, and rules copied from Kubernetes must match)."""
    if not text.strip():
        return ()
    labels: dict[str, str] = {}
    for i, raw_item in enumerate(text.split(",")):
        item = raw_item.strip()
        if not item:
            raise ConfigError(
                f"{_where('--labels')}: label {i + 1} is empty; write k=v pairs separated "
                "by single commas, e.g. version=v1,track=stable"
            )
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise ConfigError(f"{_where('--labels')}: {item!r} has no '='; write it as key=value")
        _check_label_key(key)
        if value and (len(value) > 63 or not _LABEL_NAME.fullmatch(value)):
            raise ConfigError(
                f"{_where('--labels')}: the value of {key!r}, {value!r}, is not a valid label "
                "value: at most 63 letters, digits, '-', '_' or '.', starting and ending "
                "with a letter or digit"
            )
        if key in labels:
            raise ConfigError(f"{_where('--labels')}: {key!r} is given twice")
        labels[key] = value
    return tuple(sorted(labels.items()))


def _check_label_key(key: str) -> None:
    prefix, slash, name = key.rpartition("/")
    if slash and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        raise ConfigError(
            f"{_where('--labels')}: the prefix of {key!r} must be a lowercase DNS name "
            "(e.g. app.example.com/tier)"
        )
    if not name or len(name) > 63 or not _LABEL_NAME.fullmatch(name):
        raise ConfigError(
            f"{_where('--labels')}: {key!r} is not a valid label key: at most 63 letters, "
            "digits, '-', '_' or '.', starting and ending with a letter or digit, "
            "optionally after a DNS prefix and '/'"
        )


def parse_upstreams(text: str) -> tuple[UpstreamSpec, ...]:
    """``db=15432,cache.ns:6379=16379`` -> the specs (``--upstream`` may be repeated;
    ``MESH_UPSTREAM`` takes them comma-separated)."""
    out: list[UpstreamSpec] = []
    for raw_item in text.split(","):
        item = raw_item.strip()
        if not item:
            continue
        where, sep, local = item.rpartition("=")
        name, colon, port_text = where.partition(":")
        name = name.strip().lower().rstrip(".")
        if not sep or not name or len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
            raise ConfigError(
                f"{_where('--upstream')}: {item!r} is not NAME[:PORT]=LOCALPORT, e.g. "
                "db=15432 or mysql.shop:3306=13306"
            )
        port = parse_port("--upstream", port_text) if colon else None
        out.append(UpstreamSpec(name, port, parse_port("--upstream", local)))
    return tuple(out)


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m)?")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}


def parse_duration(flag: str, text: str, low: float, high: float) -> float:
    """Seconds, as ``10``, ``10s``, ``500ms`` or ``1m``, between ``low`` and ``high``."""
    found = _DURATION.fullmatch(text.strip())
    value = float(found[1]) * _UNIT_S[found[2]] if found else -1.0
    if not low <= value <= high:
        raise ConfigError(
            f"{_where(flag)}: {text!r} is not a duration between {low:g} s and {high:g} s "
            "(seconds, or with a unit: 10s, 500ms, 1m)"
        )
    return value


def parse_count(flag: str, text: str, high: int) -> int:
    value = text.strip()
    if not value.isdigit() or not 1 <= int(value) <= high:
        raise ConfigError(f"{_where(flag)}: {text!r} is not a whole number from 1 to {high}")
    return int(value)


def parse_health(raw: Mapping[str, str | None]) -> HealthCheckConfig:
    """``--health-check`` and its companions (``raw`` as for :func:`build_settings`)."""

    def given(dest: str) -> str | None:
        value = (raw.get(dest) or "").strip()
        return value or None

    try:
        kind, path = parse_check(given("health_check") or "none")
    except ValueError as exc:
        raise ConfigError(f"{_where('--health-check')}: {exc}") from None
    interval_text = given("health_interval")
    interval = (
        parse_duration("--health-interval", interval_text, MIN_INTERVAL_S, MAX_INTERVAL_S)
        if interval_text
        else DEFAULT_INTERVAL_S
    )
    check_flags = {
        "--health-timeout": given("health_timeout"),
        "--healthy-threshold": given("healthy_threshold"),
        "--unhealthy-threshold": given("unhealthy_threshold"),
    }
    if kind == "none":
        extra = [flag for flag, value in check_flags.items() if value is not None]
        if extra:
            raise ConfigError(
                f"{_where(extra[0])} has no effect with --health-check none (the default); "
                "choose a check, e.g. --health-check http:/healthz or --health-check tcp"
            )
    timeout_text = check_flags["--health-timeout"]
    timeout = (
        parse_duration("--health-timeout", timeout_text, MIN_TIMEOUT_S, MAX_INTERVAL_S)
        if timeout_text
        else min(DEFAULT_TIMEOUT_S, interval)
    )
    if timeout > interval:
        raise ConfigError(
            f"{_where('--health-timeout')}: {timeout:g} s is longer than the interval "
            f"({interval:g} s, --health-interval); a check must end before the next starts"
        )
    healthy_text = check_flags["--healthy-threshold"]
    unhealthy_text = check_flags["--unhealthy-threshold"]
    return HealthCheckConfig(
        kind=kind,
        path=path,
        interval_s=interval,
        timeout_s=timeout,
        healthy_threshold=parse_count("--healthy-threshold", healthy_text, MAX_THRESHOLD)
        if healthy_text
        else DEFAULT_HEALTHY_THRESHOLD,
        unhealthy_threshold=parse_count("--unhealthy-threshold", unhealthy_text, MAX_THRESHOLD)
        if unhealthy_text
        else DEFAULT_UNHEALTHY_THRESHOLD,
    )


def parse_registry(
    raw: Mapping[str, str | None],
) -> tuple[RegistryKind, str, str, Path | None]:
    """``--registry`` and the Consul flags -> (registry, Consul address, token, CA file).
    With ``--registry consul``, Consul's own ``CONSUL_HTTP_ADDR``/``CONSUL_HTTP_TOKEN``
    (``raw["consul_http_addr"]``/``["consul_http_token"]``) fill in for flags not given."""

    def given(dest: str) -> str:
        return (raw.get(dest) or "").strip()

    registry = given("registry") or "meshd"
    if registry not in REGISTRIES:
        raise ConfigError(
            f"{_where('--registry')}: {registry!r} is not one of {', '.join(REGISTRIES)}: "
            "meshd (register through meshd's API) or consul (with the local Consul agent)"
        )
    consul_flags = {
        "--consul-addr": given("consul_addr"),
        "--consul-token": given("consul_token"),
        "--consul-ca-file": given("consul_ca_file"),
    }
    if registry == "meshd":
        extra = [flag for flag, value in consul_flags.items() if value]
        if extra:
            raise ConfigError(
                f"{_where(extra[0])} is only used with --registry consul (the sidecar "
                "registers with the local Consul agent); with --registry meshd (the "
                "default) meshd talks to the registry: drop the flag, or add --registry consul"
            )
        return "meshd", DEFAULT_CONSUL_ADDR, "", None
    address = consul_flags["--consul-addr"] or given("consul_http_addr") or DEFAULT_CONSUL_ADDR
    token = consul_flags["--consul-token"] or given("consul_http_token")
    ca_text = consul_flags["--consul-ca-file"]
    try:
        url = consul_base_url(address, https=bool(ca_text))
    except ValueError as exc:
        raise ConfigError(f"{_where('--consul-addr')}: {exc}") from None
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 — raises ValueError for a bad port
    except ValueError:
        parts = parts._replace(netloc="")
    if not parts.hostname or parts.path or parts.query or parts.username:
        raise ConfigError(
            f"{_where('--consul-addr')}: {address!r} is not host:port or an http(s):// URL "
            f"of a Consul agent, e.g. {DEFAULT_CONSUL_ADDR}"
        )
    if ca_text and parts.scheme != "https":
        raise ConfigError(
            f"{_where('--consul-ca-file')} verifies Consul's HTTPS certificate, but "
            f"--consul-addr {address!r} is plain HTTP: use an https:// address"
        )
    if token and parts.scheme == "http" and not is_loopback_url(url):
        raise ConfigError(
            f"{_where('--consul-token')}: the ACL token would cross the network in cleartext "
            f"to {url}; register with the local Consul agent (127.0.0.1:8500), or use "
            "https:// with --consul-ca-file"
        )
    return "consul", url, token, Path(ca_text).expanduser() if ca_text else None


def parse_meshd_url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme == "http" and parts.hostname:
        raise ConfigError(
            f"{_where('--meshd')}: {text!r} is plain HTTP; meshd serves HTTPS only (the "
            "sidecar authenticates with its certificate over mTLS): use https://"
        )
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(
            f"{_where('--meshd')}: {text!r} is not an https URL; "
            f"e.g. {DEFAULT_MESHD_URL} or https://meshd.example.com:15012"
        )
    try:
        parts.port  # noqa: B018 — raises ValueError for a bad port
    except ValueError as exc:
        raise ConfigError(f"{_where('--meshd')}: {text!r} has an invalid port") from exc
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(
            f"{_where('--meshd')}: {text!r} must not carry credentials, a query or a "
            "fragment; pass the join token with --token"
        )
    return text.strip().rstrip("/")


def check_ca_file(path: Path) -> None:
    """``--ca-file`` can be read and holds at least one PEM certificate; raises
    :class:`ConfigError` otherwise. Reads the file: call it from a worker thread."""
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise ConfigError(
            f"{_where('--ca-file')}: cannot read {path}: {exc.strerror or exc}; give "
            f"{CA_BUNDLE_HINT}"
        ) from exc
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ConfigError(
            f"{_where('--ca-file')}: {path} holds no PEM certificate; give {CA_BUNDLE_HINT}"
        )


def default_state_dir(service: str, namespace: str) -> Path:
    """One directory per service and namespace; run two instances of one service on one
    host with a ``--state-dir`` each."""
    return STATE_ROOT / f"{service}.{namespace}"


def new_id_suffix() -> str:
    return secrets.token_hex(4)


def is_id_suffix(text: str) -> bool:
    return _ID_SUFFIX.fullmatch(text) is not None


def derive_instance_id(service: str, namespace: str, suffix: str) -> str:
    """``reviews`` in ``default`` with suffix ``0a1b2c3d`` -> ``reviews-0a1b2c3d.default``."""
    if not is_id_suffix(suffix):
        raise ValueError(f"instance id suffix {suffix!r} is not 8 lowercase hex digits")
    return f"{service}-{suffix}.{namespace}"


# --- the whole set ----------------------------------------------------------------------


def build_settings(raw: Mapping[str, str | None]) -> Settings:
    """``raw`` maps argparse dests (``app_port``) to the strings given (flag, else env,
    else default). Raises :class:`ConfigError` on the first problem."""

    def text(dest: str) -> str:
        return (raw.get(dest) or "").strip()

    service = text("service")
    if not service:
        raise ConfigError(f"{_where('--service')} is required: the name of this service")
    if len(service) > 63 or not _DNS_LABEL.fullmatch(service):
        raise ConfigError(
            f"{_where('--service')}: {service!r} is not a valid service name: lowercase "
            "letters, digits and '-', starting and ending with a letter or digit (at most 63)"
        )
    namespace = text("namespace") or "default"
    if len(namespace) > 63 or not _DNS_LABEL.fullmatch(namespace):
        raise ConfigError(
            f"{_where('--namespace')}: {namespace!r} is not a valid namespace: lowercase "
            "letters, digits and '-', starting and ending with a letter or digit (at most 63)"
        )
    if not text("app_port"):
        raise ConfigError(
            f"{_where('--app-port')} is required: the port the application listens on "
            "at 127.0.0.1 (also the service port clients name)"
        )
    token = text("token")
    make_one = f"meshctl token create --service {service} --namespace {namespace}"
    if not token:
        raise ConfigError(
            f"{_where('--token')} is required: the join token that gets this workload its "
            f"first certificate; create one with: {make_one}"
        )
    if token.startswith(ADMIN_TOKEN_PREFIX):
        raise ConfigError(
            f"{_where('--token')} is an admin token; the sidecar authenticates with a "
            f"workload certificate, which it gets with a join token: {make_one}"
        )
    meshd_url = parse_meshd_url(text("meshd") or DEFAULT_MESHD_URL)
    ca_text = text("ca_file")
    if not ca_text:
        where = "this host" if is_loopback_url(meshd_url) else "meshd's host"
        raise ConfigError(
            f"{_where('--ca-file')} is required: the CA bundle that verifies meshd's "
            f"certificate before the join token is sent, i.e. <data-dir>/ca-bundle.pem on "
            f"{where} (meshd writes it at start)"
        )
    instance_id = text("id") or None
    if instance_id is not None and (
        len(instance_id) > 253 or not _INSTANCE_ID.fullmatch(instance_id)
    ):
        raise ConfigError(
            f"{_where('--id')}: {instance_id!r} is not a valid instance id: lowercase "
            "letters, digits, '-' and '.', e.g. reviews-1.default"
        )
    address = parse_ip(
        "--address",
        text("address") or "127.0.0.1",
        "the address peers reach this instance at (e.g. 198.18.0.5)",
    )
    ports = {
        flag: parse_port(flag, text(flag.lstrip("-").replace("-", "_")) or default)
        for flag, default in (
            ("--app-port", ""),
            ("--inbound-port", "15006"),
            ("--outbound-port", "15001"),
            ("--admin-port", "15000"),
        )
    }
    upstreams = parse_upstreams(text("upstream"))
    seen: dict[int, str] = {}
    for flag, port in [*ports.items(), *((f"--upstream {u}", u.local_port) for u in upstreams)]:
        if port in seen:
            raise ConfigError(
                f"{flag} and {seen[port]} are both {port}; every port must be different"
            )
        seen[port] = flag
    admin_address = parse_ip(
        "--admin-address",
        text("admin_address") or "127.0.0.1",
        "127.0.0.1 (the default) or the address Prometheus scrapes, e.g. 0.0.0.0",
    )
    inbound_address = parse_ip(
        "--inbound-address",
        text("inbound_address") or "0.0.0.0",  # noqa: S104 — all addresses
        "the address the inbound listener binds (default 0.0.0.0: all of them)",
    )
    app_address = parse_ip(
        "--app-address",
        text("app_address") or "127.0.0.1",
        "the address the application listens on (default 127.0.0.1)",
    )
    drain_text = text("drain_timeout") or "5"
    try:
        drain_timeout = float(drain_text)
    except ValueError:
        drain_timeout = -1.0
    if not 0 <= drain_timeout <= 300:
        raise ConfigError(
            f"{_where('--drain-timeout')}: {drain_text!r} is not a number of seconds "
            "between 0 and 300"
        )
    protocol = text("protocol") or "http"
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"{_where('--protocol')}: {protocol!r} is not one of {', '.join(PROTOCOLS)}"
        )
    service_account = text("service_account")
    if service_account and (
        len(service_account) > 253 or not _DNS_SUBDOMAIN.fullmatch(service_account)
    ):
        raise ConfigError(
            f"{_where('--service-account')}: {service_account!r} is not a valid name: "
            "lowercase letters, digits, '-' and '.'"
        )
    wait_text = text("poll_wait") or "30"
    try:
        poll_wait = float(wait_text)
    except ValueError:
        poll_wait = -1.0
    if not 0.1 <= poll_wait <= 300:
        raise ConfigError(
            f"{_where('--poll-wait')}: {wait_text!r} is not a number of seconds between 0.1 and 300"
        )
    log_level = (text("log_level") or "info").lower()
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"{_where('--log-level')}: {log_level!r} is not one of {LOG_LEVELS}")
    state_dir = Path(text("state_dir")) if text("state_dir") else None
    workers_text = text("workers") or "1"
    if not workers_text.isdigit() or not 1 <= int(workers_text) <= MAX_WORKERS:
        raise ConfigError(
            f"{_where('--workers')}: {workers_text!r} is not a number of processes from 1 "
            f"to {MAX_WORKERS}; 1 (the default) serves everything in one process, N adds "
            "N-1 worker processes on the same ports (about one per core to use)"
        )
    health = parse_health(raw)
    registry, consul_addr, consul_token, consul_ca_file = parse_registry(raw)
    return Settings(
        meshd_url=meshd_url,
        token=token,
        ca_file=Path(ca_text).expanduser(),
        service=service,
        namespace=namespace,
        instance_id=instance_id,
        address=address,
        app_port=ports["--app-port"],
        inbound_port=ports["--inbound-port"],
        outbound_port=ports["--outbound-port"],
        admin_port=ports["--admin-port"],
        protocol=cast(Protocol, protocol),
        labels=parse_labels(text("labels")),
        service_account=service_account,
        state_dir=state_dir or default_state_dir(service, namespace),
        poll_wait_s=poll_wait,
        log_level=log_level,
        inbound_address=inbound_address,
        admin_address=admin_address,
        app_address=app_address,
        upstreams=upstreams,
        drain_timeout_s=drain_timeout,
        access_log=text("access_log"),
        health=health,
        registry=registry,
        consul_addr=consul_addr,
        consul_token=consul_token,
        consul_ca_file=consul_ca_file,
        workers=int(workers_text),
    )
