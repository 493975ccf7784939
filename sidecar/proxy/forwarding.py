"""Headers of proxied messages: hop-by-hop fields removed, ``X-Forwarded-For`` /
``X-Forwarded-Proto``, ``x-request-id`` and W3C ``traceparent``, and a route's header
operations, in one pass over the fields.

- Hop-by-hop fields (RFC 9110 §7.6.1) are never forwarded: ``Connection`` and every
  field it names, ``Keep-Alive``, ``Proxy-Connection``, ``TE``, ``Trailer``,
  ``Transfer-Encoding`` (each hop frames bodies itself) and ``Upgrade`` (kept, with
  ``Connection: upgrade``, on an Upgrade request and on the 101 that accepts it).
  ``Expect`` is answered by the proxy (``100 Continue`` once the upstream is ready, as
  Envoy does) and not forwarded; ``Host`` is set to the authority the route chose.
- ``X-Forwarded-For``: the peer's address appended (several fields folded into one);
  ``X-Forwarded-Proto``: kept when present, else the scheme the client spoke to us.
- ``x-request-id``: kept, else a new UUID4; ``traceparent``: kept when well-formed,
  else a new one (and ``tracestate``, which belongs to the old trace, dropped). The
  proxy records no spans, so it propagates the parent id unchanged.

Fields from the parser are valid, and so are the values made here, so the results go
to the HTTP layer as ``Headers.trusted`` (no second validation on the hot path);
header operations were validated once, when the config was compiled.
"""

from __future__ import annotations

import re
from random import getrandbits
from typing import Final

from sidecar.protocol import Headers
from sidecar.protocol.headers import Field
from sidecar.proxy.config import NO_BYTES_EDITS, BytesEdits

__all__ = [
    "HOP_BY_HOP",
    "apply_edits",
    "new_request_id",
    "new_traceparent",
    "request_fields",
    "response_fields",
]

HOP_BY_HOP: Final = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    )
)
_REQUEST_DROP: Final = HOP_BY_HOP | {b"host", b"expect"}
_RESPONSE_DROP: Final = HOP_BY_HOP

_traceparent = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}").fullmatch
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16


# Request and trace ids must be unique, not unguessable: the process-wide Mersenne
# Twister (seeded from the OS, reseeded in a forked child) costs no system call, where
# os.urandom costs one per id, three per request that arrives without ids.
_UUID4_MASK: Final = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_UUID4_BITS: Final = (0x4 << 76) | (0x2 << 62)


def new_request_id() -> bytes:
    """A random UUID4 (what Envoy generates for ``x-request-id``)."""
    h = b"%032x" % ((getrandbits(128) & _UUID4_MASK) | _UUID4_BITS)
    return b"%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])


def new_traceparent() -> bytes:
    """A new W3C trace context: version 00, random trace and parent ids, not sampled
    (the proxy records nothing; an app's tracer decides for itself)."""
    return b"00-%032x-%016x-00" % (getrandbits(128) or 1, getrandbits(64) or 1)


def valid_traceparent(value: bytes) -> bool:
    m = _traceparent(value)
    return (
        m is not None
        and m.group(1) != b"ff"
        and m.group(2) != _ZERO_TRACE
        and m.group(3) != _ZERO_SPAN
    )


def apply_edits(fields: list[Field], edits: BytesEdits) -> list[Field]:
    """``set``/``add``/``remove`` (see :func:`sidecar.routing.apply_header_ops`) on bytes
    fields; ``Host`` is never removed here (the route's authority rewrite owns it)."""
    for drop, append in edits:
        if drop:
            fields = [f for f in fields if f[0] not in drop or f[0] == b"host"]
        if append:
            fields.extend(append)
    return fields


def request_fields(
    headers: Headers,
    authority: bytes,
    peer_ip: bytes,
    proto: bytes,
    edits: BytesEdits = NO_BYTES_EDITS,
    *,
    chunked: bool = False,
    upgrade: bytes | None = None,
) -> tuple[list[Field], bytes]:
    """The fields of the request to send upstream, and its ``x-request-id``.

    ``authority`` becomes ``Host`` (first, as Envoy puts ``:authority``); ``peer_ip``
    is appended to ``X-Forwarded-For``; ``proto`` is the ``X-Forwarded-Proto`` when the
    request has none; ``chunked``: the body is forwarded in chunks; ``upgrade``: the
    ``Upgrade`` value of an Upgrade request (forwarded with ``Connection: upgrade``)."""
    named = headers.get_tokens(b"connection") if headers.contains(b"connection") else ()
    out: list[Field] = [(b"host", authority)]
    xff: list[bytes] = []
    request_id = b""
    have_proto = have_trace = False
    drop_tracestate = False
    for field in headers.fields:
        name = field[0]
        if name in _REQUEST_DROP or (named and name in named):
            continue
        if name == b"x-forwarded-for":
            xff.append(field[1])
            continue
        if name == b"x-request-id":
            if request_id or not field[1]:
                continue
            request_id = field[1]
        elif name == b"x-forwarded-proto":
            have_proto = True
        elif name == b"traceparent":
            if have_trace or not valid_traceparent(field[1]):
                drop_tracestate = True
                continue
            have_trace = True
        out.append(field)
    xff.append(peer_ip)
    out.append((b"x-forwarded-for", b", ".join(xff)))
    if not have_proto:
        out.append((b"x-forwarded-proto", proto))
    if not request_id:
        request_id = new_request_id()
        out.append((b"x-request-id", request_id))
    if not have_trace:
        if drop_tracestate:
            out = [f for f in out if f[0] != b"tracestate"]
        out.append((b"traceparent", new_traceparent()))
    if chunked:
        out.append((b"transfer-encoding", b"chunked"))
    if upgrade is not None:
        out.append((b"connection", b"upgrade"))
        out.append((b"upgrade", upgrade))
    if edits:
        out = apply_edits(out, edits)
    return out, request_id


def response_fields(
    headers: Headers,
    edits: BytesEdits = NO_BYTES_EDITS,
    *,
    extra: tuple[Field, ...] = (),
    upgrade: bool = False,
) -> list[Field]:
    """The fields of an upstream's response to send downstream: hop-by-hop removed
    (``Upgrade`` and ``Connection: upgrade`` kept on a 101), the route's response
    operations applied, ``extra`` appended (``Set-Cookie`` of a hash policy,
    ``Connection: close`` while draining)."""
    named = headers.get_tokens(b"connection") if headers.contains(b"connection") else ()
    out: list[Field] = []
    for field in headers.fields:
        name = field[0]
        if name in _RESPONSE_DROP or (named and name in named):
            if upgrade and name == b"upgrade":
                out.append(field)
            continue
        out.append(field)
    if upgrade:
        out.append((b"connection", b"upgrade"))
    if edits:
        out = apply_edits(out, edits)
    if extra:
        out.extend(extra)
    return out
