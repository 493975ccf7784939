"""Snapshot -> wire bytes, in parts that are shared between proxies.

Every proxy in a scope holds the very same OutboundConfig (the big part: every
service it may call), and every instance of a workload the same InboundConfig. Each
is encoded once; a proxy's document is sent as three chunks — a small head, the
shared outbound bytes, a small tail — so neither encoding time nor memory grows with
the number of proxies times the size of the mesh. The bytes equal ``codec.dumps``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import TypeVar

from meshd.compile import codec
from meshd.compile.snapshot import InboundConfig, MeshSettings, OutboundConfig, ProxySnapshot

# The document is written by hand in codec.dumps' key order; a field added to
# ProxySnapshot must be added here too (the test comparing with codec.dumps and this
# guard both catch a forgotten one).
_FIELDS = (
    "identity", "inbound", "mesh", "namespace", "outbound",
    "proxy_id", "schema", "service", "trust_bundle", "trust_roots", "version",
)  # fmt: skip
if tuple(sorted(f.name for f in dataclasses.fields(ProxySnapshot))) != _FIELDS:
    raise RuntimeError("ProxySnapshot's fields changed: update meshd.xds.encode")


T = TypeVar("T")


def _json(value: str | int) -> bytes:
    return json.dumps(value).encode()


@dataclasses.dataclass(frozen=True, slots=True)
class Encoded:
    """One proxy's document as chunks to send in order."""

    version: str
    chunks: tuple[bytes, bytes, bytes]

    @property
    def size(self) -> int:
        return sum(len(c) for c in self.chunks)


class SnapshotEncoder:
    """Caches the encoding of shared parts by identity; :meth:`retain` drops what no
    current snapshot uses. Used from one thread at a time."""

    def __init__(self) -> None:
        # id -> (object, bytes): holding the object keeps its id from being reused.
        self._outbound: dict[int, tuple[OutboundConfig, bytes]] = {}
        self._inbound: dict[int, tuple[InboundConfig, bytes]] = {}
        self._mesh: dict[int, tuple[MeshSettings, bytes]] = {}
        self._docs: dict[str, Encoded] = {}
        self._roots_key: tuple[str, ...] = ()
        self._roots_bytes = b"[]"

    def _cached(self, cache: dict[int, tuple[T, bytes]], obj: T) -> bytes:
        hit = cache.get(id(obj))
        if hit is not None and hit[0] is obj:
            return hit[1]
        encoded = codec.dumps(obj)
        cache[id(obj)] = (obj, encoded)
        return encoded

    def encode(self, snap: ProxySnapshot) -> Encoded:
        head = b"".join((
            b'{"identity":', _json(snap.identity),
            b',"inbound":', self._cached(self._inbound, snap.inbound),
            b',"mesh":', self._cached(self._mesh, snap.mesh),
            b',"namespace":', _json(snap.namespace),
            b',"outbound":',
        ))  # fmt: skip
        tail = b"".join((
            b',"proxy_id":', _json(snap.proxy_id),
            b',"schema":', _json(snap.schema),
            b',"service":', _json(snap.service),
            b',"trust_bundle":', _json(snap.trust_bundle),
            b',"trust_roots":', self._roots(snap.trust_roots),
            b',"version":', _json(snap.version),
            b"}",
        ))  # fmt: skip
        return Encoded(snap.version, (head, self._cached(self._outbound, snap.outbound), tail))

    def _roots(self, roots: tuple[str, ...]) -> bytes:
        # Every proxy holds the same roots: encode them once per bundle.
        if roots != self._roots_key:
            self._roots_key = roots
            self._roots_bytes = json.dumps(list(roots), separators=(",", ":")).encode()
        return self._roots_bytes

    def encode_all(self, snapshots: Mapping[str, ProxySnapshot]) -> dict[str, Encoded]:
        """Every snapshot's document, re-encoding only new versions, and forgetting
        parts no snapshot uses any more. Meant for the compile thread, so the event
        loop only ever sends bytes."""
        docs: dict[str, Encoded] = {}
        for pid, snap in snapshots.items():
            old = self._docs.get(pid)
            docs[pid] = (
                old if old is not None and old.version == snap.version else self.encode(snap)
            )
        self._docs = docs
        for cache, part in (
            (self._outbound, "outbound"),
            (self._inbound, "inbound"),
            (self._mesh, "mesh"),
        ):
            keep = {id(getattr(snap, part)) for snap in snapshots.values()}
            for key in [k for k in cache if k not in keep]:
                del cache[key]
        return docs
