"""Content digests and snapshot versions.

Digests are BLAKE2b over a canonical text, never Python's ``hash()`` (salted per
process), object ids or dict order, so equal content gives equal digests in every
process and every meshd replica. The canonical text of a compiled dataclass tree is
its ``repr``: the compiler's output holds only str, int, float, bool, None, tuples and
frozen dataclasses, whose reprs are deterministic and list fields in declaration
order; it is several times cheaper than the JSON wire form and identifies the same
content (the wire form is a function of it).
"""

from __future__ import annotations

from collections.abc import Iterable
from hashlib import blake2b

from meshd.compile import snapshot as snap

DIGEST_BYTES = 16
VERSION_BYTES = 8


def digest_text(text: str) -> str:
    """32 hex digits identifying ``text``."""
    return blake2b(text.encode(), digest_size=DIGEST_BYTES).hexdigest()


def digest_of(value: object) -> str:
    """Digest of a compiled dataclass tree (see the module docstring)."""
    return digest_text(repr(value))


def combine(parts: Iterable[str]) -> str:
    """Digest of an ordered sequence of digests (or other strings without newlines)."""
    return digest_text("\n".join(parts))


def mesh_fingerprint(mesh: snap.MeshSettings) -> str:
    return repr(mesh)


def snapshot_version(
    *,
    proxy_id: str,
    service: str,
    namespace: str,
    identity: str,
    inbound_digest: str,
    outbound_digest: str,
    trust_bundle: str,
    mesh: str,
    schema: int = snap.SCHEMA_VERSION,
) -> str:
    """16 hex digits over everything a ProxySnapshot holds: ``mesh`` is
    :func:`mesh_fingerprint` of its settings."""
    text = "\x1f".join(
        (
            str(schema),
            proxy_id,
            service,
            namespace,
            identity,
            inbound_digest,
            outbound_digest,
            trust_bundle,
            mesh,
        )
    )
    return blake2b(text.encode(), digest_size=VERSION_BYTES).hexdigest()
