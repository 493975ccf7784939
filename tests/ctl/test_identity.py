"""``meshctl token``, ``certs`` and ``ca status|rotate`` against a fake meshd: requests,
rendering, exit codes."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
import yaml

from tests.ctl.fake import FakeMeshd, problem, run
from tests.ctl.pki import make_root

ROOT_PEM = make_root().pem
ROOT_OLD = "a1" * 32
ROOT_NEW = "c3" * 32
SPIFFE = "spiffe://cluster.local/ns/default/sa/reviews"


def token_record(**extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": "3f9a0c1d2b4e5f60",
        "service": "reviews",
        "namespace": "default",
        "serviceAccount": "reviews",
        "spiffeId": SPIFFE,
        "uses": "single",
        "createdAt": time.time(),
        "createdBy": "bootstrap",
        "expires_at": time.time() + 3600,
        "expired": False,
    }
    return record | extra


def roots(*ids: str, signing: str = ROOT_OLD) -> dict[str, Any]:
    return {
        "trustDomain": "cluster.local",
        "digest": "0123456789abcdef",
        "roots": [
            {
                "id": i,
                "pem": ROOT_PEM,
                "notAfter": "2035-01-01T00:00:00+00:00",
                "signing": i == signing,
            }
            for i in ids
        ],
    }


# --- join tokens ----------------------------------------------------------------------------


def test_token_create_prints_only_the_token_on_stdout(fake: FakeMeshd) -> None:
    fake.on("POST", "/v1/tokens", (201, token_record(token="mjt_secret")))
    result = run(fake, "token", "create", "--service", "reviews")
    assert (result.code, result.out) == (0, "mjt_secret\n")
    assert json.loads(fake.requests[0].content) == {
        "service": "reviews",
        "namespace": "default",
        "ttl": "1h",
        "uses": "single",
    }
    details = result.err.splitlines()
    assert details[0].startswith(f"created join token 3f9a0c1d2b4e5f60 for {SPIFFE}")
    assert "single-use" in details[0]
    assert "(in 59m)" in details[0]
    assert "shown only now" in details[0]
    assert "mesh-sidecar run --service reviews --namespace default" in details[1]


def test_token_create_options(fake: FakeMeshd) -> None:
    record = token_record(
        token="mjt_x",
        uses="multi",
        namespace="shop",
        serviceAccount="rev",
        spiffeId="spiffe://cluster.local/ns/shop/sa/rev",
    )
    fake.on("POST", "/v1/tokens", (201, record))
    argv = ["--service", "reviews", "-n", "shop", "--service-account", "rev", "--ttl", "24h"]
    result = run(fake, "token", "create", *argv, "--multi-use")
    assert result.code == 0, result.err
    assert json.loads(fake.requests[0].content) == {
        "service": "reviews",
        "namespace": "shop",
        "serviceAccount": "rev",
        "ttl": "24h",
        "uses": "multi",
    }
    assert "multi-use" in result.err
    as_json = run(fake, "token", "create", "--service", "reviews", "-o", "json")
    assert json.loads(as_json.out)["token"] == "mjt_x"
    assert as_json.err == ""


@pytest.mark.parametrize("ttl", ["1", "1 h", "1d", "h", ""])
def test_token_create_bad_ttl_is_a_usage_error(fake: FakeMeshd, ttl: str) -> None:
    result = run(fake, "token", "create", "--service", "reviews", "--ttl", ttl)
    assert result.code == 2
    assert fake.requests == []


def test_token_create_refused_by_meshd(fake: FakeMeshd) -> None:
    fake.on("POST", "/v1/tokens", problem(400, "ttl '9999h' must be positive and at most 720h"))
    result = run(fake, "token", "create", "--service", "reviews", "--ttl", "9999h")
    assert result.code == 1
    assert result.out == ""
    assert result.err.startswith("Error: ttl '9999h' must be positive and at most 720h")
    assert run(fake, "token", "create").code == 2  # --service is required


def test_token_list_and_revoke(fake: FakeMeshd) -> None:
    items = [
        token_record(used=True),
        token_record(id="77aa", uses="multi", used=False, createdBy="ci"),
        token_record(id="88bb", expires_at=time.time() - 120, expired=True, used=False),
    ]
    fake.on("GET", "/v1/tokens", (200, {"items": items}))
    result = run(fake, "token", "list")
    assert result.code == 0, result.err
    rows = [line.split("   ") for line in result.out.splitlines()]
    header = [c.strip() for c in rows[0] if c.strip()]
    assert header == [
        "ID",
        "SERVICE",
        "NAMESPACE",
        "IDENTITY",
        "USES",
        "USED",
        "EXPIRES",
        "CREATED BY",
    ]
    lines = result.out.splitlines()
    assert lines[1].split()[:6] == [
        "3f9a0c1d2b4e5f60",
        "reviews",
        "default",
        SPIFFE,
        "single",
        "yes",
    ]
    assert lines[1].split()[6:] == ["in", "59m", "bootstrap"]
    assert lines[2].split()[4:] == ["multi", "-", "in", "59m", "ci"]
    assert lines[3].split()[5:] == ["no", "expired", "2m", "ago", "bootstrap"]
    assert "mjt_" not in result.out
    assert json.loads(run(fake, "token", "list", "-o", "json").out) == {"items": items}

    fake.on("DELETE", "/v1/tokens/3f9a0c1d2b4e5f60", (204, None))
    revoked = run(fake, "token", "revoke", "3f9a0c1d2b4e5f60")
    assert (revoked.code, revoked.out) == (0, "join token 3f9a0c1d2b4e5f60 revoked\n")
    fake.on("DELETE", "/v1/tokens/nope", problem(404, "no join token with id 'nope'"))
    assert run(fake, "token", "revoke", "nope").code == 3


def test_token_list_of_none(fake: FakeMeshd) -> None:
    fake.on("GET", "/v1/tokens", (200, {"items": []}))
    result = run(fake, "token", "list")
    assert result.out.split() == [
        "ID",
        "SERVICE",
        "NAMESPACE",
        "IDENTITY",
        "USES",
        "USED",
        "EXPIRES",
        "CREATED",
        "BY",
    ]
    assert "No join tokens" in result.err


# --- certs ------------------------------------------------------------------------------------


def cert(proxy: str, root: str, expires_in: float, **extra: Any) -> dict[str, Any]:
    return {
        "proxy": proxy,
        "spiffeId": SPIFFE,
        "serial": "5f3c9a0b1d2e4f60718293a4b5c6d7e8",
        "root": root,
        "notBefore": time.time() - 3600,
        "notAfter": time.time() + expires_in,
        "issuedAt": time.time() - 3600,
        "via": "join-token",
        "expiresIn": expires_in,
        "rootTrusted": True,
    } | extra


def test_certs_table_marks_signing_untrusted_and_expiry(fake: FakeMeshd) -> None:
    body = {
        "items": [
            cert("reviews-1.default", ROOT_NEW, 20 * 3600 + 600, via="renewal"),
            cert("reviews-2.default", ROOT_OLD, 1830),
            cert("reviews-3.default", "ee" * 32, -300, rootTrusted=False),
        ],
        "bundle": {"digest": "0123", "signingRoot": ROOT_NEW},
    }
    fake.on("GET", "/v1/certs", (200, body))
    result = run(fake, "certs")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split() == ["PROXY", "IDENTITY", "ROOT", "SERIAL", "EXPIRES", "VIA"]
    assert lines[1].split() == [
        "reviews-1.default",
        SPIFFE,
        ROOT_NEW[:12],
        "(signing)",
        "5f3c9a0b1d2e",
        "in",
        "20h",
        "renewal",
    ]
    assert lines[2].split()[2:] == [
        ROOT_OLD[:12],
        "5f3c9a0b1d2e",
        "in",
        "30m",
        "(<1h)",
        "join-token",
    ]
    untrusted = ["e" * 12, "(untrusted!)", "5f3c9a0b1d2e", "EXPIRED", "5m", "ago", "join-token"]
    assert lines[3].split()[2:] == untrusted
    notes = "\n".join(lines[5:])
    assert "no longer in the trust bundle" in notes
    assert "reviews-3.default" in notes
    assert "1 certificate(s) expired" in notes
    assert json.loads(run(fake, "certs", "-o", "json").out) == body
    assert yaml.safe_load(run(fake, "certs", "-o", "yaml").out) == body


def test_certs_of_an_empty_mesh(fake: FakeMeshd) -> None:
    fake.on("GET", "/v1/certs", (200, {"items": [], "bundle": {"signingRoot": ROOT_OLD}}))
    result = run(fake, "certs")
    assert result.out.split() == ["PROXY", "IDENTITY", "ROOT", "SERIAL", "EXPIRES", "VIA"]
    assert "No certificates issued yet" in result.err


# --- ca status / rotate -------------------------------------------------------------------------


def distributing(lagging: int = 2) -> dict[str, Any]:
    return {
        "rotation": {
            "phase": "distributing",
            "old": ROOT_OLD,
            "new": ROOT_NEW,
            "digest": "feedfacecafebeef",
            "startedAt": time.time() - 180,
            "startedBy": "alice",
        },
        "bundle": roots(ROOT_OLD, ROOT_NEW),
        "replicas": [
            {
                "replica": "0a1b2c3d4e5f",
                "digest": "feedfacecafebeef",
                "lagging": lagging,
                "examples": ["ratings-1.default", "reviews-2.default"][:lagging],
                "at": time.time() - 2,
            },
            {
                "replica": "9f8e7d6c5b4a",
                "digest": "feedfacecafebeef",
                "lagging": 0,
                "examples": [],
                "at": time.time() - 1,
            },
        ],
    }


def switched() -> dict[str, Any]:
    status = distributing(0)
    status["rotation"] |= {
        "phase": "switched",
        "switchedAt": time.time() - 60,
        "retireAfter": time.time() + 23 * 3600 + 600,
    }
    status["bundle"] = roots(ROOT_OLD, ROOT_NEW, signing=ROOT_NEW)
    return status


def finished() -> dict[str, Any]:
    return {"rotation": None, "bundle": roots(ROOT_NEW, signing=ROOT_NEW), "replicas": []}


def test_ca_status_without_a_rotation(fake: FakeMeshd) -> None:
    fake.on(
        "GET",
        "/v1/ca/rotation",
        (200, {"rotation": None, "bundle": roots(ROOT_OLD), "replicas": []}),
    )
    result = run(fake, "ca", "status")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0] == "Trust domain:  cluster.local"
    assert lines[1] == "Bundle:        digest 0123456789abcdef, 1 root"
    assert lines[2].split() == ["ROOT", "SIGNING", "NOT", "AFTER"]
    assert lines[3].split()[:3] == [ROOT_OLD[:12], "yes", "2035-01-01"]
    assert lines[4] == "Rotation:      none (meshctl ca rotate starts one)"


def test_ca_status_while_distributing(fake: FakeMeshd) -> None:
    status = distributing()
    fake.on("GET", "/v1/ca/rotation", (200, status))
    text = run(fake, "ca", "status").out
    assert "Rotation:      distributing the new root (started " in text
    assert "(3m ago) by alice)" in text
    assert f"  Old root:    {ROOT_OLD[:12]}: signs until every proxy holds the new root" in text
    assert f"  New root:    {ROOT_NEW[:12]}: in the bundle" in text
    assert "  Waiting for: 2 proxies to get bundle feedfacecafebeef" in text
    assert (
        "    replica 0a1b2c3d4e5f: 2 proxies lack it "
        "(e.g. ratings-1.default, reviews-2.default), reported 2s ago"
    ) in text
    assert "    replica 9f8e7d6c5b4a: every proxy holds it (reported 1s ago)" in text
    assert json.loads(run(fake, "ca", "status", "-o", "json").out) == status


def test_ca_status_once_switched(fake: FakeMeshd) -> None:
    fake.on("GET", "/v1/ca/rotation", (200, switched()))
    text = run(fake, "ca", "status").out
    assert "Rotation:      switched to the new root " in text
    assert f"  Old root:    {ROOT_OLD[:12]}: leaves the bundle at " in text
    assert "(in 23h), once the last certificate it signed has expired" in text
    assert f"  New root:    {ROOT_NEW[:12]}: signs every new certificate" in text
    assert "replica" not in text


def test_ca_rotate_prints_the_status(fake: FakeMeshd) -> None:
    fake.on("POST", "/v1/ca/rotate", (200, distributing()))
    result = run(fake, "ca", "rotate")
    assert result.code == 0, result.err
    assert "Rotation:      distributing the new root" in result.out
    assert "meshctl ca status follows it" in result.err
    (request,) = fake.requests
    assert request.method == "POST"


def test_a_second_rotation_is_refused(fake: FakeMeshd) -> None:
    fake.on(
        "POST",
        "/v1/ca/rotate",
        problem(409, "a root rotation is already in progress (phase distributing)"),
    )
    result = run(fake, "ca", "rotate", "--wait")
    assert result.code == 1
    assert result.err.startswith("Error: a root rotation is already in progress")
    assert len(fake.requests) == 1


def test_ca_rotate_wait_prints_a_line_per_phase(fake: FakeMeshd) -> None:
    answers = iter([distributing(), distributing(1), switched(), switched(), finished()])
    fake.on("POST", "/v1/ca/rotate", (200, distributing()))
    fake.on("GET", "/v1/ca/rotation", lambda r: httpx.Response(200, json=next(answers)))
    sleeps: list[float] = []
    result = run(fake, "ca", "rotate", "--wait", sleep=sleeps.append)
    assert result.code == 0, result.err
    assert sleeps == [1.0] * 5
    lines = [line for line in result.out.splitlines() if line[:2].isdigit()]
    assert [line.split(" ", 3)[2] for line in lines] == ["switched:", "finished:"]
    assert f"the old root {ROOT_OLD[:12]} leaves the bundle at " in lines[0]
    assert lines[1].endswith(f"finished: the old root {ROOT_OLD[:12]} left the bundle")
    assert "meshctl ca trust --refresh" in result.err
    assert result.out.startswith("Trust domain:")


def test_ca_rotate_wait_gives_up_after_the_timeout(fake: FakeMeshd) -> None:
    fake.on("POST", "/v1/ca/rotate", (200, distributing()))
    fake.on("GET", "/v1/ca/rotation", (200, switched()))
    result = run(
        fake, "ca", "rotate", "--wait", "--timeout", "0.2", sleep=lambda s: time.sleep(0.05)
    )
    assert result.code == 1
    assert "did not finish within 0.2s; it is in phase switched" in result.err
    assert "meshctl ca status" in result.err
    assert [line for line in result.out.splitlines() if "switched:" in line]
