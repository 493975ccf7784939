"""meshd — the control plane of a service mesh for Docker Compose and plain VMs.

Kept free of imports: the sidecar imports ``meshd.compile.snapshot`` and must not
pull in FastAPI or pydantic by doing so.
"""

__version__ = "0.1.0"
