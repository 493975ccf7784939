"""``meshctl``: argparse entry point. The ``--help`` of every command is its documentation."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
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
  --ca-file / MESHD_CA_FILE / caFile: CA bundle to verify an https:// server
  --config / MESHD_CONFIG:            the config file (default ~/.config/meshd/config.yaml)
  --data-dir / MESHD_DATA_DIR:        on the meshd host, use DIR/admin.token when no
                                      token is given (loopback servers only)
  A token is never sent over plain http:// to a host other than loopback.
"""

MAIN_EPILOG = f"""\
examples:
  meshctl apply -f reviews.yaml               create or update the resources in a file
  meshctl get virtualservices -A              list VirtualServices in every namespace
  meshctl get vs reviews -o yaml              one resource, ready to edit and re-apply
  meshctl describe vs reviews                 what it says and which proxies it affects
  meshctl history vs reviews                  its revisions; rollback undoes one
  meshctl proxy-status                        is every sidecar running the latest config?

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
        help="PEM CA bundle to verify an https:// server [env MESHD_CA_FILE]",
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
        help="meshd's data dir: without a token, use DIR/admin.token (loopback only) "
        "[env MESHD_DATA_DIR]",
    )
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_float,
        default=default(DEFAULT_TIMEOUT_S),
        help=f"give up on a request after this long (default {DEFAULT_TIMEOUT_S:g})",
    )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


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
        description="meshctl — manage meshd's rules, proxies and tokens through its REST API.",
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
    p.add_argument(
        "-o",
        "--output",
        choices=["table", "yaml", "json", "name"],
        default="table",
        help="output format (default table)",
    )

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
    p.add_argument(
        "-o",
        "--output",
        choices=["table", "yaml", "json"],
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
    p.add_argument(
        "-o",
        "--output",
        choices=["table", "yaml", "json", "name"],
        default="table",
        help="output format (default table)",
    )

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
    p.add_argument(
        "-o",
        "--output",
        choices=["summary", "json", "yaml"],
        default="summary",
        help="output format (default summary)",
    )

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
        commands.cmd_token_create,
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
    q.add_argument(
        "-o",
        "--output",
        choices=["token", "json", "yaml"],
        default="token",
        help="token (default): just the token; json/yaml: the whole record",
    )
    q = tokens.add(
        "list",
        commands.cmd_token_list,
        help="list tokens (never their secret)",
        description="List every admin token: ID, NAME, ROLE, CREATED, CREATED BY.",
        examples="""
            meshctl admin-token list
            meshctl admin-token list -o json
        """,
    )
    q.add_argument(
        "-o", "--output", choices=["table", "json", "yaml"], default="table", help="default table"
    )
    q = tokens.add(
        "revoke",
        commands.cmd_token_revoke,
        help="revoke a token by id",
        description="Revoke a token; requests with it fail from then on (within a few seconds).",
        examples="""
            meshctl admin-token list
            meshctl admin-token revoke 3f9a0c1d2b4e5f60
        """,
    )
    q.add_argument("id", metavar="ID", help="the token's id, from admin-token list")

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
) -> int:
    """Run meshctl; returns the exit code (see ``meshctl --help``). ``env`` replaces
    ``os.environ`` and ``transport`` the network, for tests."""
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
    ctx = commands.Context(
        make_settings=lambda: resolve(_flags(args), environ),
        make_client=lambda settings: Client(settings, timeout_s=args.timeout, transport=transport),
        out=out,
        err=err,
        stdin=stdin or sys.stdin,
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
