"""One function per meshctl subcommand: build the request, send it, render the answer.

Each takes a :class:`Context` (settings, client, output streams, the time) and the
parsed arguments, writes to ``ctx.out``/``ctx.err`` and returns the exit code; expected
failures are raised as :class:`meshd.ctl.errors.CtlError`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, TextIO

from meshd.ctl import output, trust
from meshd.ctl.client import YAML_CONTENT_TYPE, Client, path
from meshd.ctl.config import Settings
from meshd.ctl.errors import EXIT_FAILED, EXIT_OK, CtlError, ServerError, UsageError
from meshd.ctl.sources import Document, check_namespace, read_documents, yaml_body

DEFAULT_NAMESPACE = "default"
SERVICE_KINDS = frozenset({"services", "service", "svc"})
PROXY_KINDS = frozenset({"proxies", "proxy"})


def client_version() -> str:
    try:
        return metadata.version("meshd")
    except metadata.PackageNotFoundError:
        return "unknown (meshd is not installed)"


@dataclass
class Context:
    """What a command needs. ``settings`` and ``client`` are made on first use, so commands
    that need no server (``version --client``) never read the config."""

    make_settings: Callable[[], Settings]
    make_client: Callable[[Settings], Client]
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    stdin: TextIO = field(default_factory=lambda: sys.stdin)
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic
    _settings: Settings | None = None
    _client: Client | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = self.make_settings()
            for warning in self._settings.warnings:
                print(warning, file=self.err)
        return self._settings

    def use_settings(self, settings: Settings) -> None:
        """Replace the settings before the client is made (``ca trust --refresh``)."""
        assert self._client is None
        self._settings = settings

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = self.make_client(self.settings)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def write(self, text: str) -> None:
        self.out.write(text)

    def say(self, line: str) -> None:
        print(line, file=self.out)

    def note(self, line: str) -> None:
        print(line, file=self.err)


def _namespace(args: argparse.Namespace) -> str:
    return str(args.namespace or DEFAULT_NAMESPACE)


def _rule_kind(kind: str, command: str) -> str:
    low = kind.lower()
    if low in SERVICE_KINDS:
        raise UsageError(
            f"'{command}' works on rules; services come from the registry",
            "Hint: meshctl get services lists them",
        )
    if low in PROXY_KINDS:
        raise UsageError(
            f"'{command}' works on rules, not proxies",
            "Hint: meshctl proxy-status and meshctl proxy-config PROXY show proxies",
        )
    return kind


def _resource_path(kind: str, namespace: str, name: str, *rest: str) -> str:
    return path("v1", "resources", kind, namespace, name, *rest)


def _items(body: Any) -> list[Mapping[str, Any]]:
    items = body.get("items") if isinstance(body, Mapping) else None
    return [i for i in items if isinstance(i, Mapping)] if isinstance(items, list) else []


# --- apply / delete -------------------------------------------------------------------------


def cmd_apply(ctx: Context, args: argparse.Namespace) -> int:
    docs = read_documents(args.filename, recursive=args.recursive, stdin=ctx.stdin)
    check_namespace(docs, args.namespace)
    params = {"namespace": _namespace(args)}
    if args.dry_run:
        params["dry_run"] = "true"
    body = ctx.client.request(
        "POST",
        "/v1/apply",
        params=params,
        content=yaml_body(docs),
        content_type=YAML_CONTENT_TYPE,
    )
    dry = bool(body.get("dryRun", args.dry_run)) if isinstance(body, Mapping) else args.dry_run
    results = body.get("results", []) if isinstance(body, Mapping) else []
    for r in results:
        kind = output.type_name(str(r.get("kind", "")), str(r.get("apiVersion", "")))
        ctx.say(f"{kind}/{r.get('name', '')} {r.get('outcome', '')}{' (dry run)' if dry else ''}")
    return EXIT_OK


def cmd_delete(ctx: Context, args: argparse.Namespace) -> int:
    if args.filename:
        if args.kind or args.name:
            raise UsageError("give either KIND NAME or -f, not both")
        return _delete_files(ctx, args)
    if not args.kind or not args.name:
        raise UsageError(
            "delete needs KIND and NAME (e.g. meshctl delete virtualservice reviews) or -f FILE"
        )
    kind = _rule_kind(args.kind, "delete")
    try:
        body = ctx.client.request("DELETE", _resource_path(kind, _namespace(args), args.name))
    except ServerError as exc:
        if exc.status == 404 and args.ignore_not_found:
            return EXIT_OK
        raise
    deleted = body.get("deleted", {}) if isinstance(body, Mapping) else {}
    ctx.say(f"{output.resource_ref(deleted)} deleted")
    return EXIT_OK


def _delete_files(ctx: Context, args: argparse.Namespace) -> int:
    """Deletes the files' resources, last first (a VirtualService before the
    DestinationRule whose subsets it uses); one refused because another still needs it
    is retried after the others."""
    docs = read_documents(args.filename, recursive=args.recursive, stdin=ctx.stdin)
    check_namespace(docs, args.namespace)
    pending = list(reversed(list(enumerate(docs))))
    failures: dict[int, tuple[Document, ServerError]] = {}
    while pending:
        retry: list[tuple[int, Document]] = []
        deleted_any = False
        for index, doc in pending:
            ns = doc.namespace or _namespace(args)
            try:
                ctx.client.request("DELETE", _resource_path(doc.kind, ns, doc.name))
            except ServerError as exc:
                if exc.status == 404 and args.ignore_not_found:
                    continue
                failures[index] = (doc, exc)
                if exc.status == 409:
                    retry.append((index, doc))
                continue
            failures.pop(index, None)
            deleted_any = True
            ctx.say(f"{output.type_name(doc.kind, doc.api_version)}/{doc.name} deleted")
        pending = retry if deleted_any else []
    codes = set()
    for _index, (doc, failure) in sorted(failures.items()):
        ctx.note(f"{doc.where}: {doc.kind} {doc.name}:")
        for line in failure.lines():
            ctx.note(line)
        codes.add(failure.exit_code)
    if not codes:
        return EXIT_OK
    return EXIT_FAILED if EXIT_FAILED in codes else max(codes)


# --- get ------------------------------------------------------------------------------------


def cmd_get(ctx: Context, args: argparse.Namespace) -> int:
    kind = args.kind.lower()
    if args.name and args.all_namespaces:
        raise UsageError(
            "a name cannot be looked up across all namespaces; use -n NAMESPACE instead of -A"
        )
    if kind in PROXY_KINDS:
        return _proxy_status(ctx, args.name, args.output)
    if kind in SERVICE_KINDS:
        return _get_services(ctx, args)
    ns = _namespace(args)
    if args.name:
        item = ctx.client.get(_resource_path(args.kind, ns, args.name))
        if args.output == "json":
            ctx.write(output.to_json(item))
        elif args.output == "yaml":
            ctx.write(output.to_yaml(output.exportable(item)))
        elif args.output == "name":
            ctx.write(output.names([item]))
        else:
            ctx.write(output.resources_table([item], all_namespaces=False))
        return EXIT_OK
    params = None if args.all_namespaces else {"namespace": ns}
    body = ctx.client.get(path("v1", "resources", args.kind), params=params)
    items = _items(body)
    if args.output == "json":
        ctx.write(output.to_json(body))
    elif args.output == "yaml":
        ctx.write(output.resources_yaml(items))
    elif args.output == "name":
        ctx.write(output.names(items))
    elif items:
        ctx.write(output.resources_table(items, all_namespaces=args.all_namespaces))
    if not items and args.output in ("table", "yaml", "name"):
        where = "" if args.all_namespaces else f" in namespace {ns}"
        ctx.note(f"No {args.kind} found{where}.")
    return EXIT_OK


def _get_services(ctx: Context, args: argparse.Namespace) -> int:
    ns = _namespace(args)
    if args.name:
        body = ctx.client.get(path("v1", "services", args.name), params={"namespace": ns})
        items: list[Mapping[str, Any]] = [body] if isinstance(body, Mapping) else []
    else:
        params = None if args.all_namespaces else {"namespace": ns}
        body = ctx.client.get("/v1/services", params=params)
        items = _items(body)
    if args.output == "json":
        ctx.write(output.to_json(body))
    elif args.output == "yaml":
        ctx.write(output.to_yaml(body) if args.name else output.yaml_stream(items))
    elif args.output == "name":
        ctx.write("".join(f"service/{i.get('name', '')}\n" for i in items))
    elif items:
        ctx.write(output.services_table(items, all_namespaces=args.all_namespaces))
    if not items:
        where = "" if args.all_namespaces else f" in namespace {ns}"
        ctx.note(f"No services registered{where}.")
    return EXIT_OK


# --- describe / history / rollback ------------------------------------------------------------


def cmd_describe(ctx: Context, args: argparse.Namespace) -> int:
    kind = _rule_kind(args.kind, "describe")
    ns = _namespace(args)
    described = ctx.client.get(_resource_path(kind, ns, args.name, "describe"))
    history = ctx.client.get(_resource_path(kind, ns, args.name, "history"))
    resource = described.get("resource", {}) if isinstance(described, Mapping) else {}
    affects = described.get("affects", {}) if isinstance(described, Mapping) else {}
    proxies = [str(p) for p in affects.get("proxies", [])] if isinstance(affects, Mapping) else []
    ctx.write(output.describe_text(resource, _items(history), proxies, ctx.clock()))
    return EXIT_OK


def cmd_history(ctx: Context, args: argparse.Namespace) -> int:
    kind = _rule_kind(args.kind, "history")
    body = ctx.client.get(_resource_path(kind, _namespace(args), args.name, "history"))
    items = _items(body)
    fmt = args.output or ("yaml" if args.revision is not None else "table")
    if args.revision is not None:
        found = [r for r in items if r.get("revision") == args.revision]
        if not found:
            have = ", ".join(str(r.get("revision")) for r in items) or "none"
            raise CtlError(
                f"{args.kind} {_namespace(args)}/{args.name} has no revision {args.revision} "
                f"(revisions: {have})",
                exit_code=3,
            )
        rev = found[0]
        if fmt == "table":
            ctx.write(output.history_table([rev], ctx.clock()))
            return EXIT_OK
        resource = rev.get("resource")
        if resource is None:
            raise CtlError(
                f"revision {args.revision} of {args.kind} {_namespace(args)}/{args.name} records "
                "its deletion; it has no body",
                "Hint: meshctl history lists the revisions; pick one before the delete",
            )
        ctx.write(output.to_json(resource) if fmt == "json" else output.to_yaml(resource))
        return EXIT_OK
    if fmt == "json":
        ctx.write(output.to_json(body))
    elif fmt == "yaml":
        ctx.write(output.to_yaml(items))
    else:
        ctx.write(output.history_table(items, ctx.clock()))
    return EXIT_OK


def cmd_rollback(ctx: Context, args: argparse.Namespace) -> int:
    kind = _rule_kind(args.kind, "rollback")
    report = ctx.client.request(
        "POST",
        _resource_path(kind, _namespace(args), args.name, "rollback"),
        json_body={"revision": args.to_revision},
    )
    report = report if isinstance(report, Mapping) else {}
    kind_name = output.type_name(str(report.get("kind", kind)), str(report.get("apiVersion", "")))
    ref = f"{kind_name}/{args.name}"
    if report.get("outcome") == "unchanged":
        ctx.say(f"{ref} unchanged: it already matches revision {args.to_revision}")
    else:
        now = report.get("revision")
        ctx.say(f"{ref} rolled back to revision {args.to_revision} (now revision {now})")
    return EXIT_OK


# --- proxies ----------------------------------------------------------------------------------


def _proxy_status(ctx: Context, proxy: str | None, fmt: str) -> int:
    if proxy:
        body = ctx.client.get(path("v1", "proxies", proxy))
        items: list[Mapping[str, Any]] = [body] if isinstance(body, Mapping) else []
    else:
        body = ctx.client.get("/v1/proxies")
        items = _items(body)
    if fmt == "json":
        ctx.write(output.to_json(body))
    elif fmt == "yaml":
        ctx.write(output.to_yaml(body))
    elif fmt == "name":
        ctx.write("".join(f"proxy/{p.get('proxy', '')}\n" for p in items))
    else:
        ctx.write(output.proxies_table(items, ctx.clock()))
        notes = output.proxy_notes(items)
        if notes:
            ctx.write("\n" + "".join(n + "\n" for n in notes))
    return EXIT_OK


def cmd_proxy_status(ctx: Context, args: argparse.Namespace) -> int:
    return _proxy_status(ctx, args.proxy, args.output)


def cmd_proxy_config(ctx: Context, args: argparse.Namespace) -> int:
    config = ctx.client.get(path("v1", "proxies", args.proxy, "config"))
    if args.output == "json":
        ctx.write(output.to_json(config))
    elif args.output == "yaml":
        ctx.write(output.to_yaml(config))
    else:
        ctx.write(output.proxy_summary(config if isinstance(config, Mapping) else {}))
    return EXIT_OK


# --- admin tokens -------------------------------------------------------------------------------


def cmd_admin_token_create(ctx: Context, args: argparse.Namespace) -> int:
    record = ctx.client.request(
        "POST", "/v1/admin-tokens", json_body={"name": args.name, "role": args.role}
    )
    record = record if isinstance(record, Mapping) else {}
    if args.output == "json":
        ctx.write(output.to_json(record))
    elif args.output == "yaml":
        ctx.write(output.to_yaml(dict(record)))
    else:
        ctx.say(str(record.get("token", "")))
        ctx.note(
            f"created admin token {record.get('name')!r} (id {record.get('id')}, role "
            f"{record.get('role')}). It is shown only now: store it somewhere safe."
        )
    return EXIT_OK


def cmd_admin_token_list(ctx: Context, args: argparse.Namespace) -> int:
    body = ctx.client.get("/v1/admin-tokens")
    if args.output == "json":
        ctx.write(output.to_json(body))
    elif args.output == "yaml":
        ctx.write(output.to_yaml(_items(body)))
    else:
        ctx.write(output.tokens_table(_items(body), ctx.clock()))
    return EXIT_OK


def cmd_admin_token_revoke(ctx: Context, args: argparse.Namespace) -> int:
    ctx.client.request("DELETE", path("v1", "admin-tokens", args.id))
    ctx.say(f"admin token {args.id} revoked")
    ctx.note("(a server may accept it for a few more seconds while its cache expires)")
    return EXIT_OK


# --- join tokens --------------------------------------------------------------------------------


def cmd_token_create(ctx: Context, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "service": args.service,
        "namespace": _namespace(args),
        "ttl": args.ttl,
        "uses": "multi" if args.multi_use else "single",
    }
    if args.service_account:
        body["serviceAccount"] = args.service_account
    record = ctx.client.request("POST", "/v1/tokens", json_body=body)
    record = record if isinstance(record, Mapping) else {}
    if args.output == "json":
        ctx.write(output.to_json(record))
        return EXIT_OK
    if args.output == "yaml":
        ctx.write(output.to_yaml(dict(record)))
        return EXIT_OK
    ctx.say(str(record.get("token", "")))
    now = ctx.clock()
    uses = "multi-use" if record.get("uses") == "multi" else "single-use"
    service, namespace = record.get("service", args.service), record.get("namespace", "")
    ctx.note(
        f"created join token {record.get('id')} for {record.get('spiffeId')} (service "
        f"{service}, namespace {namespace}): {uses}, expires "
        f"{output.at_time(record.get('expires_at'), now)}. It is shown only now."
    )
    ctx.note(
        f"Give it to the sidecar: mesh-sidecar run --service {service} --namespace {namespace} "
        '--token "$TOKEN" ...'
    )
    return EXIT_OK


def cmd_token_list(ctx: Context, args: argparse.Namespace) -> int:
    body = ctx.client.get("/v1/tokens")
    items = _items(body)
    if args.output == "json":
        ctx.write(output.to_json(body))
    elif args.output == "yaml":
        ctx.write(output.to_yaml(items))
    else:
        ctx.write(output.join_tokens_table(items, ctx.clock()))
        if not items:
            ctx.note("No join tokens. meshctl token create --service S makes one.")
    return EXIT_OK


def cmd_token_revoke(ctx: Context, args: argparse.Namespace) -> int:
    ctx.client.request("DELETE", path("v1", "tokens", args.id))
    ctx.say(f"join token {args.id} revoked")
    ctx.note("(certificates already issued with it stay valid until they expire)")
    return EXIT_OK


# --- certificates and the CA ---------------------------------------------------------------------


def cmd_certs(ctx: Context, args: argparse.Namespace) -> int:
    body = ctx.client.get("/v1/certs")
    body = body if isinstance(body, Mapping) else {}
    if args.output == "json":
        ctx.write(output.to_json(body))
    elif args.output == "yaml":
        ctx.write(output.to_yaml(dict(body)))
    else:
        now = ctx.clock()
        ctx.write(output.certs_table(body, now))
        notes = output.certs_notes(body, now)
        if notes:
            ctx.write("\n" + "".join(n + "\n" for n in notes))
        if not _items(body):
            ctx.note("No certificates issued yet: sidecars get theirs with a join token.")
    return EXIT_OK


def _write_status(ctx: Context, status: Any, fmt: str) -> None:
    status = status if isinstance(status, Mapping) else {}
    if fmt == "json":
        ctx.write(output.to_json(status))
    elif fmt == "yaml":
        ctx.write(output.to_yaml(dict(status)))
    else:
        ctx.write(output.ca_status_text(status, ctx.clock()))


def cmd_ca_status(ctx: Context, args: argparse.Namespace) -> int:
    _write_status(ctx, ctx.client.get("/v1/ca/rotation"), args.output)
    return EXIT_OK


POLL_S = 1.0


def cmd_ca_rotate(ctx: Context, args: argparse.Namespace) -> int:
    status = ctx.client.request("POST", "/v1/ca/rotate")
    status = status if isinstance(status, Mapping) else {}
    _write_status(ctx, status, args.output)
    if not args.wait:
        ctx.note(
            "The rotation goes on in meshd: meshctl ca status follows it "
            "(or meshctl ca rotate --wait, next time)."
        )
        return EXIT_OK
    return _follow_rotation(ctx, status, args.timeout)


def _follow_rotation(ctx: Context, status: Mapping[str, Any], timeout: float | None) -> int:
    """Poll every second; a line per phase change; done when the rotation is gone."""
    rotation = status.get("rotation")
    if not isinstance(rotation, Mapping):
        raise CtlError("meshd answered without a rotation in progress; nothing to wait for")
    mine = rotation.get("new")
    deadline = None if timeout is None else ctx.monotonic() + timeout
    limit = "" if timeout is None else f" (at most {timeout:g}s)"
    ctx.note(f"Waiting for the rotation to finish{limit}; Ctrl-C stops waiting, not the rotation.")
    bundle_digest = _bundle_digest(status)
    previous: Mapping[str, Any] = status
    while True:
        if deadline is not None and ctx.monotonic() >= deadline:
            current = previous.get("rotation")
            phase = current.get("phase") if isinstance(current, Mapping) else "?"
            raise CtlError(
                f"the root rotation did not finish within {timeout:g}s; it is in phase {phase} "
                "and goes on in meshd",
                "Hint: meshctl ca status shows where it is; the old root leaves the bundle only "
                "after the last certificate it signed has expired (the certificate lifetime)",
            )
        ctx.sleep(POLL_S)
        body = ctx.client.get("/v1/ca/rotation")
        current_status: Mapping[str, Any] = body if isinstance(body, Mapping) else {}
        digest = _bundle_digest(current_status)
        if digest and digest != bundle_digest:
            # Authenticated by the roots already trusted: keep verifying meshd's
            # certificate when it is reissued by the new root.
            bundle = current_status.get("bundle")
            roots = output.bundle_roots(bundle) if isinstance(bundle, Mapping) else []
            ctx.client.trust_more("".join(str(r.get("pem", "")) for r in roots))
            bundle_digest = digest
        rotation = current_status.get("rotation")
        before = previous.get("rotation")
        if isinstance(rotation, Mapping) and rotation.get("new") == mine:
            finished = False
            changed = isinstance(before, Mapping) and rotation.get("phase") != before.get("phase")
        else:
            finished = changed = True
        if changed:
            line = output.rotation_event(current_status, previous)
            ctx.say(f"{output.local_time(ctx.clock())} {line}")
        previous = current_status
        if finished:
            break
    ctx.note(
        "Clients that pinned the old bundle must re-pin (meshctl ca trust --refresh), and "
        f"copies of {trust.BUNDLE_FILE} must be copied again."
    )
    return EXIT_OK


def _bundle_digest(status: Mapping[str, Any]) -> str:
    bundle = status.get("bundle")
    return str(bundle.get("digest") or "") if isinstance(bundle, Mapping) else ""


def cmd_ca_trust(ctx: Context, args: argparse.Namespace) -> int:
    settings = ctx.settings
    if not settings.https or settings.pin_file is None:
        raise UsageError(
            f"{settings.server} is plain http: there is no certificate to verify, nothing to pin",
            "Hint: meshd serves HTTPS: use https://",
        )
    pin = settings.pin_file
    old: trust.Bundle | None = None
    if pin.is_file():
        try:
            old = trust.read_bundle_file(pin)
        except CtlError:
            old = None
    if args.refresh and settings.trust == "pinned":
        settings = dataclasses.replace(settings, trust="first-use", ca_file=None, ca_source="")
        ctx.use_settings(settings)
    if settings.trust == "first-use":
        bundle = ctx.client.trust_first_use()
        how = (
            "trusted on first use: compare these fingerprints with what `openssl x509 -noout "
            f"-fingerprint -sha256 -in <data-dir>/{trust.BUNDLE_FILE}` prints on the meshd host"
        )
    else:
        body = ctx.client.get(trust.ROOTS_PATH, auth=False)
        bundle = trust.parse_bundle(body, f"the answer of {settings.server}{trust.ROOTS_PATH}")
        how = f"verified with {settings.ca_file}{settings.trust_source}"
    if old is not None and set(old.fingerprints) == set(bundle.fingerprints):
        verb = "is already pinned"
    else:
        trust.write_pin(pin, bundle.pem)
        verb = "pinned" if old is None else "re-pinned"
    ctx.say(f"CA bundle of {settings.server} {verb} in {pin}")
    ctx.say(f"  {how}")
    for root in bundle.roots:
        signing = ", signing" if root.signing else ""
        not_after = output.iso_seconds(root.not_after)
        until = f", not after {output.local_time(not_after)}" if not_after else ""
        ctx.say(f"  root SHA-256 {root.fingerprint}{signing}{until}")
    if old is not None:
        for fp in old.fingerprints:
            if fp not in bundle.fingerprints:
                ctx.say(f"  removed: root SHA-256 {fp}")
    return EXIT_OK


# --- version ------------------------------------------------------------------------------------


def cmd_version(ctx: Context, args: argparse.Namespace) -> int:
    ctx.say(f"Client: meshctl {client_version()}")
    if args.client:
        return EXIT_OK
    server = ctx.settings.server
    health_status, health = ctx.client.probe("/healthz")
    ready_status, ready = ctx.client.probe("/readyz")
    ctx.say(f"Server: {server}")
    healthy = health.get("status", "?") if isinstance(health, Mapping) else "?"
    ctx.say(f"  healthz: {healthy if health_status == 200 else f'HTTP {health_status}'}")
    ready = ready if isinstance(ready, Mapping) else {}
    line = f"  readyz:  {ready.get('status', f'HTTP {ready_status}')}"
    details = []
    if ready.get("store"):
        details.append(f"store {ready['store']}")
    last = ready.get("lastCompile")
    if isinstance(last, Mapping):
        details.append(
            f"last compile {output.ago(last.get('at'), ctx.clock())}: "
            f"{last.get('proxies')} proxies, "
            f"{last.get('proxiesWithErrors')} with errors, {last.get('durationMs')} ms"
        )
    ctx.say(line + (f" ({'; '.join(details)})" if details else ""))
    return EXIT_OK if health_status == 200 and ready_status == 200 else EXIT_FAILED
