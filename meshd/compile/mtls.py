"""Inbound mutual TLS from PeerAuthentication.

The most specific policy wins: the workload's (a policy in the workload's namespace
whose selector matches its labels; the lexically first name if several do), then the
namespace's (no selector), then the mesh's (root namespace, no selector), then
``CompileSettings.default_mtls_mode``. ``UNSET`` (or no ``mtls``) at one level inherits
from the next. ``portLevelMtls`` comes from the workload policy only (Istio ignores it
elsewhere) and is keyed by the application port; an ``UNSET`` port inherits the
workload's resolved mode. A selector with no labels counts as no selector.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from meshd.schema.security import MutualTLS, PeerAuthentication

Mode = Literal["STRICT", "PERMISSIVE", "DISABLE"]


def applicable(
    policies_in_namespace: Sequence[PeerAuthentication],
    mesh_policies: Sequence[PeerAuthentication],
    labels: frozenset[tuple[str, str]],
    is_root_namespace: bool,
) -> tuple[PeerAuthentication | None, PeerAuthentication | None, PeerAuthentication | None]:
    """``(workload, namespace, mesh)`` policies for a workload; inputs sorted by name."""
    workload = namespace = None
    for pa in policies_in_namespace:
        sel = pa.spec.selector
        if sel is not None and sel.match_labels:
            if workload is None and sel.match_labels.items() <= labels:
                workload = pa
        elif namespace is None:
            namespace = pa
    mesh = None
    if not is_root_namespace:
        mesh = next((pa for pa in mesh_policies if not _selects(pa)), None)
    return workload, namespace, mesh


def _selects(pa: PeerAuthentication) -> bool:
    return pa.spec.selector is not None and bool(pa.spec.selector.match_labels)


def _mode(m: MutualTLS | None) -> Mode | None:
    if m is None or m.mode is None or m.mode == "UNSET":
        return None
    return m.mode


def resolve(
    workload: PeerAuthentication | None,
    namespace: PeerAuthentication | None,
    mesh: PeerAuthentication | None,
    default: Mode,
) -> tuple[Mode, tuple[tuple[int, Mode], ...]]:
    """``(mode, port_mtls)``."""
    mode: Mode = default
    for pa in (mesh, namespace, workload):
        if pa is not None:
            mode = _mode(pa.spec.mtls) or mode
    ports: tuple[tuple[int, Mode], ...] = ()
    if workload is not None and workload.spec.port_level_mtls:
        ports = tuple(
            (port, _mode(m) or mode) for port, m in sorted(workload.spec.port_level_mtls.items())
        )
    return mode, ports
