"""The identity's private state file: ``<state-dir>/identity.json`` (mode 0600).

It holds the private key, the leaf certificate, its intermediates and the trust roots,
so that a sidecar restarted while meshd is down serves with the certificate it had
until that certificate expires. Written like the saved config (temp file, fsync,
rename, fsync of the directory; :func:`sidecar.config_store.write_private_file`).
Whether the saved certificate is still usable (not expired, this workload's) is the
caller's decision; this module only checks that the file is whole and well formed. That
the key is the certificate's is checked by OpenSSL when the TLS contexts are built from
it (:func:`sidecar.tls_contexts.build_contexts`).

Blocking file I/O: call from a worker thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.config_store import remove_stale_temp_files, write_private_file
from sidecar.errors import StateError
from sidecar.x509_reader import cert_facts, pem_block_types, pem_certificates, pem_der

log = logging.getLogger("sidecar.identity")

STATE_FILE = "identity.json"
STATE_SCHEMA = 1


@dataclass(frozen=True, slots=True)
class SavedIdentity:
    """What the state file holds. ``key_pem`` is PKCS#8, unencrypted (the file is 0600
    in a 0700 directory: the same protection a key file of any server has)."""

    key_pem: str = field(repr=False)
    cert_pem: str
    chain_pem: str
    roots: tuple[str, ...]
    trust_domain: str = ""
    issued_at: float = 0.0
    """When the sidecar got the certificate (Unix time); 0 when unknown."""


_P256_ALGORITHM = bytes.fromhex("301306072a8648ce3d020106082a8648ce3d030107")
"""PKCS#8's AlgorithmIdentifier of an EC key on P-256 (id-ecPublicKey, prime256v1)."""


def is_p256_key(key_pem: str) -> bool:
    """Whether ``key_pem`` is one unencrypted PKCS#8 EC P-256 private key: the only
    kind the sidecar makes (:mod:`sidecar.keygen`)."""
    if pem_block_types(key_pem) != ["PRIVATE KEY"]:
        return False
    try:
        der = pem_der(key_pem, "PRIVATE KEY")
    except ValueError:
        return False
    return _P256_ALGORITHM in der[:32]


def encode_state(saved: SavedIdentity) -> bytes:
    doc = {
        "schema": STATE_SCHEMA,
        "key": saved.key_pem,
        "certificate": saved.cert_pem,
        "chain": saved.chain_pem,
        "roots": list(saved.roots),
        "trustDomain": saved.trust_domain,
        "issuedAt": saved.issued_at,
    }
    return json.dumps(doc, indent=1).encode() + b"\n"


def decode_state(raw: bytes) -> SavedIdentity:
    """Raises ValueError saying what is wrong: not JSON, a missing field, a key that
    is not EC P-256, a certificate that cannot be read."""
    try:
        doc: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    if doc.get("schema") != STATE_SCHEMA:
        raise ValueError(f"schema {doc.get('schema')!r} is not {STATE_SCHEMA}")

    def text(name: str) -> str:
        value = doc.get(name)
        if not isinstance(value, str):
            raise ValueError(f"{name!r} is missing or not a string")
        return value

    key_pem, cert_pem, chain_pem = text("key"), text("certificate"), text("chain")
    roots = doc.get("roots")
    if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
        raise ValueError("'roots' is missing or not a list of PEM strings")
    issued_at = doc.get("issuedAt", 0.0)
    if not isinstance(issued_at, int | float) or isinstance(issued_at, bool):
        raise ValueError("'issuedAt' is not a number")
    saved = SavedIdentity(
        key_pem=key_pem,
        cert_pem=cert_pem,
        chain_pem=chain_pem,
        roots=tuple(roots),
        trust_domain=doc.get("trustDomain") or "",
        issued_at=float(issued_at),
    )
    if not is_p256_key(saved.key_pem):
        raise ValueError("the private key is not an unencrypted PKCS#8 EC P-256 key")
    try:
        cert_facts(saved.cert_pem)
        if saved.chain_pem.strip():
            pem_certificates(saved.chain_pem)
        for root in saved.roots:
            pem_certificates(root)
    except ValueError as exc:
        raise ValueError(f"a certificate cannot be read ({exc})") from exc
    return saved


def state_path(state_dir: Path) -> Path:
    return state_dir / STATE_FILE


def save_state(state_dir: Path, saved: SavedIdentity) -> None:
    """Replace the state file atomically (mode 0600). Raises :class:`StateError`."""
    write_private_file(state_path(state_dir), encode_state(saved))


def read_state(state_dir: Path) -> SavedIdentity | None:
    """The saved identity; None when there is none, or (with a log line) when the file
    is torn or otherwise unusable. Raises :class:`StateError` when it cannot be read."""
    path = state_path(state_dir)
    remove_stale_temp_files(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return decode_state(raw)
    except ValueError as exc:
        log.warning(
            "ignoring the saved certificate in %s: %s; a new one will be requested", path, exc
        )
        return None


def discard_state(state_dir: Path) -> None:
    """Delete the state file (an expired or foreign certificate): best effort."""
    with contextlib.suppress(OSError):
        state_path(state_dir).unlink()
