"""The Vault / OpenBao CA: leaves signed by the PKI secrets engine through hvac.

hvac is synchronous: every Vault call runs in a worker thread
(``anyio.to_thread.run_sync``), at most ``max_concurrency`` at once over as many pooled
HTTP connections.

Setup (:meth:`VaultCA.open`), each step only when needed and allowed:

1. AppRole login when ``role_id``/``secret_id`` are given (again before the token expires,
   and once more when Vault answers "permission denied", which is how an expired token
   shows).
2. The mount (``pki``): when missing, enable the PKI engine there (max lease 10 years).
3. The issuers: when the mount has none, generate an internal EC P-256 root issuer.
4. The roles: ``meshd-workload`` (URI SANs ``spiffe://<trust-domain>/*`` only, no CN,
   server + client flags, 24 h default / 7 d max TTL, no DNS or IP names) and
   ``meshd-server`` (the same, plus DNS names and IP addresses, for meshd's own serving
   certificate). Existing roles are used as they are, after checking that their
   ``allowed_uri_sans`` cover the trust domain.

Signing is ``<mount>/sign/<role>`` only (never ``sign-verbatim``): Vault builds the
certificate from the role and the request (``uri_sans`` = the identity, ``ttl``), using
only the CSR's key. meshd's own policy (``meshd.ca.policy.check_csr``) runs first.

Rotation uses the multi-issuer API: ``add_root`` generates a new root issuer (not the
default), ``activate_root`` makes it the default issuer, ``remove_root`` deletes it (never
the default one) and its key. The trust bundle is the root at the top of every issuer's
chain (for an intermediate mount, the external root its imported chain ends in).

Errors: Vault unreachable, sealed, or refusing → ``CaUnavailable`` saying what to check
(the address; the path and capability the token lacks); settings that cannot work at
setup → ``ConfigError`` saying what to change.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import anyio
import anyio.to_thread
import hvac
import hvac.exceptions
import requests
import requests.adapters
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

from meshd.ca.base import IssuedCert, RootCert, SignRequest, TrustBundle
from meshd.ca.embedded import fingerprint, root_cert
from meshd.ca.leaf import CLOCK_SKEW, effective_ttl, san_problems
from meshd.ca.policy import check_csr
from meshd.errors import CaUnavailable, ConfigError, Conflict, MeshError, NotFound
from meshd.spiffe import spiffe_id

__all__ = ["DEFAULT_MOUNT", "DEFAULT_ROLE", "DEFAULT_SERVER_ROLE", "VaultCA", "VaultSettings"]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MOUNT: Final = "pki"
DEFAULT_ROLE: Final = "meshd-workload"
DEFAULT_SERVER_ROLE: Final = "meshd-server"
MOUNT_MAX_LEASE: Final = "87600h"
ROOT_TTL: Final = "87600h"
RELOGIN_MARGIN = 0.2
"""Log in again when less than this share of the AppRole token's lifetime is left."""

Capability = Literal["create", "read", "update", "delete", "list"]


@dataclass(frozen=True, slots=True)
class VaultSettings:
    """How meshd reaches Vault/OpenBao. Give ``token``, or ``role_id`` + ``secret_id``
    (AppRole, logged in at ``auth/<approle_mount>``). ``ca_file`` verifies Vault's TLS
    certificate. Secrets are left out of ``repr``."""

    addr: str
    token: str | None = field(default=None, repr=False)
    role_id: str | None = None
    secret_id: str | None = field(default=None, repr=False)
    approle_mount: str = "approle"
    mount: str = DEFAULT_MOUNT
    role: str = DEFAULT_ROLE
    server_role: str = DEFAULT_SERVER_ROLE
    ca_file: Path | None = None
    timeout: float = 10.0
    max_concurrency: int = 16
    refresh_interval: float = 5.0
    """Seconds the issuers read last are used before they are read again."""

    def check(self) -> None:
        """``ConfigError`` for settings that cannot work."""
        if not re.match(r"^https?://[^/]+", self.addr):
            raise ConfigError(
                f"--vault-addr {self.addr!r} is not a URL; give e.g. https://vault.internal:8200",
                setting="vault_addr",
            )
        approle = bool(self.role_id or self.secret_id)
        if approle and not (self.role_id and self.secret_id):
            raise ConfigError(
                "AppRole login needs both --vault-role-id and --vault-secret-id",
                setting="vault_role_id",
            )
        if approle == bool(self.token):
            raise ConfigError(
                "give Vault a token (--vault-token / VAULT_TOKEN) or AppRole credentials "
                "(--vault-role-id and --vault-secret-id), exactly one of the two",
                setting="vault_token",
            )
        for name in ("mount", "role", "server_role", "approle_mount"):
            value = getattr(self, name)
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-/]*", value) or ".." in value:
                raise ConfigError(f"vault {name} {value!r} is not a Vault path", setting=name)
        if self.ca_file is not None and not self.ca_file.is_file():
            raise ConfigError(
                f"--vault-ca-file {self.ca_file} is not a readable file", setting="vault_ca_file"
            )
        if self.max_concurrency < 1:
            raise ConfigError("vault max_concurrency must be at least 1", setting="max_concurrency")


@dataclass(frozen=True, slots=True)
class _Issuer:
    id: str
    name: str
    key_id: str
    is_default: bool
    cert: x509.Certificate
    root: x509.Certificate
    """The top of the issuer's chain (itself, for a root issuer)."""


@dataclass(frozen=True, slots=True)
class _State:
    issuers: tuple[_Issuer, ...]
    signing: _Issuer
    bundle: TrustBundle


def _glob(pattern: str, value: str) -> bool:
    """Vault's glob for ``allowed_uri_sans``: ``*`` matches any run of characters."""
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, value, flags=re.DOTALL) is not None


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.subject != cert.issuer:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _split_chain(pems: Sequence[str]) -> tuple[tuple[x509.Certificate, ...], x509.Certificate]:
    """(the chain up to, not including, the root; the root) from an issuer's
    ``ca_chain``, which starts with the issuer. Without a self-signed certificate at the
    top, the top one is the trust anchor."""
    certs: list[x509.Certificate] = []
    for pem in pems:
        certs.extend(x509.load_pem_x509_certificates(pem.encode()))
    if not certs:
        raise ValueError("empty CA chain")
    return tuple(certs[:-1]), certs[-1]


def _pem(cert: x509.Certificate) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding  # noqa: PLC0415

    return cert.public_bytes(Encoding.PEM).decode()


_ERRNO = re.compile(
    r"\[Errno -?\d+\] [^'\")\]]+|timed out|Connection refused|Name or service not known"
)


def _errors(exc: hvac.exceptions.VaultError) -> str:
    """Vault's own error messages, without hvac's "on get http://..." suffix."""
    errors = exc.errors
    if isinstance(errors, list) and errors:
        return "; ".join(str(e) for e in errors)
    if isinstance(errors, str) and errors:
        return errors
    return str(exc).split(", on ", 1)[0] or type(exc).__name__


def _reason(exc: BaseException) -> str:
    found = _ERRNO.search(str(exc))
    return found.group(0).strip() if found else type(exc).__name__


class VaultCA:
    """Certificates from Vault's / OpenBao's PKI engine (see the module docstring).

    ``VaultCA(settings, trust_domain)`` then ``await ca.open()``: logs in, sets up what is
    missing (``setup=False`` only checks), reads the issuers.
    """

    backend: Literal["embedded", "vault"] = "vault"

    def __init__(self, settings: VaultSettings, trust_domain: str) -> None:
        settings.check()
        spiffe_id(trust_domain, "default", "default")  # ValueError for a bad trust domain
        self.settings = settings
        self.trust_domain = trust_domain
        self._addr = settings.addr.rstrip("/")
        self._approle = bool(settings.role_id)
        session = requests.Session()
        # Vault is reached directly; proxy variables meant for the workloads must not apply.
        session.trust_env = False
        pool = requests.adapters.HTTPAdapter(
            pool_connections=1, pool_maxsize=settings.max_concurrency
        )
        session.mount("http://", pool)
        session.mount("https://", pool)
        self._session = session
        self._client = hvac.Client(
            url=self._addr,
            token=settings.token or "",
            verify=str(settings.ca_file) if settings.ca_file else True,
            timeout=settings.timeout,
            session=session,
        )
        self._limiter = anyio.CapacityLimiter(settings.max_concurrency)
        self._auth_lock = threading.Lock()
        self._token_renew_at: float | None = None
        self._opened = False
        self._issuer_cache: dict[str, tuple[x509.Certificate, x509.Certificate]] = {}
        self._state: _State | None = None
        self._state_at = 0.0
        self._state_lock = anyio.Lock()
        self._role_issuer_ref = "default"
        self._closed = False

    def __repr__(self) -> str:
        return f"VaultCA({self._addr}, mount={self.settings.mount!r}, role={self.settings.role!r})"

    # --- talking to Vault (worker threads) ----------------------------------------------

    async def _thread(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise CaUnavailable("the Vault CA was closed", backend="vault")
        return await anyio.to_thread.run_sync(fn, limiter=self._limiter)

    def _unreachable(self, exc: requests.RequestException, doing: str) -> CaUnavailable:
        if isinstance(exc, requests.exceptions.SSLError):
            return CaUnavailable(
                f"TLS with Vault at {self._addr} failed while trying to {doing} "
                f"({_reason(exc)}); give Vault's CA certificate with --vault-ca-file, and "
                "check that --vault-addr names the host in Vault's certificate",
                backend="vault",
                vault_addr=self._addr,
            )
        return CaUnavailable(
            f"cannot reach Vault at {self._addr} to {doing} ({_reason(exc)}); check that "
            "Vault/OpenBao is running, unsealed and reachable from meshd, and that "
            "--vault-addr is right",
            backend="vault",
            vault_addr=self._addr,
        )

    def _denied(self, path: str, capability: Capability, doing: str) -> CaUnavailable:
        why = (
            "the AppRole's token lacks"
            if self._approle
            else "the token has expired or been revoked, or lacks"
        )
        return CaUnavailable(
            f"Vault at {self._addr} denied the request to {doing}: permission denied on "
            f"{path!r}; {why} the {capability!r} capability on it. Add "
            f'`path "{path}" {{ capabilities = ["{capability}"] }}` to the token\'s policy',
            backend="vault",
            vault_addr=self._addr,
            path=path,
            capability=capability,
        )

    def _login(self, *, force: bool = False) -> None:
        """AppRole login when there is no token yet, it is about to expire, or ``force``."""
        if not self._approle:
            return
        with self._auth_lock:
            renew_at = self._token_renew_at
            if not force and renew_at is not None and time.monotonic() < renew_at:
                return
            path = f"auth/{self.settings.approle_mount}/login"
            try:
                response = self._client.auth.approle.login(
                    role_id=self.settings.role_id,
                    secret_id=self.settings.secret_id,
                    mount_point=self.settings.approle_mount,
                )
            except requests.RequestException as exc:
                raise self._unreachable(exc, "log in with AppRole") from exc
            except hvac.exceptions.VaultError as exc:
                detail = (
                    f"AppRole login at {self._addr}/v1/{path} failed: {_errors(exc)}; "
                    "check --vault-role-id and --vault-secret-id (a secret ID may have "
                    "expired or run out of uses) and that AppRole is enabled at "
                    f"auth/{self.settings.approle_mount}"
                )
                error: MeshError = (
                    CaUnavailable(detail, backend="vault", vault_addr=self._addr)
                    if self._opened
                    else ConfigError(detail, setting="vault_role_id")
                )
                raise error from exc
            lease = float(response.get("auth", {}).get("lease_duration") or 0)
            self._token_renew_at = (
                time.monotonic() + lease * (1 - RELOGIN_MARGIN) if lease > 0 else None
            )
            if lease <= 0:
                # A token that never expires: no need to log in again before a 403.
                self._token_renew_at = float("inf")
            log.info("vault CA: logged in with AppRole (token valid for %.0f s)", lease)

    def _request(
        self,
        method: Literal["GET", "LIST", "POST", "PATCH", "DELETE"],
        path: str,
        *,
        capability: Capability,
        doing: str,
        data: Mapping[str, Any] | None = None,
        missing_ok: bool = False,
    ) -> dict[str, Any] | None:
        """One Vault request with hvac, errors translated. ``None`` for a 404 when
        ``missing_ok``; ``{}`` for an empty answer (204)."""
        for attempt in (0, 1):
            self._login()
            kwargs: dict[str, Any] = {}
            http_method: str = method
            if method == "LIST":
                http_method = "GET"
                kwargs["params"] = {"list": "true"}
            if data is not None:
                kwargs["json"] = dict(data)
            if method == "PATCH":
                kwargs["headers"] = {"Content-Type": "application/merge-patch+json"}
            try:
                result = self._client.adapter.request(http_method, f"/v1/{path}", **kwargs)
            except requests.RequestException as exc:
                raise self._unreachable(exc, doing) from exc
            except hvac.exceptions.Forbidden as exc:
                if attempt == 0 and self._approle:
                    # An expired AppRole token answers "permission denied": log in again.
                    self._login(force=True)
                    continue
                raise self._denied(path, capability, doing) from exc
            except hvac.exceptions.InvalidPath as exc:
                if missing_ok:
                    return None
                raise CaUnavailable(
                    f"Vault at {self._addr} has nothing at {path!r} (while trying to {doing}): "
                    f"{_errors(exc)}; check --vault-mount and --vault-role",
                    backend="vault",
                    path=path,
                ) from exc
            except (hvac.exceptions.VaultDown, hvac.exceptions.VaultNotInitialized) as exc:
                raise CaUnavailable(
                    f"Vault at {self._addr} cannot {doing}: it is sealed, not initialized or "
                    f"not the active node ({_errors(exc)}); unseal it (bao operator "
                    "unseal) or point --vault-addr at the active node",
                    backend="vault",
                    vault_addr=self._addr,
                ) from exc
            except hvac.exceptions.VaultError as exc:
                raise CaUnavailable(
                    f"Vault at {self._addr} could not {doing}: {_errors(exc)}",
                    backend="vault",
                    vault_addr=self._addr,
                    path=path,
                    vault_error=type(exc).__name__,
                    vault_message=_errors(exc),
                ) from exc
            if isinstance(result, dict):
                return result
            return {}
        raise AssertionError("unreachable")  # pragma: no cover

    def _data(self, response: dict[str, Any] | None) -> dict[str, Any]:
        data = (response or {}).get("data")
        return data if isinstance(data, dict) else {}

    # --- setup ---------------------------------------------------------------------------

    def _role_spec(self, *, server: bool) -> dict[str, Any]:
        return {
            "allowed_uri_sans": [f"spiffe://{self.trust_domain}/*"],
            "allowed_uri_sans_template": False,
            "allow_any_name": server,
            "allowed_domains": [],
            "allow_bare_domains": False,
            "allow_subdomains": False,
            "allow_glob_domains": False,
            "allow_localhost": server,
            "allow_ip_sans": server,
            "allow_wildcard_certificates": False,
            "enforce_hostnames": True,
            "require_cn": False,
            "use_csr_common_name": False,
            "use_csr_sans": False,
            "server_flag": True,
            "client_flag": True,
            "code_signing_flag": False,
            "email_protection_flag": False,
            # meshd's policy (check_csr) picks the key types; a role takes one or "any".
            "key_type": "any",
            "key_bits": 0,
            "key_usage": ["DigitalSignature"],
            "ext_key_usage": [],
            "basic_constraints_valid_for_non_ca": True,
            "not_before_duration": f"{int(CLOCK_SKEW.total_seconds())}s",
            "ttl": "24h",
            "max_ttl": "168h",
            # Short-lived leaves, never revoked: storing each one only fills Vault's storage.
            "no_store": True,
            "generate_lease": False,
            "issuer_ref": "default",
        }

    def _ensure_mount(self, setup: bool) -> None:
        mount = self.settings.mount
        path = f"sys/mounts/{mount}"
        try:
            info = self._request("GET", path, capability="read", doing=f"read mount {mount}")
        except CaUnavailable as exc:
            if exc.context.get("capability") == "read":
                log.info(
                    "vault CA: cannot read %s (no permission); assuming the mount exists", path
                )
                return
            if "no secret engine mount" in str(exc.context.get("vault_message", "")).lower():
                self._mount_missing(setup)
                return
            raise
        kind = self._data(info).get("type") or (info or {}).get("type")
        if kind is not None:
            if kind != "pki":
                raise ConfigError(
                    f"the Vault mount {mount!r} is a {kind!r} engine, not pki; choose another "
                    "--vault-mount (or disable that engine)",
                    setting="vault_mount",
                )
            return
        self._mount_missing(setup)

    def _mount_missing(self, setup: bool) -> None:
        mount = self.settings.mount
        if not setup:
            raise ConfigError(
                f"Vault at {self._addr} has no PKI mount {mount!r}; enable one "
                f"(bao secrets enable -path={mount} -max-lease-ttl={MOUNT_MAX_LEASE} pki)",
                setting="vault_mount",
            )
        path = f"sys/mounts/{mount}"
        try:
            self._request(
                "POST",
                path,
                capability="create",
                doing=f"enable the PKI engine at {mount}",
                data={
                    "type": "pki",
                    "description": f"meshd workload certificates ({self.trust_domain})",
                    "config": {"max_lease_ttl": MOUNT_MAX_LEASE},
                },
            )
        except CaUnavailable as exc:
            if exc.context.get("capability") != "create":
                raise
            raise ConfigError(
                f"Vault at {self._addr} has no PKI mount {mount!r} and meshd's token may not "
                f"create one (it lacks 'create' and 'update' on {path!r}); enable it "
                f"(bao secrets enable -path={mount} -max-lease-ttl={MOUNT_MAX_LEASE} pki) "
                "or grant those capabilities",
                setting="vault_mount",
            ) from exc
        log.info("vault CA: enabled the PKI engine at %s", mount)

    def _generate_root(self, doing: str) -> str:
        """A new internal EC P-256 root issuer; its id. Not made the default (unless the
        mount had no issuer)."""
        mount = self.settings.mount
        now = datetime.now(UTC)
        tag = secrets.token_hex(3)
        path = f"{mount}/issuers/generate/root/internal"
        response = self._request(
            "POST",
            path,
            capability="update",
            doing=doing,
            data={
                "common_name": f"meshd root {self.trust_domain} {now:%Y-%m-%d} {tag}",
                "organization": "meshd",
                "issuer_name": f"meshd-root-{now:%Y%m%d}-{tag}",
                "key_type": "ec",
                "key_bits": 256,
                "ttl": ROOT_TTL,
                "max_path_length": 1,
            },
        )
        issuer_id = str(self._data(response)["issuer_id"])
        try:
            # Leaves never outlive their issuer: shorten them instead of failing.
            self._request(
                "PATCH",
                f"{mount}/issuer/{issuer_id}",
                capability="update",
                doing="set the new issuer's leaf_not_after_behavior",
                data={"leaf_not_after_behavior": "truncate"},
            )
        except CaUnavailable as exc:
            log.warning("vault CA: %s", exc.detail)
        log.info("vault CA: generated root issuer %s on %s", issuer_id, mount)
        return issuer_id

    def _ensure_issuer(self, setup: bool) -> None:
        mount = self.settings.mount
        listed = self._request(
            "LIST", f"{mount}/issuers", capability="list", doing="list issuers", missing_ok=True
        )
        if self._data(listed).get("keys"):
            return
        if not setup:
            raise ConfigError(
                f"the PKI mount {mount!r} has no issuer; generate a root "
                f"(bao write {mount}/root/generate/internal common_name=... key_type=ec) or "
                "import a CA",
                setting="vault_mount",
            )
        try:
            self._generate_root(f"generate a root issuer on {mount}")
        except CaUnavailable as exc:
            if exc.context.get("capability") is None:
                raise
            raise ConfigError(
                f"the PKI mount {mount!r} has no issuer and meshd's token may not generate "
                f"one ({exc.detail}); generate a root (bao write {mount}/root/generate/internal "
                "common_name=... key_type=ec key_bits=256) or import a CA",
                setting="vault_mount",
            ) from exc

    def _ensure_role(self, name: str, *, server: bool, setup: bool) -> None:
        mount = self.settings.mount
        path = f"{mount}/roles/{name}"
        try:
            response = self._request(
                "GET", path, capability="read", doing=f"read role {name}", missing_ok=True
            )
        except CaUnavailable as exc:
            if exc.context.get("capability") != "read":
                raise
            log.warning(
                "vault CA: cannot read role %s (the token lacks 'read' on %s); using it unchecked",
                name,
                path,
            )
            return
        if response is None:
            if not setup:
                raise ConfigError(
                    f"Vault role {name!r} does not exist on mount {mount!r}; create it "
                    f"(bao write {path} allowed_uri_sans='spiffe://{self.trust_domain}/*' "
                    "require_cn=false use_csr_sans=false key_type=any)",
                    setting="vault_role",
                )
            spec = self._role_spec(server=server)
            try:
                self._request(
                    "POST", path, capability="create", doing=f"create role {name}", data=spec
                )
            except CaUnavailable as exc:
                if exc.context.get("capability") is None:
                    raise
                raise ConfigError(
                    f"Vault role {name!r} does not exist on mount {mount!r} and meshd's token "
                    f"may not create it (it lacks 'create' on {path!r}); create it "
                    f"(bao write {path} allowed_uri_sans='spiffe://{self.trust_domain}/*' "
                    "require_cn=false use_csr_sans=false key_type=any"
                    + (" allow_any_name=true allow_ip_sans=true" if server else "")
                    + ") or grant that capability",
                    setting="vault_role",
                ) from exc
            log.info("vault CA: created role %s on %s", name, mount)
            return
        role = self._data(response)
        patterns = [str(p) for p in role.get("allowed_uri_sans") or []]
        wanted = f"spiffe://{self.trust_domain}/*"
        if role.get("allowed_uri_sans_template") and any("{{" in p for p in patterns):
            log.warning(
                "vault CA: role %s uses templated allowed_uri_sans %s; meshd cannot check "
                "that they cover %s",
                name,
                patterns,
                wanted,
            )
        elif not any(_glob(p, wanted) for p in patterns):
            raise ConfigError(
                f"Vault role {name!r} on mount {mount!r} allows URI SANs {patterns or 'none'}, "
                f"which do not cover {wanted}; set allowed_uri_sans={wanted} "
                f"(bao write {path} allowed_uri_sans='{wanted}' ...)",
                setting="vault_role",
                role=name,
            )
        if not server:
            self._role_issuer_ref = str(role.get("issuer_ref") or "default")

    def _setup(self, setup: bool) -> None:
        self._login()
        self._ensure_mount(setup)
        self._ensure_issuer(setup)
        self._ensure_role(self.settings.role, server=False, setup=setup)
        self._ensure_role(self.settings.server_role, server=True, setup=setup)

    async def open(self, *, setup: bool = True) -> VaultCA:
        """Log in, set up what is missing (when ``setup`` and the token may), read the
        issuers. ``CaUnavailable`` / ``ConfigError`` saying what to do otherwise."""
        await self._thread(lambda: self._setup(setup))
        self._opened = True
        await self._refresh(force=True)
        return self

    # --- issuers and the bundle ------------------------------------------------------------

    def _load_state(self) -> _State:
        mount = self.settings.mount
        listed = self._data(
            self._request(
                "LIST", f"{mount}/issuers", capability="list", doing="list issuers", missing_ok=True
            )
        )
        ids = [str(i) for i in listed.get("keys") or []]
        info: Mapping[str, Mapping[str, Any]] = listed.get("key_info") or {}
        if not ids:
            raise CaUnavailable(
                f"the PKI mount {mount!r} at {self._addr} has no issuer; generate a root "
                f"(bao write {mount}/root/generate/internal ...) or restart meshd to set it up",
                backend="vault",
            )
        issuers: list[_Issuer] = []
        for issuer_id in ids:
            cached = self._issuer_cache.get(issuer_id)
            if cached is None:
                response = self._request(
                    "GET",
                    f"{mount}/issuer/{issuer_id}/json",
                    capability="read",
                    doing=f"read issuer {issuer_id}",
                )
                data = self._data(response)
                try:
                    cert = x509.load_pem_x509_certificate(str(data["certificate"]).encode())
                    _, root = _split_chain(list(data.get("ca_chain") or [data["certificate"]]))
                except (KeyError, ValueError) as exc:
                    raise CaUnavailable(
                        f"Vault issuer {issuer_id} on {mount!r} has an unreadable certificate "
                        f"({exc})",
                        backend="vault",
                    ) from exc
                if not _self_signed(root):
                    log.warning(
                        "vault CA: the chain of issuer %s ends in %s, which is not a root; "
                        "import the full chain (up to the root) into %s",
                        issuer_id,
                        root.subject.rfc4514_string(),
                        mount,
                    )
                cached = (cert, root)
                self._issuer_cache[issuer_id] = cached
            cert, root = cached
            meta = info.get(issuer_id) or {}
            issuers.append(
                _Issuer(
                    id=issuer_id,
                    name=str(meta.get("issuer_name") or ""),
                    key_id=str(meta.get("key_id") or ""),
                    is_default=bool(meta.get("is_default")),
                    cert=cert,
                    root=root,
                )
            )
        for stale in set(self._issuer_cache) - set(ids):
            del self._issuer_cache[stale]
        ref = self._role_issuer_ref
        if ref == "default":
            signing = next((i for i in issuers if i.is_default), None)
        else:
            signing = next((i for i in issuers if ref in (i.id, i.name)), None)
        if signing is None:
            raise CaUnavailable(
                f"the PKI mount {mount!r} has no "
                + (
                    "default issuer"
                    if ref == "default"
                    else f"issuer {ref!r} (the role's issuer_ref)"
                )
                + f"; set one (bao write {mount}/config/issuers default=<issuer id>)",
                backend="vault",
            )
        roots: dict[str, RootCert] = {}
        for issuer in issuers:
            anchor = root_cert(issuer.root)
            roots.setdefault(anchor.id, anchor)
        bundle = TrustBundle(
            trust_domain=self.trust_domain,
            roots=tuple(roots.values()),
            signing_root=fingerprint(signing.root),
        )
        return _State(tuple(issuers), signing, bundle)

    async def _refresh(self, *, force: bool = False, stale_ok: bool = False) -> _State:
        """The issuers as read at most ``refresh_interval`` ago (now, with ``force``).
        With ``stale_ok``, the last state read when Vault cannot be reached now."""
        state = self._state
        if (
            not force
            and state is not None
            and time.monotonic() - self._state_at < self.settings.refresh_interval
        ):
            return state
        async with self._state_lock:
            state = self._state
            if (
                not force
                and state is not None
                and time.monotonic() - self._state_at < self.settings.refresh_interval
            ):
                return state
            try:
                state = await self._thread(self._load_state)
            except CaUnavailable as exc:
                if not stale_ok or self._state is None:
                    raise
                # Roots change rarely and only through meshd: keep answering with the
                # last ones read rather than fail every bundle request during an outage.
                log.warning("vault CA: using the trust bundle read last: %s", exc.detail)
                self._state_at = time.monotonic()
                return self._state
            self._state = state
            self._state_at = time.monotonic()
            return state

    async def bundle(self) -> TrustBundle:
        return (await self._refresh(stale_ok=True)).bundle

    # --- signing ---------------------------------------------------------------------------

    def _sign_sync(self, request: SignRequest, issuer_not_after: datetime) -> IssuedCert:
        identity = request.identity
        ttl = effective_ttl(request.ttl)
        left = issuer_not_after - datetime.now(UTC) - timedelta(seconds=5)
        if left <= timedelta(0):
            raise CaUnavailable(
                f"the signing issuer on {self.settings.mount!r} expired at {issuer_not_after}; "
                "add a new root and activate it (meshctl ca rotate)",
                backend="vault",
            )
        seconds = max(1, int(min(ttl, left).total_seconds()))
        server = bool(request.dns_names or request.ip_addresses)
        role = self.settings.server_role if server else self.settings.role
        data: dict[str, Any] = {
            "csr": request.csr_pem,
            "uri_sans": str(identity),
            "ttl": f"{seconds}s",
            "exclude_cn_from_sans": True,
            "format": "pem",
        }
        if request.dns_names:
            data["alt_names"] = ",".join(request.dns_names)
        if request.ip_addresses:
            data["ip_sans"] = ",".join(request.ip_addresses)
        path = f"{self.settings.mount}/sign/{role}"
        doing = f"sign a certificate for {identity}"
        try:
            response = self._request("POST", path, capability="update", doing=doing, data=data)
        except CaUnavailable as exc:
            if exc.context.get("vault_error") != "InvalidRequest":
                raise
            raise CaUnavailable(
                f"Vault at {self._addr} refused to {doing} with role {role!r}: "
                f"{exc.context.get('vault_message')}. meshd's own policy accepted the "
                f"CSR, so check the role ({path.replace('/sign/', '/roles/')}): "
                f"allowed_uri_sans must cover spiffe://{self.trust_domain}/*, key_type 'any', "
                "max_ttl at least the requested TTL",
                backend="vault",
                role=role,
            ) from exc
        out = self._data(response)
        try:
            cert = x509.load_pem_x509_certificate(str(out["certificate"]).encode())
            chain, root = _split_chain(list(out.get("ca_chain") or [out["issuing_ca"]]))
        except (KeyError, ValueError) as exc:
            raise CaUnavailable(
                f"Vault at {self._addr} answered the signing request without a readable "
                f"certificate ({exc})",
                backend="vault",
            ) from exc
        problems = san_problems(cert, identity, request.dns_names, request.ip_addresses)
        if problems:
            raise ConfigError(
                f"Vault role {role!r} issued a certificate that breaks meshd's profile "
                f"({'; '.join(problems)}); set use_csr_sans=false, use_csr_common_name=false "
                "and basic_constraints_valid_for_non_ca=true on "
                f"{self.settings.mount}/roles/{role}",
                setting="vault_role",
            )
        return IssuedCert(
            cert_pem=_pem(cert),
            chain_pem="".join(_pem(c) for c in chain),
            root_id=fingerprint(root),
            serial=f"{cert.serial_number:x}",
            identity=identity,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
        )

    async def sign(self, request: SignRequest) -> IssuedCert:
        check_csr(request.csr_pem, request.identity)
        state = await self._refresh()
        not_after = state.signing.cert.not_valid_after_utc
        return await self._thread(lambda: self._sign_sync(request, not_after))

    # --- rotation -------------------------------------------------------------------------

    def _default_issuer(self) -> str:
        listed = self._data(
            self._request(
                "LIST", f"{self.settings.mount}/issuers", capability="list", doing="list issuers"
            )
        )
        info: Mapping[str, Mapping[str, Any]] = listed.get("key_info") or {}
        return next((i for i, meta in info.items() if meta.get("is_default")), "")

    def _set_default(self, issuer_id: str, doing: str) -> None:
        self._request(
            "POST",
            f"{self.settings.mount}/config/issuers",
            capability="update",
            doing=doing,
            data={"default": issuer_id},
        )

    def _add_root_sync(self) -> None:
        before = self._default_issuer()
        self._generate_root(f"add a root issuer on {self.settings.mount}")
        # A mount with default_follows_latest_issuer moves the default by itself; the
        # new root must not sign before it is activated.
        if before and self._default_issuer() != before:
            self._set_default(before, "keep the signing issuer while adding a root")

    async def add_root(self) -> TrustBundle:
        await self._thread(self._add_root_sync)
        return (await self._refresh(force=True)).bundle

    def _issuers_of(self, state: _State, root_id: str) -> list[_Issuer]:
        found = [i for i in state.issuers if fingerprint(i.root) == root_id]
        if not found:
            known = ", ".join(r.id for r in state.bundle.roots)
            raise NotFound(
                f"no root {root_id!r} among the issuers of {self.settings.mount!r} (its roots: "
                f"{known})",
                root_id=root_id,
            )
        return found

    async def activate_root(self, root_id: str) -> TrustBundle:
        state = await self._refresh(force=True)
        if self._role_issuer_ref != "default":
            raise ConfigError(
                f"Vault role {self.settings.role!r} pins issuer_ref={self._role_issuer_ref!r}, "
                "so the default issuer does not decide who signs; set issuer_ref=default on "
                "the role to rotate through meshd",
                setting="vault_role",
            )
        candidates = [i for i in self._issuers_of(state, root_id) if i.key_id]
        if not candidates:
            raise ConfigError(
                f"root {root_id} has no issuer with a key on {self.settings.mount!r}; import "
                "or generate an issuer under it first",
                setting="vault_mount",
            )
        # Prefer the root itself, then an intermediate under it.
        chosen = min(candidates, key=lambda i: 0 if i.cert == i.root else 1)
        if state.signing.id != chosen.id:
            await self._thread(
                lambda: self._set_default(chosen.id, f"make issuer {chosen.id} the default")
            )
            log.info("vault CA: issuer %s (root %s) signs from now on", chosen.id, root_id[:16])
        return (await self._refresh(force=True)).bundle

    def _remove_sync(self, issuers: Sequence[_Issuer], keep: Sequence[_Issuer]) -> None:
        mount = self.settings.mount
        for issuer in issuers:
            self._request(
                "DELETE",
                f"{mount}/issuer/{issuer.id}",
                capability="delete",
                doing=f"delete issuer {issuer.id}",
            )
        in_use = {i.key_id for i in keep}
        for key_id in {i.key_id for i in issuers if i.key_id} - in_use:
            try:
                self._request(
                    "DELETE",
                    f"{mount}/key/{key_id}",
                    capability="delete",
                    doing=f"delete key {key_id}",
                )
            except CaUnavailable as exc:
                log.warning("vault CA: the removed root's key stays in Vault: %s", exc.detail)

    async def remove_root(self, root_id: str) -> TrustBundle:
        state = await self._refresh(force=True)
        if root_id == state.bundle.signing_root:
            raise Conflict(
                f"root {root_id} signs new certificates and cannot be removed; activate "
                "another root first, and remove this one once the last certificate it signed "
                "has expired",
                root_id=root_id,
            )
        doomed = self._issuers_of(state, root_id)
        keep = [i for i in state.issuers if i not in doomed]
        await self._thread(lambda: self._remove_sync(doomed, keep))
        log.info("vault CA: removed root %s (%d issuer(s))", root_id[:16], len(doomed))
        return (await self._refresh(force=True)).bundle

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._session.close()
