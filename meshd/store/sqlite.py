"""The default store: one sqlite file in meshd's data directory.

Durability: WAL journal with ``synchronous=FULL``, so a write method returns only after
its commit is fsynced; a SIGKILL or a power loss right after loses nothing. A lock file
next to the database (``flock``) keeps a second meshd from opening the same store, whose
in-memory state would silently diverge from this one.

Concurrency: one connection, guarded by one lock; every blocking sqlite call runs in a
worker thread (``anyio.to_thread``), so the event loop never waits on the disk.

Reads (``get``, ``list``, ``watch``) are served from an immutable in-memory
:class:`StoreState` that every committed resource write replaces; this process is the
only writer, so that state is exactly what is on disk. ``index`` is a change counter
kept in the database, so it keeps growing across restarts.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from meshd.errors import Conflict, StoreUnavailable
from meshd.schema.base import ResourceKey
from meshd.store.base import (
    AuditEntry,
    Operation,
    Revision,
    StoredResource,
    StoreState,
    WriteResult,
)
from meshd.store.common import (
    check_expected_revision,
    encode_body,
    encode_record,
    history_operation,
    lost_race,
    not_found,
)

__all__ = [
    "SqliteStore",
    "check_expected_revision",
    "encode_body",
    "encode_record",
    "history_operation",
    "lost_race",
    "not_found",
]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (name, value) VALUES ('change_index', 0);
CREATE TABLE IF NOT EXISTS resources (
    kind       TEXT NOT NULL,
    namespace  TEXT NOT NULL,
    name       TEXT NOT NULL,
    revision   INTEGER NOT NULL,
    body       TEXT NOT NULL,
    updated_at REAL NOT NULL,
    updated_by TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history (
    kind       TEXT NOT NULL,
    namespace  TEXT NOT NULL,
    name       TEXT NOT NULL,
    revision   INTEGER NOT NULL,
    operation  TEXT NOT NULL,
    body       TEXT,
    actor      TEXT NOT NULL,
    at         REAL NOT NULL,
    PRIMARY KEY (kind, namespace, name, revision)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    collection TEXT NOT NULL,
    id         TEXT NOT NULL,
    data       TEXT NOT NULL,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    at     REAL NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
"""

_RECORD_INSERT = "INSERT INTO records (collection, id, data) VALUES (?, ?, ?)"
_RECORD_UPSERT = "INSERT OR REPLACE INTO records (collection, id, data) VALUES (?, ?, ?)"

R = TypeVar("R")


# --- the store ---------------------------------------------------------------------------


class SqliteStore:
    """The store in one sqlite file at ``path`` (its directory must exist).

    Opened on first use, or explicitly with :meth:`open` (``open_store`` does, so a bad
    data directory fails at startup). Bodies handed out are shared with the store's
    state: treat them as read-only.
    """

    backend = "sqlite"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = anyio.Lock()
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._closed = False
        self._state = StoreState(0, MappingProxyType({}))
        self._notified_index = 0
        # Created lazily: an anyio Event needs a running event loop.
        self._changed: anyio.Event | None = None
        self._ordered: tuple[StoreState, list[StoredResource]] | None = None

    # --- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Open (creating if needed) the database; idempotent."""
        if self._conn is not None:
            return
        async with self._lock:
            if self._closed:
                raise self._closed_error()
            if self._conn is None:
                try:
                    conn, lock_fd, state = await anyio.to_thread.run_sync(self._open_sync)
                except sqlite3.Error as exc:
                    raise self._unavailable("open", exc) from exc
                self._conn, self._lock_fd, self._state = conn, lock_fd, state
                self._notified_index = state.index

    async def aclose(self) -> None:
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            conn, self._conn = self._conn, None
            lock_fd, self._lock_fd = self._lock_fd, None
            if conn is not None:
                await anyio.to_thread.run_sync(conn.close)
            if lock_fd is not None:
                os.close(lock_fd)  # releases the flock
        self._wake_watchers()

    def _open_sync(self) -> tuple[sqlite3.Connection, int, StoreState]:
        directory = self.path.parent
        if not directory.is_dir():
            raise StoreUnavailable(
                f"sqlite store: the data directory {directory} does not exist; create it "
                "or point --data-dir somewhere else",
                backend=self.backend,
                path=str(self.path),
            )
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise self._unavailable("open the lock file of", exc) from exc
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(lock_fd)
            raise StoreUnavailable(
                f"sqlite store {self.path} is in use by another process (another meshd with "
                "the same --data-dir?); stop it, or give this one its own data directory",
                backend=self.backend,
                path=str(self.path),
            ) from exc
        try:
            conn = self._connect()
            return conn, lock_fd, self._load(conn)
        except BaseException:
            os.close(lock_fd)
            raise

    def _connect(self) -> sqlite3.Connection:
        created = not self.path.exists()
        if created:
            # The store holds token hashes and the audit log: owner-only from the start.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreUnavailable(
                    f"sqlite store {self.path}: cannot switch to WAL mode (got {mode!r}); "
                    "put the data directory on a local filesystem",
                    backend=self.backend,
                    path=str(self.path),
                )
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=5000")
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"sqlite store {self.path} was written by a newer meshd (schema "
                    f"{version}, this one knows {SCHEMA_VERSION}); upgrade meshd",
                    backend=self.backend,
                    path=str(self.path),
                )
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except BaseException:
            conn.close()
            raise
        if created:
            # The new file's directory entry must survive a power loss too.
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return conn

    def _load(self, conn: sqlite3.Connection) -> StoreState:
        index = int(
            conn.execute("SELECT value FROM meta WHERE name = 'change_index'").fetchone()[0]
        )
        resources: dict[ResourceKey, StoredResource] = {}
        rows = conn.execute(
            "SELECT kind, namespace, name, revision, body, updated_at, updated_by FROM resources"
        )
        for kind, namespace, name, revision, body, updated_at, updated_by in rows:
            key = ResourceKey(kind, namespace, name)
            resources[key] = StoredResource(key, revision, json.loads(body), updated_at, updated_by)
        return StoreState(index, MappingProxyType(resources))

    # --- plumbing --------------------------------------------------------------------

    def _closed_error(self) -> StoreUnavailable:
        return StoreUnavailable(
            f"sqlite store {self.path} is closed (meshd is shutting down)",
            backend=self.backend,
            path=str(self.path),
        )

    def _unavailable(self, doing: str, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(
            f"sqlite store: could not {doing} {self.path}: {exc}; check that the data "
            "directory is writable, the disk is not full and the file is not damaged",
            backend=self.backend,
            path=str(self.path),
        )

    async def _run(self, doing: str, fn: Callable[[sqlite3.Connection], R]) -> R:
        """Run ``fn(connection)`` in a worker thread, holding the lock."""
        await self.open()
        async with self._lock:
            conn = self._conn
            if conn is None:
                raise self._closed_error()
            try:
                # Not abandoned on cancellation: a commit in flight finishes, and its new
                # state is published below before the cancellation propagates.
                return await anyio.to_thread.run_sync(fn, conn)
            except sqlite3.Error as exc:
                raise self._unavailable(doing, exc) from exc
            finally:
                self._wake_watchers()

    def _wake_watchers(self) -> None:
        if self._state.index == self._notified_index and not self._closed:
            return
        self._notified_index = self._state.index
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    def _publish(self, index: int, updates: Mapping[ResourceKey, StoredResource | None]) -> None:
        # Runs in the worker thread right after COMMIT, with the lock held: swapping the
        # reference is atomic, so readers see the old state or the new one.
        resources = dict(self._state.resources)
        for key, value in updates.items():
            if value is None:
                resources.pop(key, None)
            else:
                resources[key] = value
        self._state = StoreState(index, MappingProxyType(resources))

    async def _current(self) -> StoreState:
        await self.open()
        if self._closed:
            raise self._closed_error()
        return self._state

    # --- resources -------------------------------------------------------------------

    async def get(self, key: ResourceKey) -> StoredResource | None:
        return (await self._current()).resources.get(key)

    async def list(
        self, kind: str | None = None, namespace: str | None = None
    ) -> list[StoredResource]:
        state = await self._current()
        ordered = self._ordered
        if ordered is None or ordered[0] is not state:
            ordered = (state, sorted(state.resources.values(), key=lambda r: r.key))
            self._ordered = ordered
        return [
            r
            for r in ordered[1]
            if (kind is None or r.key.kind == kind)
            and (namespace is None or r.key.namespace == namespace)
        ]

    async def put(
        self,
        key: ResourceKey,
        body: Mapping[str, Any],
        *,
        actor: str,
        operation: Operation = "update",
        expected_revision: int | None = None,
    ) -> WriteResult:
        normalized, text = encode_body(key, body)

        def write(conn: sqlite3.Connection) -> WriteResult:
            current = self._state.resources.get(key)
            check_expected_revision(key, current, expected_revision)
            if current is not None and current.body == normalized:
                return WriteResult("unchanged", current)
            op = history_operation(operation, current is not None)
            now = time.time()
            with _transaction(conn):
                if current is not None:
                    revision = current.revision + 1
                else:
                    revision = _last_revision(conn, key) + 1
                conn.execute(
                    "INSERT OR REPLACE INTO resources "
                    "(kind, namespace, name, revision, body, updated_at, updated_by) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (*key, revision, text, now, actor),
                )
                _insert_history(
                    conn, key, revision=revision, operation=op, body=text, actor=actor, at=now
                )
                index = _bump_index(conn)
            stored = StoredResource(key, revision, normalized, now, actor)
            self._publish(index, {key: stored})
            return WriteResult("configured" if current is not None else "created", stored)

        return await self._run("write to", write)

    async def delete(
        self, key: ResourceKey, *, actor: str, expected_revision: int | None = None
    ) -> StoredResource:
        def remove(conn: sqlite3.Connection) -> StoredResource:
            current = self._state.resources.get(key)
            if current is None:
                raise not_found(key)
            check_expected_revision(key, current, expected_revision)
            now = time.time()
            with _transaction(conn):
                conn.execute(
                    "DELETE FROM resources WHERE kind = ? AND namespace = ? AND name = ?", key
                )
                _insert_history(
                    conn,
                    key,
                    revision=current.revision + 1,
                    operation="delete",
                    body=None,
                    actor=actor,
                    at=now,
                )
                index = _bump_index(conn)
            self._publish(index, {key: None})
            return current

        return await self._run("write to", remove)

    async def history(self, key: ResourceKey) -> builtins.list[Revision]:
        def read(conn: sqlite3.Connection) -> builtins.list[Revision]:
            rows = conn.execute(
                "SELECT revision, operation, body, actor, at FROM history "
                "WHERE kind = ? AND namespace = ? AND name = ? ORDER BY revision",
                key,
            ).fetchall()
            return [
                Revision(key, rev, json.loads(body) if body is not None else None, op, actor, at)
                for rev, op, body, actor, at in rows
            ]

        return await self._run("read", read)

    async def watch(self) -> AsyncGenerator[StoreState, None]:
        """The current state, then each newer one. A slow consumer skips intermediate
        states (it always gets the newest); the iteration ends when the store closes."""
        await self.open()
        last: int | None = None
        while True:
            # Take the event before looking at the state, so a change published in between
            # still wakes us.
            if self._changed is None:
                self._changed = anyio.Event()
            changed = self._changed
            state = self._state
            if state.index != last:
                last = state.index
                yield state
                continue
            if self._closed:
                return
            await changed.wait()

    # --- records ---------------------------------------------------------------------

    async def record_get(self, collection: str, record_id: str) -> dict[str, Any] | None:
        def read(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute(
                "SELECT data FROM records WHERE collection = ? AND id = ?", (collection, record_id)
            ).fetchone()
            return None if row is None else _as_dict(row[0])

        return await self._run("read", read)

    async def record_put(
        self, collection: str, record_id: str, data: Mapping[str, Any], *, create_only: bool = False
    ) -> None:
        text = encode_record(collection, record_id, data)
        sql = _RECORD_INSERT if create_only else _RECORD_UPSERT

        def write(conn: sqlite3.Connection) -> None:
            try:
                with _transaction(conn):
                    conn.execute(sql, (collection, record_id, text))
            except sqlite3.IntegrityError as exc:
                raise Conflict(
                    f"record {collection}/{record_id} already exists",
                    collection=collection,
                    id=record_id,
                ) from exc

        await self._run("write to", write)

    async def record_delete(self, collection: str, record_id: str) -> bool:
        def remove(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                cursor = conn.execute(
                    "DELETE FROM records WHERE collection = ? AND id = ?", (collection, record_id)
                )
            return cursor.rowcount > 0

        return await self._run("write to", remove)

    async def record_list(self, collection: str) -> builtins.list[tuple[str, dict[str, Any]]]:
        def read(conn: sqlite3.Connection) -> builtins.list[tuple[str, dict[str, Any]]]:
            rows = conn.execute(
                "SELECT id, data FROM records WHERE collection = ? ORDER BY id", (collection,)
            ).fetchall()
            return [(record_id, _as_dict(data)) for record_id, data in rows]

        return await self._run("read", read)

    # --- audit -----------------------------------------------------------------------

    async def audit_append(self, entry: AuditEntry) -> None:
        def write(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.execute(
                    "INSERT INTO audit (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
                    (entry.at, entry.actor, entry.action, entry.target, entry.detail),
                )

        await self._run("write to", write)

    async def audit_list(self, limit: int = 100) -> builtins.list[AuditEntry]:
        def read(conn: sqlite3.Connection) -> builtins.list[AuditEntry]:
            rows = conn.execute(
                "SELECT at, actor, action, target, detail FROM audit ORDER BY seq DESC LIMIT ?",
                (max(0, limit),),
            ).fetchall()
            return [AuditEntry(*row) for row in rows]

        return await self._run("read", read)


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front, so the transaction cannot fail half-way
    # with SQLITE_BUSY on its first write.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # A failed COMMIT may leave the transaction open (or sqlite may have rolled it
        # back already): make sure the connection is usable for the next write.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _last_revision(conn: sqlite3.Connection, key: ResourceKey) -> int:
    row = conn.execute(
        "SELECT MAX(revision) FROM history WHERE kind = ? AND namespace = ? AND name = ?", key
    ).fetchone()
    return int(row[0] or 0)


def _insert_history(
    conn: sqlite3.Connection,
    key: ResourceKey,
    *,
    revision: int,
    operation: Operation,
    body: str | None,
    actor: str,
    at: float,
) -> None:
    conn.execute(
        "INSERT INTO history (kind, namespace, name, revision, operation, body, actor, at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (*key, revision, operation, body, actor, at),
    )


def _bump_index(conn: sqlite3.Connection) -> int:
    row = conn.execute(
        "UPDATE meta SET value = value + 1 WHERE name = 'change_index' RETURNING value"
    ).fetchone()
    return int(row[0])


def _as_dict(text: str) -> dict[str, Any]:
    value = json.loads(text)
    return value if isinstance(value, dict) else {"value": value}
