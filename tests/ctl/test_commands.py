"""Whole meshctl commands against a fake meshd (``httpx.MockTransport``): arguments,
requests, rendering and exit codes, without sockets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from meshd.ctl.main import build_parser
from tests.ctl.bookinfo import REVIEWS_DESTINATION_RULE, REVIEWS_VIRTUAL_SERVICE
from tests.ctl.fake import TOKEN, FakeMeshd, problem, run


def stored(text: str, revision: int = 1) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(text)
    body["metadata"] = {
        **body["metadata"],
        "namespace": "default",
        "resourceVersion": str(revision),
    }
    return body


def report(kind: str, outcome: str, revision: int = 1, name: str = "reviews") -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": kind,
        "namespace": "default",
        "name": name,
        "outcome": outcome,
        "revision": revision,
    }


@pytest.fixture
def bookinfo(tmp_path: Path) -> list[str]:
    dr = tmp_path / "reviews-dr.yaml"
    dr.write_text(REVIEWS_DESTINATION_RULE)
    vs = tmp_path / "reviews-vs.yaml"
    vs.write_text(REVIEWS_VIRTUAL_SERVICE)
    return [str(dr), str(vs)]


# --- apply ------------------------------------------------------------------------------


def test_apply_sends_every_document_in_one_request(fake: FakeMeshd, bookinfo: list[str]) -> None:
    fake.on(
        "POST",
        "/v1/apply",
        (
            200,
            {
                "dryRun": False,
                "results": [
                    report("DestinationRule", "created"),
                    report("VirtualService", "configured", 4),
                ],
            },
        ),
    )
    result = run(fake, "apply", "-f", bookinfo[0], "-f", bookinfo[1])
    assert result.code == 0, result.err
    assert result.out == (
        "destinationrule.networking.istio.io/reviews created\n"
        "virtualservice.networking.istio.io/reviews configured\n"
    )
    (request,) = fake.requests
    assert request.headers["content-type"] == "application/yaml"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert dict(request.url.params) == {"namespace": "default"}
    docs = list(yaml.safe_load_all(request.content))
    assert [d["kind"] for d in docs] == ["DestinationRule", "VirtualService"]


def test_apply_dry_run_and_namespace(fake: FakeMeshd, bookinfo: list[str]) -> None:
    fake.on(
        "POST",
        "/v1/apply",
        (200, {"dryRun": True, "results": [report("DestinationRule", "unchanged")]}),
    )
    result = run(fake, "apply", "-f", bookinfo[0], "--dry-run", "-n", "bookinfo")
    assert result.code == 0
    assert result.out == "destinationrule.networking.istio.io/reviews unchanged (dry run)\n"
    assert dict(fake.requests[0].url.params) == {"namespace": "bookinfo", "dry_run": "true"}


def test_apply_from_stdin(fake: FakeMeshd) -> None:
    fake.on(
        "POST",
        "/v1/apply",
        (200, {"dryRun": False, "results": [report("VirtualService", "created")]}),
    )
    result = run(fake, "apply", "-f", "-", stdin=REVIEWS_VIRTUAL_SERVICE)
    assert result.code == 0
    assert yaml.safe_load(fake.requests[0].content) == yaml.safe_load(REVIEWS_VIRTUAL_SERVICE)


def test_apply_rejected_prints_field_errors_and_exits_1(
    fake: FakeMeshd, bookinfo: list[str]
) -> None:
    fake.on(
        "POST",
        "/v1/apply",
        problem(
            422,
            "1 problem(s); nothing was applied",
            [
                {
                    "field": "spec.http[1].route",
                    "message": "weights sum to 90; they must sum to 100",
                    "resource": "VirtualService default/reviews",
                }
            ],
        ),
    )
    result = run(fake, "apply", "-f", bookinfo[1])
    assert result.code == 1
    assert result.out == ""
    assert result.err == (
        "Error: 1 problem(s); nothing was applied\n"
        "  VirtualService default/reviews: spec.http[1].route: "
        "weights sum to 90; they must sum to 100\n"
    )


def test_apply_bad_yaml_sends_nothing(fake: FakeMeshd, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [\n")
    result = run(fake, "apply", "-f", str(bad))
    assert result.code == 2
    assert f"Error: {bad} is not valid YAML" in result.err
    assert fake.requests == []


def test_apply_needs_f(fake: FakeMeshd) -> None:
    result = run(fake, "apply")
    assert result.code == 2


# --- auth and transport errors ----------------------------------------------------------


def test_401_says_where_the_token_came_from(fake: FakeMeshd) -> None:
    fake.on(
        "GET",
        "/v1/resources/vs",
        problem(401, "unknown or revoked token; ask an admin for a new one"),
    )
    result = run(fake, "get", "vs")
    assert result.code == 1
    lines = result.err.splitlines()
    assert lines[0] == "Error: unknown or revoked token; ask an admin for a new one"
    assert "came from MESHD_TOKEN" in lines[1]
    assert "--token" in lines[1]


def test_403_says_to_ask_for_a_role(fake: FakeMeshd, bookinfo: list[str]) -> None:
    fake.on(
        "POST", "/v1/apply", problem(403, "token 'v' has role viewer; this needs editor or higher")
    )
    result = run(fake, "apply", "-f", bookinfo[0])
    assert result.code == 1
    assert result.err.startswith("Error: token 'v' has role viewer")
    assert "admin-token create" in result.err


def test_no_token_is_a_usage_error_and_sends_nothing(fake: FakeMeshd) -> None:
    result = run(fake, "get", "vs", token=False)
    assert result.code == 2
    assert "no token" in result.err
    assert fake.requests == []


def test_cleartext_token_is_refused_before_sending(fake: FakeMeshd) -> None:
    result = run(fake, "get", "vs", "--server", "http://198.18.0.9:15012")
    assert result.code == 2
    assert "cleartext" in result.err
    assert fake.requests == []


def test_connection_refused_names_the_url(fake: FakeMeshd) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    fake.on("GET", "/v1/proxies", refuse)
    result = run(fake, "proxy-status", "--server", "http://127.0.0.1:1")
    assert result.code == 1
    assert result.err.splitlines() == [
        "Error: cannot connect to meshd at http://127.0.0.1:1 (from --server): connection refused",
        "Hint: is meshd running? (meshd serve) Or point --server / MESHD_ADDR at it",
    ]


def test_tls_to_a_plain_http_server(fake: FakeMeshd) -> None:
    def plain(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)")

    # Nothing pinned for this port: the first contact (the unverified roots fetch) fails.
    fake.on("GET", "/v1/ca/roots", plain)
    result = run(fake, "proxy-status", "--server", "https://127.0.0.1:1")
    assert result.code == 1
    assert "does not speak TLS" in result.err
    assert "meshd serves HTTPS only" in result.err


def test_plain_http_to_meshd_says_to_use_https(fake: FakeMeshd) -> None:
    def garbage(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("illegal request line", request=request)

    fake.on("GET", "/v1/proxies", garbage)
    result = run(fake, "proxy-status", "--server", "http://127.0.0.1:15012")
    assert result.code == 1
    assert "meshd serves HTTPS only: use https://" in result.err


def test_timeout(fake: FakeMeshd) -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    fake.on("GET", "/v1/proxies", slow)
    result = run(fake, "proxy-status", "--timeout", "2")
    assert result.code == 1
    assert "did not answer within 2s" in result.err


def test_not_json_answer(fake: FakeMeshd) -> None:
    fake.on("GET", "/v1/proxies", lambda r: httpx.Response(200, text="<html>hello</html>"))
    result = run(fake, "proxy-status")
    assert result.code == 1
    assert "not JSON" in result.err


def test_redirects_are_not_followed(fake: FakeMeshd) -> None:
    fake.on(
        "GET",
        "/v1/proxies",
        lambda r: httpx.Response(307, headers={"location": "http://elsewhere/"}),
    )
    result = run(fake, "proxy-status")
    assert result.code == 1
    assert "does not follow redirects" in result.err
    assert len(fake.requests) == 1


def test_global_options_before_or_after_the_command(fake: FakeMeshd) -> None:
    fake.on("GET", "/v1/proxies", (200, {"items": []}))
    for argv in (
        ("--token", "before", "proxy-status"),
        ("proxy-status", "--token", "before"),
    ):
        fake.requests.clear()
        assert run(fake, *argv, token=False).code == 0
        assert fake.requests[0].headers["authorization"] == "Bearer before"


def test_server_with_a_path_prefix(fake: FakeMeshd) -> None:
    fake.on("GET", "/mesh/v1/proxies", (200, {"items": []}))
    assert run(fake, "proxy-status", "--server", "http://127.0.0.1:9/mesh").code == 0


# --- get --------------------------------------------------------------------------------


def test_get_list_table(fake: FakeMeshd) -> None:
    fake.on("GET", "/v1/resources/vs", (200, {"items": [stored(REVIEWS_VIRTUAL_SERVICE, 2)]}))
    result = run(fake, "get", "vs")
    assert result.code == 0
    assert result.out.splitlines()[0].split() == ["NAME", "REVISION", "HOSTS"]
    assert dict(fake.requests[0].url.params) == {"namespace": "default"}


def test_get_all_namespaces_sends_no_namespace(fake: FakeMeshd) -> None:
    fake.on(
        "GET", "/v1/resources/virtualservices", (200, {"items": [stored(REVIEWS_VIRTUAL_SERVICE)]})
    )
    result = run(fake, "get", "virtualservices", "-A")
    assert result.out.splitlines()[0].split()[0] == "NAMESPACE"
    assert dict(fake.requests[0].url.params) == {}


def test_get_empty_list_says_so_on_stderr(fake: FakeMeshd) -> None:
    fake.on("GET", "/v1/resources/dr", (200, {"items": []}))
    result = run(fake, "get", "dr", "-n", "shop")
    assert (result.code, result.out) == (0, "")
    assert result.err == "No dr found in namespace shop.\n"


def test_get_list_yaml_json_name(fake: FakeMeshd) -> None:
    listing = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [stored(REVIEWS_DESTINATION_RULE), stored(REVIEWS_VIRTUAL_SERVICE)],
    }
    fake.on("GET", "/v1/resources/all", (200, listing))
    as_yaml = run(fake, "get", "all", "-o", "yaml")
    assert len(list(yaml.safe_load_all(as_yaml.out))) == 2
    assert "resourceVersion" not in as_yaml.out
    assert json.loads(run(fake, "get", "all", "-o", "json").out) == listing
    assert run(fake, "get", "all", "-o", "name").out == (
        "destinationrule.networking.istio.io/reviews\nvirtualservice.networking.istio.io/reviews\n"
    )


def test_get_one(fake: FakeMeshd) -> None:
    fake.on(
        "GET",
        "/v1/resources/VirtualService/bookinfo/reviews",
        (200, stored(REVIEWS_VIRTUAL_SERVICE, 3)),
    )
    as_yaml = run(fake, "get", "VirtualService", "reviews", "-n", "bookinfo", "-o", "yaml")
    assert as_yaml.code == 0
    doc = yaml.safe_load(as_yaml.out)
    assert doc["spec"] == yaml.safe_load(REVIEWS_VIRTUAL_SERVICE)["spec"]
    assert (
        json.loads(
            run(fake, "get", "VirtualService", "reviews", "-n", "bookinfo", "-o", "json").out
        )["metadata"]["resourceVersion"]
        == "3"
    )
    table = run(fake, "get", "VirtualService", "reviews", "-n", "bookinfo").out
    assert table.splitlines()[1].split() == ["reviews", "3", "reviews"]


def test_get_missing_exits_3(fake: FakeMeshd) -> None:
    fake.on(
        "GET",
        "/v1/resources/vs/default/nope",
        problem(404, "VirtualService default/nope does not exist"),
    )
    result = run(fake, "get", "vs", "nope")
    assert result.code == 3
    assert result.err == "Error: VirtualService default/nope does not exist\n"


def test_get_name_with_all_namespaces_is_a_usage_error(fake: FakeMeshd) -> None:
    assert run(fake, "get", "vs", "reviews", "-A").code == 2


def test_get_services(fake: FakeMeshd) -> None:
    services = {
        "items": [
            {
                "name": "reviews",
                "namespace": "default",
                "instances": [
                    {"id": "r1", "protocol": "http", "labels": {"version": "v1"}, "healthy": True}
                ],
            }
        ]
    }
    fake.on("GET", "/v1/services", (200, services))
    result = run(fake, "get", "svc")
    assert result.out.splitlines()[1].split() == ["reviews", "1/1", "http", "v1"]
    fake.on("GET", "/v1/services/reviews", (200, services["items"][0]))
    assert run(fake, "get", "services", "reviews", "-o", "name").out == "service/reviews\n"


def test_get_proxies_is_proxy_status(fake: FakeMeshd) -> None:
    fake.on("GET", "/v1/proxies", (200, {"items": []}))
    assert (
        run(fake, "get", "proxies").out == "NAME   SERVICE   STATE   VERSION   ACKED   LAST SEEN\n"
    )


# --- delete -----------------------------------------------------------------------------


def test_delete_by_name(fake: FakeMeshd) -> None:
    fake.on(
        "DELETE",
        "/v1/resources/vs/default/reviews",
        (200, {"deleted": stored(REVIEWS_VIRTUAL_SERVICE, 3)}),
    )
    result = run(fake, "delete", "vs", "reviews")
    assert (result.code, result.out) == (0, "virtualservice.networking.istio.io/reviews deleted\n")


def test_delete_ignore_not_found(fake: FakeMeshd) -> None:
    fake.on(
        "DELETE",
        "/v1/resources/vs/default/x",
        problem(404, "VirtualService default/x does not exist"),
    )
    assert run(fake, "delete", "vs", "x").code == 3
    assert run(fake, "delete", "vs", "x", "--ignore-not-found").code == 0


def test_delete_from_files_goes_last_first_and_retries_conflicts(
    fake: FakeMeshd, tmp_path: Path
) -> None:
    both = tmp_path / "both.yaml"
    # The file lists the VirtualService first, so the DestinationRule is deleted first and
    # refused while the VirtualService still routes to its subsets; the retry succeeds.
    both.write_text(REVIEWS_VIRTUAL_SERVICE + "---\n" + REVIEWS_DESTINATION_RULE)
    state = {"vs": True}

    def delete_dr(request: httpx.Request) -> httpx.Response:
        if state["vs"]:
            return httpx.Response(
                409,
                json={
                    "detail": "deleting DestinationRule default/reviews would break other resources"
                },
            )
        return httpx.Response(200, json={"deleted": stored(REVIEWS_DESTINATION_RULE)})

    def delete_vs(request: httpx.Request) -> httpx.Response:
        state["vs"] = False
        return httpx.Response(200, json={"deleted": stored(REVIEWS_VIRTUAL_SERVICE)})

    fake.on("DELETE", "/v1/resources/DestinationRule/default/reviews", delete_dr)
    fake.on("DELETE", "/v1/resources/VirtualService/default/reviews", delete_vs)
    result = run(fake, "delete", "-f", str(both))
    assert result.code == 0, result.err
    assert result.out == (
        "virtualservice.networking.istio.io/reviews deleted\n"
        "destinationrule.networking.istio.io/reviews deleted\n"
    )
    assert [r.url.path.split("/")[3] for r in fake.requests] == [
        "DestinationRule",
        "VirtualService",
        "DestinationRule",
    ]


def test_delete_from_files_reports_each_failure(fake: FakeMeshd, bookinfo: list[str]) -> None:
    fake.on(
        "DELETE",
        "/v1/resources/VirtualService/default/reviews",
        problem(404, "VirtualService default/reviews does not exist"),
    )
    fake.on(
        "DELETE",
        "/v1/resources/DestinationRule/default/reviews",
        (200, {"deleted": stored(REVIEWS_DESTINATION_RULE)}),
    )
    result = run(fake, "delete", "-f", bookinfo[0], "-f", bookinfo[1])
    assert result.code == 3
    assert result.out == "destinationrule.networking.istio.io/reviews deleted\n"
    assert "Error: VirtualService default/reviews does not exist" in result.err


def test_delete_needs_kind_and_name_or_f(fake: FakeMeshd, bookinfo: list[str]) -> None:
    assert run(fake, "delete", "vs").code == 2
    assert run(fake, "delete", "vs", "reviews", "-f", bookinfo[0]).code == 2
    assert run(fake, "delete", "svc", "reviews").code == 2
    assert fake.requests == []


# --- describe, history, rollback -----------------------------------------------------------------


def test_describe(fake: FakeMeshd) -> None:
    base = "/v1/resources/vs/default/reviews"
    fake.on(
        "GET",
        base + "/describe",
        (
            200,
            {
                "resource": stored(REVIEWS_VIRTUAL_SERVICE, 2),
                "affects": {"proxies": ["productpage-1.default"]},
            },
        ),
    )
    fake.on(
        "GET",
        base + "/history",
        (
            200,
            {
                "items": [
                    {
                        "revision": 1,
                        "operation": "create",
                        "actor": "bootstrap",
                        "at": 1.0,
                        "resource": {},
                    }
                ]
            },
        ),
    )
    result = run(fake, "describe", "vs", "reviews")
    assert result.code == 0
    assert "Revision:    2" in result.out
    assert result.out.endswith("Affects: 1 proxy\n  productpage-1.default\n")
    assert len(fake.requests) == 2


HISTORY = {
    "items": [
        {
            "revision": 1,
            "operation": "create",
            "actor": "bootstrap",
            "at": 1.0,
            "resource": stored(REVIEWS_VIRTUAL_SERVICE),
        },
        {"revision": 2, "operation": "delete", "actor": "ci", "at": 2.0, "resource": None},
    ]
}


def test_history_table_and_one_revision(fake: FakeMeshd) -> None:
    fake.on("GET", "/v1/resources/vs/default/reviews/history", (200, HISTORY))
    table = run(fake, "history", "vs", "reviews")
    assert [line.split()[:3] for line in table.out.splitlines()] == [
        ["REVISION", "OPERATION", "ACTOR"],
        ["1", "create", "bootstrap"],
        ["2", "delete", "ci"],
    ]
    one = run(fake, "history", "vs", "reviews", "--revision", "1", "-o", "yaml")
    assert yaml.safe_load(one.out)["spec"] == yaml.safe_load(REVIEWS_VIRTUAL_SERVICE)["spec"]
    deleted = run(fake, "history", "vs", "reviews", "--revision", "2")
    assert (deleted.code, deleted.out) == (1, "")
    assert "records its deletion" in deleted.err
    missing = run(fake, "history", "vs", "reviews", "--revision", "9")
    assert missing.code == 3
    assert "revisions: 1, 2" in missing.err


def test_history_revision_must_be_positive(fake: FakeMeshd) -> None:
    assert run(fake, "history", "vs", "reviews", "--revision", "0").code == 2


def test_rollback(fake: FakeMeshd) -> None:
    fake.on(
        "POST",
        "/v1/resources/vs/default/reviews/rollback",
        (200, report("VirtualService", "configured", 5)),
    )
    result = run(fake, "rollback", "vs", "reviews", "--to-revision", "2")
    assert (
        result.out
        == "virtualservice.networking.istio.io/reviews rolled back to revision 2 (now revision 5)\n"
    )
    assert json.loads(fake.requests[0].content) == {"revision": 2}
    assert run(fake, "rollback", "vs", "reviews").code == 2


# --- proxies ----------------------------------------------------------------------------


def test_proxy_status_prints_notes_under_the_table(fake: FakeMeshd) -> None:
    proxy = {
        "proxy": "reviews-1.default",
        "service": "reviews",
        "namespace": "default",
        "state": "NACKED",
        "connected": True,
        "lastSeen": None,
        "version": "abcdef0123456789",
        "ackedVersion": None,
        "nack": {"version": "abcdef0123456789", "reason": "bad"},
        "errors": [],
    }
    fake.on("GET", "/v1/proxies/reviews-1.default", (200, proxy))
    result = run(fake, "proxy-status", "reviews-1.default")
    assert result.code == 0
    assert result.out.splitlines()[1].split()[:4] == [
        "reviews-1.default",
        "reviews.default",
        "NACKED",
        "abcdef01",
    ]
    assert result.out.endswith("\nreviews-1.default: NACKED version abcdef01: bad\n")


def test_proxy_config_formats(fake: FakeMeshd) -> None:
    snapshot = {
        "proxy_id": "p1",
        "version": "v",
        "service": "s",
        "namespace": "default",
        "outbound": {},
    }
    fake.on("GET", "/v1/proxies/p1/config", (200, snapshot))
    assert run(fake, "proxy-config", "p1").out.startswith("Proxy:     p1 (service s.default)\n")
    assert json.loads(run(fake, "proxy-config", "p1", "-o", "json").out) == snapshot
    assert yaml.safe_load(run(fake, "proxy-config", "p1", "-o", "yaml").out) == snapshot


# --- admin tokens -----------------------------------------------------------------------


def test_admin_token_create_prints_only_the_token_on_stdout(fake: FakeMeshd) -> None:
    record = {
        "id": "abc",
        "name": "ci",
        "role": "editor",
        "created_at": 1.0,
        "created_by": "bootstrap",
        "token": "mshd_new",
    }
    fake.on("POST", "/v1/admin-tokens", (201, record))
    result = run(fake, "admin-token", "create", "--name", "ci", "--role", "editor")
    assert result.out == "mshd_new\n"
    assert "id abc" in result.err
    assert json.loads(fake.requests[0].content) == {"name": "ci", "role": "editor"}


def test_admin_token_list_and_revoke(fake: FakeMeshd) -> None:
    fake.on(
        "GET",
        "/v1/admin-tokens",
        (
            200,
            {
                "items": [
                    {
                        "id": "abc",
                        "name": "ci",
                        "role": "viewer",
                        "created_at": 1.0,
                        "created_by": "x",
                    }
                ]
            },
        ),
    )
    fake.on("DELETE", "/v1/admin-tokens/abc", (204, None))
    assert run(fake, "admin-token", "list").out.splitlines()[1].split()[:3] == [
        "abc",
        "ci",
        "viewer",
    ]
    assert run(fake, "admin-token", "revoke", "abc").out == "admin token abc revoked\n"
    assert run(fake, "admin-token", "create", "--name", "x", "--role", "root").code == 2


# --- version and help -------------------------------------------------------------------


def test_version_needs_no_token(fake: FakeMeshd) -> None:
    fake.on("GET", "/healthz", (200, {"status": "ok"}))
    fake.on("GET", "/readyz", (200, {"status": "ready", "store": "sqlite"}))
    result = run(fake, "version", token=False)
    assert result.code == 0
    assert result.out.splitlines()[0].startswith("Client: meshctl ")
    assert "  healthz: ok" in result.out
    assert "  readyz:  ready (store sqlite)" in result.out
    assert "authorization" not in fake.requests[0].headers


def test_version_not_ready_exits_1(fake: FakeMeshd) -> None:
    fake.on("GET", "/healthz", (200, {"status": "ok"}))
    fake.on("GET", "/readyz", lambda r: httpx.Response(503, json={"status": "starting"}))
    result = run(fake, "version")
    assert result.code == 1
    assert "readyz:  starting" in result.out


def test_version_client_contacts_nothing(fake: FakeMeshd) -> None:
    result = run(fake, "version", "--client", "--server", "not a url")
    assert result.code == 0
    assert fake.requests == []


def test_every_command_has_examples_and_exit_codes_in_its_help() -> None:
    parser = build_parser()
    assert "exit codes:" in parser.format_help()
    seen = []
    stack = [parser]
    while stack:
        current = stack.pop()
        for action in current._actions:
            choices = getattr(action, "choices", None)
            if isinstance(choices, dict):
                for name, sub in choices.items():
                    seen.append(name)
                    text = sub.format_help()
                    assert "examples:\n  meshctl" in text, name
                    assert "exit codes:" in text, name
                    stack.append(sub)
    assert {
        "apply",
        "get",
        "delete",
        "describe",
        "history",
        "rollback",
        "proxy-status",
        "proxy-config",
        "admin-token",
        "create",
        "list",
        "revoke",
        "version",
        "token",
        "certs",
        "ca",
        "status",
        "rotate",
        "trust",
    } <= set(seen)


def test_no_command_prints_help_and_exits_2(fake: FakeMeshd) -> None:
    result = run(fake)
    assert result.code == 2
    assert "COMMAND" in result.err
