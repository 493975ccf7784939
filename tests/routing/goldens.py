"""The compiler's golden snapshots (tests/golden/*.json) as realistic input for the
sidecar's decision cores: decoded with the codec, as the sidecar decodes what meshd
pushes."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from meshd.compile import codec
from meshd.compile.check import check_snapshot
from meshd.compile.snapshot import ProxySnapshot

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden"


@cache
def snapshots(scenario: str) -> dict[str, ProxySnapshot]:
    """Every snapshot of ``scenario``, by proxy id (each one checked coherent)."""
    data = json.loads((GOLDEN_DIR / f"{scenario}.json").read_text())
    out: dict[str, ProxySnapshot] = {}
    for plain in data:
        snap = codec.from_plain(ProxySnapshot, plain)
        assert check_snapshot(snap) == [], f"{scenario}: {snap.proxy_id} is not coherent"
        out[snap.proxy_id] = snap
    return out


def snapshot(scenario: str, proxy_id: str) -> ProxySnapshot:
    return snapshots(scenario)[proxy_id]
