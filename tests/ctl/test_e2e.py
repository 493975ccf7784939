"""meshctl against a real ``meshd serve``: most commands run ``.venv/bin/meshctl`` as a
real process; a few call ``main([...])`` in this process. Each test works in a namespace
of its own on the shared server."""

from __future__ import annotations

import io
import json
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from meshd.ctl.main import main
from meshd.ctl.trust import pin_path, read_bundle_file
from tests.ctl.bookinfo import (
    REVIEWS_DESTINATION_RULE,
    REVIEWS_VIRTUAL_SERVICE,
    REVIEWS_VIRTUAL_SERVICE_90,
    REVIEWS_VIRTUAL_SERVICE_ALL_V1,
)
from tests.ctl.conftest import Run, meshctl
from tests.ctl.pki import make_root
from tests.support.meshd_process import MeshdProcess
from tests.support.workload import make_csr

pytestmark = pytest.mark.e2e

PROXY_HEADER = "NAME   SERVICE   STATE   VERSION   ACKED   LAST SEEN"
DR = "destinationrule.networking.istio.io/reviews"
VS = "virtualservice.networking.istio.io/reviews"


def in_process(server: MeshdProcess, *argv: str, stdin: str = "") -> Run:
    """``main([...])`` in this process, output captured."""
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), env=server.env(), stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return Run(code, out.getvalue(), err.getvalue())


def expected(text: str, namespace: str) -> dict[str, object]:
    """A file's resource as it reads back: in ``namespace``."""
    doc: dict[str, object] = yaml.safe_load(text)
    doc["metadata"] = {**doc["metadata"], "namespace": namespace}  # type: ignore[dict-item]
    return doc


def wait_until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    out = {}
    for name, text in {
        "dr": REVIEWS_DESTINATION_RULE,
        "vs": REVIEWS_VIRTUAL_SERVICE,
        "vs90": REVIEWS_VIRTUAL_SERVICE_90,
        "vs-v1": REVIEWS_VIRTUAL_SERVICE_ALL_V1,
    }.items():
        path = tmp_path / f"reviews-{name}.yaml"
        path.write_text(text)
        out[name] = str(path)
    return out


def test_apply_bookinfo_reviews_reads_back_equal_and_reapplies_unchanged(
    meshd_server: MeshdProcess, files: dict[str, str], namespace: str
) -> None:
    first = meshctl(meshd_server, "apply", "-f", files["dr"], "-f", files["vs"], "-n", namespace)
    assert (first.code, first.err) == (0, "")
    assert first.out == f"{DR} created\n{VS} created\n"

    vs = meshctl(meshd_server, "get", "virtualservice", "reviews", "-n", namespace, "-o", "yaml")
    assert vs.code == 0, vs.err
    assert yaml.safe_load(vs.out) == expected(REVIEWS_VIRTUAL_SERVICE, namespace)
    dr = meshctl(meshd_server, "get", "dr", "reviews", "-n", namespace, "-o", "yaml")
    assert yaml.safe_load(dr.out) == expected(REVIEWS_DESTINATION_RULE, namespace)

    both = meshctl(meshd_server, "get", "vs", "-n", namespace, "-o", "json")
    (item,) = json.loads(both.out)["items"]
    assert item["metadata"]["resourceVersion"] == "1"

    again = meshctl(meshd_server, "apply", "-f", files["dr"], "-f", files["vs"], "-n", namespace)
    assert (again.code, again.out) == (0, f"{DR} unchanged\n{VS} unchanged\n")

    table = meshctl(meshd_server, "get", "destinationrules", "-n", namespace)
    assert [line.split() for line in table.out.splitlines()] == [
        ["NAME", "REVISION", "HOST", "SUBSETS"],
        ["reviews", "1", "reviews", "v1,v2,v3"],
    ]
    everywhere = meshctl(meshd_server, "get", "vs", "-A")
    assert [namespace, "reviews", "1", "reviews"] in [
        line.split() for line in everywhere.out.splitlines()
    ]


def test_get_yaml_of_a_namespace_pipes_back_into_apply(
    meshd_server: MeshdProcess, files: dict[str, str], namespace: str
) -> None:
    assert (
        meshctl(meshd_server, "apply", "-f", files["dr"], "-f", files["vs"], "-n", namespace).code
        == 0
    )
    exported = meshctl(meshd_server, "get", "dr", "-n", namespace, "-o", "yaml").out
    exported += meshctl(meshd_server, "get", "vs", "-n", namespace, "-o", "yaml").out
    back = meshctl(meshd_server, "apply", "-f", "-", stdin=exported)
    assert (back.code, back.out) == (0, f"{DR} unchanged\n{VS} unchanged\n")


def test_weights_summing_to_90_are_rejected_with_the_field_path(
    meshd_server: MeshdProcess, files: dict[str, str], namespace: str
) -> None:
    result = meshctl(meshd_server, "apply", "-f", files["dr"], "-f", files["vs90"], "-n", namespace)
    assert result.code == 1
    assert result.out == ""
    assert result.err.startswith("Error: ")
    assert "spec.http[1].route: weights sum to 90; they must sum to 100" in result.err
    assert f"VirtualService {namespace}/reviews" in result.err
    # Nothing of the batch was applied, not even the valid DestinationRule.
    assert meshctl(meshd_server, "get", "dr", "reviews", "-n", namespace).code == 3


def test_dry_run_writes_nothing(
    meshd_server: MeshdProcess, files: dict[str, str], namespace: str
) -> None:
    dry = meshctl(
        meshd_server, "apply", "-f", files["dr"], "-f", files["vs"], "-n", namespace, "--dry-run"
    )
    assert (dry.code, dry.out) == (0, f"{DR} created (dry run)\n{VS} created (dry run)\n")
    missing = meshctl(meshd_server, "get", "vs", "reviews", "-n", namespace)
    assert missing.code == 3
    assert "does not exist" in missing.err
    listed = meshctl(meshd_server, "get", "vs", "-n", namespace)
    assert (listed.code, listed.out) == (0, "")
    assert "No vs found" in listed.err


def test_history_and_rollback(
    meshd_server: MeshdProcess, files: dict[str, str], namespace: str
) -> None:
    assert (
        meshctl(meshd_server, "apply", "-f", files["dr"], "-f", files["vs"], "-n", namespace).code
        == 0
    )
    changed = meshctl(meshd_server, "apply", "-f", files["vs-v1"], "-n", namespace)
    assert changed.out == f"{VS} configured\n"

    history = meshctl(meshd_server, "history", "vs", "reviews", "-n", namespace)
    rows = [line.split() for line in history.out.splitlines()]
    assert rows[0] == ["REVISION", "OPERATION", "ACTOR", "WHEN"]
    assert [r[:3] for r in rows[1:]] == [["1", "create", "bootstrap"], ["2", "update", "bootstrap"]]
    assert all(r[-1] == "ago)" or r[-1] == "now)" for r in rows[1:])

    rev1 = meshctl(
        meshd_server, "history", "vs", "reviews", "-n", namespace, "--revision", "1", "-o", "yaml"
    )
    assert yaml.safe_load(rev1.out) == expected(REVIEWS_VIRTUAL_SERVICE, namespace)

    back = meshctl(meshd_server, "rollback", "vs", "reviews", "-n", namespace, "--to-revision", "1")
    assert (back.code, back.out) == (0, f"{VS} rolled back to revision 1 (now revision 3)\n")
    now = meshctl(meshd_server, "get", "vs", "reviews", "-n", namespace, "-o", "yaml")
    assert yaml.safe_load(now.out) == expected(REVIEWS_VIRTUAL_SERVICE, namespace)

    nowhere = meshctl(
        meshd_server, "rollback", "vs", "reviews", "-n", namespace, "--to-revision", "9"
    )
    assert nowhere.code == 3
    assert "no revision 9" in nowhere.err


def test_delete_by_name_and_from_files(
    meshd_server: MeshdProcess, files: dict[str, str], namespace: str
) -> None:
    assert (
        meshctl(meshd_server, "apply", "-f", files["dr"], "-f", files["vs"], "-n", namespace).code
        == 0
    )
    refused = meshctl(meshd_server, "delete", "dr", "reviews", "-n", namespace)
    assert refused.code == 1, "the VirtualService still routes to the subsets"
    assert "Error: " in refused.err

    gone = meshctl(meshd_server, "delete", "-f", files["dr"], "-f", files["vs"], "-n", namespace)
    assert (gone.code, gone.err) == (0, "")
    assert gone.out == f"{VS} deleted\n{DR} deleted\n"
    assert meshctl(meshd_server, "get", "vs", "reviews", "-n", namespace).code == 3

    assert meshctl(meshd_server, "apply", "-f", files["dr"], "-n", namespace).code == 0
    by_name = meshctl(meshd_server, "delete", "destinationrule", "reviews", "-n", namespace)
    assert (by_name.code, by_name.out) == (0, f"{DR} deleted\n")
    again = meshctl(meshd_server, "delete", "destinationrule", "reviews", "-n", namespace)
    assert again.code == 3
    quiet = meshctl(meshd_server, "delete", "dr", "reviews", "-n", namespace, "--ignore-not-found")
    assert (quiet.code, quiet.out, quiet.err) == (0, "", "")

    history = meshctl(meshd_server, "history", "dr", "reviews", "-n", namespace)
    assert [line.split()[:2] for line in history.out.splitlines()[1:]] == [
        ["1", "create"],
        ["2", "delete"],
        ["3", "create"],
        ["4", "delete"],
    ]


def test_viewer_token_reads_but_gets_403_on_apply(
    meshd_server: MeshdProcess, files: dict[str, str], namespace: str
) -> None:
    created = meshctl(
        meshd_server, "admin-token", "create", "--name", f"viewer-{namespace}", "--role", "viewer"
    )
    assert created.code == 0, created.err
    viewer = created.out.strip()
    assert viewer.startswith("mshd_")
    assert "\n" not in viewer

    denied = meshctl(
        meshd_server, "apply", "-f", files["dr"], "-n", namespace, env={"MESHD_TOKEN": viewer}
    )
    assert denied.code == 1
    assert "role viewer" in denied.err
    assert "admin-token create" in denied.err
    assert (
        meshctl(meshd_server, "get", "dr", "-n", namespace, env={"MESHD_TOKEN": viewer}).code == 0
    )

    listed = meshctl(meshd_server, "admin-token", "list")
    assert f"viewer-{namespace}" in listed.out
    assert viewer not in listed.out
    token_id = next(
        line.split()[0] for line in listed.out.splitlines() if f"viewer-{namespace}" in line
    )
    assert meshctl(meshd_server, "admin-token", "revoke", token_id).code == 0


def test_unauthenticated_and_bad_tokens(meshd_server: MeshdProcess, namespace: str) -> None:
    none = meshctl(meshd_server, "get", "vs", "-n", namespace, drop_token=True)
    assert none.code == 2
    assert "no token" in none.err
    bad = meshctl(meshd_server, "get", "vs", "-n", namespace, "--token", "mshd_wrong")
    assert bad.code == 1
    assert "came from --token" in bad.err


def test_proxy_status_on_an_empty_mesh_prints_the_header(meshd_server: MeshdProcess) -> None:
    # No other test leaves an instance registered; one deregistered just now disappears
    # with the next compile.
    wait_until(
        lambda: meshctl(meshd_server, "proxy-status").out == PROXY_HEADER + "\n",
        "proxy-status of the empty mesh to print only its header",
    )
    result = meshctl(meshd_server, "proxy-status")
    assert (result.code, result.out, result.err) == (0, PROXY_HEADER + "\n", "")
    assert in_process(meshd_server, "get", "proxies").out == PROXY_HEADER + "\n"


def test_version(meshd_server: MeshdProcess) -> None:
    result = meshctl(meshd_server, "version", drop_token=True)
    assert result.code == 0, result.err
    assert result.out.splitlines()[1:3] == [f"Server: {meshd_server.url}", "  healthz: ok"]
    assert result.out.splitlines()[3].startswith("  readyz:  ready")


def test_connection_refused_says_which_url(meshd_server: MeshdProcess) -> None:
    from tests.support.processes import free_port

    url = f"http://127.0.0.1:{free_port()}"
    result = meshctl(meshd_server, "get", "vs", "--server", url)
    assert result.code == 1
    assert f"cannot connect to meshd at {url}" in result.err
    assert "is meshd running? (meshd serve)" in result.err


def test_admin_token_file_in_the_data_dir(meshd_server: MeshdProcess, namespace: str) -> None:
    data = meshd_server.home.parent / f"fake-data-{namespace}"
    data.mkdir()
    (data / "admin.token").write_text(meshd_server.token + "\n")
    result = meshctl(
        meshd_server, "get", "vs", "-n", namespace, "--data-dir", str(data), drop_token=True
    )
    assert result.code == 0, result.err


# --- with registered instances: proxies, proxy-config and describe's Affects ----------------


@pytest.fixture
def instances(meshd_server: MeshdProcess, namespace: str) -> Iterator[list[str]]:
    """productpage and reviews v1/v2/v3 registered in ``namespace``; deregistered after."""
    headers = {"Authorization": f"Bearer {meshd_server.token}"}
    ids: list[str] = []
    with httpx.Client(
        base_url=meshd_server.url,
        headers=headers,
        timeout=10,
        trust_env=False,
        verify=meshd_server.verify(),
    ) as http:
        try:
            for n, (service, version) in enumerate(
                [("productpage", "v1"), ("reviews", "v1"), ("reviews", "v2"), ("reviews", "v3")]
            ):
                instance_id = f"{service}-{version}.{namespace}"
                answer = http.put(
                    f"/v1/instances/{instance_id}",
                    json={
                        "service": service,
                        "namespace": namespace,
                        "address": "127.0.0.1",
                        "port": 16000 + n,
                        "appPort": 9080,
                        "labels": {"app": service, "version": version},
                    },
                )
                assert answer.status_code == 200, answer.text
                ids.append(instance_id)
            yield ids
        finally:
            for instance_id in ids:
                http.delete(f"/v1/instances/{instance_id}")


def test_proxy_status_proxy_config_and_describe_with_instances(
    meshd_server: MeshdProcess, files: dict[str, str], namespace: str, instances: list[str]
) -> None:
    assert (
        meshctl(meshd_server, "apply", "-f", files["dr"], "-f", files["vs"], "-n", namespace).code
        == 0
    )
    productpage = instances[0]

    def listed() -> bool:
        out = meshctl(meshd_server, "proxy-status").out
        return all(i in out for i in instances)

    wait_until(listed, "the registered proxies to show in proxy-status")
    status = meshctl(meshd_server, "proxy-status", productpage)
    head, row = status.out.splitlines()[:2]
    assert head.split() == PROXY_HEADER.split()
    assert row.split()[:2] == [productpage, f"productpage.{namespace}"]
    assert any(state in row for state in ("NOT SENT", "PENDING", "SYNCED", "STALE"))

    def has_config() -> bool:
        return meshctl(meshd_server, "proxy-config", productpage).code == 0

    wait_until(has_config, "productpage's first config")
    summary = meshctl(meshd_server, "proxy-config", productpage).out
    assert summary.startswith(f"Proxy:     {productpage} (service productpage.{namespace})\n")
    assert f"[from VirtualService {namespace}/reviews]" in summary
    jason = next(line for line in summary.splitlines() if "jason" in line)
    assert "|v2|reviews." in jason
    split = next(line for line in summary.splitlines() if "80%" in line)
    assert "|v1|reviews." in split
    assert "|v3|reviews." in split
    as_json = json.loads(meshctl(meshd_server, "proxy-config", productpage, "-o", "json").out)
    assert as_json["proxy_id"] == productpage

    def affects() -> bool:
        text = meshctl(meshd_server, "describe", "vs", "reviews", "-n", namespace).out
        return productpage in text.split("Affects:")[1]

    wait_until(affects, "describe to list productpage among the affected proxies")
    described = meshctl(meshd_server, "describe", "vs", "reviews", "-n", namespace).out
    assert "Kind:        VirtualService (networking.istio.io/v1)" in described
    assert "History (latest 1 of 1):" in described


def test_describe_of_a_resource_affecting_no_proxy(
    meshd_server: MeshdProcess, files: dict[str, str], namespace: str
) -> None:
    assert in_process(meshd_server, "apply", "-f", files["dr"], "-n", namespace).code == 0
    result = in_process(meshd_server, "describe", "dr", "reviews", "-n", namespace)
    assert result.code == 0, result.err
    assert result.out.startswith(f"Name:        reviews\nNamespace:   {namespace}\n")
    assert result.out.endswith("Affects: 0 proxies\n")


# --- HTTPS: trusting meshd's certificate -------------------------------------------------------


def no_ca(home: Path, **extra: str) -> dict[str, str]:
    """An environment with no CA file and no data dir: only a pin in ``home`` (if any)."""
    home.mkdir(parents=True, exist_ok=True)
    return {"HOME": str(home), "MESHD_CA_FILE": "", **extra}


def test_https_with_ca_file_flag_env_and_config(meshd_server: MeshdProcess, namespace: str) -> None:
    server, ca = meshd_server, meshd_server.ca_file
    no_env_ca = {"MESHD_CA_FILE": ""}
    ok = meshctl(server, "get", "vs", "-n", namespace, "--ca-file", str(ca), env=no_env_ca)
    assert ok.code == 0, ok.err
    assert meshctl(server, "get", "vs", "-n", namespace, env={"MESHD_CA_FILE": str(ca)}).code == 0

    config = server.home / f"{namespace}.yaml"
    config.write_text(f"server: {server.url}\ntoken: {server.token}\ncaFile: {ca.name}\n")
    config.chmod(0o600)
    shutil.copy(ca, config.parent / ca.name)
    from_config = meshctl(
        server,
        "get",
        "vs",
        "-n",
        namespace,
        "--config",
        str(config),
        env={"MESHD_ADDR": "", "MESHD_TOKEN": "", "MESHD_CA_FILE": ""},
    )
    assert (from_config.code, from_config.err) == (
        0,
        "No vs found in namespace " + namespace + ".\n",
    )


def test_https_with_the_data_dirs_bundle(
    meshd_server: MeshdProcess, namespace: str, tmp_path: Path
) -> None:
    env = no_ca(tmp_path / "home")
    result = meshctl(
        meshd_server,
        "get",
        "vs",
        "-n",
        namespace,
        "--data-dir",
        str(meshd_server.data_dir),
        env=env,
    )
    assert (result.code, result.err) == (0, f"No vs found in namespace {namespace}.\n")
    assert not (tmp_path / "home" / ".config").exists(), "nothing pinned"


def test_https_with_the_wrong_ca_file_says_which_file(
    meshd_server: MeshdProcess, namespace: str, tmp_path: Path
) -> None:
    other = tmp_path / "other-ca.pem"
    other.write_text(make_root("not meshd's").pem)
    result = meshctl(meshd_server, "get", "vs", "-n", namespace, env={"MESHD_CA_FILE": str(other)})
    assert result.code == 1
    assert f"cannot verify the TLS certificate of {meshd_server.url}" in result.err
    assert f"against {other} (from MESHD_CA_FILE): " in result.err
    assert "ca-bundle.pem" in result.err


def test_trust_on_first_use_pins_the_bundle_once(
    meshd_server: MeshdProcess, namespace: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    env = no_ca(home)
    first = meshctl(meshd_server, "get", "vs", "-n", namespace, env=env)
    assert first.code == 0, first.err
    pin = pin_path({"HOME": str(home)}, meshd_server.url)
    assert pin.read_text() == meshd_server.ca_file.read_text()
    assert stat.S_IMODE(pin.stat().st_mode) == 0o644
    assert stat.S_IMODE(pin.parent.stat().st_mode) == 0o700
    note, listed = first.err.splitlines()
    assert meshd_server.url in note
    assert str(pin) in note
    for fingerprint in read_bundle_file(meshd_server.ca_file).fingerprints:
        assert fingerprint in note
    assert listed == f"No vs found in namespace {namespace}."

    second = meshctl(meshd_server, "get", "vs", "-n", namespace, env=env)
    assert (second.code, second.err) == (0, f"No vs found in namespace {namespace}.\n")

    trusted = meshctl(meshd_server, "ca", "trust", env=env)
    assert trusted.code == 0, trusted.err
    assert trusted.out.startswith(f"CA bundle of {meshd_server.url} is already pinned in {pin}")


# --- workload identity: join tokens, certificates, the CA ----------------------------------------


def test_join_token_signs_a_csr_then_shows_used_and_is_revoked(
    meshd_server: MeshdProcess, namespace: str
) -> None:
    created = meshctl(meshd_server, "token", "create", "--service", "reviews", "-n", namespace)
    assert created.code == 0, created.err
    token = created.out.strip()
    assert token.startswith("mjt_")
    assert "\n" not in token
    identity = f"spiffe://cluster.local/ns/{namespace}/sa/reviews"
    assert identity in created.err
    assert "single-use" in created.err
    token_id = created.err.split("created join token ", 1)[1].split()[0]

    listed = meshctl(meshd_server, "token", "list")
    row = next(line.split() for line in listed.out.splitlines() if line.startswith(token_id))
    assert row[:6] == [token_id, "reviews", namespace, identity, "single", "no"]

    proxy = f"reviews-1.{namespace}"
    _key, csr = make_csr()
    with httpx.Client(
        base_url=meshd_server.url, verify=meshd_server.verify(), timeout=10, trust_env=False
    ) as http:
        signed = http.post(
            "/v1/ca/sign",
            json={"csr": csr, "proxy": proxy},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert signed.status_code == 200, signed.text
    assert signed.json()["spiffeId"] == identity

    used = meshctl(meshd_server, "token", "list")
    row = next(line.split() for line in used.out.splitlines() if line.startswith(token_id))
    assert row[5] == "yes"
    assert token not in used.out

    certs = meshctl(meshd_server, "certs")
    assert certs.code == 0, certs.err
    row = next(line.split() for line in certs.out.splitlines() if line.startswith(proxy + " "))
    serial = str(signed.json()["serial"])
    assert row[:4] == [proxy, identity, str(signed.json()["root"])[:12], "(signing)"]
    assert row[4] == serial[:12]
    assert row[5] == "in"
    assert row[-1] == "join-token"
    as_json = json.loads(meshctl(meshd_server, "certs", "-o", "json").out)
    assert any(c["proxy"] == proxy and c["rootTrusted"] for c in as_json["items"])

    revoked = meshctl(meshd_server, "token", "revoke", token_id)
    assert (revoked.code, revoked.out) == (0, f"join token {token_id} revoked\n")
    assert token_id not in meshctl(meshd_server, "token", "list").out
    again = meshctl(meshd_server, "token", "revoke", token_id)
    assert again.code == 3
    assert "no join token" in again.err


def test_ca_status_shows_the_bundle(meshd_server: MeshdProcess) -> None:
    result = meshctl(meshd_server, "ca", "status")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0] == "Trust domain:  cluster.local"
    assert lines[1].startswith("Bundle:        digest ")
    assert lines[2].split() == ["ROOT", "SIGNING", "NOT", "AFTER"]
    (root,) = read_bundle_file(meshd_server.ca_file).roots
    signing_root = root.fingerprint.replace(":", "").lower()[:12]
    assert lines[3].split()[:2] == [signing_root, "yes"]
    assert lines[4] == "Rotation:      none (meshctl ca rotate starts one)"
    status = json.loads(meshctl(meshd_server, "ca", "status", "-o", "json").out)
    assert status["rotation"] is None


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_root_rotation_then_the_old_pin_fails_until_refreshed(
    meshd_factory: type[MeshdProcess], tmp_path: Path
) -> None:
    server = meshd_factory(tmp_path / "data", extra_args=["--cert-ttl", "10s"]).start()
    home = tmp_path / "home"
    pinned = no_ca(home)
    first = meshctl(server, "ca", "trust", env=pinned)
    assert first.code == 0, first.err
    pin = pin_path({"HOME": str(home)}, server.url)
    old_bundle = pin.read_text()
    assert old_bundle == server.ca_file.read_text()

    rotated = meshctl(server, "ca", "rotate", "--wait", "--timeout", "60", timeout=90)
    assert rotated.code == 0, rotated.err + rotated.out
    assert "Rotation:      distributing the new root" in rotated.out
    events = [line.split(" ", 3)[2] for line in rotated.out.splitlines() if line[:4].isdigit()]
    assert events == ["switched:", "finished:"]
    assert "meshctl ca trust --refresh" in rotated.err
    assert server.ca_file.read_text() != old_bundle

    status = meshctl(server, "ca", "status")
    assert "Rotation:      none" in status.out
    assert ", 1 root" in status.out

    # The pin still holds the old root only: meshd's certificate no longer verifies.
    stale = meshctl(server, "get", "vs", env=pinned)
    assert stale.code == 1
    assert "meshd's CA changed" in stale.err
    assert "meshctl ca trust --refresh" in stale.err
    assert pin.read_text() == old_bundle, "never re-pinned silently"

    refreshed = meshctl(server, "ca", "trust", "--refresh", env=pinned)
    assert refreshed.code == 0, refreshed.err
    assert refreshed.out.startswith(f"CA bundle of {server.url} re-pinned in {pin}")
    assert "removed: root SHA-256" in refreshed.out
    assert pin.read_text() == server.ca_file.read_text()
    assert meshctl(server, "get", "vs", env=pinned).code == 0
