"""``meshctl``: argparse entry point. The ``--help`` of every command is its documentation."""

from __future__ import annotations

import argparse
import os
import re
import sys
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

import httpx

from meshd.ctl import commands
from meshd.ctl.client import DEFAULT_TIMEOUT_S, Client
from meshd.ctl.config import DEFAULT_SERVER, Flags, resolve
from meshd.ctl.errors import EXIT_FAILED, EXIT_USAGE, CtlError

Handler = Callable[[commands.Context, argparse.Namespace], int]

EXIT_CODES = """\
exit codes:
  0  success
  1  the request failed: meshd refused it (invalid resource, conflict, 401/403) or
     could not be reached, or failed itself
  2  usage error: bad arguments, an unreadable or invalid file, no token (nothing sent)
  3  not found: the resource, revision, proxy, service or token does not exist
"""

ENVIRONMENT = f"""\
connection (flag > environment > config file > default):
  --server / MESHD_ADDR / server:     meshd's URL (default {DEFAULT_SERVER})
  --token / MESHD_TOKEN / token:      bearer token (admin, editor or viewer role)
  --ca-file / MESHD_CA_FILE / caFile: the CA bundle that verifies meshd's certificate
  --config / MESHD_CONFIG:            the config file (default ~/.config/meshd/config.yaml)
  --data-dir / MESHD_DATA_DIR:        on the meshd host, trust DIR/ca-bundle.pem, and use
                                      DIR/admin.token when no token is given (loopback
                                      servers only)
  A token is never sent over plain http:// to a host other than loopback.

trusting meshd's certificate (it is issued by the mesh's own CA), first found wins:
  1. --ca-file / MESHD_CA_FILE / caFile
  2. DIR/ca-bundle.pem of --data-dir / MESHD_DATA_DIR, if it exists (meshd writes it)
  3. the bundle pinned for the server: ~/.config/meshd/pinned/HOST_PORT.pem
  4. trust on first use: meshctl fetches the bundle (without the token), verifies the
     server with it, pins it and prints its fingerprints to compare with the meshd
     host's. A pinned bundle that stops verifying is an error, never re-pinned
     silently: meshctl ca trust --refresh re-pins deliberately.
"""

MAIN_EPILOG = f"""\
examples:
  meshctl apply -f reviews.yaml               create or update the resources in a file
  meshctl get virtualservices -A              list VirtualServices in every namespace
  meshctl get vs reviews -o yaml              one resource, ready to edit and re-apply
  meshctl describe vs reviews                 what it says and which proxies it affects
  meshctl history vs reviews                  its revisions; rollback undoes one
  meshctl proxy-status                        is every sidecar running the latest config?
  meshctl token create --service reviews      a join token for the sidecars of reviews
  meshctl certs                               every proxy's certificate and its expiry
  meshctl ca status                           the trust bundle and any root rotation

{ENVIRONMENT}
{EXIT_CODES}"""

KIND_HELP = (
    "resource kind, in any spelling meshd accepts: VirtualService, virtualservices, vs, "
    "DestinationRule, dr, ServiceEntry, se, Sidecar, PeerAuthentication, pa, "
    "AuthorizationPolicy, ap, RequestAuthentication, ra, ..."
)


def _examples(text: str) -> str:
    return (
        "examples:\n"
        + textwrap.indent(textwrap.dedent(text).strip("\n"), "  ")
        + "\n\n"
        + EXIT_CODES
    )


def _paragraphs(text: str) -> str:
    """Fill each paragraph (RawDescriptionHelpFormatter keeps the examples' layout, so
    the prose is wrapped here)."""
    return "\n\n".join(textwrap.fill(p, 79) for p in text.split("\n\n"))


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The connection options, accepted before and after the command. On subcommands their
    default is SUPPRESS, so a value given before the command is not overwritten."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("connection options (also accepted before the command)")
    group.add_argument(
        "-s",
        "--server",
        metavar="URL",
        default=default(None),
        help=f"meshd's URL [env MESHD_ADDR; default {DEFAULT_SERVER}]",
    )
    group.add_argument(
        "--token",
        metavar="TOKEN",
        default=default(None),
        help="bearer token [env MESHD_TOKEN]",
    )
    group.add_argument(
        "--ca-file",
        metavar="PATH",
        default=default(None),
        help="PEM bundle of the CA roots that verify meshd's certificate (its "
        "<data-dir>/ca-bundle.pem) [env MESHD_CA_FILE]",
    )
    group.add_argument(
        "--config",
        metavar="PATH",
        default=default(None),
        help="config file with server, token, caFile [env MESHD_CONFIG; "
        "default ~/.config/meshd/config.yaml]",
    )
    group.add_argument(
        "--data-dir",
        metavar="DIR",
        default=default(None),
        help="meshd's data dir: trust DIR/ca-bundle.pem and, without a token, use "
        "DIR/admin.token (loopback only) [env MESHD_DATA_DIR]",
    )
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_float,
        default=default(None),
        help=f"give up on a request after this long (default {DEFAULT_TIMEOUT_S:g}); for "
        "ca rotate --wait, on the whole wait (default: no limit)",
    )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


_DURATION = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+")


def _duration(text: str) -> str:
    """A Go/Istio duration (``1h``, ``30m``, ``1h30m``), kept as written for meshd."""
    if not _DURATION.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: use a number with a unit, e.g. 30m, 1h, 24h, 1h30m"
        )
    return text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a revision number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("revisions count from 1")
    return value


class _Commands:
    """Adds subcommands with the shared formatting and global options."""

    def __init__(self, sub: Any) -> None:
        self._sub = sub

    def add(
        self, name: str, handler: Handler | None, *, help: str, description: str, examples: str
    ) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self._sub.add_parser(
            name,
            help=help,
            description=_paragraphs(description),
            epilog=_examples(examples),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if handler is not None:
            parser.set_defaults(handler=handler)
            _global_options(parser, suppress=True)
        return parser


def _namespace_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "-n", "--namespace", metavar="NS", default=None, help=f"{what} (default: default)"
    )


def _output_option(
    parser: argparse.ArgumentParser,
    *choices: str,
    default: str | None = "",
    help: str = "",
) -> None:
    """``-o/--output`` with CHOICES; the first is the default unless ``default`` says."""
    chosen = choices[0] if default == "" else default
    parser.add_argument(
        "-o",
        "--output",
        choices=list(choices),
        default=chosen,
        help=help or f"output format (default {choices[0]})",
    )


def _file_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "-f",
        "--filename",
        metavar="PATH",
        action="append",
        required=required,
        default=[],
        help="a YAML or JSON file, a directory (its *.yaml, *.yml, *.json files, sorted), "
        "or - for stdin; repeatable",
    )
    parser.add_argument(
        "-R",
        "--recursive",
        action="store_true",
        help="also read the subdirectories of -f directories",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshctl",
        description=(
            "meshctl — manage meshd's rules, proxies, tokens and certificates through its REST API."
        ),
        epilog=MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"meshctl {commands.client_version()}"
    )
    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    cmds = _Commands(sub)

    p = cmds.add(
        "apply",
        commands.cmd_apply,
        help="create or update resources from files",
        description=(
            "Create or update every resource in the given files in one request, so meshd "
            "validates them together (a VirtualService and the DestinationRule whose subsets "
            "it routes to can arrive at once). Nothing is applied if any resource is invalid. "
            "Prints one line per resource: created, configured or unchanged."
        ),
        examples="""
            meshctl apply -f reviews-destination-rule.yaml -f reviews-virtual-service.yaml
            meshctl apply -f rules/                 # every *.yaml, *.yml, *.json in rules/
            meshctl apply -f rules/ -R              # and in its subdirectories
            meshctl get vs -A -o yaml | meshctl apply -f -
            meshctl apply -f canary.yaml --dry-run  # validate only; nothing is stored
            meshctl apply -f rules.yaml -n staging  # resources that name no namespace go to staging
        """,
    )
    _file_options(p, required=True)
    _namespace_option(p, "namespace of resources that name none; others must match it")
    p.add_argument("--dry-run", action="store_true", help="validate and report, store nothing")

    p = cmds.add(
        "get",
        commands.cmd_get,
        help="list resources, services or proxies, or show one",
        description=(
            "List the resources of a kind, or show one by name. Besides the rule kinds, "
            "'services' (svc) lists the registry and 'proxies' is proxy-status.\n\n"
            "Output: table (default), yaml (re-appliable documents, without "
            "metadata.resourceVersion), json (the server's JSON, with resourceVersion = the "
            "revision), name (kind.group/name, one a line)."
        ),
        examples="""
            meshctl get virtualservices             # in namespace default
            meshctl get vs -n bookinfo
            meshctl get destinationrules -A         # every namespace
            meshctl get vs reviews -o yaml > reviews.yaml
            meshctl get ap -A -o yaml > backup.yaml # re-apply later with apply -f
            meshctl get services -A
            meshctl get proxies
        """,
    )
    p.add_argument("kind", metavar="KIND", help=KIND_HELP + "; or services (svc), proxies")
    p.add_argument("name", metavar="NAME", nargs="?", help="one resource (default: all)")
    _namespace_option(p, "namespace to look in")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="list every namespace")
    _output_option(p, "table", "yaml", "json", "name")

    p = cmds.add(
        "delete",
        commands.cmd_delete,
        help="delete resources by name or from files",
        description=(
            "Delete one resource, or every resource in files. meshd refuses a delete that "
            "would break another resource (e.g. a DestinationRule whose subsets a "
            "VirtualService still uses); with -f the resources are deleted last first, and "
            "one refused for that reason is retried after the others. The history is kept: "
            "rollback can bring a deleted resource back."
        ),
        examples="""
            meshctl delete virtualservice reviews
            meshctl delete dr reviews -n bookinfo
            meshctl delete -f reviews.yaml
            meshctl delete vs reviews --ignore-not-found
        """,
    )
    p.add_argument("kind", metavar="KIND", nargs="?", help=KIND_HELP)
    p.add_argument("name", metavar="NAME", nargs="?", help="the resource to delete")
    _file_options(p, required=False)
    _namespace_option(p, "namespace of the resource")
    p.add_argument(
        "--ignore-not-found", action="store_true", help="a missing resource is not an error"
    )

    p = cmds.add(
        "describe",
        commands.cmd_describe,
        help="show a resource, its latest revisions and the proxies it affects",
        description=(
            "Show one resource, its latest revisions, and 'Affects: N proxies': the sidecars "
            "whose configuration it shapes (as of meshd's latest compile)."
        ),
        examples="""
            meshctl describe virtualservice reviews
            meshctl describe ap allow-frontend -n shop
        """,
    )
    p.add_argument("kind", metavar="KIND", help=KIND_HELP)
    p.add_argument("name", metavar="NAME")
    _namespace_option(p, "namespace of the resource")

    p = cmds.add(
        "history",
        commands.cmd_history,
        help="list a resource's revisions, or print one",
        description=(
            "List the revisions of a resource (kept across deletes): REVISION, OPERATION "
            "(create, update, delete, rollback), ACTOR (the token's name) and WHEN (local time). "
            "With --revision, print that revision's body (YAML by default)."
        ),
        examples="""
            meshctl history virtualservice reviews
            meshctl history vs reviews --revision 2 -o yaml > reviews-rev2.yaml
            meshctl history vs reviews -o json
        """,
    )
    p.add_argument("kind", metavar="KIND", help=KIND_HELP)
    p.add_argument("name", metavar="NAME")
    _namespace_option(p, "namespace of the resource")
    p.add_argument("--revision", metavar="N", type=_positive_int, help="print revision N")
    _output_option(
        p,
        "table",
        "yaml",
        "json",
        default=None,
        help="output format (default: table; yaml with --revision)",
    )

    p = cmds.add(
        "rollback",
        commands.cmd_rollback,
        help="restore a resource to an earlier revision",
        description=(
            "Store the body of an earlier revision as a new revision (validated like an apply). "
            "Works for a deleted resource too: roll back to a revision before the delete."
        ),
        examples="""
            meshctl history vs reviews
            meshctl rollback vs reviews --to-revision 2
        """,
    )
    p.add_argument("kind", metavar="KIND", help=KIND_HELP)
    p.add_argument("name", metavar="NAME")
    _namespace_option(p, "namespace of the resource")
    p.add_argument(
        "--to-revision",
        metavar="N",
        type=_positive_int,
        required=True,
        help="the revision to restore",
    )

    p = cmds.add(
        "proxy-status",
        commands.cmd_proxy_status,
        help="is every sidecar running its latest config?",
        description=(
            "One line per sidecar, like istioctl proxy-status. STATE: SYNCED (it runs the "
            "latest config), STALE (sent, not yet acknowledged), NOT SENT (newer config waits "
            "for its next poll), NACKED (it rejected the latest config and keeps its last good "
            "one), ERROR (its config failed to compile), PENDING (no config yet). VERSION is "
            "the latest config's version, ACKED the one it acknowledged. NACK reasons and "
            "compile errors are printed under the table."
        ),
        examples="""
            meshctl proxy-status
            meshctl proxy-status reviews-1.default
            meshctl proxy-status -o json
        """,
    )
    p.add_argument("proxy", metavar="PROXY", nargs="?", help="one proxy id (default: all)")
    _output_option(p, "table", "yaml", "json", "name")

    p = cmds.add(
        "proxy-config",
        commands.cmd_proxy_config,
        help="show the configuration meshd computed for one sidecar",
        description=(
            "The configuration snapshot meshd pushes to one sidecar. summary (default): its "
            "inbound listener, outbound virtual hosts with their routes, TCP listeners, and "
            "clusters with their endpoint counts; json/yaml: the whole snapshot."
        ),
        examples="""
            meshctl proxy-config productpage-1.default
            meshctl proxy-config reviews-1.default -o json | jq '.outbound.clusters[].name'
        """,
    )
    p.add_argument("proxy", metavar="PROXY", help="proxy id, as proxy-status lists it")
    _output_option(p, "summary", "json", "yaml")

    p = cmds.add(
        "admin-token",
        None,
        help="create, list and revoke admin API tokens (admin role)",
        description=(
            "Bearer tokens for meshctl and the REST API. Roles: viewer (read), editor (also "
            "write rules), admin (also manage tokens). meshd stores only a hash; a new token "
            "is shown once."
        ),
        examples="""
            meshctl admin-token create --name ci --role editor
            meshctl admin-token list
            meshctl admin-token revoke 3f9a0c1d2b4e5f60
        """,
    )
    tokens = _Commands(
        p.add_subparsers(dest="token_command", metavar="ACTION", title="actions", required=True)
    )
    q = tokens.add(
        "create",
        commands.cmd_admin_token_create,
        help="create a token; prints it once",
        description=(
            "Create a token and print it on stdout (the details go to stderr), so it can be "
            "captured: TOKEN=$(meshctl admin-token create --name ci --role viewer)"
        ),
        examples="""
            meshctl admin-token create --name alice --role admin
            TOKEN=$(meshctl admin-token create --name ci --role editor)
            meshctl admin-token create --name grafana --role viewer -o json
        """,
    )
    q.add_argument(
        "--name", required=True, help="who or what uses it (recorded as the actor of its changes)"
    )
    q.add_argument(
        "--role", choices=["viewer", "editor", "admin"], default="viewer", help="default viewer"
    )
    _output_option(
        q,
        "token",
        "json",
        "yaml",
        help="token (default): just the token; json/yaml: the whole record",
    )
    q = tokens.add(
        "list",
        commands.cmd_admin_token_list,
        help="list tokens (never their secret)",
        description="List every admin token: ID, NAME, ROLE, CREATED, CREATED BY.",
        examples="""
            meshctl admin-token list
            meshctl admin-token list -o json
        """,
    )
    _output_option(q, "table", "json", "yaml")
    q = tokens.add(
        "revoke",
        commands.cmd_admin_token_revoke,
        help="revoke a token by id",
        description="Revoke a token; requests with it fail from then on (within a few seconds).",
        examples="""
            meshctl admin-token list
            meshctl admin-token revoke 3f9a0c1d2b4e5f60
        """,
    )
    q.add_argument("id", metavar="ID", help="the token's id, from admin-token list")

    _identity_commands(cmds)

    p = cmds.add(
        "version",
        commands.cmd_version,
        help="client version and the server's health",
        description=(
            "Print meshctl's version, then meshd's /healthz and /readyz (no token needed). "
            "Exits 1 unless the server is healthy and ready, so scripts can wait on it."
        ),
        examples="""
            meshctl version
            meshctl version --client
            until meshctl version >/dev/null 2>&1; do sleep 1; done
        """,
    )
    p.add_argument(
        "--client", action="store_true", help="only the client's version; contact no server"
    )
    return parser


def _identity_commands(cmds: _Commands) -> None:
    """``token`` (join tokens), ``certs`` and ``ca``."""
    p = cmds.add(
        "token",
        None,
        help="create, list and revoke join tokens (a sidecar's first certificate)",
        description=(
            "A join token lets the instances of one service get their first workload "
            "certificate: it is scoped to one identity (spiffe://<trust-domain>/ns/<namespace>/"
            "sa/<service-account>), expires (default after 1h), is single-use unless "
            "--multi-use, and can be revoked. Renewals need no token: a sidecar renews with "
            "its current certificate. meshd stores only a hash; a new token is shown once. "
            "Needs the editor role."
        ),
        examples="""
            meshctl token create --service reviews --namespace bookinfo
            TOKEN=$(meshctl token create --service reviews --namespace bookinfo)
            meshctl token list
            meshctl token revoke 3f9a0c1d2b4e5f60
        """,
    )
    tokens = _Commands(
        p.add_subparsers(dest="token_command", metavar="ACTION", title="actions", required=True)
    )
    q = tokens.add(
        "create",
        commands.cmd_token_create,
        help="create a join token; prints it once",
        description=(
            "Create a join token for the instances of one service and print it on stdout, "
            "alone, so it can be captured: TOKEN=$(meshctl token create --service reviews). "
            "Its id, identity, expiry and whether it is single- or multi-use go to stderr. "
            "A single-use token yields one certificate; a --multi-use one serves every "
            "instance started before it expires (autoscaling, restarts)."
        ),
        examples="""
            meshctl token create --service reviews      # prints the token, details on stderr
            TOKEN=$(meshctl token create --service reviews)
            mesh-sidecar run --service reviews --token "$TOKEN" --app-port 9080
            meshctl token create --service reviews -n bookinfo --ttl 30m
            meshctl token create --service reviews --multi-use --ttl 24h
            meshctl token create --service reviews --service-account bookinfo-reviews
            meshctl token create --service ratings -o json
        """,
    )
    q.add_argument("--service", required=True, metavar="SERVICE", help="the service it is for")
    _namespace_option(q, "the service's namespace")
    q.add_argument(
        "--service-account",
        metavar="SA",
        default=None,
        help="the identity's service account (default: the service name)",
    )
    q.add_argument(
        "--ttl",
        type=_duration,
        default="1h",
        metavar="DURATION",
        help="how long the token can be used, e.g. 30m, 24h (default 1h, at most 720h)",
    )
    q.add_argument(
        "--multi-use",
        action="store_true",
        help="usable by any number of instances until it expires (default: single-use)",
    )
    _output_option(
        q,
        "token",
        "json",
        "yaml",
        help="token (default): just the token; json/yaml: the whole record, token included",
    )
    q = tokens.add(
        "list",
        commands.cmd_token_list,
        help="list join tokens (never their secret)",
        description=(
            "List every join token: ID, SERVICE, NAMESPACE, IDENTITY (the SPIFFE ID its "
            "certificates get), USES (single or multi), USED (whether a single-use token has "
            "been redeemed; - for multi-use), EXPIRES (relative) and CREATED BY."
        ),
        examples="""
            meshctl token list
            meshctl token list -o json
        """,
    )
    _output_option(q, "table", "json", "yaml")
    q = tokens.add(
        "revoke",
        commands.cmd_token_revoke,
        help="revoke a join token by id",
        description=(
            "Revoke a join token: no certificate is issued with it from then on. Certificates "
            "already issued with it stay valid until they expire."
        ),
        examples="""
            meshctl token list
            meshctl token revoke 3f9a0c1d2b4e5f60
        """,
    )
    q.add_argument("id", metavar="ID", help="the token's id, from token list")

    p = cmds.add(
        "certs",
        commands.cmd_certs,
        help="every proxy's certificate: identity, issuing root, expiry",
        description=(
            "The newest workload certificate of every proxy. ROOT is the root it chains to "
            "(short id), marked (signing) when it is the root that signs new certificates and "
            "(untrusted!) when it has left the trust bundle, so peers reject the certificate. "
            "SERIAL is shortened. EXPIRES is relative, flagged (<1h) when near and EXPIRED "
            "once past; sidecars renew at half-life. VIA: join-token (first certificate) or "
            "renewal. Needs the viewer role."
        ),
        examples="""
            meshctl certs
            meshctl certs -o json | jq '.items[] | select(.expiresIn < 3600) | .proxy'
            meshctl certs -o yaml
        """,
    )
    _output_option(p, "table", "json", "yaml")

    p = cmds.add(
        "ca",
        None,
        help="the mesh CA: its trust bundle, root rotation, and trusting meshd",
        description=(
            "The trust bundle holds every root a peer may chain to; one of them signs new "
            "certificates. A root rotation adds a new root to the bundle, switches signing to "
            "it once every proxy holds it, and removes the old root once the last certificate "
            "it signed has expired, so no handshake fails on the way."
        ),
        examples="""
            meshctl ca status
            meshctl ca rotate --wait
            meshctl ca trust
            meshctl ca trust --refresh
        """,
    )
    ca = _Commands(
        p.add_subparsers(dest="ca_command", metavar="ACTION", title="actions", required=True)
    )
    q = ca.add(
        "status",
        commands.cmd_ca_status,
        help="the trust bundle and the root rotation in progress, if any",
        description=(
            "The trust bundle (each root's short id, whether it signs, when it expires) and, "
            "while a root rotation runs, its phase, when and by whom it was started, how many "
            "proxies on each meshd replica still lack the new bundle (with examples), and "
            "when the old root will leave the bundle. Needs the viewer role."
        ),
        examples="""
            meshctl ca status
            meshctl ca status -o json | jq .rotation.phase
        """,
    )
    _output_option(q, "text", "json", "yaml")
    q = ca.add(
        "rotate",
        commands.cmd_ca_rotate,
        help="start a root rotation (admin role)",
        description=(
            "Start a root rotation and print its status. Phases: distributing (the new root "
            "is in the bundle; signing switches once every proxy holds it), switched (the new "
            "root signs; the old one stays trusted until the last certificate it signed has "
            "expired, i.e. one certificate lifetime), then finished (the old root left the "
            "bundle). meshd refuses to start a second one while one runs (exit 1).\n\n"
            "--wait follows it, polling every second and printing a line per phase change, "
            "until it finishes or --timeout SECONDS passes (default: no limit; exit 1 then, "
            "the rotation goes on). Once it finished, clients that pinned the old bundle must "
            "re-pin (meshctl ca trust --refresh) and copies of ca-bundle.pem be refreshed."
        ),
        examples="""
            meshctl ca rotate
            meshctl ca rotate --wait
            meshctl ca rotate --wait --timeout 600
        """,
    )
    q.add_argument("--wait", action="store_true", help="follow the rotation until it finishes")
    _output_option(
        q, "text", "json", "yaml", help="format of the status printed first (default text)"
    )
    q = ca.add(
        "trust",
        commands.cmd_ca_trust,
        help="pin the server's trust bundle and print its fingerprints",
        description=(
            "Fetch meshd's trust bundle (GET /v1/ca/roots, without the token) and pin it in "
            "~/.config/meshd/pinned/HOST_PORT.pem, the bundle meshctl verifies this server "
            "with when no --ca-file or data dir is given. It is fetched over a connection "
            "verified with what meshctl already trusts (CA file, data dir or the pin); with "
            "nothing (first use) it is fetched unverified, then the server is verified with "
            "it. Prints the SHA-256 fingerprint of every root: compare them with the meshd "
            "host's (openssl x509 -noout -fingerprint -sha256 -in <data-dir>/ca-bundle.pem)."
            "\n\n"
            "When the pinned bundle no longer verifies the server (meshd's CA changed: a root "
            "rotation finished, or meshd was set up anew), meshctl refuses to connect; "
            "--refresh forgets the pin and pins what the server presents now. Check the "
            "fingerprints it prints: if you did not expect the change, something may be "
            "impersonating meshd."
        ),
        examples="""
            meshctl ca trust
            meshctl ca trust --server https://meshd.example:15012
            meshctl ca trust --refresh
        """,
    )
    q.add_argument(
        "--refresh",
        action="store_true",
        help="replace a pinned bundle that no longer verifies the server",
    )


def _flags(args: argparse.Namespace) -> Flags:
    return Flags(
        server=args.server,
        token=args.token,
        ca_file=args.ca_file,
        config=args.config,
        data_dir=args.data_dir,
    )


def main(
    argv: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], None] | None = None,
) -> int:
    """Run meshctl; returns the exit code (see ``meshctl --help``). ``env`` replaces
    ``os.environ``, ``transport`` the network and ``sleep`` the waits between polls, for
    tests."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(err)
        return EXIT_USAGE
    environ = os.environ if env is None else env

    def note(line: str) -> None:
        print(line, file=err)

    ctx = commands.Context(
        make_settings=lambda: resolve(_flags(args), environ),
        make_client=lambda settings: Client(
            settings,
            timeout_s=args.timeout or DEFAULT_TIMEOUT_S,
            transport=transport,
            note=note,
        ),
        out=out,
        err=err,
        stdin=stdin or sys.stdin,
        sleep=sleep or time.sleep,
    )
    try:
        return handler(ctx, args)
    except CtlError as exc:
        out.flush()
        for line in exc.lines():
            print(line, file=err)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=err)
        return 130
    except BrokenPipeError:
        # The reader went away (meshctl get ... | head): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    finally:
        ctx.close()


if __name__ == "__main__":
    sys.exit(main())
