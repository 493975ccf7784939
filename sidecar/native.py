"""Whether this process runs the sidecar's compiled data path (setup.py, docs/native.md):
the hot, pure modules built as C extensions by mypyc, or their sources as they are."""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES

import sidecar.protocol.http1


def data_path() -> str:
    """``"compiled"`` when the HTTP/1.1 layer was loaded from an extension module,
    else ``"interpreted"`` (no C compiler at build time, or ``MESHD_NATIVE=0``)."""
    spec = sidecar.protocol.http1.__spec__
    where = (spec.origin if spec is not None else None) or ""
    return "compiled" if where.endswith(tuple(EXTENSION_SUFFIXES)) else "interpreted"
