"""How meshctl trusts meshd's certificate.

meshd serves HTTPS with a certificate issued by the mesh's own CA, so no system CA store
can verify it. For an ``https://`` server meshctl verifies against, in this order:

1. ``--ca-file`` / ``MESHD_CA_FILE`` / ``caFile`` in the config file;
2. ``<data-dir>/ca-bundle.pem`` (``--data-dir`` / ``MESHD_DATA_DIR``) if it exists: meshd
   writes its trust bundle there before it listens, and rewrites it when it changes;
3. the bundle pinned for this server, ``$XDG_CONFIG_HOME/meshd/pinned/<host>_<port>.pem``
   (``~/.config/meshd/pinned/...``);
4. trust on first use: the bundle is fetched from ``GET /v1/ca/roots`` WITHOUT
   verification (and without the token), the server is then verified with it (the same
   request again, verified), and only then is it pinned (file 0644, directory 0700) and
   the token sent. A note on stderr shows the roots' SHA-256 fingerprints to compare.

A pinned bundle that no longer verifies the server is never replaced silently: meshd's
CA changed (a finished root rotation, a new data dir) or something impersonates it;
``meshctl ca trust --refresh`` re-pins deliberately.

Everything here but :func:`write_pin` and :func:`read_bundle_file` is pure.
"""

from __future__ import annotations

import os
import re
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from meshd.ctl.errors import CtlError

TrustKind = Literal["ca-file", "data-dir", "pinned", "first-use", "none"]
"""Where the roots that verify the server come from (``none``: plain http)."""

BUNDLE_FILE = "ca-bundle.pem"
PINNED_DIR = "pinned"
ROOTS_PATH = "/v1/ca/roots"
SHORT_ID = 12
RE_PIN = "meshctl ca trust --refresh"

_UNSAFE = re.compile(r"[^a-z0-9.-]")


def config_home(env: Mapping[str, str]) -> Path:
    """``$XDG_CONFIG_HOME/meshd``, or ``~/.config/meshd``."""
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "meshd"


def pin_path(env: Mapping[str, str], server: str) -> Path:
    """The pinned bundle of ``server``: one per host and port (the TLS endpoint), so the
    URL's path prefix does not matter. ``::1`` becomes ``__1``."""
    parts = urlsplit(server)
    host = _UNSAFE.sub("_", (parts.hostname or "").lower().rstrip("."))
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return config_home(env) / PINNED_DIR / f"{host}_{port}.pem"


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER, as ``openssl x509 -fingerprint -sha256`` prints it."""
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def short_id(root_id: object) -> str:
    """The first 12 hex digits of a root id (its SHA-256 fingerprint) or a serial."""
    text = str(root_id or "")
    return text[:SHORT_ID] if text else "-"


@dataclass(frozen=True, slots=True)
class Root:
    pem: str
    fingerprint: str
    subject: str
    not_after: str = ""
    signing: bool = False


@dataclass(frozen=True, slots=True)
class Bundle:
    """A trust bundle as ``/v1/ca/roots`` serves it (or as a PEM file holds it)."""

    roots: tuple[Root, ...]
    trust_domain: str = ""
    digest: str = ""

    @property
    def pem(self) -> str:
        """What meshd writes to ``ca-bundle.pem``: the roots' PEMs, one after another."""
        return "".join(r.pem for r in self.roots)

    @property
    def fingerprints(self) -> tuple[str, ...]:
        return tuple(r.fingerprint for r in self.roots)


def _root(pem: str, where: str) -> Root:
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (ValueError, x509.ExtensionNotFound) as exc:
        raise CtlError(f"{where} holds something that is not a CA certificate: {exc}") from exc
    if not constraints.ca:
        raise CtlError(f"{where} holds a certificate that is not a CA (CA:false)")
    text = cert.public_bytes(serialization.Encoding.PEM).decode()
    return Root(text, fingerprint(cert), cert.subject.rfc4514_string() or "-")


def parse_bundle(body: Any, where: str) -> Bundle:
    """The roots of a ``/v1/ca/roots`` answer; a :class:`CtlError` naming ``where`` if it
    is not one (no roots, a PEM that is not a CA certificate)."""
    roots = body.get("roots") if isinstance(body, Mapping) else None
    if not isinstance(body, Mapping) or not isinstance(roots, list) or not roots:
        raise CtlError(
            f"{where} is not a trust bundle (no roots)",
            "Hint: is the server meshd? Its trust bundle is GET /v1/ca/roots",
        )
    out = []
    for item in roots:
        pem = item.get("pem") if isinstance(item, Mapping) else None
        if not isinstance(pem, str):
            raise CtlError(f"{where} is not a trust bundle: a root has no PEM")
        root = _root(pem, where)
        out.append(
            Root(
                root.pem,
                root.fingerprint,
                root.subject,
                str(item.get("notAfter") or ""),
                bool(item.get("signing")),
            )
        )
    return Bundle(tuple(out), str(body.get("trustDomain") or ""), str(body.get("digest") or ""))


def read_bundle_file(path: Path) -> Bundle:
    """The roots in a PEM file (a pin, ``ca-bundle.pem``, a ``--ca-file``)."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise CtlError(f"cannot read the CA bundle {path}: {exc}") from exc
    blocks = re.findall(
        r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, flags=re.DOTALL
    )
    if not blocks:
        raise CtlError(f"{path} holds no PEM certificate")
    return Bundle(tuple(_root(b + "\n", str(path)) for b in blocks))


def write_pin(path: Path, pem: str) -> None:
    """Atomically; the file 0644 (a bundle is public), its directory 0700 (created so,
    so that no one else can plant a pin)."""
    if not path.parent.is_dir():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.parent.chmod(0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def context_from_file(path: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(path))


def context_from_pem(pem: str) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=pem)


def _fingerprints(bundle: Bundle) -> str:
    label = "root" if len(bundle.roots) == 1 else "roots"
    return f"{label} SHA-256 {', '.join(bundle.fingerprints)}"


def pinned_note(server: str, bundle: Bundle, path: Path) -> str:
    """The one line printed when a bundle is pinned on first use."""
    return (
        f"note: first contact with {server}: pinned its CA bundle ({_fingerprints(bundle)}) "
        f"in {path}; check it on the meshd host: `openssl x509 -noout -fingerprint -sha256 "
        f"-in <data-dir>/{BUNDLE_FILE}` must print the same"
    )


# --- telling verification failures apart ------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifyFailure:
    """Why a TLS handshake did not verify: ``hostname`` when the certificate chains to a
    trusted root but does not name the host, otherwise the chain is not trusted."""

    reason: str
    hostname: bool


def verify_failure(exc: BaseException) -> VerifyFailure | None:
    """The certificate verification failure behind an httpx error, if it is one."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            message = str(current.verify_message or current.reason or current)
            return VerifyFailure(message, "mismatch" in message.lower())
        current = current.__cause__ or current.__context__
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return VerifyFailure(text, "mismatch" in text.lower())
    return None


def hostname_error(server: str, source: str, reason: str) -> CtlError:
    host = urlsplit(server).hostname or server
    return CtlError(
        f"the TLS certificate of {server}{source} is not valid for {host}: {reason}",
        "Hint: meshd's certificate names 127.0.0.1, ::1, localhost, its host name, its listen "
        f"address and every --san; start it with --san {host}, or use an address it names",
    )


def ca_changed_error(server: str, pin: Path, reason: str) -> CtlError:
    return CtlError(
        f"{server} presents a certificate that the CA bundle pinned for it ({pin}) does not "
        f"verify ({reason}): meshd's CA changed (a root rotation finished, or meshd was set up "
        "with a new data dir), or something is impersonating it. Nothing was sent",
        f"Hint: check meshd's CA on its host (<data-dir>/{BUNDLE_FILE}, or meshctl ca status "
        f"there); if the change is expected, re-pin deliberately with: {RE_PIN}",
    )


def untrusted_error(
    server: str, source: str, path: Path | None, origin: str, reason: str
) -> CtlError:
    """``origin``: where the roots came from, `` (from --ca-file)``."""
    against = f" against {path}{origin}" if path is not None else f" against the roots{origin}"
    return CtlError(
        f"cannot verify the TLS certificate of {server}{source}{against}: {reason}",
        f"Hint: pass --ca-file (or MESHD_CA_FILE, or caFile in the config file) with meshd's "
        f"trust bundle: <data-dir>/{BUNDLE_FILE} on the meshd host. It changes when a root "
        "rotation finishes; copy it again then",
    )


def first_use_error(server: str, reason: str) -> CtlError:
    return CtlError(
        f"the CA bundle that {server} served does not verify its own certificate ({reason}); "
        "nothing was pinned and no token was sent",
        f"Hint: is {server} meshd? Pass --ca-file with its trust bundle "
        f"(<data-dir>/{BUNDLE_FILE} on the meshd host)",
    )
