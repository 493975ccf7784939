"""meshd's side of workload identity: the trust bundle, meshd's own serving
certificate, join tokens, signing, and root rotation.

Root rotation (``meshctl ca rotate``) runs in three phases, each safe for traffic:

1. *distributing* — a new root is added to the bundle (it does not sign yet); every
   snapshot carries the bundle, so proxies trust both roots once they ACK it.
2. *switched* — when every proxy of every replica has ACKed the new bundle, signing
   moves to the new root; proxies pick up new-root certificates as they renew.
3. *retired* — once the last certificate the old root signed has expired (the switch
   time plus the certificate lifetime), the old root leaves the bundle.

The rotation's state lives in the store, so replicas agree on it; each replica reports
how many of its proxies still lack the new bundle, and the switch waits for all.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskStatus
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshd.ca.base import CertificateAuthority, SignRequest, TrustBundle
from meshd.config import Settings
from meshd.errors import Conflict, MeshError
from meshd.join_tokens import JoinTokens
from meshd.metrics import Metrics
from meshd.ratelimit import KeyedLimiter
from meshd.signing import Signer
from meshd.spiffe import spiffe_id
from meshd.store.base import Store
from meshd.tls import ServingTls
from registry.latest import Latest

log = logging.getLogger("meshd.identity")

CA_COLLECTION = "ca"
ROTATION = "rotation"
ACKS = "ca-rotation-acks"
BUNDLE_FILE = "ca-bundle.pem"
REPORT_FRESH_S = 15.0
RETIRE_SKEW_S = 10.0

# Returns how many of this replica's proxies do not yet run a snapshot with the
# given bundle digest, and their ids (a few, for display).
LaggingProxies = Callable[[str], tuple[int, list[str]]]


def _sans(settings: Settings) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """DNS names and IPs meshd's certificate is valid for: the listen address (unless a
    wildcard), loopback, this host's name, and every ``--san``."""
    names = {"localhost", socket.gethostname(), *settings.sans}
    ips = {"127.0.0.1", "::1"}
    host = settings.listen_host
    try:
        address = ipaddress.ip_address(host)
        if address.is_unspecified:
            # Listening everywhere: the addresses this host's name resolves to are how
            # peers reach it (in a container, its bridge address).
            ips.update(_own_addresses())
        else:
            ips.add(str(address))
    except ValueError:
        names.add(host)
    for name in list(names):
        try:
            ips.add(str(ipaddress.ip_address(name)))
            names.discard(name)
        except ValueError:
            pass
    return tuple(sorted(names)), tuple(sorted(ips))


def _own_addresses() -> set[str]:
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, proto=socket.IPPROTO_TCP)
    except OSError:
        return set()
    return {str(info[4][0]) for info in infos}


class Identity:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        ca: CertificateAuthority,
        metrics: Metrics,
        serving: ServingTls,
    ) -> None:
        self.settings = settings
        self.ca = ca
        self._store = store
        self.replica = uuid.uuid4().hex[:12]
        self.tokens = JoinTokens(store, settings.trust_domain)
        self.signer = Signer(
            ca,
            store,
            self.tokens,
            metrics,
            ttl=timedelta(seconds=settings.cert_ttl_s),
            # Every replica of a service shares one identity and an autoscaling group
            # one multi-use token, so the per-credential bucket is a share of the whole:
            # it keeps one credential from taking all of it, no more.
            limiter=KeyedLimiter(
                rate=settings.sign_rate,
                burst=max(1.0, settings.sign_rate * 2),
                per_key_rate=max(1.0, settings.sign_rate / 10),
                per_key_burst=max(2.0, settings.sign_rate / 5),
            ),
        )
        self.serving = serving
        self.bundle: Latest[TrustBundle | None] = Latest(None)
        self._serving_root = ""
        self._serving_renew_at = 0.0
        self._lagging: LaggingProxies | None = None

    def current_bundle(self) -> TrustBundle:
        bundle = self.bundle.value
        if bundle is None:
            raise MeshError("the trust bundle is not loaded yet; meshd is still starting")
        return bundle

    # --- start-up and loops ---------------------------------------------------------------

    async def start(self) -> None:
        """Load the bundle and issue meshd's serving certificate, before the listener opens."""
        await self._refresh_bundle()
        await self._issue_serving_cert()

    async def run(
        self,
        lagging: LaggingProxies,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        self._lagging = lagging
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._every, 2.0, self._refresh_bundle)
            tg.start_soon(self._every, 1.0, self._rotation_tick)
            tg.start_soon(self._every, 5.0, self._serving_tick)
            task_status.started()

    async def _every(self, seconds: float, step: Callable[[], Any]) -> None:
        failing = False
        while True:
            await anyio.sleep(seconds)
            try:
                await step()
            except MeshError as exc:
                if not failing:
                    log.warning("%s failed, retrying every %.0f s: %s", step.__name__, seconds, exc)
                failing = True
            else:
                if failing:
                    log.info("%s works again", step.__name__)
                failing = False

    async def _refresh_bundle(self) -> None:
        bundle = await self.ca.bundle()
        old = self.bundle.value
        if old == bundle:
            return
        self.bundle.set(bundle)
        self._write_bundle_file(bundle)
        if old is not None:
            log.info(
                "trust bundle changed: %d root(s), digest %s, signing root %s",
                len(bundle.roots),
                bundle.digest,
                bundle.signing_root[:16],
            )
        # Clients are verified against the new roots from the next connection on.
        if self.serving.ready and old is not None and old.digest != bundle.digest:
            await self._issue_serving_cert()

    def _write_bundle_file(self, bundle: TrustBundle) -> None:
        """For meshctl and local sidecars (``--ca-file``): public, so 0644."""
        path = self.settings.data_dir / BUNDLE_FILE
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(bundle.pem())
        tmp.chmod(0o644)
        os.replace(tmp, path)

    # --- meshd's own certificate ----------------------------------------------------------

    async def _issue_serving_cert(self) -> None:
        bundle = self.current_bundle()
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
            .decode()
        )
        dns, ips = _sans(self.settings)
        identity = spiffe_id(self.settings.trust_domain, self.settings.root_namespace, "meshd")
        ttl = timedelta(seconds=self.settings.cert_ttl_s)
        issued = await self.ca.sign(SignRequest(csr, identity, ttl, dns, ips))
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        self.serving.install(issued.cert_pem + issued.chain_pem, key_pem, bundle.pem())
        self._serving_root = issued.root_id
        # From now, not from notBefore: that is backdated for clock skew, and with a
        # short lifetime half of not_after - not_before would lie past the expiry.
        now = time.time()
        self._serving_renew_at = now + (issued.not_after.timestamp() - now) / 2
        log.info(
            "serving certificate issued for %s (%s), valid until %s",
            ", ".join(dns + ips),
            identity,
            issued.not_after.isoformat(timespec="seconds"),
        )

    async def _serving_tick(self) -> None:
        bundle = self.current_bundle()
        if time.time() >= self._serving_renew_at or self._serving_root != bundle.signing_root:
            await self._issue_serving_cert()

    # --- root rotation --------------------------------------------------------------------

    async def rotation_state(self) -> dict[str, Any] | None:
        return await self._store.record_get(CA_COLLECTION, ROTATION)

    async def start_rotation(self, actor: str) -> dict[str, Any]:
        current = await self.rotation_state()
        if current is not None:
            raise Conflict(
                f"a root rotation is already in progress (phase {current['phase']}); "
                "watch it with meshctl ca status"
            )
        before = self.current_bundle()
        old = before.signing_root
        bundle = await self.ca.add_root()
        new = next(r.id for r in bundle.roots if r.id not in {b.id for b in before.roots})
        state = {
            "phase": "distributing",
            "old": old,
            "new": new,
            "digest": bundle.digest,
            "startedAt": time.time(),
            "startedBy": actor,
        }
        await self._store.record_put(CA_COLLECTION, ROTATION, state, create_only=True)
        await self._refresh_bundle()
        log.info("root rotation started by %s: new root %s added to the bundle", actor, new[:16])
        return state

    async def _rotation_tick(self) -> None:
        state = await self.rotation_state()
        if state is None:
            return
        if state["phase"] == "distributing":
            await self._report_lagging(state["digest"])
            if await self._all_replicas_synced(state["digest"]):
                await self.ca.activate_root(state["new"])
                state = state | {
                    "phase": "switched",
                    "switchedAt": time.time(),
                    "retireAfter": time.time() + self.settings.cert_ttl_s + RETIRE_SKEW_S,
                }
                await self._store.record_put(CA_COLLECTION, ROTATION, state)
                await self._refresh_bundle()
                log.info(
                    "root rotation: every proxy holds the new root; signing with %s from now "
                    "on, the old root leaves the bundle after %s",
                    state["new"][:16],
                    time.strftime("%H:%M:%S", time.localtime(state["retireAfter"])),
                )
        elif state["phase"] == "switched" and time.time() >= state["retireAfter"]:
            bundle = self.current_bundle()
            if any(r.id == state["old"] for r in bundle.roots):
                await self.ca.remove_root(state["old"])
            await self._store.record_delete(CA_COLLECTION, ROTATION)
            for rid, _ in await self._store.record_list(ACKS):
                await self._store.record_delete(ACKS, rid)
            await self._refresh_bundle()
            log.info("root rotation finished: the old root %s left the bundle", state["old"][:16])

    async def _report_lagging(self, digest: str) -> None:
        count, some = self._lagging(digest) if self._lagging is not None else (0, [])
        await self._store.record_put(
            ACKS,
            self.replica,
            {"digest": digest, "lagging": count, "examples": some, "at": time.time()},
        )

    async def _all_replicas_synced(self, digest: str) -> bool:
        now = time.time()
        reports = [
            r
            for _, r in await self._store.record_list(ACKS)
            if now - float(r["at"]) < REPORT_FRESH_S
        ]
        return bool(reports) and all(r["digest"] == digest and r["lagging"] == 0 for r in reports)

    async def rotation_status(self) -> dict[str, Any]:
        state = await self.rotation_state()
        bundle = self.current_bundle()
        reports = [r | {"replica": rid} for rid, r in await self._store.record_list(ACKS)]
        return {"rotation": state, "bundle": bundle_json(bundle), "replicas": reports}


def bundle_json(bundle: TrustBundle) -> dict[str, Any]:
    return {
        "trustDomain": bundle.trust_domain,
        "digest": bundle.digest,
        "roots": [
            {
                "id": r.id,
                "pem": r.pem,
                "notAfter": r.not_after.isoformat(),
                "signing": r.id == bundle.signing_root,
            }
            for r in bundle.roots
        ],
    }


def bundle_path(data_dir: Path) -> Path:
    return data_dir / BUNDLE_FILE
