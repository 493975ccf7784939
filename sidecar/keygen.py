"""A new private key and its CSR, made in a short-lived helper process.

Making an EC key and signing a CSR needs the ``cryptography`` package, and importing it
costs a process about 8 MB of resident memory for good. A sidecar needs a key once per
certificate (half a certificate's lifetime apart), so the long-lived sidecar process
runs ``python -m sidecar.keygen`` for each one instead: the helper makes the key,
writes key, CSR and public key to its standard output (a pipe only the sidecar
reads: the key never touches a disk) and exits.

The same helper is used by every sidecar process; :func:`make_key_and_csr` is the
in-process form, for tests and tools that have ``cryptography`` loaded anyway.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from meshd.spiffe import SpiffeId

HELPER_TIMEOUT_S = 30.0
"""A loaded machine takes about 0.1 s of CPU; far longer means the helper hangs."""


class KeygenError(Exception):
    """The helper process failed: the message says how and what to do."""


@dataclass(frozen=True, slots=True)
class KeyAndCsr:
    """An EC P-256 key (PKCS#8 PEM), a CSR for it (PEM) and its public key as DER
    SubjectPublicKeyInfo (to check that a certificate is for this key)."""

    key_pem: str = field(repr=False)
    csr_pem: str
    public_key_der: bytes


def make_key_and_csr(identity: str | None) -> KeyAndCsr:
    """A new EC P-256 key and a PEM CSR with an empty subject and, when ``identity`` (a
    SPIFFE ID) is given, it as the only (URI) SAN, marked critical as RFC 5280 wants with
    an empty subject. No other extension: meshd decides key usage, lifetime and
    everything else. Imports ``cryptography``: see the module docstring."""
    # Imported here so that importing this module costs a sidecar nothing.
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if identity is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]),
            critical=True,
        )
    csr = builder.sign(key, hashes.SHA256())
    return KeyAndCsr(
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        csr_pem=csr.public_bytes(serialization.Encoding.PEM).decode(),
        public_key_der=key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )


def encode(made: KeyAndCsr) -> bytes:
    return json.dumps(
        {"key": made.key_pem, "csr": made.csr_pem, "publicKey": made.public_key_der.hex()}
    ).encode()


def decode(raw: bytes) -> KeyAndCsr:
    """Raises ValueError when ``raw`` is not what :func:`encode` writes."""
    try:
        doc = json.loads(raw)
        key, csr, public = doc["key"], doc["csr"], bytes.fromhex(doc["publicKey"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"unreadable answer ({exc})") from exc
    if not isinstance(key, str) or not isinstance(csr, str):
        raise ValueError("unreadable answer (key and csr must be strings)")
    return KeyAndCsr(key_pem=key, csr_pem=csr, public_key_der=public)


async def new_key_and_csr(identity: SpiffeId | None) -> KeyAndCsr:
    """:func:`make_key_and_csr` in a helper process (this process never imports
    ``cryptography``). Raises :class:`KeygenError`."""
    import trio  # noqa: PLC0415 — loaded in a sidecar already; the helper needs none of it

    command = [sys.executable, "-m", "sidecar.keygen"]
    if identity is not None:
        command.append(str(identity))
    try:
        with trio.fail_after(HELPER_TIMEOUT_S):
            done = await trio.run_process(
                command, capture_stdout=True, capture_stderr=True, check=False
            )
    except trio.TooSlowError as exc:
        raise KeygenError(
            f"the key helper ({' '.join(command)}) did not answer within {HELPER_TIMEOUT_S:g} s"
        ) from exc
    except OSError as exc:
        raise KeygenError(f"cannot start the key helper {sys.executable}: {exc}") from exc
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()
        raise KeygenError(
            f"the key helper failed (exit {done.returncode}): "
            f"{detail[-1] if detail else 'no message'}; check that the 'cryptography' "
            "package is installed next to the sidecar"
        )
    try:
        return decode(done.stdout)
    except ValueError as exc:
        raise KeygenError(f"the key helper's answer is unusable: {exc}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sidecar.keygen [SPIFFE-ID]``: one key and CSR as JSON on stdout."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 1 or (args and args[0] in ("-h", "--help")):
        print("usage: python -m sidecar.keygen [SPIFFE-ID]", file=sys.stderr)
        return 2
    sys.stdout.buffer.write(encode(make_key_and_csr(args[0] if args else None)))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
