"""Signing workload certificates: who may get which identity, how often, and a record
of what was issued (``meshctl certs``).

A join token yields exactly the identity it is scoped to; a renewal yields exactly the
identity of the certificate that authenticated it. Nothing in the CSR can ask for
more: the CA's policy refuses any other SAN, CA:true, weak keys or CA key usages.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from meshd.ca.base import CertificateAuthority, IssuedCert, SignRequest, TrustBundle
from meshd.errors import RateLimited
from meshd.join_tokens import JoinGrant, JoinTokens
from meshd.metrics import Metrics
from meshd.ratelimit import KeyedLimiter
from meshd.spiffe import SpiffeId
from meshd.store.base import Store

ISSUED = "issued-certs"


@dataclass(frozen=True, slots=True)
class Signed:
    issued: IssuedCert
    bundle: TrustBundle

    def to_json(self) -> dict[str, Any]:
        i = self.issued
        return {
            "certificate": i.cert_pem,
            "chain": i.chain_pem,
            "roots": [r.pem for r in self.bundle.roots],
            "trustBundle": self.bundle.digest,
            "trustDomain": self.bundle.trust_domain,
            "spiffeId": str(i.identity),
            "notBefore": i.not_before.isoformat(),
            "notAfter": i.not_after.isoformat(),
            "serial": i.serial,
            "root": i.root_id,
        }


class Signer:
    def __init__(
        self,
        ca: CertificateAuthority,
        store: Store,
        tokens: JoinTokens,
        metrics: Metrics,
        *,
        ttl: timedelta,
        limiter: KeyedLimiter,
    ) -> None:
        self.ca = ca
        self._store = store
        self._tokens = tokens
        self._metrics = metrics
        self.ttl = ttl
        self._limiter = limiter

    async def sign(self, csr_pem: str, proxy: str, credential: JoinGrant | SpiffeId) -> Signed:
        if isinstance(credential, JoinGrant):
            identity, key, via = credential.identity, f"token:{credential.token_id}", "join-token"
        else:
            identity, key, via = credential, f"spiffe:{credential}", "renewal"
        wait = self._limiter.take(key, time.monotonic())
        if wait:
            raise RateLimited(
                f"too many certificate requests for {identity}; retry in {wait:.1f} s",
                retry_after=wait,
            )
        started = time.perf_counter()
        issued = await self.ca.sign(SignRequest(csr_pem, identity, self.ttl))
        if isinstance(credential, JoinGrant):
            # After signing, so a CA outage does not burn a single-use token; if another
            # request consumed it meanwhile, this certificate is never handed out.
            await self._tokens.consume(credential, proxy)
        bundle = await self.ca.bundle()
        self._metrics.observe_sign(time.perf_counter() - started, via)
        await self._store.record_put(
            ISSUED,
            proxy or f"{identity.namespace}.{identity.service_account}.{issued.serial}",
            {
                "proxy": proxy,
                "spiffeId": str(identity),
                "serial": issued.serial,
                "root": issued.root_id,
                "notBefore": issued.not_before.timestamp(),
                "notAfter": issued.not_after.timestamp(),
                "issuedAt": time.time(),
                "via": via,
            },
        )
        return Signed(issued, bundle)

    async def issued(self) -> list[dict[str, Any]]:
        records = [r for _, r in await self._store.record_list(ISSUED)]
        return sorted(records, key=lambda r: (r["notAfter"], r["proxy"]))
