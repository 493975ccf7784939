"""Helpers shared by the store tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

from meshd.schema.base import ResourceKey
from meshd.store.base import Store, StoreState


@contextlib.asynccontextmanager
async def watching(store: Store) -> AsyncGenerator[AsyncIterator[StoreState], None]:
    """``store.watch()``, closed when the block ends (both stores return async generators)."""
    stream = store.watch()
    try:
        yield stream
    finally:
        await cast(AsyncGenerator[StoreState, None], stream).aclose()


def vs_key(name: str = "reviews", namespace: str = "default") -> ResourceKey:
    return ResourceKey("VirtualService", namespace, name)


def vs_body(name: str = "reviews", namespace: str = "default", weight: int = 100) -> dict[str, Any]:
    """A VirtualService in its wire form, as ``meshd.schema.base.dump`` produces it."""
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "hosts": [name],
            "http": [
                {
                    "match": [{"headers": {"end-user": {"exact": "jason"}}}],
                    "route": [{"destination": {"host": name, "subset": "v2"}}],
                },
                {
                    "route": [
                        {"destination": {"host": name, "subset": "v1"}, "weight": weight},
                        {"destination": {"host": name, "subset": "v3"}, "weight": 100 - weight},
                    ]
                },
            ],
        },
    }
