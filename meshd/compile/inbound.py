"""The inbound side of a proxy: where peers reach it, how they must authenticate
(PeerAuthentication, see :mod:`meshd.compile.mtls`) and what they may do
(AuthorizationPolicy, see :mod:`meshd.compile.authz`)."""

from __future__ import annotations

from dataclasses import dataclass

from meshd.compile import snapshot as s
from meshd.compile.check import check_inbound
from meshd.compile.mtls import Mode
from meshd.compile.versioning import digest_of
from registry.model import Instance

CompiledPolicy = s.AuthzPolicy | str
"""A compiled AuthorizationPolicy, or why it cannot be compiled."""


@dataclass(frozen=True, slots=True)
class InboundPart:
    """An inbound config with its digest and why it may not be served."""

    config: s.InboundConfig
    digest: str
    errors: tuple[str, ...]


def build_inbound(
    inst: Instance,
    mode: Mode,
    port_mtls: tuple[tuple[int, Mode], ...],
    policies: tuple[CompiledPolicy, ...],
) -> InboundPart:
    """``port`` is the sidecar's inbound port the instance registered, ``app_port`` the
    port its app listens on (on 127.0.0.1)."""
    config = s.InboundConfig(
        port=inst.port,
        app_port=inst.app_port,
        protocol=inst.protocol,
        mtls_mode=mode,
        port_mtls=port_mtls,
        authz=tuple(p for p in policies if isinstance(p, s.AuthzPolicy)),
    )
    errors = [p for p in policies if isinstance(p, str)]
    errors.extend(check_inbound(config))
    return InboundPart(config, digest_of(config), tuple(errors))
