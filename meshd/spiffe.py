"""SPIFFE IDs of workloads: ``spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>``.

Stdlib only: meshd, meshctl and the sidecar all use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_TRUST_DOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class SpiffeId:
    trust_domain: str
    namespace: str
    service_account: str

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @property
    def principal(self) -> str:
        """How Istio's AuthorizationPolicy writes it: without ``spiffe://``."""
        return str(self)[len("spiffe://") :]


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> SpiffeId:
    """A workload identity, checked: DNS-label namespace and account, a valid trust domain."""
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise ValueError(f"trust domain {trust_domain!r} is not a valid DNS name")
    for what, value in (("namespace", namespace), ("service account", service_account)):
        if len(value) > 63 or not _LABEL.fullmatch(value):
            raise ValueError(f"{what} {value!r} is not a DNS label")
    return SpiffeId(trust_domain, namespace, service_account)


def parse_spiffe_id(uri: str) -> SpiffeId:
    """The workload identity in ``uri``; ValueError saying what is wrong otherwise."""
    prefix = "spiffe://"
    if not uri.startswith(prefix):
        raise ValueError(f"{uri!r} is not a SPIFFE ID (it must start with spiffe://)")
    trust_domain, _, path = uri[len(prefix) :].partition("/")
    parts = path.split("/")
    if len(parts) != 4 or parts[0] != "ns" or parts[2] != "sa":
        raise ValueError(f"{uri!r} is not a workload ID of the form spiffe://TD/ns/NS/sa/SA")
    return spiffe_id(trust_domain, parts[1], parts[3])
