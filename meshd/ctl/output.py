"""Rendering: kubectl-style tables, re-appliable YAML, JSON and the proxy summary.

Pure functions from the server's JSON to text; times are rendered against a ``now``
passed in, so every function here is testable without a clock or a socket.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import yaml

from meshd.ctl.trust import short_id

NONE = "<none>"
RESOURCE_VERSION = "resourceVersion"
SHORT_VERSION = 8

Row = Sequence[str]
Item = Mapping[str, Any]


# --- primitives ---------------------------------------------------------------------------


def table(headers: Row, rows: Iterable[Row]) -> str:
    """Left-aligned columns three spaces apart, headers in capitals (as kubectl prints)."""
    all_rows = [list(headers), *(list(r) for r in rows)]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(headers))]
    lines = [
        "   ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
        for r in all_rows
    ]
    return "\n".join(lines) + "\n"


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def to_yaml(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True, default_flow_style=False)


def yaml_stream(documents: Iterable[Any]) -> str:
    """Documents separated by ``---`` (nothing for no documents)."""
    return "".join("---\n" + to_yaml(d) for d in documents)


def span(seconds: float) -> str:
    """``12s``, ``5m``, ``3h``, ``2d``: a duration, rounded down to its largest unit."""
    if seconds < 120:
        return f"{int(seconds)}s"
    if seconds < 2 * 3600:
        return f"{int(seconds // 60)}m"
    if seconds < 48 * 3600:
        return f"{int(seconds // 3600)}h"
    return f"{int(seconds // 86400)}d"


def ago(at: float | None, now: float) -> str:
    """``12s ago``, ``5m ago``, ``3h ago``, ``2d ago``; ``never`` for no time."""
    if not at:
        return "never"
    delta = now - at
    if delta < 1:
        return "just now"
    return f"{span(delta)} ago"


def relative(at: float | None, now: float) -> str:
    """``in 5m`` for a future time, ``5m ago`` for a past one; ``-`` for none."""
    if not at:
        return "-"
    delta = at - now
    if delta >= 1:
        return f"in {span(delta)}"
    return ago(at, now)


def local_time(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def when(at: float | None, now: float) -> str:
    """Local time and how long ago: ``2025-01-02 15:04:05 (3m ago)``."""
    if not at:
        return "never"
    return f"{local_time(at)} ({ago(at, now)})"


def at_time(at: float | None, now: float) -> str:
    """Local time and how far away, either way: ``2025-01-02 15:04:05 (in 3h)``."""
    if not at:
        return "-"
    return f"{local_time(at)} ({relative(at, now)})"


def iso_seconds(text: Any) -> float | None:
    """Unix seconds of an ISO 8601 time (``2035-01-01T00:00:00+00:00``); None if not one."""
    if isinstance(text, int | float):
        return float(text)
    try:
        moment = datetime.datetime.fromisoformat(str(text))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def short(version: str | None) -> str:
    return version[:SHORT_VERSION] if version else "-"


def _join(values: Iterable[Any]) -> str:
    text = ",".join(str(v) for v in values if v is not None and v != "")
    return text or NONE


def _spec(item: Item) -> Mapping[str, Any]:
    spec = item.get("spec")
    return spec if isinstance(spec, Mapping) else {}


def _meta(item: Item) -> Mapping[str, Any]:
    meta = item.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


# --- resources ----------------------------------------------------------------------------


def group_of(api_version: str) -> str:
    """``networking.istio.io`` of ``networking.istio.io/v1``; '' for a core ``v1``."""
    group, sep, _version = api_version.rpartition("/")
    return group if sep else ""


def type_name(kind: str, api_version: str) -> str:
    """``virtualservice.networking.istio.io`` (kubectl's resource.group)."""
    group = group_of(api_version)
    return f"{kind.lower()}.{group}" if group else kind.lower()


def resource_ref(item: Item) -> str:
    """``virtualservice.networking.istio.io/reviews``."""
    kind = type_name(str(item.get("kind", "")), str(item.get("apiVersion", "")))
    return f"{kind}/{_meta(item).get('name', '')}"


def revision_of(item: Item) -> str:
    return str(_meta(item).get(RESOURCE_VERSION) or "-")


Column = tuple[str, Callable[[Item], str]]


def _hosts(item: Item) -> str:
    return _join(_list(_spec(item).get("hosts")))


def _host(item: Item) -> str:
    return str(_spec(item).get("host") or NONE)


def _subsets(item: Item) -> str:
    return _join(s.get("name") for s in _list(_spec(item).get("subsets")) if isinstance(s, Mapping))


def _action(item: Item) -> str:
    return str(_spec(item).get("action") or "ALLOW")


def _mode(item: Item) -> str:
    mtls = _spec(item).get("mtls")
    mode = mtls.get("mode") if isinstance(mtls, Mapping) else None
    return str(mode or "UNSET")


def _location(item: Item) -> str:
    return str(_spec(item).get("location") or "MESH_EXTERNAL")


def _resolution(item: Item) -> str:
    return str(_spec(item).get("resolution") or "NONE")


def _issuers(item: Item) -> str:
    rules = _list(_spec(item).get("jwtRules"))
    return _join(r.get("issuer") for r in rules if isinstance(r, Mapping))


def _egress(item: Item) -> str:
    hosts: list[Any] = []
    for listener in _list(_spec(item).get("egress")):
        if isinstance(listener, Mapping):
            hosts.extend(_list(listener.get("hosts")))
    return _join(hosts)


KIND_COLUMNS: dict[str, list[Column]] = {
    "VirtualService": [("HOSTS", _hosts)],
    "DestinationRule": [("HOST", _host), ("SUBSETS", _subsets)],
    "ServiceEntry": [("HOSTS", _hosts), ("LOCATION", _location), ("RESOLUTION", _resolution)],
    "AuthorizationPolicy": [("ACTION", _action)],
    "PeerAuthentication": [("MODE", _mode)],
    "RequestAuthentication": [("ISSUERS", _issuers)],
    "Sidecar": [("EGRESS", _egress)],
}


def resources_table(items: Sequence[Item], *, all_namespaces: bool) -> str:
    """NAMESPACE (with -A), NAME, REVISION and the kind's own columns; a KIND column instead
    when the list mixes kinds."""
    kinds = {str(i.get("kind", "")) for i in items}
    mixed = len(kinds) > 1
    extra: list[Column] = [] if mixed or not kinds else KIND_COLUMNS.get(next(iter(kinds)), [])
    headers = (
        (["NAMESPACE"] if all_namespaces else [])
        + (["KIND"] if mixed else [])
        + ["NAME", "REVISION"]
        + [h for h, _ in extra]
    )
    rows = []
    for item in items:
        meta = _meta(item)
        rows.append(
            ([str(meta.get("namespace", ""))] if all_namespaces else [])
            + (
                [type_name(str(item.get("kind", "")), str(item.get("apiVersion", "")))]
                if mixed
                else []
            )
            + [str(meta.get("name", "")), revision_of(item)]
            + [render(item) for _, render in extra]
        )
    return table(headers, rows)


def exportable(item: Item) -> dict[str, Any]:
    """The resource as it can be applied again: without ``metadata.resourceVersion``,
    which would turn a re-apply into a compare-and-set that fails once it moved on."""
    out = dict(item)
    meta = dict(_meta(item))
    meta.pop(RESOURCE_VERSION, None)
    out["metadata"] = meta
    return out


def resources_yaml(items: Iterable[Item]) -> str:
    return yaml_stream(exportable(i) for i in items)


def names(items: Iterable[Item]) -> str:
    return "".join(resource_ref(i) + "\n" for i in items)


# --- services -----------------------------------------------------------------------------


def services_table(items: Sequence[Item], *, all_namespaces: bool) -> str:
    """NAME, INSTANCES (healthy/total), PROTOCOL, VERSIONS (the instances' ``version`` labels)."""
    headers = (["NAMESPACE"] if all_namespaces else []) + [
        "NAME",
        "INSTANCES",
        "PROTOCOL",
        "VERSIONS",
    ]
    rows = []
    for svc in items:
        insts = [i for i in _list(svc.get("instances")) if isinstance(i, Mapping)]
        healthy = sum(1 for i in insts if i.get("healthy", True))
        protocols = sorted({str(i.get("protocol", "")) for i in insts if i.get("protocol")})
        versions = sorted(
            {
                str(i["labels"]["version"])
                for i in insts
                if isinstance(i.get("labels"), Mapping) and "version" in i["labels"]
            }
        )
        rows.append(
            ([str(svc.get("namespace", ""))] if all_namespaces else [])
            + [
                str(svc.get("name", "")),
                f"{healthy}/{len(insts)}",
                _join(protocols),
                _join(versions),
            ]
        )
    return table(headers, rows)


# --- proxies ------------------------------------------------------------------------------

PROXY_HEADERS = ("NAME", "SERVICE", "STATE", "VERSION", "ACKED", "LAST SEEN")


def service_name(service: Any, namespace: Any) -> str:
    """``reviews.default`` for a service given short (``reviews``) or fully qualified
    (``reviews.default.svc.cluster.local``); '-' for none."""
    if not service:
        return "-"
    text, ns = str(service), str(namespace or "")
    if not ns:
        return text
    short_name = text.split(".", 1)[0]
    if text == short_name or text.startswith(f"{short_name}.{ns}.") or text == f"{short_name}.{ns}":
        return f"{short_name}.{ns}"
    return text


def _service_name(p: Item) -> str:
    return service_name(p.get("service"), p.get("namespace"))


def proxies_table(items: Sequence[Item], now: float) -> str:
    """istioctl proxy-status, meshd's way: the header is printed even for no proxies."""
    rows = []
    for p in items:
        seen = ago(p.get("lastSeen"), now)
        if p.get("lastSeen") and not p.get("connected", True):
            seen += " (disconnected)"
        rows.append(
            [
                str(p.get("proxy", "")),
                _service_name(p),
                str(p.get("state", "")),
                short(p.get("version")),
                short(p.get("ackedVersion")),
                seen,
            ]
        )
    return table(PROXY_HEADERS, rows)


def proxy_notes(items: Iterable[Item]) -> list[str]:
    """NACK reasons and compile errors, one line each, for under the table."""
    lines: list[str] = []
    for p in items:
        pid = str(p.get("proxy", ""))
        nack = p.get("nack")
        if isinstance(nack, Mapping) and nack.get("version"):
            lines.append(
                f"{pid}: NACKED version {short(str(nack['version']))}: {nack.get('reason', '')}"
            )
        lines.extend(f"{pid}: error: {e}" for e in _list(p.get("errors")))
    return lines


# --- history, describe, tokens --------------------------------------------------------------


def history_table(items: Sequence[Item], now: float) -> str:
    rows = [
        [
            str(r.get("revision", "")),
            str(r.get("operation", "")),
            str(r.get("actor", "")),
            when(r.get("at"), now),
        ]
        for r in items
    ]
    return table(["REVISION", "OPERATION", "ACTOR", "WHEN"], rows)


def _labels(mapping: Any) -> str:
    if not isinstance(mapping, Mapping) or not mapping:
        return NONE
    return ",".join(f"{k}={v}" for k, v in mapping.items())


def describe_text(
    resource: Item, history: Sequence[Item], proxies: Sequence[str], now: float, *, last: int = 5
) -> str:
    """kubectl describe's shape: identity, spec, latest revisions, affected proxies."""
    meta = _meta(resource)
    kind, api_version = str(resource.get("kind", "")), str(resource.get("apiVersion", ""))
    fields = [
        ("Name", str(meta.get("name", ""))),
        ("Namespace", str(meta.get("namespace", ""))),
        ("Kind", f"{kind} ({api_version})"),
        ("Revision", revision_of(resource)),
        ("Labels", _labels(meta.get("labels"))),
        ("Annotations", _labels(meta.get("annotations"))),
    ]
    width = max(len(k) for k, _ in fields) + 2
    out = [f"{k + ':':<{width}}{v}" for k, v in fields]
    out.append("Spec:")
    spec_yaml = to_yaml(resource.get("spec", {})).rstrip("\n")
    out.extend("  " + line for line in spec_yaml.splitlines())
    shown = list(history)[-last:]
    out.append(f"History (latest {len(shown)} of {len(history)}):")
    if shown:
        out.extend("  " + line for line in history_table(list(reversed(shown)), now).splitlines())
    out.append(f"Affects: {len(proxies)} prox{'y' if len(proxies) == 1 else 'ies'}")
    out.extend(f"  {p}" for p in proxies)
    return "\n".join(out) + "\n"


def tokens_table(items: Sequence[Item], now: float) -> str:
    rows = [
        [
            str(t.get("id", "")),
            str(t.get("name", "")),
            str(t.get("role", "")),
            when(t.get("created_at"), now),
            str(t.get("created_by", "")),
        ]
        for t in items
    ]
    return table(["ID", "NAME", "ROLE", "CREATED", "CREATED BY"], rows)


# --- proxy-config summary -------------------------------------------------------------------


def _string_match(m: Any) -> str:
    if not isinstance(m, Mapping):
        return "present"
    kind = str(m.get("kind", "exact"))
    case = " (ignore case)" if m.get("ignore_case") else ""
    return f"{kind} {json.dumps(m.get('value', ''), ensure_ascii=False)}{case}"


def describe_match(match: Item) -> str:
    """One RouteMatch as ``uri prefix "/api" and header end-user exact "jason"``."""
    parts: list[str] = []
    for key in ("uri", "scheme", "method", "authority"):
        if match.get(key):
            parts.append(f"{key} {_string_match(match[key])}")
    for h in _list(match.get("headers")):
        not_ = "not " if h.get("invert") else ""
        parts.append(f"{not_}header {h.get('name')} {_string_match(h.get('match'))}")
    for q in _list(match.get("query_params")):
        parts.append(f"query {q.get('name')} {_string_match(q.get('match'))}")
    if match.get("port") is not None:
        parts.append(f"port {match['port']}")
    return " and ".join(parts) or "*"


def _weighted(clusters: Sequence[Any]) -> str:
    if len(clusters) == 1 and isinstance(clusters[0], Mapping):
        return str(clusters[0].get("cluster", ""))
    return ", ".join(
        f"{c.get('cluster', '')} {c.get('weight', 0)}%" for c in clusters if isinstance(c, Mapping)
    )


def describe_action(action: Any) -> str:
    if not isinstance(action, Mapping) or len(action) != 1:
        return "?"
    ((tag, body),) = action.items()
    body = body if isinstance(body, Mapping) else {}
    if tag == "forward":
        text = "-> " + _weighted(_list(body.get("clusters")))
        extras = []
        if body.get("timeout_ms") is not None:
            extras.append(f"timeout {body['timeout_ms']}ms")
        retries = body.get("retries")
        if isinstance(retries, Mapping):
            extras.append(f"retries {retries.get('attempts', 0)}")
        if body.get("rewrite"):
            extras.append("rewrite")
        return text + (f" ({', '.join(extras)})" if extras else "")
    if tag == "redirect":
        target = (
            "".join(str(body[k]) for k in ("scheme", "authority", "uri") if body.get(k)) or "(same)"
        )
        return f"redirect {body.get('status', 301)} -> {target}"
    if tag == "direct_response":
        return f"respond {body.get('status', '')}"
    return str(tag)


def _more(values: Sequence[str], limit: int = 4) -> str:
    if len(values) <= limit:
        return ", ".join(values)
    return ", ".join(values[:limit]) + f" (+{len(values) - limit} more)"


def _virtual_service(source: Any) -> str:
    """A virtual host's ``source`` (``ns/name`` of the VirtualService it came from) as
    ``VirtualService ns/name``."""
    text = str(source)
    return text if " " in text else f"VirtualService {text}"


def proxy_summary(config: Item) -> str:
    """What a proxy runs, readable: inbound listener, outbound virtual hosts with their
    routes, TCP services, clusters with their endpoint counts."""
    out: list[str] = []
    service = service_name(config.get("service"), config.get("namespace"))
    out.append(f"Proxy:     {config.get('proxy_id', '')} (service {service})")
    out.append(f"Version:   {config.get('version', '')}")
    out.append(f"Identity:  {config.get('identity', '')}")
    inbound = config.get("inbound")
    if isinstance(inbound, Mapping):
        authz = [a for a in _list(inbound.get("authz")) if isinstance(a, Mapping)]
        policies = ", ".join(f"{a.get('action')} {a.get('name')}" for a in authz) or "none"
        out.append("")
        out.append(
            f"Inbound listener :{inbound.get('port')} -> app 127.0.0.1:{inbound.get('app_port')}"
        )
        out.append(f"  protocol {inbound.get('protocol')}, mTLS {inbound.get('mtls_mode')}")
        for port, mode in _list(inbound.get("port_mtls")):
            out.append(f"  port {port}: mTLS {mode}")
        out.append(f"  authorization: {policies}")
    outbound = config.get("outbound")
    outbound = outbound if isinstance(outbound, Mapping) else {}
    vhosts = [v for v in _list(outbound.get("virtual_hosts")) if isinstance(v, Mapping)]
    out.append("")
    passthrough = "passthrough" if outbound.get("allow_any", True) else "blocked"
    out.append(
        f"Outbound HTTP (the sidecar's --outbound-port): {len(vhosts)} virtual host(s); "
        f"unknown hosts {passthrough}"
    )
    for v in vhosts:
        source = (
            f"  [from {_virtual_service(v['source'])}]" if v.get("source") else "  [default route]"
        )
        out.append(f"  {v.get('name', '')}{source}")
        domains = [str(d) for d in _list(v.get("domains")) if ":" not in str(d)]
        out.append(f"    domains: {_more(domains)}")
        for r in _list(v.get("routes")):
            if not isinstance(r, Mapping):
                continue
            matches = [m for m in _list(r.get("matches")) if isinstance(m, Mapping)]
            cond = " or ".join(describe_match(m) for m in matches) or "*"
            name = f" {r['name']}" if r.get("name") else ""
            out.append(f"    route{name}: {cond} {describe_action(r.get('action'))}")
    tcp = [t for t in _list(outbound.get("tcp_services")) if isinstance(t, Mapping)]
    if tcp:
        out.append("")
        out.append(f"Outbound TCP listeners: {len(tcp)}")
        for t in tcp:
            for route in _list(t.get("routes")):
                port = route.get("port")
                scope = f" port {port}" if port is not None else ""
                target = _weighted(_list(route.get("clusters")))
                out.append(f"  {t.get('name')}:{t.get('port')}{scope} -> {target}")
    clusters = [c for c in _list(outbound.get("clusters")) if isinstance(c, Mapping)]
    out.append("")
    out.append(f"Clusters: {len(clusters)}")
    if clusters:
        rows = [
            [
                str(c.get("name", "")),
                str(c.get("protocol", "")),
                str(c.get("tls_mode", "")),
                str((c.get("lb") or {}).get("policy", "")),
                str(len(_list(c.get("endpoints")))),
            ]
            for c in clusters
        ]
        text = table(["NAME", "PROTOCOL", "TLS", "LB", "ENDPOINTS"], rows)
        out.extend("  " + line for line in text.splitlines())
    return "\n".join(out) + "\n"


# --- workload identity: join tokens, certificates, the CA -----------------------------------

EXPIRING_SOON_S = 3600.0


def join_tokens_table(items: Sequence[Item], now: float) -> str:
    """ID, SERVICE, NAMESPACE, IDENTITY, USES, USED, EXPIRES, CREATED BY. USED is ``-`` for
    multi-use tokens (meshd does not record their uses)."""
    rows = []
    for t in items:
        multi = t.get("uses") == "multi"
        expires_at = t.get("expires_at")
        expired = bool(t.get("expired")) or (
            isinstance(expires_at, int | float) and expires_at <= now
        )
        expires = f"expired {ago(expires_at, now)}" if expired else relative(expires_at, now)
        rows.append(
            [
                str(t.get("id", "")),
                str(t.get("service", "")),
                str(t.get("namespace", "")),
                str(t.get("spiffeId", "")),
                "multi" if multi else "single",
                "-" if multi else ("yes" if t.get("used") else "no"),
                expires,
                str(t.get("createdBy", "")),
            ]
        )
    return table(
        ["ID", "SERVICE", "NAMESPACE", "IDENTITY", "USES", "USED", "EXPIRES", "CREATED BY"], rows
    )


def expiry(at: Any, now: float) -> str:
    """``in 23h``; ``in 42m (<1h)`` when it is near; ``EXPIRED 3m ago`` once past."""
    if not isinstance(at, int | float) or not at:
        return "-"
    left = at - now
    if left <= 0:
        return f"EXPIRED {ago(at, now)}"
    text = f"in {span(left)}"
    return f"{text} (<1h)" if left < EXPIRING_SOON_S else text


def _root_cell(cert: Item, signing_root: str) -> str:
    root = str(cert.get("root") or "")
    text = short_id(root)
    if cert.get("rootTrusted") is False:
        return f"{text} (untrusted!)"
    if root and root == signing_root:
        return f"{text} (signing)"
    return text


CERT_HEADERS = ("PROXY", "IDENTITY", "ROOT", "SERIAL", "EXPIRES", "VIA")


def certs_table(body: Item, now: float) -> str:
    """Every proxy's newest certificate; the header is printed even for none."""
    bundle = body.get("bundle")
    signing = str(bundle.get("signingRoot") or "") if isinstance(bundle, Mapping) else ""
    rows = [
        [
            str(c.get("proxy") or "-"),
            str(c.get("spiffeId", "")),
            _root_cell(c, signing),
            short_id(c.get("serial")),
            expiry(c.get("notAfter"), now),
            str(c.get("via") or "-"),
        ]
        for c in _list(body.get("items"))
        if isinstance(c, Mapping)
    ]
    return table(CERT_HEADERS, rows)


def certs_notes(body: Item, now: float) -> list[str]:
    """What needs attention, for under the table: certificates whose root left the
    bundle (peers reject them) and expired ones."""
    certs = [c for c in _list(body.get("items")) if isinstance(c, Mapping)]
    lines = []
    untrusted = [
        str(c.get("proxy") or c.get("spiffeId")) for c in certs if c.get("rootTrusted") is False
    ]
    if untrusted:
        lines.append(
            f"{len(untrusted)} certificate(s) chain to a root that is no longer in the trust "
            f"bundle, so peers reject them: {_more(untrusted)}. Their proxies must renew "
            "(a sidecar renews at half-life; restart one that is stuck)."
        )
    expired = [
        str(c.get("proxy") or c.get("spiffeId"))
        for c in certs
        if isinstance(c.get("notAfter"), int | float) and c["notAfter"] <= now
    ]
    if expired:
        lines.append(
            f"{len(expired)} certificate(s) expired: {_more(expired)}. A running sidecar renews "
            "before expiry; these proxies are gone or cannot reach meshd."
        )
    return lines


def bundle_roots(bundle: Item) -> list[Mapping[str, Any]]:
    return [r for r in _list(bundle.get("roots")) if isinstance(r, Mapping)]


def bundle_lines(bundle: Item, now: float) -> list[str]:
    roots = bundle_roots(bundle)
    head = (
        f"Bundle:        digest {bundle.get('digest', '-')}, {len(roots)} "
        f"root{'' if len(roots) == 1 else 's'}"
    )
    rows = [
        [
            short_id(r.get("id")),
            "yes" if r.get("signing") else "no",
            at_time(iso_seconds(r.get("notAfter")), now),
        ]
        for r in roots
    ]
    text = table(["ROOT", "SIGNING", "NOT AFTER"], rows)
    return [head, *("  " + line for line in text.splitlines())]


def _lacking(count: int) -> str:
    return "1 proxy lacks it" if count == 1 else f"{count} proxies lack it"


def _replica_line(report: Item, digest: str, now: float) -> str:
    name = short_id(report.get("replica"))
    reported = f"reported {ago(report.get('at'), now)}"
    if report.get("digest") != digest:
        return f"    replica {name}: has not reported on the new bundle yet ({reported})"
    lagging = int(report.get("lagging") or 0)
    if lagging == 0:
        return f"    replica {name}: every proxy holds it ({reported})"
    examples = [str(e) for e in _list(report.get("examples"))]
    eg = f" (e.g. {', '.join(examples)})" if examples else ""
    return f"    replica {name}: {_lacking(lagging)}{eg}, {reported}"


def lagging_total(status: Item) -> int | None:
    """Proxies (over every replica) that lack the rotation's new bundle; None before any
    replica reported on it."""
    rotation = status.get("rotation")
    if not isinstance(rotation, Mapping):
        return None
    reports = [
        r
        for r in _list(status.get("replicas"))
        if isinstance(r, Mapping) and r.get("digest") == rotation.get("digest")
    ]
    if not reports:
        return None
    return sum(int(r.get("lagging") or 0) for r in reports)


def rotation_lines(status: Item, now: float) -> list[str]:
    rotation = status.get("rotation")
    if not isinstance(rotation, Mapping):
        return ["Rotation:      none (meshctl ca rotate starts one)"]
    phase = str(rotation.get("phase", "?"))
    started = f"started {when(rotation.get('startedAt'), now)} by {rotation.get('startedBy', '?')}"
    old, new = short_id(rotation.get("old")), short_id(rotation.get("new"))
    if phase == "distributing":
        lines = [
            f"Rotation:      distributing the new root ({started})",
            f"  Old root:    {old}: signs until every proxy holds the new root",
            f"  New root:    {new}: in the bundle; signs once every proxy holds it",
        ]
        total = lagging_total(status)
        digest = str(rotation.get("digest", ""))
        if total is None:
            lines.append(f"  Waiting for: the replicas to report on bundle {digest}")
        elif total:
            lines.append(
                f"  Waiting for: {total} prox{'y' if total == 1 else 'ies'} to get bundle {digest}"
            )
        else:
            lines.append(f"  Waiting for: nothing: every proxy holds bundle {digest}")
        reports = [r for r in _list(status.get("replicas")) if isinstance(r, Mapping)]
        lines.extend(_replica_line(r, digest, now) for r in reports)
        return lines
    if phase == "switched":
        return [
            f"Rotation:      switched to the new root at {when(rotation.get('switchedAt'), now)} "
            f"({started})",
            f"  Old root:    {old}: leaves the bundle at "
            f"{at_time(rotation.get('retireAfter'), now)}, once the last certificate it "
            "signed has expired",
            f"  New root:    {new}: signs every new certificate",
        ]
    return [f"Rotation:      phase {phase} ({started})"]


def ca_status_text(status: Item, now: float) -> str:
    """``meshctl ca status``: the trust bundle and the rotation in progress, if any."""
    bundle = status.get("bundle")
    bundle = bundle if isinstance(bundle, Mapping) else {}
    lines = [f"Trust domain:  {bundle.get('trustDomain', '-')}"]
    lines += bundle_lines(bundle, now)
    lines += rotation_lines(status, now)
    return "\n".join(lines) + "\n"


def rotation_event(status: Item | None, previous: Item | None) -> str:
    """The line ``ca rotate --wait`` prints when the phase changes (no time stamp)."""
    rotation = status.get("rotation") if status is not None else None
    before = previous.get("rotation") if previous is not None else None
    if not isinstance(rotation, Mapping) or (
        isinstance(before, Mapping) and rotation.get("new") != before.get("new")
    ):
        old = short_id(before.get("old")) if isinstance(before, Mapping) else "-"
        return f"finished: the old root {old} left the bundle"
    old, new = short_id(rotation.get("old")), short_id(rotation.get("new"))
    phase = rotation.get("phase")
    if phase == "distributing":
        total = lagging_total(status) if status is not None else None
        waiting = "waiting for the replicas to report" if total is None else _lacking(total)
        return f"distributing: new root {new} is in the bundle; {waiting}"
    if phase == "switched":
        retire = rotation.get("retireAfter")
        at = local_time(retire) if isinstance(retire, int | float) else "?"
        return (
            f"switched: every proxy holds the new root; {new} signs from now on; "
            f"the old root {old} leaves the bundle at {at}"
        )
    return f"{phase}: root {old} -> {new}"
