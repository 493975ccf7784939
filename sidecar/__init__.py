"""mesh-sidecar — the data plane of meshd: one process next to each service instance.

Runs on Trio and never imports pydantic or FastAPI (only ``meshd.compile.snapshot``,
``codec`` and ``check`` from the control plane, which are free of both). It gets its
certificate, registers its instance, keeps the newest valid config (saved to its state
dir), proxies its service's traffic and shows its state on the admin port. See
``docs/sidecar.md``.
"""

__version__ = "0.1.0"
