"""The control channel between the main sidecar process and its worker processes:
framing, message kinds and payload codecs. Sans-IO (no Trio): bytes in, messages out.

A frame is two big-endian 32-bit lengths, then a JSON header of that many bytes (an
object with at least ``"kind"``), then an opaque body::

    +-----------+-----------+------------------+----------------+
    | head len  | body len  | header (JSON)    | body (bytes)   |
    +-----------+-----------+------------------+----------------+

The body carries what is already bytes (a snapshot in the JSON the agent saves, PEM
material, a metric state) so it is never escaped into the header. Both lengths are
capped: a peer that sends more is broken, and the reader says so instead of buffering
without bound.

Messages, main -> worker: ``start`` (the :class:`WorkerSpec`), ``identity`` (key,
certificate, chain, roots: PEM, in memory only), ``config`` (a snapshot), ``stats``
(a request for the worker's metric state), ``drain``. Worker -> main: ``identity-applied``,
``applied`` / ``rejected`` (a config version), ``listening``, ``stats`` (its metric
state), ``drained``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any, Final

from sidecar.errors import SidecarError
from sidecar.settings import UpstreamSpec
from sidecar.telemetry.metrics import MetricState

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_HEAD_BYTES",
    "ChannelError",
    "FrameDecoder",
    "IdentityMaterial",
    "Message",
    "WorkerSpec",
    "decode_identity",
    "decode_metric_state",
    "decode_spec",
    "encode",
    "encode_identity",
    "encode_metric_state",
    "encode_spec",
]

_LENGTHS: Final = struct.Struct(">II")
MAX_HEAD_BYTES: Final = 1 << 20
MAX_BODY_BYTES: Final = 256 << 20
"""A snapshot of a very large mesh is tens of MiB; anything near this is a broken peer."""

# Message kinds.
START: Final = "start"
IDENTITY: Final = "identity"
CONFIG: Final = "config"
STATS: Final = "stats"
DRAIN: Final = "drain"
IDENTITY_APPLIED: Final = "identity-applied"
APPLIED: Final = "applied"
REJECTED: Final = "rejected"
LISTENING: Final = "listening"
DRAINED: Final = "drained"


class ChannelError(SidecarError):
    """The control channel carried something that is not a valid frame or payload: the
    other process is broken (or not a sidecar); the channel must be closed."""


@dataclass(frozen=True, slots=True)
class Message:
    """One frame: ``kind``, JSON ``fields`` (without the kind) and a ``body``."""

    kind: str
    fields: dict[str, Any] = field(default_factory=dict)
    body: bytes = b""

    def text(self, name: str) -> str:
        """A string field; :class:`ChannelError` naming it when missing or not a string."""
        value = self.fields.get(name)
        if not isinstance(value, str):
            raise ChannelError(f"{self.kind} message: field {name!r} is missing or not text")
        return value

    def number(self, name: str) -> int:
        value = self.fields.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ChannelError(f"{self.kind} message: field {name!r} is missing or not an integer")
        return value


def encode(message: Message) -> bytes:
    """The frame of ``message``. Raises :class:`ChannelError` when it is too large."""
    head = json.dumps({**message.fields, "kind": message.kind}, separators=(",", ":")).encode()
    if len(head) > MAX_HEAD_BYTES or len(message.body) > MAX_BODY_BYTES:
        raise ChannelError(
            f"{message.kind} message too large: header {len(head)} bytes (max "
            f"{MAX_HEAD_BYTES}), body {len(message.body)} bytes (max {MAX_BODY_BYTES})"
        )
    return _LENGTHS.pack(len(head), len(message.body)) + head + message.body


class FrameDecoder:
    """Feed bytes as they arrive; take whole messages out in order."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_message(self) -> Message | None:
        """The next complete message, None until one is complete. Raises
        :class:`ChannelError` for a frame that cannot be valid (the decoder is unusable
        afterwards)."""
        buf = self._buffer
        if len(buf) < _LENGTHS.size:
            return None
        head_len, body_len = _LENGTHS.unpack_from(buf)
        if head_len > MAX_HEAD_BYTES or body_len > MAX_BODY_BYTES:
            raise ChannelError(
                f"a frame announces a header of {head_len} bytes and a body of {body_len} "
                f"(max {MAX_HEAD_BYTES} and {MAX_BODY_BYTES}): the peer is broken"
            )
        end = _LENGTHS.size + head_len + body_len
        if len(buf) < end:
            return None
        head = bytes(buf[_LENGTHS.size : _LENGTHS.size + head_len])
        body = bytes(buf[_LENGTHS.size + head_len : end])
        del buf[:end]
        try:
            fields = json.loads(head)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ChannelError(f"a frame header is not JSON: {exc}") from exc
        if not isinstance(fields, dict) or not isinstance(fields.get("kind"), str):
            raise ChannelError("a frame header is not an object with a text 'kind'")
        kind = fields.pop("kind")
        return Message(kind, fields, body)


def _json_body(body: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ChannelError(f"the {what} is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ChannelError(f"the {what} is not a JSON object")
    return doc


# --- the worker's start-up spec -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a worker needs of the sidecar's settings to serve the same listeners."""

    index: int
    proxy_id: str
    service: str
    namespace: str
    labels: tuple[tuple[str, str], ...]
    inbound_address: str
    inbound_port: int
    outbound_port: int
    app_address: str
    upstreams: tuple[UpstreamSpec, ...]
    access_log: str
    log_level: str
    state_dir: str


def encode_spec(spec: WorkerSpec) -> Message:
    return Message(
        START,
        {
            "index": spec.index,
            "proxyId": spec.proxy_id,
            "service": spec.service,
            "namespace": spec.namespace,
            "labels": [list(pair) for pair in spec.labels],
            "inboundAddress": spec.inbound_address,
            "inboundPort": spec.inbound_port,
            "outboundPort": spec.outbound_port,
            "appAddress": spec.app_address,
            "upstreams": [[u.name, u.port, u.local_port] for u in spec.upstreams],
            "accessLog": spec.access_log,
            "logLevel": spec.log_level,
            "stateDir": spec.state_dir,
        },
    )


def decode_spec(message: Message) -> WorkerSpec:
    if message.kind != START:
        raise ChannelError(f"expected a start message first, got {message.kind!r}")
    try:
        labels = tuple((str(k), str(v)) for k, v in message.fields["labels"])
        upstreams = tuple(
            UpstreamSpec(str(name), None if port is None else int(port), int(local))
            for name, port, local in message.fields["upstreams"]
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ChannelError(f"start message: labels or upstreams are malformed: {exc!r}") from exc
    return WorkerSpec(
        index=message.number("index"),
        proxy_id=message.text("proxyId"),
        service=message.text("service"),
        namespace=message.text("namespace"),
        labels=labels,
        inbound_address=message.text("inboundAddress"),
        inbound_port=message.number("inboundPort"),
        outbound_port=message.number("outboundPort"),
        app_address=message.text("appAddress"),
        upstreams=upstreams,
        access_log=message.text("accessLog"),
        log_level=message.text("logLevel"),
        state_dir=message.text("stateDir"),
    )


# --- identity -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdentityMaterial:
    """One published identity as the main process holds it: PEM and the facts the
    worker rebuilds an ``Identity`` from. Travels only over the socketpair."""

    generation: int
    key_pem: str = field(repr=False)
    cert_pem: str
    chain_pem: str
    roots: tuple[str, ...]
    trust_bundle: str
    issued_at: float
    source: str


def encode_identity(material: IdentityMaterial) -> Message:
    body = json.dumps(
        {
            "key": material.key_pem,
            "certificate": material.cert_pem,
            "chain": material.chain_pem,
            "roots": list(material.roots),
            "trustBundle": material.trust_bundle,
            "issuedAt": material.issued_at,
            "source": material.source,
        }
    ).encode()
    return Message(IDENTITY, {"generation": material.generation}, body)


def decode_identity(message: Message) -> IdentityMaterial:
    doc = _json_body(message.body, "identity")
    try:
        roots = tuple(str(r) for r in doc["roots"])
        return IdentityMaterial(
            generation=message.number("generation"),
            key_pem=str(doc["key"]),
            cert_pem=str(doc["certificate"]),
            chain_pem=str(doc["chain"]),
            roots=roots,
            trust_bundle=str(doc["trustBundle"]),
            issued_at=float(doc["issuedAt"]),
            source=str(doc["source"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ChannelError(f"the identity is missing a field: {exc!r}") from exc


# --- metric state ---------------------------------------------------------------------------


def encode_metric_state(state: MetricState) -> bytes:
    return json.dumps(
        {
            "http": list(state.http.items()),
            "tcp": list(state.tcp.items()),
            "dropped": state.dropped,
            "accessLogErrors": state.access_log_errors,
        },
        separators=(",", ":"),
    ).encode()


def decode_metric_state(body: bytes) -> MetricState:
    doc = _json_body(body, "metric state")
    try:
        http = {str(labels): [_num(v) for v in values] for labels, values in doc["http"]}
        tcp = {str(labels): [int(v) for v in values] for labels, values in doc["tcp"]}
        errors = doc["accessLogErrors"]
        return MetricState(
            http=http,
            tcp=tcp,
            dropped=int(doc["dropped"]),
            access_log_errors=None if errors is None else int(errors),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ChannelError(f"the metric state is malformed: {exc!r}") from exc


def _num(value: object) -> float:
    # Counts stay ints (rendered without a fraction, as Telemetry renders them).
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{value!r} is not a number")
    return value
