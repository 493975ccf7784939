"""mesh-sidecar — the data plane of meshd: one process next to each service instance.

Runs on Trio and never imports pydantic or FastAPI (only ``meshd.compile.snapshot``,
``codec`` and ``check`` from the control plane, which are free of both). It gets its
certificate, registers its instance, keeps the newest valid config (saved to its state
dir), proxies its service's traffic and shows its state on the admin port. See
``docs/sidecar.md``.
"""

import sys

__version__ = "0.1.0"

# httpx (the control-plane client) imports its command-line tool, and with it click and
# pygments, whenever click is installed, as it is beside uvicorn: 2.5 MB of every
# sidecar's memory for code it never runs. A None entry makes that one import fail,
# which httpx expects and handles.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
