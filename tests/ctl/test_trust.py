"""How meshctl trusts meshd's certificate: the resolution order, trust on first use
(pinning), a pin that stops verifying, ``ca trust``. No sockets: the fake meshd plays
the TLS handshake from the roots each request's client verifies with."""

from __future__ import annotations

import json
import shutil
import ssl
import stat
from pathlib import Path

import httpx
import pytest

from meshd.ctl.config import Flags, resolve
from meshd.ctl.errors import CtlError
from meshd.ctl.trust import (
    parse_bundle,
    pin_path,
    read_bundle_file,
    verify_failure,
    write_pin,
)
from tests.ctl.fake import DEFAULT_SERVER, TOKEN, VERIFY, FakeMeshd, run
from tests.ctl.pki import CaRoot, make_root, roots_body

SERVER = "https://meshd.example:15012"
ROOTS = "/v1/ca/roots"


@pytest.fixture(scope="module")
def root_a() -> CaRoot:
    return make_root("root A")


@pytest.fixture(scope="module")
def root_b() -> CaRoot:
    return make_root("root B")


def the_pin(fake: FakeMeshd, server: str = SERVER) -> Path:
    return pin_path({"HOME": str(fake.home)}, server)


def serve(fake: FakeMeshd, *roots: CaRoot, serving: CaRoot | None = None) -> None:
    """The fake serves ``roots`` as its bundle, with a certificate from ``serving``
    (default: the first root), and an empty list of VirtualServices."""
    fake.serving_root = serving or roots[0]
    fake.on("GET", ROOTS, (200, roots_body(*roots)))
    fake.on("GET", "/v1/resources/vs", (200, {"items": []}))


def authorized(request: httpx.Request) -> bool:
    return "authorization" in request.headers


# --- where the roots come from ------------------------------------------------------------


def test_trust_resolution_order(tmp_path: Path, root_a: CaRoot) -> None:
    home = tmp_path / "home"
    env = {"HOME": str(home)}
    data = tmp_path / "data"
    data.mkdir()
    ca = tmp_path / "ca.pem"
    ca.write_text(root_a.pem)
    pin = pin_path(env, SERVER)

    first = resolve(Flags(server=SERVER), env)
    assert (first.trust, first.ca_file, first.pin_file) == ("first-use", None, pin)

    write_pin(pin, root_a.pem)
    pinned = resolve(Flags(server=SERVER), env)
    assert (pinned.trust, pinned.ca_file) == ("pinned", pin)

    # A data dir without ca-bundle.pem does not count.
    assert resolve(Flags(server=SERVER, data_dir=str(data)), env).trust == "pinned"
    (data / "ca-bundle.pem").write_text(root_a.pem)
    from_data = resolve(Flags(server=SERVER, data_dir=str(data)), env)
    assert (from_data.trust, from_data.ca_file, from_data.ca_source) == (
        "data-dir",
        data / "ca-bundle.pem",
        "--data-dir",
    )
    from_env = resolve(Flags(server=SERVER), {**env, "MESHD_DATA_DIR": str(data)})
    assert (from_env.trust, from_env.ca_source) == ("data-dir", "MESHD_DATA_DIR")

    explicit = resolve(Flags(server=SERVER, data_dir=str(data), ca_file=str(ca)), env)
    assert (explicit.trust, explicit.ca_file, explicit.ca_source) == ("ca-file", ca, "--ca-file")
    from_ca_env = resolve(
        Flags(server=SERVER, data_dir=str(data)), {**env, "MESHD_CA_FILE": str(ca)}
    )
    assert (from_ca_env.trust, from_ca_env.ca_source) == ("ca-file", "MESHD_CA_FILE")


def test_plain_http_needs_no_roots(tmp_path: Path) -> None:
    settings = resolve(Flags(server="http://127.0.0.1:15012"), {"HOME": str(tmp_path)})
    assert (settings.trust, settings.ca_file, settings.pin_file) == ("none", None, None)


@pytest.mark.parametrize(
    ("server", "name"),
    [
        ("https://127.0.0.1:15012", "127.0.0.1_15012.pem"),
        ("https://127.0.0.1:15012/mesh/", "127.0.0.1_15012.pem"),
        ("https://[::1]:15012", "__1_15012.pem"),
        ("https://MeshD.Example.", "meshd.example_443.pem"),
    ],
)
def test_one_pin_per_host_and_port(server: str, name: str) -> None:
    assert pin_path({"HOME": "/h"}, server) == Path("/h/.config/meshd/pinned") / name
    assert pin_path({"HOME": "/h", "XDG_CONFIG_HOME": "/x"}, server) == Path(
        "/x/meshd/pinned", name
    )


# --- trust on first use -------------------------------------------------------------------


def test_first_use_pins_the_bundle_then_verifies_with_it(
    fake: FakeMeshd, root_a: CaRoot, root_b: CaRoot
) -> None:
    shutil.rmtree(fake.home / ".config")  # no pinned/ directory yet
    serve(fake, root_a, root_b)
    result = run(fake, "get", "vs", "--server", SERVER)
    assert result.code == 0, result.err

    # The pin: exactly the bundle, 0644, in a 0700 directory.
    pin = the_pin(fake)
    assert pin.read_text() == root_a.pem + root_b.pem
    assert stat.S_IMODE(pin.stat().st_mode) == 0o644
    assert stat.S_IMODE(pin.parent.stat().st_mode) == 0o700

    # One line on stderr: what was pinned where, the fingerprints, how to check them.
    (note,) = [line for line in result.err.splitlines() if "pinned" in line]
    assert SERVER in note
    assert root_a.fingerprint in note
    assert root_b.fingerprint in note
    assert str(pin) in note
    assert "ca-bundle.pem" in note
    assert "openssl x509" in note

    # The roots were fetched unverified and without the token, then again verified
    # with themselves; the token went only over the verified connection.
    unverified, verified, listed = fake.requests
    assert (unverified.url.path, verified.url.path) == (ROOTS, ROOTS)
    assert unverified.extensions[VERIFY] is False
    assert not authorized(unverified)
    assert not authorized(verified)
    assert isinstance(verified.extensions[VERIFY], ssl.SSLContext)
    assert listed.url.path == "/v1/resources/vs"
    assert listed.headers["authorization"] == f"Bearer {TOKEN}"
    assert isinstance(listed.extensions[VERIFY], ssl.SSLContext)

    # The second run verifies with the pin, silently: no roots fetched, no note.
    fake.requests.clear()
    again = run(fake, "get", "vs", "--server", SERVER)
    assert again.code == 0, again.err
    assert "pinned" not in again.err
    assert [r.url.path for r in fake.requests] == ["/v1/resources/vs"]


def test_the_token_is_never_sent_unverified(fake: FakeMeshd, root_a: CaRoot) -> None:
    serve(fake, root_a)
    for argv in (("get", "vs"), ("version",), ("ca", "trust"), ("certs",)):
        the_pin(fake).unlink(missing_ok=True)
        fake.requests.clear()
        run(fake, *argv, "--server", SERVER)
        assert fake.requests, argv
        for request in fake.requests:
            if request.extensions[VERIFY] is False:
                assert not authorized(request), argv
                assert request.url.path == ROOTS, argv


def test_first_use_pins_nothing_when_the_bundle_does_not_verify_the_server(
    fake: FakeMeshd, root_a: CaRoot, root_b: CaRoot
) -> None:
    serve(fake, root_a, serving=root_b)
    result = run(fake, "get", "vs", "--server", SERVER)
    assert result.code == 1
    assert "does not verify its own certificate" in result.err
    assert "nothing was pinned and no token was sent" in result.err
    assert not the_pin(fake).exists()
    assert not any(authorized(r) for r in fake.requests)


def test_first_use_of_something_that_is_not_meshd(fake: FakeMeshd) -> None:
    fake.on("GET", ROOTS, (200, {"hello": "world"}))
    result = run(fake, "get", "vs", "--server", SERVER)
    assert result.code == 1
    assert "is not a trust bundle" in result.err
    assert not the_pin(fake).exists()
    fake.on("GET", ROOTS, (404, {"detail": "Not Found"}))
    missing = run(fake, "get", "vs", "--server", SERVER)
    assert missing.code == 1
    assert f"cannot fetch the CA bundle of {SERVER} to trust it on first use" in missing.err


def test_a_root_that_is_not_a_ca_is_refused() -> None:
    with pytest.raises(CtlError, match="not a CA certificate"):
        parse_bundle({"roots": [{"pem": "-----BEGIN CERTIFICATE-----\nxx\n"}]}, "here")


# --- a pin that no longer verifies ----------------------------------------------------------


def test_a_pin_that_no_longer_verifies_is_an_error_and_is_kept(
    fake: FakeMeshd, root_a: CaRoot, root_b: CaRoot
) -> None:
    write_pin(the_pin(fake), root_a.pem)
    serve(fake, root_b)  # meshd's CA changed (or something impersonates it)
    result = run(fake, "get", "vs", "--server", SERVER)
    assert result.code == 1
    lines = result.err.splitlines()
    assert lines[0].startswith(f"Error: {SERVER} presents a certificate that the CA bundle")
    assert str(the_pin(fake)) in lines[0]
    assert "meshd's CA changed" in lines[0]
    assert "impersonating" in lines[0]
    assert lines[1].startswith("Hint: ")
    assert "meshctl ca trust --refresh" in lines[1]
    # Not re-pinned: the pin is unchanged and the roots were not fetched again.
    assert the_pin(fake).read_text() == root_a.pem
    assert fake.requests == []
    assert [r.url.path for r in fake.refused] == ["/v1/resources/vs"]


def test_ca_trust_refresh_repins_deliberately(
    fake: FakeMeshd, root_a: CaRoot, root_b: CaRoot
) -> None:
    write_pin(the_pin(fake), root_a.pem)
    serve(fake, root_b)
    refused = run(fake, "ca", "trust", "--server", SERVER)
    assert refused.code == 1
    assert "meshctl ca trust --refresh" in refused.err
    assert the_pin(fake).read_text() == root_a.pem

    result = run(fake, "ca", "trust", "--refresh", "--server", SERVER)
    assert result.code == 0, result.err
    assert the_pin(fake).read_text() == root_b.pem
    lines = result.out.splitlines()
    assert lines[0] == f"CA bundle of {SERVER} re-pinned in {the_pin(fake)}"
    assert "trusted on first use" in lines[1]
    assert f"root SHA-256 {root_b.fingerprint}, signing" in lines[2]
    assert lines[3] == f"  removed: root SHA-256 {root_a.fingerprint}"
    assert not any(authorized(r) for r in fake.requests)
    assert run(fake, "get", "vs", "--server", SERVER).code == 0


def test_ca_trust_picks_up_a_new_root_over_the_pinned_connection(
    fake: FakeMeshd, root_a: CaRoot, root_b: CaRoot
) -> None:
    """During a rotation the bundle holds the old and the new root; fetched over a
    connection the old pin verifies, the new bundle can be pinned without --refresh."""
    write_pin(the_pin(fake), root_a.pem)
    serve(fake, root_a, root_b)
    result = run(fake, "ca", "trust", "--server", SERVER)
    assert result.code == 0, result.err
    assert result.out.splitlines()[0].endswith(f"re-pinned in {the_pin(fake)}")
    assert f"verified with {the_pin(fake)} (pinned)" in result.out
    assert read_bundle_file(the_pin(fake)).fingerprints == (root_a.fingerprint, root_b.fingerprint)
    (request,) = fake.requests
    assert isinstance(request.extensions[VERIFY], ssl.SSLContext)

    same = run(fake, "ca", "trust", "--server", SERVER)
    assert same.out.splitlines()[0] == f"CA bundle of {SERVER} is already pinned in {the_pin(fake)}"


def test_ca_trust_on_first_use_prints_the_fingerprints(fake: FakeMeshd, root_a: CaRoot) -> None:
    serve(fake, root_a)
    result = run(fake, "ca", "trust", "--server", SERVER)
    assert result.code == 0, result.err
    assert result.out.splitlines()[0] == f"CA bundle of {SERVER} pinned in {the_pin(fake)}"
    assert f"  root SHA-256 {root_a.fingerprint}, signing, not after 2035-01-01" in result.out
    assert the_pin(fake).read_text() == root_a.pem
    assert result.err == ""  # the output says it all: no second note


def test_ca_trust_of_a_plain_http_server_is_a_usage_error(fake: FakeMeshd) -> None:
    result = run(fake, "ca", "trust", "--server", "http://127.0.0.1:15012")
    assert result.code == 2
    assert "nothing to pin" in result.err


# --- CA files and the data dir ----------------------------------------------------------------


def test_the_data_dirs_bundle_is_used_before_the_pin(
    fake: FakeMeshd, tmp_path: Path, root_a: CaRoot, root_b: CaRoot
) -> None:
    write_pin(the_pin(fake), root_a.pem)
    data = tmp_path / "data"
    data.mkdir()
    (data / "ca-bundle.pem").write_text(root_b.pem)
    serve(fake, root_b)
    result = run(fake, "get", "vs", "--server", SERVER, "--data-dir", str(data))
    assert result.code == 0, result.err
    assert [r.url.path for r in fake.requests] == ["/v1/resources/vs"]


def test_a_ca_file_that_does_not_verify_names_itself(
    fake: FakeMeshd, tmp_path: Path, root_a: CaRoot, root_b: CaRoot
) -> None:
    ca = tmp_path / "other.pem"
    ca.write_text(root_a.pem)
    serve(fake, root_b)
    result = run(fake, "get", "vs", "--server", SERVER, "--ca-file", str(ca))
    assert result.code == 1
    lines = result.err.splitlines()
    assert lines[0] == (
        f"Error: cannot verify the TLS certificate of {SERVER} (from --server) against {ca} "
        "(from --ca-file): unable to get local issuer certificate"
    )
    assert "--ca-file" in lines[1]
    assert "ca-bundle.pem" in lines[1]
    assert not the_pin(fake).exists()  # a CA file is never replaced by a pin


def test_a_certificate_for_another_host_says_to_add_a_san(fake: FakeMeshd, root_a: CaRoot) -> None:
    write_pin(the_pin(fake), root_a.pem)
    serve(fake, root_a)
    fake.hostname_mismatch = True
    result = run(fake, "get", "vs", "--server", SERVER)
    assert result.code == 1
    assert "is not valid for meshd.example" in result.err
    assert "--san meshd.example" in result.err


def test_an_unreadable_pin_says_how_to_repin(fake: FakeMeshd) -> None:
    the_pin(fake).write_text("not a certificate\n")
    result = run(fake, "get", "vs", "--server", SERVER)
    assert result.code == 2
    assert "cannot load the CA bundle pinned for" in result.err
    assert "meshctl ca trust --refresh" in result.err


def test_verify_failure_is_found_behind_httpx_errors() -> None:
    cause = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cause.verify_message = "unable to get local issuer certificate"
    outer = httpx.ConnectError("wrapped")
    outer.__cause__ = cause
    found = verify_failure(outer)
    assert found is not None
    assert (found.reason, found.hostname) == ("unable to get local issuer certificate", False)
    assert verify_failure(httpx.ConnectError("[Errno 111] Connection refused")) is None


def test_default_server_is_https_with_the_pinned_default(fake: FakeMeshd) -> None:
    fake.on("GET", "/v1/proxies", (200, {"items": []}))
    result = run(fake, "proxy-status")
    assert result.code == 0, result.err
    (request,) = fake.requests
    assert str(request.url) == f"{DEFAULT_SERVER}/v1/proxies"
    assert isinstance(request.extensions[VERIFY], ssl.SSLContext)
    assert json.loads(json.dumps(dict(request.headers)))["authorization"] == f"Bearer {TOKEN}"
