"""How a host written in a rule names a service.

- ``reviews`` (no dot) is the service in the rule's own namespace;
- ``reviews.default`` and ``reviews.default.svc`` are completed with the domain suffix;
- ``reviews.default.svc.cluster.local`` is already complete;
- a host some ServiceEntry declares (``api.example.com``) is taken literally, before
  any completion, so two-label external names are not mistaken for ``name.namespace``.
"""

from __future__ import annotations

from collections.abc import Container


def service_fqdn(service: str, namespace: str, domain_suffix: str = "cluster.local") -> str:
    return f"{service}.{namespace}.svc.{domain_suffix}"


def resolve_host(
    host: str,
    namespace: str,
    domain_suffix: str = "cluster.local",
    literal_hosts: Container[str] = frozenset(),
) -> str:
    """The fully qualified name ``host`` stands for when written in ``namespace``."""
    host = host.lower().rstrip(".")
    if host in literal_hosts:
        return host
    if "." not in host:
        return service_fqdn(host, namespace, domain_suffix)
    labels = host.split(".")
    if len(labels) == 2:
        return service_fqdn(labels[0], labels[1], domain_suffix)
    if len(labels) == 3 and labels[2] == "svc":
        return service_fqdn(labels[0], labels[1], domain_suffix)
    return host


def split_service_fqdn(fqdn: str, domain_suffix: str = "cluster.local") -> tuple[str, str] | None:
    """``(namespace, service)`` for a mesh service's FQDN, None for any other host."""
    tail = f".svc.{domain_suffix}"
    if not fqdn.endswith(tail):
        return None
    head = fqdn[: -len(tail)].split(".")
    if len(head) != 2:
        return None
    return head[1], head[0]


def host_aliases(
    service: str, namespace: str, domain_suffix: str = "cluster.local"
) -> tuple[str, ...]:
    """Every spelling of a mesh service's name, most specific first; the short name is
    only meaningful to callers in the same namespace."""
    return (
        service_fqdn(service, namespace, domain_suffix),
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}",
        service,
    )
