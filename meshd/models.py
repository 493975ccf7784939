"""Parsed resources, cached per revision.

Stored bodies are parsed into models once per (key, revision): the compiler relies
on unchanged resources being the very same objects between compiles (its memo is
keyed on identity), and validation of an apply needs the whole current state
without re-parsing 2,000 resources each time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from meshd.errors import MeshError
from meshd.schema.base import AnyResource, ResourceKey
from meshd.schema.parse import parse_resource
from meshd.store.base import StoredResource

log = logging.getLogger("meshd.models")


class ModelCache:
    def __init__(self) -> None:
        self._cache: dict[ResourceKey, tuple[int, AnyResource]] = {}
        self._broken: dict[ResourceKey, int] = {}

    def model(self, stored: StoredResource) -> AnyResource | None:
        """The model of a stored resource; None (logged once) if it no longer validates,
        e.g. after an upgrade stopped supporting a field it sets."""
        hit = self._cache.get(stored.key)
        if hit is not None and hit[0] == stored.revision:
            return hit[1]
        if self._broken.get(stored.key) == stored.revision:
            return None
        try:
            model = parse_resource(dict(stored.body))
        except MeshError as exc:
            self._broken[stored.key] = stored.revision
            log.error(
                "stored %s revision %d does not validate and is left out of sidecar config: %s. "
                "Fix it with meshctl apply, or roll it back with meshctl rollback",
                stored.key,
                stored.revision,
                exc,
            )
            return None
        self._cache[stored.key] = (stored.revision, model)
        return model

    def models(self, stored: Iterable[StoredResource]) -> dict[ResourceKey, AnyResource]:
        out: dict[ResourceKey, AnyResource] = {}
        for s in stored:
            m = self.model(s)
            if m is not None:
                out[s.key] = m
        return out

    def forget_missing(self, present: Iterable[ResourceKey]) -> None:
        keep = set(present)
        for key in [k for k in self._cache if k not in keep]:
            del self._cache[key]
        for key in [k for k in self._broken if k not in keep]:
            del self._broken[key]
