"""Authorization (Istio's AuthorizationPolicy) for the inbound side: compile once,
``evaluate(compiled, attributes) -> Allow | Deny`` per request.

Istio's evaluation order:

1. a DENY policy with a rule that holds denies;
2. else, when at least one ALLOW policy selects the workload, a rule of one of them
   must hold, or the request is denied (an ALLOW policy without rules allows nothing);
3. else the request is allowed.

AUDIT policies never change the decision; the ones whose rule holds are reported in
``audited`` (for the access log). A policy without rules never holds (so a DENY policy
without rules denies nothing); a rule without sources, operations and conditions always
holds.

A rule holds when one of its ``sources`` holds (or it has none), one of its
``operations`` holds (or none) and all its ``conditions`` hold; a source or an
operation is a set of constraints that must all hold. A constraint holds when the
attribute's value matches one of its values; a negated one (Istio's ``notX`` /
``notValues``) when the value matches none of them, which includes a value that is
absent (a plaintext peer has no principal, an absent header no value). Values are
Istio's string syntax pre-parsed by the compiler: exact, prefix (``abc*``), suffix
(``*abc``), any (``*``: present) and, for ``source.ip``, CIDR blocks. ``request.host``
is compared case-insensitively (Istio's fix for CVE-2021-39156); everything else is
case-sensitive.
"""

from __future__ import annotations

import ipaddress
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from meshd.compile.snapshot import AuthzPolicy, AuthzRule, Constraint, InboundConfig, ValueMatch
from sidecar.routing.request import EMPTY_HEADERS, HeaderLookup

__all__ = [
    "ALLOW",
    "Allow",
    "Attributes",
    "CompiledAuthz",
    "Deny",
    "compile_authz",
    "evaluate",
]


@dataclass(frozen=True, slots=True)
class Allow:
    """The request may proceed. ``audited``: the AUDIT policies whose rule held."""

    audited: tuple[str, ...] = ()


ALLOW = Allow()


@dataclass(frozen=True, slots=True)
class Deny:
    """Answer 403 ("RBAC: access denied"). ``policy`` is the DENY policy that matched
    (``ns/name``) and ``rule`` its rule's index; both None when no ALLOW policy matched."""

    policy: str | None
    rule: int | None
    reason: str
    audited: tuple[str, ...] = ()

    @property
    def details(self) -> str:
        """Envoy's ``response_code_details`` for the access log."""
        if self.policy is None:
            return "rbac_access_denied_matched_policy[none]"
        ns, _, name = self.policy.rpartition("/")
        label = f"ns[{ns}]-policy[{name}]" if ns else f"policy[{name}]"
        return f"rbac_access_denied_matched_policy[{label}-rule[{self.rule}]]"


@dataclass(slots=True)
class Attributes:
    """What a policy can test, for one request.

    ``principal`` is the peer's SPIFFE ID without ``spiffe://`` (None for a plaintext
    peer), ``namespace`` the namespace in it; ``ip`` the peer's address; ``host`` the
    Host/authority as sent (port included when sent); ``port`` the destination
    (inbound) port; ``headers`` lowercase names."""

    principal: str | None = None
    namespace: str | None = None
    ip: str | None = None
    method: str = ""
    path: str = ""
    host: str = ""
    port: int = 0
    headers: HeaderLookup = field(default=EMPTY_HEADERS)

    @classmethod
    def for_request(
        cls,
        *,
        peer_spiffe_id: str | None,
        source_ip: str | None,
        method: str,
        path: str,
        host: str,
        port: int,
        headers: HeaderLookup | Mapping[str, str] = EMPTY_HEADERS,
    ) -> Attributes:
        """From the peer's SPIFFE ID (``spiffe://td/ns/N/sa/S``, None for plaintext)
        and the request; ``path`` without the query (normalised, as it is forwarded)."""
        principal = namespace = None
        if peer_spiffe_id:
            principal = peer_spiffe_id.removeprefix("spiffe://")
            parts = principal.split("/")
            if len(parts) >= 5 and parts[1] == "ns" and parts[3] == "sa":
                namespace = parts[2]
        return cls(principal, namespace, source_ip, method, path, host, port, headers)


# --- compiled form -----------------------------------------------------------------------

Check = Callable[[Attributes], bool]


@dataclass(frozen=True, slots=True)
class _Rule:
    sources: tuple[tuple[Check, ...], ...]
    operations: tuple[tuple[Check, ...], ...]
    conditions: tuple[Check, ...]

    def holds(self, a: Attributes) -> bool:
        # Plain loops: any()/all() over generators cost a frame each on the hot path.
        if self.sources and not _any_group(self.sources, a):
            return False
        if self.operations and not _any_group(self.operations, a):
            return False
        for check in self.conditions:  # noqa: SIM110
            if not check(a):
                return False
        return True


def _any_group(groups: tuple[tuple[Check, ...], ...], a: Attributes) -> bool:
    for group in groups:
        for check in group:
            if not check(a):
                break
        else:
            return True
    return False


@dataclass(frozen=True, slots=True)
class _Policy:
    name: str
    rules: tuple[_Rule, ...]

    def matching_rule(self, a: Attributes) -> int | None:
        for i, rule in enumerate(self.rules):
            if rule.holds(a):
                return i
        return None


@dataclass(frozen=True, slots=True)
class CompiledAuthz:
    """The policies of one workload, by action, ready to evaluate."""

    deny: tuple[_Policy, ...] = ()
    allow: tuple[_Policy, ...] = ()
    audit: tuple[_Policy, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.deny or self.allow or self.audit)


def compile_authz(policies: InboundConfig | Iterable[AuthzPolicy]) -> CompiledAuthz:
    """Compile the policies that select this workload (``InboundConfig.authz``)."""
    items = policies.authz if isinstance(policies, InboundConfig) else tuple(policies)
    by_action: dict[str, list[_Policy]] = {"DENY": [], "ALLOW": [], "AUDIT": []}
    for p in items:
        by_action[p.action].append(_Policy(p.name, tuple(_rule(r) for r in p.rules)))
    return CompiledAuthz(
        tuple(by_action["DENY"]), tuple(by_action["ALLOW"]), tuple(by_action["AUDIT"])
    )


def evaluate(compiled: CompiledAuthz, attributes: Attributes) -> Allow | Deny:
    """Istio's decision for ``attributes`` (see the module docstring)."""
    audited: tuple[str, ...] = ()
    if compiled.audit:
        audited = tuple(p.name for p in compiled.audit if p.matching_rule(attributes) is not None)
    for p in compiled.deny:
        i = p.matching_rule(attributes)
        if i is not None:
            return Deny(p.name, i, f"denied by DENY policy {p.name} (rule {i})", audited)
    if compiled.allow:
        for p in compiled.allow:
            if p.matching_rule(attributes) is not None:
                return Allow(audited) if audited else ALLOW
        names = ", ".join(p.name for p in compiled.allow)
        return Deny(None, None, f"no ALLOW policy matched (ALLOW policies: {names})", audited)
    return Allow(audited) if audited else ALLOW


# --- constraints -------------------------------------------------------------------------


def _rule(rule: AuthzRule) -> _Rule:
    return _Rule(
        sources=tuple(tuple(_constraint(c) for c in group) for group in rule.sources),
        operations=tuple(tuple(_constraint(c) for c in group) for group in rule.operations),
        conditions=tuple(_constraint(c) for c in rule.conditions),
    )


def _constraint(c: Constraint) -> Check:
    matches = _value_matcher(c)
    negate = c.negate
    get = _getter(c.attribute)
    if negate:
        return lambda a: not matches(get(a))
    return lambda a: matches(get(a))


def _getter(attribute: str) -> Callable[[Attributes], object]:
    if attribute.startswith("request.headers[") and attribute.endswith("]"):
        name = attribute[len("request.headers[") : -1].lower()
        return lambda a: a.headers.get(name)
    if attribute == "request.host":
        return lambda a: a.host.lower()
    field_name = {
        "source.principal": "principal",
        "source.namespace": "namespace",
        "source.ip": "ip",
        "request.method": "method",
        "request.path": "path",
        "destination.port": "port",
    }.get(attribute)
    if field_name is None:  # meshd.compile.check rejects unknown attributes
        return lambda a: None
    return operator.attrgetter(field_name)


def _value_matcher(c: Constraint) -> Callable[[object], bool]:
    if c.attribute == "source.ip":
        return _cidr_matcher(c.values)
    lower = c.attribute == "request.host"
    exact: set[str] = set()
    prefixes: list[str] = []
    suffixes: list[str] = []
    any_value = False
    for v in c.values:
        value = v.value.lower() if lower else v.value
        if v.kind == "exact":
            exact.add(value)
        elif v.kind == "prefix":
            prefixes.append(value)
        elif v.kind == "suffix":
            suffixes.append(value)
        elif v.kind == "any":
            any_value = True
    exact_set = frozenset(exact)
    pre, suf = tuple(prefixes), tuple(suffixes)
    if not (any_value or pre or suf):
        if c.attribute == "destination.port":  # the attribute is an int
            ports = frozenset(int(v) for v in exact_set if v.isdigit())
            return ports.__contains__
        return exact_set.__contains__  # None is in no set of strings

    def matches(value: object) -> bool:
        if value is None:
            return False
        text = value if isinstance(value, str) else str(value)
        return (
            any_value
            or text in exact_set
            or (bool(pre) and text.startswith(pre))
            or (bool(suf) and text.endswith(suf))
        )

    return matches


_Net = tuple[int, int, int]  # (version, network address, mask)


def _cidr_matcher(values: tuple[ValueMatch, ...]) -> Callable[[object], bool]:
    nets: list[_Net] = []
    for v in values:
        if v.kind == "any":
            return lambda ip: ip is not None
        try:
            net = ipaddress.ip_network(v.value, strict=False)
        except ValueError:  # meshd.compile.check rejects these
            continue
        nets.append((net.version, int(net.network_address), int(net.netmask)))
    frozen = tuple(nets)

    def matches(ip: object) -> bool:
        if not isinstance(ip, str):
            return False
        parsed = _parse_ip(ip)
        if parsed is None:
            return False
        version, addr = parsed
        return any(v == version and addr & mask == net for v, net, mask in frozen)

    return matches


@lru_cache(maxsize=4096)
def _parse_ip(text: str) -> tuple[int, int] | None:
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # ::ffff:198.18.0.1 is 198.18.0.1 (dual-stack sockets)
    return addr.version, int(addr)
