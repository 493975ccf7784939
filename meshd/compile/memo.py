"""A memo table swept after every compile.

Entries are looked up by a key the caller builds (often from ``id()`` of input
objects) and hold references to those inputs (``refs``), so an id cannot be reused by
another object while its entry lives. After a compile, :meth:`Memo.sweep` drops every
entry that compile did not touch: the memo holds the current state's work and
nothing older.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass(slots=True)
class _Entry(Generic[V]):
    refs: object
    value: V
    generation: int


class Memo(Generic[V]):
    __slots__ = ("_entries", "_generation", "built", "reused")

    def __init__(self) -> None:
        self._entries: dict[Hashable, _Entry[V]] = {}
        self._generation = 0
        self.built = 0
        self.reused = 0

    def get(self, key: Hashable) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        entry.generation = self._generation
        self.reused += 1
        return entry.value

    def put(self, key: Hashable, refs: object, value: V) -> V:
        self._entries[key] = _Entry(refs, value, self._generation)
        self.built += 1
        return value

    def sweep(self) -> None:
        """Forget what the compile that just ended did not use; reset the counters."""
        gen = self._generation
        self._entries = {k: e for k, e in self._entries.items() if e.generation == gen}
        self._generation = gen + 1
        self.built = 0
        self.reused = 0

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
