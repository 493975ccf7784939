"""AuthorizationPolicy -> the sidecar's pre-parsed policy form.

Which policies select a workload: those in the root namespace (mesh-wide; with a
selector, only the workloads it matches, in any namespace), and those in the
workload's namespace without selector or with one that matches its labels. They are
listed ordered by ``namespace/name``, which is also each one's name in the snapshot.

Attribute mapping (Istio field -> snapshot attribute):

- ``principals`` -> ``source.principal``. Istio principals are written without the
  ``spiffe://`` scheme (``cluster.local/ns/default/sa/sleep``); the values are kept
  as written and the sidecar compares them with the peer's SPIFFE ID minus
  ``spiffe://``.
- ``serviceAccounts`` (``ns/name``, or ``name`` in the policy's namespace) ->
  ``source.principal`` equal to ``<trust-domain>/ns/<ns>/sa/<name>`` of this mesh.
- ``namespaces`` -> ``source.namespace``; ``ipBlocks`` -> ``source.ip`` as CIDR blocks
  (a bare address becomes ``/32`` or ``/128``).
- ``hosts`` -> ``request.host`` (lowercased: the sidecar compares the lowercased
  Host), ``ports`` -> ``destination.port``, ``methods`` -> ``request.method``,
  ``paths`` -> ``request.path``.
- ``when`` keys: ``source.ip``, ``source.namespace``, ``source.principal``,
  ``destination.port`` map to the same attribute; ``request.headers[X]`` to
  ``request.headers[x]``. ``notValues`` and every ``notX`` field become a negated
  constraint next to the positive one.
- Istio's string syntax: ``*`` any (present), ``prefix*``, ``*suffix``, else exact.

A rule is never weakened: a key the sidecar cannot evaluate (validation rejects them)
fails the compile of the proxies the policy selects rather than being dropped.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence

from meshd.compile import snapshot as s
from meshd.compile.errors import RuleError
from meshd.schema.security import AuthorizationPolicy, Condition, Operation, Rule, Source

_HEADER_KEY = re.compile(r"^request\.headers\[(.+)\]$")
_PLAIN_KEYS = frozenset({"source.namespace", "source.principal"})


def selects(
    policy: AuthorizationPolicy,
    namespace: str,
    labels: frozenset[tuple[str, str]],
    root_namespace: str,
) -> bool:
    owner = policy.metadata.namespace
    if owner not in (namespace, root_namespace):
        return False
    sel = policy.spec.selector
    if sel is None or not sel.match_labels:
        return True
    return sel.match_labels.items() <= labels


def applicable(
    in_namespace: Sequence[AuthorizationPolicy],
    in_root: Sequence[AuthorizationPolicy],
    namespace: str,
    labels: frozenset[tuple[str, str]],
    root_namespace: str,
) -> tuple[AuthorizationPolicy, ...]:
    """The policies selecting a workload, ordered by ``namespace/name``."""
    found = [p for p in in_namespace if selects(p, namespace, labels, root_namespace)]
    if namespace != root_namespace:
        found.extend(p for p in in_root if selects(p, namespace, labels, root_namespace))
    found.sort(key=lambda p: (p.metadata.namespace, p.metadata.name))
    return tuple(found)


def compile_policy(policy: AuthorizationPolicy, trust_domain: str) -> s.AuthzPolicy:
    spec = policy.spec
    ns = policy.metadata.namespace
    action = spec.action or "ALLOW"
    if action == "CUSTOM":
        raise RuleError("action CUSTOM (external authorization) is not implemented")
    return s.AuthzPolicy(
        name=f"{ns}/{policy.metadata.name}",
        action=action,
        rules=tuple(_rule(r, ns, trust_domain) for r in spec.rules),
    )


def _rule(rule: Rule, namespace: str, trust_domain: str) -> s.AuthzRule:
    sources = tuple(
        _source(f.source, namespace, trust_domain) if f.source is not None else ()
        for f in rule.from_
    )
    operations = tuple(_operation(t.operation) if t.operation is not None else () for t in rule.to)
    conditions = tuple(c for cond in rule.when for c in _condition(cond))
    return s.AuthzRule(sources=sources, operations=operations, conditions=conditions)


def _source(src: Source, namespace: str, trust_domain: str) -> tuple[s.Constraint, ...]:
    def accounts(values: Iterable[str]) -> list[s.ValueMatch]:
        out = []
        for v in values:
            ns, _, name = v.rpartition("/")
            out.append(s.ValueMatch("exact", f"{trust_domain}/ns/{ns or namespace}/sa/{name}"))
        return out

    return tuple(
        c
        for c in (
            _constraint("source.principal", _values(src.principals)),
            _constraint("source.principal", _values(src.not_principals), negate=True),
            _constraint("source.principal", accounts(src.service_accounts)),
            _constraint("source.principal", accounts(src.not_service_accounts), negate=True),
            _constraint("source.namespace", _values(src.namespaces)),
            _constraint("source.namespace", _values(src.not_namespaces), negate=True),
            _constraint("source.ip", _cidrs(src.ip_blocks)),
            _constraint("source.ip", _cidrs(src.not_ip_blocks), negate=True),
        )
        if c is not None
    )


def _operation(op: Operation) -> tuple[s.Constraint, ...]:
    return tuple(
        c
        for c in (
            _constraint("request.host", _values(h.lower() for h in op.hosts)),
            _constraint("request.host", _values(h.lower() for h in op.not_hosts), negate=True),
            _constraint("destination.port", _ports(op.ports)),
            _constraint("destination.port", _ports(op.not_ports), negate=True),
            _constraint("request.method", _values(op.methods)),
            _constraint("request.method", _values(op.not_methods), negate=True),
            _constraint("request.path", _values(op.paths)),
            _constraint("request.path", _values(op.not_paths), negate=True),
        )
        if c is not None
    )


def _condition(cond: Condition) -> list[s.Constraint]:
    key = cond.key
    header = _HEADER_KEY.match(key)
    if header is not None:
        attribute = f"request.headers[{header.group(1).lower()}]"

        def convert(values: list[str]) -> list[s.ValueMatch]:
            return _values(values)
    elif key == "source.ip":
        attribute, convert = key, _cidrs
    elif key == "destination.port":
        attribute, convert = key, _ports
    elif key in _PLAIN_KEYS:
        attribute, convert = key, _values
    else:
        raise RuleError(f"condition key {key!r} cannot be enforced by the sidecar")
    return [
        c
        for c in (
            _constraint(attribute, convert(cond.values)),
            _constraint(attribute, convert(cond.not_values), negate=True),
        )
        if c is not None
    ]


def _constraint(
    attribute: str, values: list[s.ValueMatch], *, negate: bool = False
) -> s.Constraint | None:
    if not values:
        return None
    return s.Constraint(attribute, tuple(values), negate)


def value_match(text: str) -> s.ValueMatch:
    """Istio's ``*``, ``prefix*``, ``*suffix`` and exact strings."""
    if text == "*":
        return s.ValueMatch("any")
    if text.startswith("*"):
        return s.ValueMatch("suffix", text[1:])
    if text.endswith("*"):
        return s.ValueMatch("prefix", text[:-1])
    return s.ValueMatch("exact", text)


def _values(values: Iterable[str]) -> list[s.ValueMatch]:
    return [value_match(v) for v in values]


def _ports(values: Iterable[str]) -> list[s.ValueMatch]:
    out = []
    for v in values:
        if not v.strip().isdecimal():
            raise RuleError(f"{v!r} is not a port number")
        out.append(s.ValueMatch("exact", str(int(v))))
    return out


def _cidrs(values: Iterable[str]) -> list[s.ValueMatch]:
    out = []
    for v in values:
        try:
            network = ipaddress.ip_network(v.strip(), strict=False)
        except ValueError as exc:
            raise RuleError(f"{v!r} is not an IP address or CIDR block") from exc
        out.append(s.ValueMatch("cidr", str(network)))
    return out
