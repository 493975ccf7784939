"""What one registration may carry: its TTL and its health-check output. Pure.

Apart from :mod:`registry.base` (which re-exports all of it) because the sidecar's
Consul registrar needs these and ``registry.base`` is written on anyio, which the
sidecar does not load.
"""

from __future__ import annotations

from registry.errors import InvalidInstance

__all__ = ["DEFAULT_TTL_S", "MAX_OUTPUT", "MAX_TTL_S", "MIN_TTL_S", "check_ttl", "clip_output"]

DEFAULT_TTL_S = 90.0
"""An instance registered without a TTL (an old sidecar) expires 90 s after its last
heartbeat: three missed beats of the 30 s heartbeat such sidecars send."""
MIN_TTL_S = 1.0
MAX_TTL_S = 24 * 3600.0
MAX_OUTPUT = 1024
"""Health-check output kept per instance, in characters (the rest is cut)."""


def check_ttl(ttl_s: float) -> float:
    if not MIN_TTL_S <= ttl_s <= MAX_TTL_S:
        raise InvalidInstance(
            f"a TTL of {ttl_s:g} s is out of range: use {MIN_TTL_S:g} s to {MAX_TTL_S:g} s "
            "(twice the health-check interval is usual)",
            field="ttlSeconds",
        )
    return float(ttl_s)


def clip_output(output: str) -> str:
    return output if len(output) <= MAX_OUTPUT else output[: MAX_OUTPUT - 1] + "…"
