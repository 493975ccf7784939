"""The embedded CA: roots, intermediates and their keys made with ``cryptography`` and
kept in meshd's store, or loaded from a directory of files ("plug-in CA", as Istio's
``cacerts``).

Store mode. At first start :meth:`EmbeddedCA.open` makes a root (EC P-256, self-signed,
CA:true pathlen 1, 10 years, a critical URI name constraint permitting only
``spiffe://<trust-domain>``) and a signing intermediate (EC P-256, CA:true pathlen 0,
5 years), and writes them with their keys to ONE record of the store (collection
``ca``, id ``embedded``)::

    {"format": 1, "trust_domain": "cluster.local", "generation": 3,
     "signing_root": "<root id>", "updated_at": "<ISO time>",
     "roots": [{"id": "<sha256 of the root's DER>", "created_at": "<ISO time>",
                "cert": PEM, "key": PEM, "intermediate_cert": PEM, "intermediate_key": PEM}]}

The record is written with ``create_only``: replicas starting at once against one Consul
store race to create it, one wins, the others read the winner's, so all share one CA.
Every replica re-reads the record at most every ``refresh_interval`` seconds (so a
rotation made through one replica reaches the others), and at once before a rotation.
The sqlite store keeps the record in meshd's data directory (mode 0600); the Consul store
in Consul KV, whose ACLs must then protect ``<prefix>records/ca/``.

Plug-in mode (:meth:`EmbeddedCA.from_files`): ``ca-cert.pem`` (the signing certificate),
``ca-key.pem``, ``root-cert.pem`` (one or more roots) and ``cert-chain.pem`` (from the
signing certificate up to the root), checked to fit together. Nothing is written; the
rotation operations raise ``BadRequest`` (replace the files and restart).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal

import anyio
import anyio.to_thread
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

from meshd.ca.base import IssuedCert, RootCert, SignRequest, TrustBundle
from meshd.ca.leaf import build_leaf
from meshd.ca.policy import check_csr, describe_key
from meshd.errors import (
    BadRequest,
    CaUnavailable,
    ConfigError,
    Conflict,
    NotFound,
    StoreUnavailable,
)
from meshd.spiffe import spiffe_id
from meshd.store.base import Store

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CERT_CHAIN_FILE",
    "INTERMEDIATE_VALIDITY",
    "RECORD_COLLECTION",
    "RECORD_ID",
    "ROOT_CERT_FILE",
    "ROOT_VALIDITY",
    "EmbeddedCA",
    "fingerprint",
    "root_cert",
]

log = logging.getLogger(__name__)

RECORD_COLLECTION: Final = "ca"
RECORD_ID: Final = "embedded"
RECORD_FORMAT: Final = 1

ROOT_VALIDITY = timedelta(days=3650)
INTERMEDIATE_VALIDITY = timedelta(days=5 * 365)
DEFAULT_REFRESH_INTERVAL = 5.0
"""Seconds a replica signs with the CA state it read last before it reads it again."""

CA_CERT_FILE: Final = "ca-cert.pem"
CA_KEY_FILE: Final = "ca-key.pem"
ROOT_CERT_FILE: Final = "root-cert.pem"
CERT_CHAIN_FILE: Final = "cert-chain.pem"
PLUGIN_FILES: Final = (CA_CERT_FILE, CA_KEY_FILE, ROOT_CERT_FILE, CERT_CHAIN_FILE)

_PEM = serialization.Encoding.PEM


# --- certificates and keys -------------------------------------------------------------------


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, hex: the id of a root (``RootCert.id``)."""
    return cert.fingerprint(hashes.SHA256()).hex()


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(_PEM).decode()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        _PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def root_cert(cert: x509.Certificate) -> RootCert:
    return RootCert(id=fingerprint(cert), pem=_pem(cert), not_after=cert.not_valid_after_utc)


def _public_der(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _ca_builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer_key: ec.EllipticCurvePrivateKey,
    now: datetime,
    validity: timedelta,
    path_length: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )


def _name(kind: str, trust_domain: str, now: datetime, tag: str) -> x509.Name:
    # The random tag keeps two roots made on one day apart for chain building by name.
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshd"),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"meshd {kind} {trust_domain} {now:%Y-%m-%d} {tag}"
            ),
        ]
    )


def new_root_entry(
    trust_domain: str, *, name_constraints: bool = True, now: datetime | None = None
) -> dict[str, str]:
    """A new root and its signing intermediate, with their keys, as a record entry."""
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    tag = secrets.token_hex(3)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = _name("root", trust_domain, now, tag)
    builder = _ca_builder(root_name, root_name, root_key, root_key, now, ROOT_VALIDITY, 1)
    if name_constraints:
        # RFC 5280 4.2.1.10: a URI constraint names the host part, here the trust domain:
        # only spiffe://<trust-domain>/... leaves verify under this root. Critical, as
        # the RFC requires. OpenSSL (and so Python's ssl) enforces it; the certificate
        # verifier of ``cryptography`` refuses URI constraints altogether.
        builder = builder.add_extension(
            x509.NameConstraints(
                permitted_subtrees=[x509.UniformResourceIdentifier(trust_domain)],
                excluded_subtrees=None,
            ),
            critical=True,
        )
    root = builder.sign(root_key, hashes.SHA256())
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = _ca_builder(
        _name("intermediate", trust_domain, now, tag),
        root_name,
        inter_key,
        root_key,
        now,
        INTERMEDIATE_VALIDITY,
        0,
    ).sign(root_key, hashes.SHA256())
    return {
        "id": fingerprint(root),
        "created_at": now.isoformat(),
        "cert": _pem(root),
        "key": _key_pem(root_key),
        "intermediate_cert": _pem(inter),
        "intermediate_key": _key_pem(inter_key),
    }


def new_state(trust_domain: str, *, name_constraints: bool = True) -> dict[str, Any]:
    entry = new_root_entry(trust_domain, name_constraints=name_constraints)
    return {
        "format": RECORD_FORMAT,
        "trust_domain": trust_domain,
        "generation": 1,
        "signing_root": entry["id"],
        "updated_at": entry["created_at"],
        "roots": [entry],
    }


def _digest(data: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# --- the loaded state ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Signer:
    """What signs leaves: a CA certificate and its key, the chain from it up to (not
    including) its root, and that root's id."""

    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes
    chain_pem: str
    root_id: str


@dataclass(frozen=True, slots=True)
class _Loaded:
    digest: str
    """Of the record it was parsed from ("" in plug-in mode)."""
    bundle: TrustBundle
    signer: _Signer


def _corrupt(detail: str) -> CaUnavailable:
    return CaUnavailable(
        f"the embedded CA's record ({RECORD_COLLECTION}/{RECORD_ID} in the store) is "
        f"damaged: {detail}; restore the store from a backup (deleting the record makes a "
        "new CA that no existing certificate chains to)",
        backend="embedded",
    )


def _parse_state(data: Mapping[str, Any], trust_domain: str) -> _Loaded:
    if data.get("format") != RECORD_FORMAT:
        raise _corrupt(f"unknown format {data.get('format')!r} (this meshd reads {RECORD_FORMAT})")
    if data.get("trust_domain") != trust_domain:
        raise ConfigError(
            f"the embedded CA in the store was made for trust domain "
            f"{data.get('trust_domain')!r}, but meshd runs with --trust-domain {trust_domain!r}; "
            "start meshd with the CA's trust domain (a CA serves one trust domain)",
            setting="trust_domain",
        )
    try:
        entries: list[Mapping[str, str]] = list(data["roots"])
        signing_id = str(data["signing_root"])
        roots: list[RootCert] = []
        signer: _Signer | None = None
        for entry in entries:
            cert = x509.load_pem_x509_certificate(entry["cert"].encode())
            root = root_cert(cert)
            if root.id != entry["id"]:
                raise _corrupt(f"root {entry['id']} has another fingerprint ({root.id})")
            roots.append(root)
            if root.id == signing_id:
                inter = x509.load_pem_x509_certificate(entry["intermediate_cert"].encode())
                key = serialization.load_pem_private_key(
                    entry["intermediate_key"].encode(), password=None
                )
                if _public_der(key.public_key()) != _public_der(inter.public_key()):
                    raise _corrupt(f"the intermediate key of root {root.id} does not match")
                signer = _Signer(inter, key, _pem(inter), root.id)  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError, UnsupportedAlgorithm) as exc:
        raise _corrupt(f"{type(exc).__name__}: {exc}") from exc
    if signer is None:
        raise _corrupt(f"the signing root {signing_id} is not among its roots")
    bundle = TrustBundle(trust_domain=trust_domain, roots=tuple(roots), signing_root=signer.root_id)
    return _Loaded(_digest(data), bundle, signer)


def _sign(signer: _Signer, request: SignRequest) -> IssuedCert:
    csr = check_csr(request.csr_pem, request.identity)
    cert = build_leaf(
        csr.public_key(),
        request.identity,
        request.ttl,
        signer.cert,
        signer.key,
        dns_names=request.dns_names,
        ip_addresses=request.ip_addresses,
    )
    return IssuedCert(
        cert_pem=_pem(cert),
        chain_pem=signer.chain_pem,
        root_id=signer.root_id,
        serial=f"{cert.serial_number:x}",
        identity=request.identity,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


# --- plug-in files ---------------------------------------------------------------------------


def _plugin_error(path: Path, problem: str) -> ConfigError:
    return ConfigError(
        f"plug-in CA: {path}: {problem}. The directory must hold {', '.join(PLUGIN_FILES)} "
        "(Istio's cacerts layout): the signing CA certificate, its key (unencrypted PEM, "
        "mode 0600), the root certificate(s), and the chain from the signing certificate "
        "up to a root",
        setting="ca_plugin_dir",
        file=str(path),
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise _plugin_error(path, "missing") from exc
    except OSError as exc:
        raise _plugin_error(path, f"cannot be read ({exc.strerror})") from exc


def _certs(path: Path, data: bytes) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise _plugin_error(path, f"not PEM certificates ({exc})") from exc
    return certs


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _check_ca(path: Path, cert: x509.Certificate, now: datetime, what: str) -> None:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = bc.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise _plugin_error(path, f"{what} is not a CA certificate (no BasicConstraints CA:true)")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.key_cert_sign:
            raise _plugin_error(path, f"{what} may not sign certificates (no keyCertSign)")
    except x509.ExtensionNotFound:
        pass
    if cert.not_valid_after_utc <= now:
        raise _plugin_error(
            path, f"{what} expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        )
    if cert.not_valid_before_utc > now + timedelta(minutes=5):
        raise _plugin_error(
            path, f"{what} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )


def _walk_to_root(
    ca: x509.Certificate,
    roots: list[x509.Certificate],
    others: list[x509.Certificate],
    chain_path: Path,
    now: datetime,
) -> tuple[list[x509.Certificate], x509.Certificate]:
    """The path from ``ca`` up to (not including) its root, and that root."""
    if any(fingerprint(r) == fingerprint(ca) for r in roots):
        return [ca], ca
    path = [ca]
    while True:
        current = path[-1]
        root = next((r for r in roots if _issued_by(current, r)), None)
        if root is not None:
            return path, root
        step = next((c for c in others if c not in path and _issued_by(current, c)), None)
        if step is None:
            raise _plugin_error(
                chain_path,
                f"the chain from {CA_CERT_FILE} does not reach a root of {ROOT_CERT_FILE}: "
                f"nothing here or there issued {current.subject.rfc4514_string()!r} "
                f"(issuer {current.issuer.rfc4514_string()!r}); put every intermediate in "
                f"{CERT_CHAIN_FILE} and the root in {ROOT_CERT_FILE}",
            )
        _check_ca(chain_path, step, now, f"intermediate {step.subject.rfc4514_string()!r}")
        path.append(step)


def load_plugin(directory: Path, trust_domain: str) -> _Loaded:
    """The signer and bundle of a plug-in CA directory, checked: the key matches
    ``ca-cert.pem``, which is a CA; ``cert-chain.pem`` leads from it to a root of
    ``root-cert.pem``. ``ConfigError`` naming the file otherwise."""
    paths = {name: directory / name for name in PLUGIN_FILES}
    now = datetime.now(UTC)
    ca_path, key_path = paths[CA_CERT_FILE], paths[CA_KEY_FILE]
    root_path, chain_path = paths[ROOT_CERT_FILE], paths[CERT_CHAIN_FILE]

    ca_certs = _certs(ca_path, _read(ca_path))
    if not ca_certs:
        raise _plugin_error(ca_path, "holds no certificate")
    ca = ca_certs[0]
    _check_ca(ca_path, ca, now, "the signing certificate")

    try:
        if key_path.stat().st_mode & 0o077:
            log.warning("plug-in CA: %s is readable by other users; chmod 600 it", key_path)
    except OSError:
        pass  # _read below says what is wrong
    try:
        key = serialization.load_pem_private_key(_read(key_path), password=None)
    except TypeError as exc:
        raise _plugin_error(key_path, "the key is encrypted; give it unencrypted") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _plugin_error(key_path, "not a PEM private key") from exc
    if not isinstance(
        key,
        ec.EllipticCurvePrivateKey
        | rsa.RSAPrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        raise _plugin_error(key_path, f"a {describe_key(key)} key cannot sign; use EC or RSA")
    if _public_der(key.public_key()) != _public_der(ca.public_key()):
        raise _plugin_error(key_path, f"the key does not match the certificate in {CA_CERT_FILE}")

    roots = _certs(root_path, _read(root_path))
    if not roots:
        raise _plugin_error(root_path, "holds no certificate")
    for index, root in enumerate(roots, 1):
        if root.subject != root.issuer or not _issued_by(root, root):
            raise _plugin_error(root_path, f"certificate {index} is not a self-signed root")
        _check_ca(root_path, root, now, f"root {index} ({root.subject.rfc4514_string()})")
    root_ids = {fingerprint(r): r for r in roots}

    chain = _certs(chain_path, _read(chain_path))
    if not chain:
        raise _plugin_error(chain_path, "holds no certificate")
    others = [c for c in chain if c != ca and fingerprint(c) not in root_ids]
    path, anchor = _walk_to_root(ca, roots, others, chain_path, now)
    signer_root_id = fingerprint(anchor)
    chain_pem = "" if fingerprint(ca) == signer_root_id else "".join(_pem(c) for c in path)
    signer = _Signer(ca, key, chain_pem, signer_root_id)
    bundle = TrustBundle(
        trust_domain=trust_domain,
        roots=tuple(root_cert(r) for r in roots),
        signing_root=signer_root_id,
    )
    return _Loaded("", bundle, signer)


# --- the CA ----------------------------------------------------------------------------------


class EmbeddedCA:
    """The embedded certificate authority (see the module docstring).

    ``EmbeddedCA(store, trust_domain)`` then ``await ca.open()`` (or let the first call
    open it); ``EmbeddedCA.from_files(directory, trust_domain)`` for a plug-in CA.
    ``sign_in_thread`` signs in a worker thread instead of on the event loop.
    """

    backend: Literal["embedded", "vault"] = "embedded"

    def __init__(
        self,
        store: Store | None,
        trust_domain: str,
        *,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        sign_in_thread: bool = False,
        name_constraints: bool = True,
    ) -> None:
        spiffe_id(trust_domain, "default", "default")  # ValueError for a bad trust domain
        self._store = store
        self.trust_domain = trust_domain
        self._refresh_interval = refresh_interval
        self._sign_in_thread = sign_in_thread
        self._name_constraints = name_constraints
        self._loaded: _Loaded | None = None
        self._loaded_at = 0.0
        self._lock = anyio.Lock()
        self._plugin_dir: Path | None = None
        self._store_warned = False

    @classmethod
    def from_files(
        cls, directory: Path, trust_domain: str, *, sign_in_thread: bool = False
    ) -> EmbeddedCA:
        """A plug-in CA from ``directory`` (Istio's cacerts file names); ``ConfigError``
        naming the file that is missing, unreadable or does not fit."""
        ca = cls(None, trust_domain, sign_in_thread=sign_in_thread)
        ca._plugin_dir = directory
        ca._loaded = load_plugin(directory, trust_domain)
        return ca

    @property
    def plugin_dir(self) -> Path | None:
        """The plug-in directory, or None when the CA lives in the store."""
        return self._plugin_dir

    # --- state -----------------------------------------------------------------------

    def _require_store(self) -> Store:
        if self._store is None and self._plugin_dir is None:
            raise ConfigError("the embedded CA needs a store or a plug-in directory")
        if self._store is None:
            raise BadRequest(
                f"the CA is a plug-in CA (files in {self._plugin_dir}); meshd cannot rotate "
                "its roots: replace the files (add the new root to root-cert.pem first) "
                "and restart meshd",
                backend="embedded",
            )
        return self._store

    async def _get_record(self) -> dict[str, Any] | None:
        store = self._require_store()
        return await store.record_get(RECORD_COLLECTION, RECORD_ID)

    def _accept(self, data: Mapping[str, Any]) -> _Loaded:
        loaded = self._loaded
        digest = _digest(data)
        if loaded is None or loaded.digest != digest:
            loaded = _parse_state(data, self.trust_domain)
            if self._loaded is not None and loaded.bundle != self._loaded.bundle:
                log.info(
                    "embedded CA: %d root(s), root %s signs",
                    len(loaded.bundle.roots),
                    loaded.bundle.signing_root[:16],
                )
        self._loaded = loaded
        self._loaded_at = time.monotonic()
        return loaded

    async def _load_or_create(self) -> _Loaded:
        store = self._require_store()
        data = await store.record_get(RECORD_COLLECTION, RECORD_ID)
        if data is None:
            fresh = await anyio.to_thread.run_sync(
                lambda: new_state(self.trust_domain, name_constraints=self._name_constraints)
            )
            try:
                await store.record_put(RECORD_COLLECTION, RECORD_ID, fresh, create_only=True)
            except Conflict:
                # Another replica created it first: everybody uses the winner's.
                data = await store.record_get(RECORD_COLLECTION, RECORD_ID)
                if data is None:
                    raise CaUnavailable(
                        "the embedded CA's record was created and deleted at the same time "
                        "by another meshd replica; start meshd again",
                        backend="embedded",
                    ) from None
            else:
                data = fresh
                log.info(
                    "embedded CA: made a new root %s for trust domain %s",
                    fresh["signing_root"][:16],
                    self.trust_domain,
                )
        return self._accept(data)

    async def open(self) -> EmbeddedCA:
        """Load the CA from the store, or make it at first start. Idempotent."""
        if self._loaded is None:
            async with self._lock:
                if self._loaded is None:
                    try:
                        await self._load_or_create()
                    except StoreUnavailable as exc:
                        raise self._unavailable(exc) from exc
        return self

    def _unavailable(self, exc: StoreUnavailable) -> CaUnavailable:
        return CaUnavailable(
            f"the embedded CA cannot read its keys from the store: {exc.detail}",
            backend="embedded",
        )

    async def _current(self) -> _Loaded:
        loaded = self._loaded
        if loaded is not None and (
            self._store is None or time.monotonic() - self._loaded_at < self._refresh_interval
        ):
            return loaded
        async with self._lock:
            loaded = self._loaded
            if loaded is not None and time.monotonic() - self._loaded_at < self._refresh_interval:
                return loaded
            try:
                if loaded is None:
                    return await self._load_or_create()
                data = await self._get_record()
            except StoreUnavailable as exc:
                if loaded is None:
                    raise self._unavailable(exc) from exc
                # Keep signing with what was read last: a store outage must not stop
                # certificate renewals. Rotations need the store and fail instead.
                if not self._store_warned:
                    log.warning("embedded CA: cannot re-read the CA state, using the last: %s", exc)
                    self._store_warned = True
                self._loaded_at = time.monotonic()
                return loaded
            self._store_warned = False
            if data is None:
                raise CaUnavailable(
                    f"the embedded CA's record ({RECORD_COLLECTION}/{RECORD_ID}) was deleted "
                    "from the store; restore it from a backup (a new CA would break every "
                    "certificate issued so far)",
                    backend="embedded",
                )
            return self._accept(data)

    async def _update(
        self, change: str, edit: Callable[[dict[str, Any]], dict[str, Any] | None]
    ) -> TrustBundle:
        """Read the record, ``edit(record) -> new record``, write it back unless another
        replica changed it in between (``Conflict``, try again)."""
        store = self._require_store()
        async with self._lock:
            try:
                data = await self._get_record()
                if data is None:
                    raise CaUnavailable(
                        f"cannot {change}: the embedded CA's record is missing from the store",
                        backend="embedded",
                    )
                before = _digest(data)
                self._accept(data)
                new = edit(data)
                if new is None:  # nothing to change
                    return self._accept(data).bundle
                new["generation"] = int(data.get("generation", 0)) + 1
                new["updated_at"] = datetime.now(UTC).replace(microsecond=0).isoformat()
                current = await self._get_record()
                if current is None or _digest(current) != before:
                    raise Conflict(
                        f"cannot {change}: another meshd replica changed the CA at the same "
                        "time; look at the roots again (GET /v1/ca/roots) and retry",
                        backend="embedded",
                    )
                await store.record_put(RECORD_COLLECTION, RECORD_ID, new)
            except StoreUnavailable as exc:
                raise CaUnavailable(
                    f"cannot {change}: the store is unavailable: {exc.detail}", backend="embedded"
                ) from exc
            loaded = self._accept(new)
        log.info("embedded CA: %s", change)
        return loaded.bundle

    # --- the contract ----------------------------------------------------------------

    async def bundle(self) -> TrustBundle:
        return (await self._current()).bundle

    async def sign(self, request: SignRequest) -> IssuedCert:
        signer = (await self._current()).signer
        if self._sign_in_thread:
            return await anyio.to_thread.run_sync(_sign, signer, request)
        return _sign(signer, request)

    async def add_root(self) -> TrustBundle:
        self._require_store()
        entry = await anyio.to_thread.run_sync(
            lambda: new_root_entry(self.trust_domain, name_constraints=self._name_constraints)
        )

        def edit(data: dict[str, Any]) -> dict[str, Any]:
            return {**data, "roots": [*data["roots"], entry]}

        return await self._update(f"add root {entry['id'][:16]}", edit)

    def _find(self, data: Mapping[str, Any], root_id: str) -> Mapping[str, str]:
        for entry in data["roots"]:
            if entry["id"] == root_id:
                return entry  # type: ignore[no-any-return]
        known = ", ".join(e["id"] for e in data["roots"])
        raise NotFound(
            f"no root {root_id!r} in the embedded CA (its roots: {known})", root_id=root_id
        )

    async def activate_root(self, root_id: str) -> TrustBundle:
        self._require_store()

        def edit(data: dict[str, Any]) -> dict[str, Any] | None:
            self._find(data, root_id)
            if data["signing_root"] == root_id:
                return None
            return {**data, "signing_root": root_id}

        return await self._update(f"activate root {root_id[:16]}", edit)

    async def remove_root(self, root_id: str) -> TrustBundle:
        self._require_store()

        def edit(data: dict[str, Any]) -> dict[str, Any]:
            self._find(data, root_id)
            if data["signing_root"] == root_id:
                raise Conflict(
                    f"root {root_id} signs new certificates and cannot be removed; activate "
                    "another root first, and remove this one once the last certificate it "
                    "signed has expired",
                    root_id=root_id,
                )
            return {**data, "roots": [e for e in data["roots"] if e["id"] != root_id]}

        return await self._update(f"remove root {root_id[:16]}", edit)

    async def aclose(self) -> None:
        """Nothing to release: the store belongs to the caller."""
