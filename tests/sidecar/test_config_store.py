"""ConfigStore: validation of snapshots, the saved copy (0600, atomic, torn files),
the state dir and the stable instance id."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import stat
from pathlib import Path

import pytest
import trio
import trio.testing

from meshd.compile import codec
from sidecar.config_store import (
    ID_SUFFIX_FILE,
    SNAPSHOT_FILE,
    ConfigStore,
    decode_snapshot,
    load_or_create_id_suffix,
    prepare_state_dir,
    write_private_file,
)
from sidecar.errors import InvalidSnapshot, StateError
from tests.sidecar.support import PROXY, dangling_route_snapshot, encode, make_snapshot


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- decode_snapshot ---------------------------------------------------------------------


def test_a_valid_snapshot_decodes_equal() -> None:
    snap = make_snapshot("v7")
    assert decode_snapshot(encode(snap), PROXY, expected_version="v7") == snap
    assert decode_snapshot(encode(snap), None) == snap


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: b"{not json", "not JSON"),
        (lambda d: b"[1, 2]", "expected an object"),
        (lambda d: {**d, "schema": 2}, "schema: 2 is not supported"),
        (lambda d: {**d, "surprise": 1}, "unknown field(s) ['surprise']"),
        (lambda d: {**d, "version": 5}, "version: expected str"),
        (lambda d: {**d, "proxy_id": "ratings-1.default"}, "is not this proxy"),
        (lambda d: {**d, "version": "v8"}, "differs from the announced 'v7'"),
        (lambda d: {**d, "identity": "reviews"}, "is not a SPIFFE ID"),
    ],
)
def test_invalid_snapshots_are_refused_with_reasons(mutate: object, message: str) -> None:
    plain = codec.to_plain(make_snapshot("v7"))
    changed = mutate(plain)  # type: ignore[operator]
    raw = changed if isinstance(changed, bytes) else json.dumps(changed).encode()
    with pytest.raises(InvalidSnapshot) as caught:
        decode_snapshot(raw, PROXY, expected_version="v7")
    assert message in caught.value.reason()


def test_an_incoherent_snapshot_is_refused_by_check_snapshot() -> None:
    with pytest.raises(InvalidSnapshot) as caught:
        decode_snapshot(encode(dangling_route_snapshot("bad")), PROXY)
    assert "is not in the snapshot" in caught.value.reason()
    assert caught.value.version == "bad"


def test_the_reason_carries_the_first_errors() -> None:
    error = InvalidSnapshot([f"e{i}" for i in range(8)], version="v")
    assert error.reason().splitlines() == ["e0", "e1", "e2", "e3", "e4", "... and 3 more"]
    assert InvalidSnapshot([]).errors == ("the snapshot is invalid",)


# --- the saved copy ------------------------------------------------------------------------


def test_save_is_private_and_reads_back(tmp_path: Path) -> None:
    store = ConfigStore(tmp_path, PROXY)
    snap = make_snapshot("v1")
    store.save(snap)
    path = tmp_path / SNAPSHOT_FILE
    assert mode_of(path) == 0o600
    assert path.read_bytes() == codec.dumps(snap)
    assert ConfigStore(tmp_path, PROXY).read_saved() == snap
    assert [p.name for p in tmp_path.iterdir()] == [SNAPSHOT_FILE]  # no temp file left


def test_save_replaces_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash in the middle of a save leaves the previous copy intact."""
    store = ConfigStore(tmp_path, PROXY)
    store.save(make_snapshot("v1"))

    def crash(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(StateError, match=r"cannot write .*snapshot\.json: Input/output error"):
        store.save(make_snapshot("v2"))
    monkeypatch.undo()
    saved = store.read_saved()
    assert saved is not None
    assert saved.version == "v1"
    assert [p.name for p in tmp_path.iterdir()] == [SNAPSHOT_FILE]


def test_a_torn_temp_file_is_ignored_and_removed(tmp_path: Path) -> None:
    store = ConfigStore(tmp_path, PROXY)
    store.save(make_snapshot("v1"))
    torn = tmp_path / f".{SNAPSHOT_FILE}.k3j4h5.tmp"
    torn.write_bytes(encode(make_snapshot("v2"))[:100])
    saved = store.read_saved()
    assert saved is not None
    assert saved.version == "v1"
    assert not torn.exists()


def test_a_torn_saved_file_means_no_saved_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / SNAPSHOT_FILE).write_bytes(encode(make_snapshot("v1"))[:-40])
    assert ConfigStore(tmp_path, PROXY).read_saved() is None
    assert "ignoring the saved config" in caplog.text
    assert "not JSON" in caplog.text


def test_a_missing_saved_file_is_silent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert ConfigStore(tmp_path, PROXY).read_saved() is None
    assert caplog.text == ""


def test_another_proxys_snapshot_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = make_snapshot("v1", proxy_id="ratings-1.default")
    with pytest.raises(StateError, match="refusing to save the snapshot of proxy"):
        ConfigStore(tmp_path, PROXY).save(other)
    ConfigStore(tmp_path, "ratings-1.default").save(other)
    assert ConfigStore(tmp_path, PROXY).read_saved() is None
    assert "it is proxy ratings-1.default's, this is reviews-0a1b2c3d.default" in caplog.text
    with pytest.raises(InvalidSnapshot, match="is not this proxy"):
        ConfigStore(tmp_path, PROXY).apply(other)


def test_write_private_file_tightens_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("old")
    path.chmod(0o644)
    write_private_file(path, b"new")
    assert path.read_bytes() == b"new"
    assert mode_of(path) == 0o600


# --- the live value ---------------------------------------------------------------------


def test_apply_confirm_and_counters(tmp_path: Path) -> None:
    store = ConfigStore(tmp_path, PROXY)
    assert store.version == ""
    assert not store.confirm()
    saved = store.apply(make_snapshot("v1"), "saved")
    assert (saved.source, store.version, store.updates_total) == ("saved", "v1", 0)
    assert store.confirm()
    confirmed = store.current.value
    assert confirmed is not None
    assert (confirmed.source, confirmed.applied_at) == ("meshd", saved.applied_at)
    assert not store.confirm()
    store.apply(make_snapshot("v2"))
    assert (store.version, store.updates_total) == ("v2", 1)
    store.record_rejection("v3", "because")
    assert store.rejections_total == 1
    assert store.last_rejection is not None
    assert dataclasses.astuple(store.last_rejection)[:2] == ("v3", "because")


def test_watchers_see_the_newest_config(tmp_path: Path) -> None:
    """What the listener code will do: watch ``current`` and get each newer config."""
    store = ConfigStore(tmp_path, PROXY)
    seen: list[str | None] = []

    async def main() -> None:
        async def watch() -> None:
            watch = store.current.watch()
            async with contextlib.aclosing(watch) as updates:
                async for applied in updates:
                    seen.append(applied.version if applied else None)
                    if len(seen) == 3:
                        return

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                await trio.testing.wait_all_tasks_blocked()
                store.apply(make_snapshot("v1"))
                await trio.testing.wait_all_tasks_blocked()
                store.apply(make_snapshot("v2"))

    trio.run(main)
    assert seen == [None, "v1", "v2"]


# --- state dir and instance id -----------------------------------------------------------


def test_state_dir_is_created_private(tmp_path: Path) -> None:
    state = tmp_path / "a" / "b"
    prepare_state_dir(state)
    assert state.is_dir()
    assert mode_of(state) == 0o700


def test_an_open_state_dir_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tmp_path.chmod(0o755)
    prepare_state_dir(tmp_path)
    assert "accessible by other users (mode 0755)" in caplog.text


def test_an_unusable_state_dir_says_what_to_do(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match="--state-dir"):
        prepare_state_dir(blocker / "state")


def test_the_id_suffix_is_stable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = load_or_create_id_suffix(tmp_path)
    assert load_or_create_id_suffix(tmp_path) == first
    assert mode_of(tmp_path / ID_SUFFIX_FILE) == 0o600
    (tmp_path / ID_SUFFIX_FILE).write_text("garbage")
    replaced = load_or_create_id_suffix(tmp_path)
    assert replaced != "garbage"
    assert load_or_create_id_suffix(tmp_path) == replaced
    assert "choosing a new instance id" in caplog.text
