"""Docker onboarding, the pure part: container labels -> the sidecar to run, and what to
do to make the engine match (start a sidecar, remove one, report a problem).

Nothing here talks to Docker. :mod:`meshd.onboarding.docker` observes containers into
:class:`AppContainer` and :class:`SidecarContainer`, asks :func:`decide` (one app) or
:func:`reconcile` (everything, at start and after a reconnect) what to do, and carries
the actions out. The decisions are level-triggered: given the same observed state they
are the same, and once carried out they ask for nothing more (idempotent).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from meshd.errors import MeshError

# --- labels ---------------------------------------------------------------------------

LABEL_SERVICE = "mesh.service"
LABEL_PORT = "mesh.port"
LABEL_VERSION = "mesh.version"
LABEL_NAMESPACE = "mesh.namespace"
LABEL_PROTOCOL = "mesh.protocol"
LABEL_LABELS = "mesh.labels"
LABEL_SERVICE_ACCOUNT = "mesh.service-account"
LABEL_NETWORK = "mesh.network"
APP_LABELS = (
    LABEL_SERVICE,
    LABEL_PORT,
    LABEL_VERSION,
    LABEL_NAMESPACE,
    LABEL_PROTOCOL,
    LABEL_LABELS,
    LABEL_SERVICE_ACCOUNT,
    LABEL_NETWORK,
)

# On the sidecars meshd starts:
LABEL_SIDECAR_FOR = "mesh.sidecar-for"
LABEL_MANAGED_BY = "mesh.managed-by"
MANAGED_BY = "meshd"
LABEL_SPEC = "mesh.sidecar-spec"
LABEL_INSTANCE = "mesh.instance"

PROTOCOLS = ("http", "http2", "grpc", "tcp")
SIDECAR_PORTS = {15000: "admin", 15001: "outbound", 15006: "inbound"}
SIDECAR_SUFFIX = "-mesh-sidecar"
CA_TARGET = "/etc/mesh/ca-bundle.pem"
STATE_ROOT = PurePosixPath("/var/lib/mesh-sidecar")
ACTOR = "docker-onboarding"
"""Who minted the join tokens, in meshd's audit log."""

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_UNSUPPORTED_NETWORK_MODES = ("host", "none")


class OnboardingError(MeshError):
    """A container cannot be onboarded as it is; ``label`` names the label to fix (None
    when it is not a label's fault, e.g. the container's network mode)."""

    status = 400
    slug = "onboarding"
    title = "Container cannot join the mesh"

    def __init__(self, detail: str, *, label: str | None = None) -> None:
        super().__init__(detail, label=label)
        self.label = label


def _bad(container: str, label: str, value: str, why: str) -> OnboardingError:
    return OnboardingError(f"container {container}: label {label}={value!r} {why}", label=label)


@dataclass(frozen=True, slots=True)
class AppSpec:
    """What a container's ``mesh.*`` labels ask for."""

    service: str
    namespace: str
    app_port: int
    protocol: str
    labels: tuple[tuple[str, str], ...]
    service_account: str | None
    network: str | None


def parse_kv_labels(container: str, text: str) -> dict[str, str]:
    """``mesh.labels``: ``k=v,k2=v2`` with Kubernetes' label syntax (subsets select on
    them, and rules copied from Kubernetes must keep matching)."""
    out: dict[str, str] = {}
    if not text.strip():
        return out
    for raw in text.split(","):
        item = raw.strip()
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise _bad(
                container, LABEL_LABELS, text, f"has {item!r}: write k=v pairs, e.g. tier=web"
            )
        prefix, slash, name = key.rpartition("/")
        if (slash and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix))) or (
            len(name) > 63 or not _LABEL_NAME.fullmatch(name)
        ):
            raise _bad(
                container,
                LABEL_LABELS,
                text,
                f"has the key {key!r}, which is not a valid label key (at most 63 letters, "
                "digits, '-', '_' or '.', starting and ending with a letter or digit, "
                "optionally after a DNS-name prefix and '/')",
            )
        if value and (len(value) > 63 or not _LABEL_NAME.fullmatch(value)):
            raise _bad(
                container,
                LABEL_LABELS,
                text,
                f"gives {key!r} the value {value!r}, which is not a valid label value "
                "(at most 63 letters, digits, '-', '_' or '.')",
            )
        if key in out:
            raise _bad(container, LABEL_LABELS, text, f"gives {key!r} twice")
        out[key] = value
    return out


def parse_app_labels(
    container: str, labels: Mapping[str, str], exposed_ports: Sequence[str] = ()
) -> AppSpec:
    """The :class:`AppSpec` of a container labelled ``mesh.service``; raises
    :class:`OnboardingError` naming the first bad label. ``exposed_ports`` are the
    image's (``8080/tcp``): without ``mesh.port``, exactly one must be exposed."""
    service = labels.get(LABEL_SERVICE, "").strip()
    if not service:
        raise OnboardingError(
            f"container {container}: label {LABEL_SERVICE} is empty; set it to the service name",
            label=LABEL_SERVICE,
        )
    if len(service) > 63 or not _DNS_LABEL.fullmatch(service):
        raise _bad(
            container,
            LABEL_SERVICE,
            service,
            "is not a valid service name: lowercase letters, digits and '-', starting and "
            "ending with a letter or digit (at most 63)",
        )
    namespace = labels.get(LABEL_NAMESPACE, "").strip() or "default"
    if len(namespace) > 63 or not _DNS_LABEL.fullmatch(namespace):
        raise _bad(
            container,
            LABEL_NAMESPACE,
            namespace,
            "is not a valid namespace: lowercase letters, digits and '-' (at most 63)",
        )
    app_port = _app_port(container, labels.get(LABEL_PORT, "").strip(), exposed_ports)
    protocol = labels.get(LABEL_PROTOCOL, "").strip().lower() or "http"
    if protocol not in PROTOCOLS:
        raise _bad(container, LABEL_PROTOCOL, protocol, f"is not one of {', '.join(PROTOCOLS)}")
    kv = parse_kv_labels(container, labels.get(LABEL_LABELS, ""))
    version = labels.get(LABEL_VERSION, "").strip()
    if version:
        if len(version) > 63 or not _LABEL_NAME.fullmatch(version):
            raise _bad(
                container,
                LABEL_VERSION,
                version,
                "is not a valid label value (at most 63 letters, digits, '-', '_' or '.')",
            )
        if kv.get("version", version) != version:
            raise _bad(
                container,
                LABEL_LABELS,
                labels[LABEL_LABELS],
                f"sets version={kv['version']} but {LABEL_VERSION} is {version}; keep one",
            )
        kv["version"] = version
    account = labels.get(LABEL_SERVICE_ACCOUNT, "").strip() or None
    if account is not None and (len(account) > 253 or not _DNS_SUBDOMAIN.fullmatch(account)):
        raise _bad(
            container,
            LABEL_SERVICE_ACCOUNT,
            account,
            "is not a valid service account: lowercase letters, digits, '-' and '.'",
        )
    network = labels.get(LABEL_NETWORK, "").strip() or None
    return AppSpec(
        service=service,
        namespace=namespace,
        app_port=app_port,
        protocol=protocol,
        labels=tuple(sorted(kv.items())),
        service_account=account,
        network=network,
    )


def _app_port(container: str, text: str, exposed: Sequence[str]) -> int:
    if not text:
        tcp = sorted({p.partition("/")[0] for p in exposed if p.partition("/")[2] in ("", "tcp")})
        if len(tcp) != 1:
            said = f"exposes {', '.join(tcp)}" if tcp else "exposes no port"
            raise OnboardingError(
                f"container {container}: label {LABEL_PORT} is missing and the image {said}; "
                f"set {LABEL_PORT} to the port the application listens on",
                label=LABEL_PORT,
            )
        text = tcp[0]
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise _bad(container, LABEL_PORT, text, "is not a port number (1-65535)")
    port = int(text)
    if port in SIDECAR_PORTS:
        raise _bad(
            container,
            LABEL_PORT,
            text,
            f"is the sidecar's {SIDECAR_PORTS[port]} port in the app's network namespace; the "
            f"application must listen on another port (not {', '.join(map(str, SIDECAR_PORTS))})",
        )
    return port


# --- what is observed -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AppContainer:
    """A container labelled ``mesh.service``, as the engine shows it."""

    id: str
    name: str
    labels: Mapping[str, str]
    running: bool
    network_mode: str = "default"
    networks: tuple[tuple[str, str], ...] = ()
    """(network name, IP address) pairs, in the engine's order."""
    exposed_ports: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SidecarContainer:
    """A container meshd started as some app's sidecar (``mesh.managed-by=meshd``)."""

    id: str
    name: str
    app_id: str
    status: str
    """The engine's state: created, running, restarting, paused, exited, dead, removing."""
    spec: str = ""
    """The digest of the spec it was started from (label ``mesh.sidecar-spec``)."""
    instance_id: str = ""
    exit_code: int = 0

    @property
    def alive(self) -> bool:
        return self.status in ("running", "restarting", "paused")

    @property
    def failed(self) -> bool:
        """Stopped for good: Docker's restart policy does not bring it back (any more)."""
        return self.status in ("exited", "dead")


# --- the sidecar to run ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OnboardingConfig:
    """What the watcher was told (``meshd serve`` flags) and found out (meshd's URL as
    containers reach it)."""

    image: str
    meshd_url: str
    ca_file: str
    """meshd's ``<data-dir>/ca-bundle.pem`` as a path on the engine's host."""
    token_ttl: str = "15m"  # noqa: S105 — a lifetime, not a secret
    restart_retries: int = 5
    stop_timeout_s: int = 10


@dataclass(frozen=True, slots=True)
class SidecarSpec:
    """The sidecar container for one app: everything but the join token, which is
    minted when it is started (it is never part of the digest)."""

    app_id: str
    app_name: str
    app: AppSpec
    name: str
    instance_id: str
    address: str
    image: str
    environment: tuple[tuple[str, str], ...]
    labels: tuple[tuple[str, str], ...]
    ca_file: str
    restart_retries: int
    digest: str = field(default="")

    @property
    def identity(self) -> str:
        return f"{self.app.service}.{self.app.namespace}"

    def container_kwargs(self, token: str) -> dict[str, Any]:
        """Arguments for the SDK's ``containers.create``: the app's network namespace,
        meshd's CA bundle read-only, a volume for the sidecar's state, restart on failure."""
        return {
            "image": self.image,
            "command": ["mesh-sidecar", "run"],
            "name": self.name,
            "network_mode": f"container:{self.app_id}",
            "environment": {**dict(self.environment), "MESH_TOKEN": token},
            "labels": {**dict(self.labels), LABEL_SPEC: self.digest},
            "mounts": [
                {"Type": "bind", "Source": self.ca_file, "Target": CA_TARGET, "ReadOnly": True},
                # An anonymous volume: the certificate and instance id survive Docker's
                # restarts of this container; removed with it (remove(v=True)).
                {"Type": "volume", "Target": str(STATE_ROOT)},
            ],
            "restart_policy": {"Name": "on-failure", "MaximumRetryCount": self.restart_retries},
        }


def app_address(app: AppContainer, spec: AppSpec) -> str:
    """The IP peers reach the app at: its address on ``mesh.network``, else on its first
    network (in the engine's order) that has one."""
    mode = app.network_mode
    if mode in _UNSUPPORTED_NETWORK_MODES or mode.startswith("container:"):
        raise OnboardingError(
            f"container {app.name}: network mode {mode!r} is not supported: the sidecar joins "
            "the app's own network namespace, which needs an address on a bridge or "
            "user-defined network (drop network_mode, or mesh that container instead)",
        )
    if spec.network is not None:
        for name, ip in app.networks:
            if name == spec.network and ip:
                return ip
        on = ", ".join(n for n, _ in app.networks) or "no network"
        raise _bad(
            app.name, LABEL_NETWORK, spec.network, f"names a network it is not on (it is on {on})"
        )
    for _, ip in app.networks:
        if ip:
            return ip
    raise OnboardingError(f"container {app.name}: it has no IP address on any network")


def instance_id(app_id: str, spec: AppSpec) -> str:
    """The sidecar's instance (and proxy) id: ``web-<first 8 hex of the app's id>.ns``,
    the shape the sidecar derives itself, fixed by the app so that meshd can deregister
    it when the app is gone (its sidecar has lost the network by then)."""
    return f"{spec.service}-{app_id[:8]}.{spec.namespace}"


def sidecar_name(app_name: str) -> str:
    return app_name.lstrip("/") + SIDECAR_SUFFIX


def sidecar_spec(app: AppContainer, config: OnboardingConfig) -> SidecarSpec:
    """The sidecar ``app`` needs; raises :class:`OnboardingError` naming the bad label."""
    spec = parse_app_labels(app.name, app.labels, app.exposed_ports)
    address = app_address(app, spec)
    iid = instance_id(app.id, spec)
    env: dict[str, str] = {
        "MESH_MESHD": config.meshd_url,
        "MESH_CA_FILE": CA_TARGET,
        "MESH_SERVICE": spec.service,
        "MESH_NAMESPACE": spec.namespace,
        "MESH_APP_PORT": str(spec.app_port),
        "MESH_PROTOCOL": spec.protocol,
        "MESH_ADDRESS": address,
        "MESH_ID": iid,
        "MESH_STATE_DIR": str(STATE_ROOT / f"{spec.service}.{spec.namespace}"),
    }
    if spec.labels:
        env["MESH_LABELS"] = ",".join(f"{k}={v}" for k, v in spec.labels)
    if spec.service_account:
        env["MESH_SERVICE_ACCOUNT"] = spec.service_account
    labels = {
        LABEL_SIDECAR_FOR: app.id,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_INSTANCE: iid,
        "mesh.sidecar-service": f"{spec.service}.{spec.namespace}",
    }
    out = SidecarSpec(
        app_id=app.id,
        app_name=app.name.lstrip("/"),
        app=spec,
        name=sidecar_name(app.name),
        instance_id=iid,
        address=address,
        image=config.image,
        environment=tuple(sorted(env.items())),
        labels=tuple(sorted(labels.items())),
        ca_file=config.ca_file,
        restart_retries=config.restart_retries,
    )
    return _with_digest(out)


def _with_digest(spec: SidecarSpec) -> SidecarSpec:
    material = json.dumps(
        {
            "image": spec.image,
            "name": spec.name,
            "env": spec.environment,
            "labels": spec.labels,
            "ca": spec.ca_file,
            "restart": spec.restart_retries,
        },
        sort_keys=True,
    )
    return dataclasses.replace(spec, digest=hashlib.sha256(material.encode()).hexdigest()[:16])


# --- decisions ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartSidecar:
    spec: SidecarSpec


@dataclass(frozen=True, slots=True)
class RemoveSidecar:
    sidecar: SidecarContainer
    reason: str
    deregister: bool
    """The app is gone: meshd removes the instance from the catalog itself (the sidecar
    lost its network with the app's and cannot deregister)."""


@dataclass(frozen=True, slots=True)
class ReportInvalid:
    app: AppContainer
    error: OnboardingError


@dataclass(frozen=True, slots=True)
class ReportStopped:
    """The app runs but its sidecar has stopped and Docker will not restart it."""

    app: AppContainer
    sidecar: SidecarContainer


Action = StartSidecar | RemoveSidecar | ReportInvalid | ReportStopped


def decide(
    app_id: str,
    app: AppContainer | None,
    sidecars: Sequence[SidecarContainer],
    config: OnboardingConfig,
    *,
    fresh: bool = False,
    name_holders: Sequence[SidecarContainer] = (),
) -> list[Action]:
    """What to do for one app (``app`` None: the engine no longer has it) given the
    sidecars labelled for it and, in ``name_holders``, meshd's sidecars of *other* apps
    that hold the name its sidecar needs (a replaced Compose container keeps its name).

    ``fresh``: a reconciliation (meshd start, engine reconnect) rather than an event; it
    replaces stopped sidecars with new ones (a new join token each), where an event
    only reports them, so that a sidecar that keeps failing is not recreated in a loop.
    """
    mine = [s for s in sidecars if s.app_id == app_id]
    if app is None or not app.running:
        why = "its app is gone" if app is None else "its app stopped"
        return [RemoveSidecar(s, why, deregister=True) for s in _removable(mine)]
    try:
        spec = sidecar_spec(app, config)
    except OnboardingError as exc:
        removals: list[Action] = [
            RemoveSidecar(s, "its app's labels are no longer valid", deregister=True)
            for s in _removable(mine)
        ]
        return [*removals, ReportInvalid(app, exc)]
    actions: list[Action] = []
    keep: SidecarContainer | None = None
    # Prefer a live sidecar of the current spec; everything else goes.
    for s in sorted(mine, key=lambda s: (not s.alive, s.spec != spec.digest, s.id)):
        if keep is None and s.spec == spec.digest and s.alive:
            keep = s
        elif keep is None and s.spec == spec.digest and s.failed and not fresh:
            keep = s
            actions.append(ReportStopped(app, s))
        elif s.status != "removing":
            if keep is not None:
                why = "a duplicate sidecar for the same app"
            elif s.spec != spec.digest:
                why = "its spec changed (image, meshd URL, labels or address)"
            elif s.failed:
                why = f"it stopped (exit status {s.exit_code}); a new one replaces it"
            else:
                why = f"it is {s.status}, not running"
            actions.append(RemoveSidecar(s, why, deregister=False))
    if keep is None:
        actions.extend(
            RemoveSidecar(h, f"its name is needed for the sidecar of {app.name}", deregister=False)
            for h in _removable(name_holders)
            if h.app_id != app_id and h.name == spec.name
        )
        actions.append(StartSidecar(spec))
    return actions


def _removable(sidecars: Iterable[SidecarContainer]) -> list[SidecarContainer]:
    return [s for s in sidecars if s.status != "removing"]


def reconcile(
    apps: Sequence[AppContainer],
    sidecars: Sequence[SidecarContainer],
    config: OnboardingConfig,
) -> dict[str, list[Action]]:
    """Per app id, what makes the engine match its labels: sidecars started for running
    labelled apps that lack one, orphans (app gone or stopped) removed, stale or
    duplicate ones replaced. Apps with nothing to do are left out."""
    by_app: dict[str, list[SidecarContainer]] = {}
    for s in sidecars:
        by_app.setdefault(s.app_id, []).append(s)
    known = {a.id: a for a in apps}
    out: dict[str, list[Action]] = {}
    # Orphans first (their removal frees names that replacements need).
    orphans = sorted(set(by_app) - set(known))
    for app_id in [*orphans, *sorted(known)]:
        holders = [s for s in sidecars if s.app_id != app_id]
        actions = decide(
            app_id,
            known.get(app_id),
            by_app.get(app_id, []),
            config,
            fresh=True,
            name_holders=holders,
        )
        if actions:
            out[app_id] = actions
    return out


# --- persistent failures --------------------------------------------------------------


@dataclass
class FailureTracker:
    """Counts a sidecar's unexpected exits in a sliding window, so that a sidecar Docker
    keeps restarting is reported once with its logs, not once per restart."""

    window_s: float = 600.0
    threshold: int = 3
    _exits: dict[str, list[float]] = field(default_factory=dict)
    _reported: set[str] = field(default_factory=set)

    def record(self, sidecar_id: str, at: float) -> tuple[int, bool]:
        """Note an exit; returns (exits in the window, whether to report it now)."""
        recent = [t for t in self._exits.get(sidecar_id, []) if at - t < self.window_s]
        recent.append(at)
        self._exits[sidecar_id] = recent
        if len(recent) < self.threshold:
            self._reported.discard(sidecar_id)
            return len(recent), False
        report = sidecar_id not in self._reported
        self._reported.add(sidecar_id)
        return len(recent), report

    def forget(self, sidecar_id: str) -> None:
        self._exits.pop(sidecar_id, None)
        self._reported.discard(sidecar_id)
