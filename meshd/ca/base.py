"""The contract every CA backend implements, and the values it deals in.

A backend signs leaf certificates for workloads (and meshd's own serving certificate)
under one of the roots of its trust bundle. The bundle may hold several roots during a
root rotation; exactly one of them signs. Everything here is immutable; the backends do
the I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol

from meshd.spiffe import SpiffeId

DEFAULT_LEAF_TTL = timedelta(hours=24)
MAX_LEAF_TTL = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class RootCert:
    """One trust anchor. ``id`` is the SHA-256 fingerprint of its DER (hex)."""

    id: str
    pem: str
    not_after: datetime


@dataclass(frozen=True, slots=True)
class TrustBundle:
    """Every root a peer may chain to, and which one signs new certificates.
    ``retiring`` roots stay trusted until the last leaf they signed has expired."""

    trust_domain: str
    roots: tuple[RootCert, ...]
    signing_root: str

    @property
    def digest(self) -> str:
        """Changes exactly when the set of trusted roots changes (not when signing moves)."""
        return hashlib.sha256("\n".join(sorted(r.id for r in self.roots)).encode()).hexdigest()[:16]

    def pem(self) -> str:
        return "".join(r.pem for r in self.roots)

    def root(self, root_id: str) -> RootCert:
        for r in self.roots:
            if r.id == root_id:
                return r
        raise KeyError(root_id)


@dataclass(frozen=True, slots=True)
class SignRequest:
    """Sign ``csr_pem`` for exactly ``identity``. ``dns_names``/``ip_addresses`` are only
    for meshd's own serving certificate (the caller decides; the CSR cannot ask)."""

    csr_pem: str
    identity: SpiffeId
    ttl: timedelta = DEFAULT_LEAF_TTL
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class IssuedCert:
    """A signed leaf. ``chain_pem`` holds the intermediates from the leaf's issuer up to,
    not including, the root ``root_id``; peers send leaf + chain."""

    cert_pem: str
    chain_pem: str
    root_id: str
    serial: str
    identity: SpiffeId
    not_before: datetime
    not_after: datetime


class CertificateAuthority(Protocol):
    """Backends raise ``meshd.errors.MeshError`` subclasses: ``CsrRejected`` (400) for a
    CSR that breaks policy, ``CaUnavailable`` (503) when the backend cannot be reached."""

    backend: Literal["embedded", "vault"]

    async def bundle(self) -> TrustBundle: ...

    async def sign(self, request: SignRequest) -> IssuedCert: ...

    async def add_root(self) -> TrustBundle:
        """Make a new root (and intermediate) and add it to the bundle; it does not sign
        yet. Step one of a rotation."""
        ...

    async def activate_root(self, root_id: str) -> TrustBundle:
        """Sign new certificates under ``root_id`` from now on."""
        ...

    async def remove_root(self, root_id: str) -> TrustBundle:
        """Stop trusting ``root_id`` (never the signing one)."""
        ...

    async def aclose(self) -> None: ...
