"""How a meshd instance is written in Consul's catalog, and read back. Pure functions.

A meshd instance is a Consul service instance:

- service name: the mesh service's name (``reviews``); Consul OSS 1.8 has no namespaces,
  so the mesh namespace travels in Meta and meshd keys services by (namespace, name);
- service ID: the instance id (``reviews-v1-1.default``, also its proxy id);
- Address / Port: where peers connect, the sidecar's inbound address and port (an empty
  Address means the node's address, as Consul resolves it);
- Meta (string values)::

      mesh-namespace        the mesh namespace (required: it marks the instance as meshd's)
      mesh-app-port         the app's port as clients name it (default: Port)
      mesh-protocol         http | http2 | grpc | tcp (default http)
      mesh-service-account  the SPIFFE service account (absent: the service name)
      mesh-meshed           true | false: behind a sidecar (default true)
      mesh-label-<key>      one per label, the value as is

  Consul allows at most 64 Meta pairs, keys of at most 128 characters made of
  ``A-Z a-z 0-9 _ -`` (not starting with ``consul-``), values of at most 512 characters.
  A label key is written with every character outside ``A-Z a-z 0-9 -`` escaped as
  ``_XX`` (two upper-case hex digits per UTF-8 byte; ``_`` itself is ``_5F``), so
  ``app.kubernetes.io/name`` is ``mesh-label-app_2Ekubernetes_2Eio_2Fname``. An
  instance has room for ``64 - 4`` labels (``- 5`` with a service account); an encoded
  key may be 117 characters.
- health: the instance's checks, node checks included. All passing: healthy; any warning
  or critical (maintenance mode is critical): unhealthy. A sidecar registers one TTL
  check, ``service:<instance id>``, and renews it with pass/fail.

Consul services without ``mesh-namespace`` are not the mesh's and are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from registry.errors import InvalidInstance
from registry.model import PROTOCOLS, Instance, sorted_labels

__all__ = [
    "LABEL_PREFIX",
    "MAX_KEY_LENGTH",
    "MAX_META_PAIRS",
    "MAX_VALUE_LENGTH",
    "META_APP_PORT",
    "META_MESHED",
    "META_NAMESPACE",
    "META_PROTOCOL",
    "META_SERVICE_ACCOUNT",
    "check_id",
    "decode_label_key",
    "encode_label_key",
    "health_of",
    "instance_from_entry",
    "instance_meta",
    "service_definition",
    "ttl_text",
]

META_NAMESPACE = "mesh-namespace"
META_APP_PORT = "mesh-app-port"
META_PROTOCOL = "mesh-protocol"
META_SERVICE_ACCOUNT = "mesh-service-account"
META_MESHED = "mesh-meshed"
LABEL_PREFIX = "mesh-label-"

MAX_META_PAIRS = 64
MAX_KEY_LENGTH = 128
MAX_VALUE_LENGTH = 512

_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
_ESCAPE = re.compile(r"_([0-9A-F]{2})")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_STATUS_RANK = {"passing": 0, "warning": 1, "critical": 2}


def check_id(instance_id: str) -> str:
    """The TTL check of an instance's sidecar (Consul's own default for a service's only
    check)."""
    return f"service:{instance_id}"


def ttl_text(seconds: float) -> str:
    """A Go duration Consul parses: ``90000ms``."""
    return f"{max(1, round(seconds * 1000))}ms"


def encode_label_key(key: str) -> str:
    out: list[str] = []
    for ch in key:
        if ch in _PLAIN:
            out.append(ch)
        else:
            out.extend(f"_{b:02X}" for b in ch.encode())
    return "".join(out)


def decode_label_key(encoded: str) -> str:
    """The inverse of :func:`encode_label_key`; ``ValueError`` on a stray ``_``."""
    raw = bytearray()
    pos = 0
    while pos < len(encoded):
        ch = encoded[pos]
        if ch == "_":
            m = _ESCAPE.match(encoded, pos)
            if m is None:
                raise ValueError(f"bad escape at {pos} in label key {encoded!r}")
            raw.append(int(m.group(1), 16))
            pos = m.end()
        else:
            raw.extend(ch.encode())
            pos += 1
    return raw.decode()


def instance_meta(inst: Instance) -> dict[str, str]:
    """The Meta of ``inst``; raises ``InvalidInstance`` (naming the label) when it does
    not fit Consul's limits."""
    meta = {
        META_NAMESPACE: inst.namespace,
        META_APP_PORT: str(inst.app_port),
        META_PROTOCOL: inst.protocol,
        META_MESHED: "true" if inst.meshed else "false",
    }
    if inst.service_account:
        meta[META_SERVICE_ACCOUNT] = inst.service_account
    room = MAX_META_PAIRS - len(meta)
    if len(inst.labels) > room:
        raise InvalidInstance(
            f"instance {inst.id} has {len(inst.labels)} labels; Consul's service Meta holds "
            f"64 pairs, which leaves room for {room} labels: drop some",
            field="labels",
        )
    for key, value in inst.labels:
        meta_key = LABEL_PREFIX + encode_label_key(key)
        if not key or len(meta_key) > MAX_KEY_LENGTH:
            raise InvalidInstance(
                f"label key {key!r} of instance {inst.id} is too long for Consul's Meta: "
                f"encoded it is {len(meta_key)} characters ({meta_key!r}), the limit is "
                f"{MAX_KEY_LENGTH}; use a shorter key (characters other than letters, digits "
                "and '-' take 3 each)",
                field=f"labels.{key}",
            )
        if len(value) > MAX_VALUE_LENGTH:
            raise InvalidInstance(
                f"the value of label {key!r} of instance {inst.id} has {len(value)} "
                f"characters; Consul's Meta values hold at most {MAX_VALUE_LENGTH}",
                field=f"labels.{key}",
            )
        meta[meta_key] = value
    for key in (META_NAMESPACE, META_SERVICE_ACCOUNT):
        if len(meta.get(key, "")) > MAX_VALUE_LENGTH:
            raise InvalidInstance(
                f"{key} of instance {inst.id} is longer than {MAX_VALUE_LENGTH} characters",
                field=key,
            )
    return meta


def service_definition(
    inst: Instance, *, ttl_s: float, deregister_after_s: float
) -> dict[str, Any]:
    """The body of ``PUT /v1/agent/service/register``: the instance and its TTL check,
    whose initial status is the instance's health (a check's output cannot be given at
    registration; a TTL update sets it)."""
    check: dict[str, Any] = {
        "CheckID": check_id(inst.id),
        "Name": "mesh sidecar: app health",
        "Notes": "renewed by the instance's sidecar (meshd TTL check)",
        "TTL": ttl_text(ttl_s),
        "DeregisterCriticalServiceAfter": ttl_text(deregister_after_s),
        "Status": "passing" if inst.healthy else "critical",
    }
    return {
        "ID": inst.id,
        "Name": inst.service,
        "Address": inst.address,
        "Port": inst.port,
        "Meta": instance_meta(inst),
        "Check": check,
    }


def health_of(checks: Sequence[Mapping[str, Any]], service_id: str) -> tuple[bool, str]:
    """``(healthy, output)`` from an instance's checks: healthy when every one passes
    (none: healthy); the output of the worst check, the instance's own before node
    checks."""
    worst = -1
    output = ""
    for check in checks:
        rank = _STATUS_RANK.get(str(check.get("Status", "critical")), 2)
        own = check.get("ServiceID") == service_id
        text = str(check.get("Output") or "")
        if rank > worst or (rank == worst and own and text):
            worst, output = rank, text
    return worst <= 0, output


def instance_from_entry(entry: Mapping[str, Any]) -> tuple[Instance, str] | None:
    """The instance and its last check output from one ``/v1/health/service`` entry;
    ``None`` when it is not a mesh instance (no ``mesh-namespace``). Raises
    ``ValueError`` (what is wrong) for a malformed one."""
    svc = entry.get("Service")
    if not isinstance(svc, Mapping):
        raise ValueError("no Service object")
    meta = svc.get("Meta") or {}
    if not isinstance(meta, Mapping) or META_NAMESPACE not in meta:
        return None
    iid = str(svc.get("ID") or "")
    name = str(svc.get("Service") or "")
    namespace = str(meta[META_NAMESPACE])
    for what, value in (("service name", name), ("namespace", namespace)):
        if not _DNS_LABEL.match(value):
            raise ValueError(
                f"its {what} {value!r} is not a DNS label (lower-case letters, digits, '-')"
            )
    if not iid or "/" in iid:
        raise ValueError(f"its service ID {iid!r} cannot be a proxy id")
    node = entry.get("Node") if isinstance(entry.get("Node"), Mapping) else {}
    address = str(svc.get("Address") or (node or {}).get("Address") or "")
    if not address:
        raise ValueError("it has no address (neither the service's nor its node's)")
    port = _port(svc.get("Port"), "Port")
    app_port = _port(meta.get(META_APP_PORT, port), META_APP_PORT)
    protocol = str(meta.get(META_PROTOCOL, "http"))
    if protocol not in PROTOCOLS:
        raise ValueError(f"{META_PROTOCOL} {protocol!r} is not one of {sorted(PROTOCOLS)}")
    meshed_text = str(meta.get(META_MESHED, "true")).lower()
    if meshed_text not in ("true", "false"):
        raise ValueError(f"{META_MESHED} must be true or false, not {meshed_text!r}")
    labels: dict[str, str] = {}
    for key, value in meta.items():
        if isinstance(key, str) and key.startswith(LABEL_PREFIX):
            labels[decode_label_key(key[len(LABEL_PREFIX) :])] = str(value)
    checks = entry.get("Checks") or []
    healthy, output = health_of([c for c in checks if isinstance(c, Mapping)], iid)
    instance = Instance(
        id=iid,
        service=name,
        namespace=namespace,
        address=address,
        port=port,
        app_port=app_port,
        protocol=protocol,  # type: ignore[arg-type]  # checked against PROTOCOLS above
        labels=sorted_labels(labels),
        service_account=str(meta.get(META_SERVICE_ACCOUNT, "")),
        meshed=meshed_text == "true",
        healthy=healthy,
    )
    return instance, output


def _port(value: Any, what: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} {value!r} is not a port number") from None
    if not 1 <= number <= 65535:
        raise ValueError(f"{what} {number} is out of range (1-65535)")
    return number
