"""The sidecar's configuration: the newest valid snapshot, where it came from, and its
copy on disk.

:class:`ConfigStore` holds the current :class:`AppliedConfig` in a
:class:`registry.latest.Latest`, so listener code watches it and always gets the newest
one (close the generator: ``async with aclosing(store.current.watch()) as updates:
async for applied in updates: ...``). The last good snapshot is
saved to ``<state-dir>/snapshot.json`` (mode 0600, written to a temp file, fsynced and
renamed, then the directory fsynced), so a sidecar restarted while meshd is down
serves what it served before.

File I/O here is synchronous; the agent runs it in a worker thread. Everything that
touches :attr:`ConfigStore.current` runs on the event loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from meshd.compile import codec
from meshd.compile.check import check_snapshot
from meshd.compile.snapshot import SCHEMA_VERSION, ProxySnapshot
from registry.latest import Latest
from sidecar.errors import InvalidSnapshot, StateError
from sidecar.settings import is_id_suffix, new_id_suffix

log = logging.getLogger("sidecar.config")

SNAPSHOT_FILE = "snapshot.json"
ID_SUFFIX_FILE = "instance-id-suffix"
PRIVATE_FILE_MODE = 0o600
STATE_DIR_MODE = 0o700

Source = Literal["meshd", "saved"]


@dataclass(frozen=True, slots=True)
class AppliedConfig:
    """A snapshot being served. ``source`` is ``saved`` while it comes from the state dir
    and meshd has not confirmed it yet; ``applied_at`` is a Unix time."""

    snapshot: ProxySnapshot
    source: Source
    applied_at: float

    @property
    def version(self) -> str:
        return self.snapshot.version


@dataclass(frozen=True, slots=True)
class Rejection:
    """The last snapshot the sidecar refused (and NACKed)."""

    version: str
    reason: str
    at: float


# --- validation -------------------------------------------------------------------------


def decode_snapshot(
    raw: bytes, proxy_id: str | None, *, expected_version: str = ""
) -> ProxySnapshot:
    """Decode and check a snapshot document; raise :class:`InvalidSnapshot` listing why
    it must not be served. ``proxy_id`` None skips the ownership check;
    ``expected_version`` is the version meshd announced for it (``X-Mesh-Version``)."""
    try:
        data: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidSnapshot([f"not JSON: {exc}"], version=expected_version) from exc
    if not isinstance(data, dict):
        raise InvalidSnapshot(["<root>: expected an object"], version=expected_version)
    version = data.get("version")
    version = version if isinstance(version, str) and version else expected_version
    schema = data.get("schema", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION:
        raise InvalidSnapshot(
            [
                f"schema: {schema!r} is not supported: this sidecar reads schema "
                f"{SCHEMA_VERSION}; upgrade mesh-sidecar to match meshd"
            ],
            version=version,
        )
    try:
        snapshot = codec.from_plain(ProxySnapshot, data)
    except (codec.CodecError, TypeError) as exc:
        raise InvalidSnapshot([str(exc)], version=version) from exc
    errors: list[str] = []
    if proxy_id is not None and snapshot.proxy_id != proxy_id:
        errors.append(f"proxy_id: {snapshot.proxy_id!r} is not this proxy ({proxy_id!r})")
    if expected_version and snapshot.version != expected_version:
        errors.append(
            f"version: {snapshot.version!r} differs from the announced {expected_version!r}"
        )
    errors.extend(check_snapshot(snapshot))
    if errors:
        raise InvalidSnapshot(errors, version=version)
    return snapshot


def summary(snapshot: ProxySnapshot) -> str:
    out = snapshot.outbound
    return f"{len(out.virtual_hosts)} virtual hosts, {len(out.clusters)} clusters"


# --- the state directory ----------------------------------------------------------------


def prepare_state_dir(path: Path) -> None:
    """Create ``path`` (mode 0700) if it is missing; warn when others can read it."""
    try:
        path.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise StateError(
            f"cannot create the state dir {path}: {exc.strerror or exc}; choose a "
            "writable one with --state-dir (or MESH_STATE_DIR)"
        ) from exc
    if not path.is_dir():
        raise StateError(f"the state dir {path} is not a directory")
    if mode & 0o077:
        log.warning(
            "state dir %s is accessible by other users (mode %04o); it holds this "
            "sidecar's private state: chmod 700 %s",
            path,
            mode,
            path,
        )


def write_private_file(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, mode 0600: a crash leaves the old file
    or the new one, never a mix. Raises :class:`StateError`."""
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), PRIVATE_FILE_MODE)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = ""
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise StateError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def remove_stale_temp_files(path: Path) -> None:
    """Temp files a crash left behind while writing ``path``."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()


def load_or_create_id_suffix(state_dir: Path) -> str:
    """The 8-hex suffix of the derived instance id, stable across restarts."""
    path = state_dir / ID_SUFFIX_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if is_id_suffix(text):
        return text
    if text:
        log.warning("%s holds %r, not 8 hex digits; choosing a new instance id", path, text[:40])
    remove_stale_temp_files(path)
    suffix = new_id_suffix()
    write_private_file(path, (suffix + "\n").encode())
    return suffix


# --- the store ----------------------------------------------------------------------------


class ConfigStore:
    """The config of one proxy: current value, counters, and the saved copy."""

    def __init__(self, state_dir: Path, proxy_id: str) -> None:
        self.state_dir = state_dir
        self.proxy_id = proxy_id
        self.current: Latest[AppliedConfig | None] = Latest(None)
        self.updates_total = 0
        self.rejections_total = 0
        self.last_rejection: Rejection | None = None

    @property
    def path(self) -> Path:
        return self.state_dir / SNAPSHOT_FILE

    @property
    def version(self) -> str:
        """The version being served ("" when none): what the next poll sends (the ACK)."""
        applied = self.current.value
        return applied.version if applied is not None else ""

    # --- on the event loop -------------------------------------------------------------

    def apply(self, snapshot: ProxySnapshot, source: Source = "meshd") -> AppliedConfig:
        """Serve ``snapshot`` from now on (it must have passed :func:`decode_snapshot`)."""
        if snapshot.proxy_id != self.proxy_id:
            raise InvalidSnapshot(
                [f"proxy_id: {snapshot.proxy_id!r} is not this proxy ({self.proxy_id!r})"],
                version=snapshot.version,
            )
        applied = AppliedConfig(snapshot, source, time.time())
        self.current.set(applied)
        if source == "meshd":
            self.updates_total += 1
        return applied

    def confirm(self) -> bool:
        """meshd sent the version we serve from the saved copy: it is meshd's now.
        False when there was nothing to confirm."""
        applied = self.current.value
        if applied is None or applied.source == "meshd":
            return False
        self.current.set(AppliedConfig(applied.snapshot, "meshd", applied.applied_at))
        return True

    def record_rejection(self, version: str, reason: str) -> None:
        self.rejections_total += 1
        self.last_rejection = Rejection(version, reason, time.time())

    # --- file I/O (run in a worker thread) -----------------------------------------------

    def save(self, snapshot: ProxySnapshot) -> None:
        """Persist ``snapshot`` as the last good config. Raises :class:`StateError`."""
        if snapshot.proxy_id != self.proxy_id:
            raise StateError(
                f"refusing to save the snapshot of proxy {snapshot.proxy_id!r} as the "
                f"config of {self.proxy_id!r}"
            )
        write_private_file(self.path, codec.dumps(snapshot))

    def read_saved(self) -> ProxySnapshot | None:
        """The saved snapshot when there is a valid one for this proxy; None otherwise
        (a missing file silently; a torn, invalid or foreign one with a log line)."""
        remove_stale_temp_files(self.path)
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        try:
            snapshot = decode_snapshot(raw, None)
        except InvalidSnapshot as exc:
            log.warning(
                "ignoring the saved config in %s: %s; waiting for meshd",
                self.path,
                exc.errors[0],
            )
            return None
        if snapshot.proxy_id != self.proxy_id:
            log.warning(
                "ignoring the saved config in %s: it is proxy %s's, this is %s",
                self.path,
                snapshot.proxy_id,
                self.proxy_id,
            )
            return None
        return snapshot
