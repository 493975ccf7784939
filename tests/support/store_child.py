"""A stand-in for meshd in crash tests: opens a store, writes, reports, and keeps writing
until it is killed.

    python -m tests.support.store_child sqlite DATA_DIR
    python -m tests.support.store_child consul HOST:PORT PREFIX

After the first put returns it prints ``written`` (flushed) and goes on rewriting other
resources, so a SIGKILL sent on reading that line lands in the middle of a write.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from meshd.schema.base import ResourceKey
from meshd.store.factory import open_store

FIRST = ResourceKey("VirtualService", "default", "survivor")


def body(name: str, generation: int) -> dict[str, object]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"hosts": [name], "generation": generation},
    }


async def main(argv: list[str]) -> None:
    backend = argv[0]
    if backend == "sqlite":
        store = await open_store(
            "sqlite", data_dir=Path(argv[1]), consul_addr="", consul_token=None
        )
    elif backend == "consul":
        store = await open_store(
            "consul",
            data_dir=Path("."),
            consul_addr=argv[1],
            consul_token=None,
            consul_prefix=argv[2],
        )
    else:
        raise SystemExit(f"unknown backend {backend!r}: use sqlite or consul")
    await store.put(FIRST, body(FIRST.name, 0), actor="child")
    print("written", flush=True)
    generation = 0
    while True:
        generation += 1
        key = ResourceKey("VirtualService", "default", f"busy-{generation % 5}")
        await store.put(key, body(key.name, generation), actor="child")


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:])
