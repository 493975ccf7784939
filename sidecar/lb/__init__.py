"""Load balancing for the sidecar's upstream clusters (DestinationRule ``loadBalancer``):
pure pickers with injected randomness. See :mod:`sidecar.lb.balancers` and
docs/routing.md."""

from sidecar.lb.balancers import (
    PASSTHROUGH,
    Balancer,
    Balancers,
    Choice,
    ConsistentHashBalancer,
    LeastRequestBalancer,
    Load,
    LoadRegistry,
    Passthrough,
    RandomBalancer,
    RoundRobinBalancer,
    SetCookie,
    build_balancer,
)

__all__ = [
    "PASSTHROUGH",
    "Balancer",
    "Balancers",
    "Choice",
    "ConsistentHashBalancer",
    "LeastRequestBalancer",
    "Load",
    "LoadRegistry",
    "Passthrough",
    "RandomBalancer",
    "RoundRobinBalancer",
    "SetCookie",
    "build_balancer",
]
