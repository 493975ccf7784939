"""Which rule a caller sees: Istio's ``exportTo`` and DestinationRule precedence.

Shared by validation (does a referenced subset exist for this caller?) and the
compiler (which rule shapes this caller's clusters?), so the two can never disagree.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from meshd.schema.networking import DestinationRule


def exported_to(export_to: Collection[str], owner: str, namespace: str) -> bool:
    """Whether a rule in ``owner`` with this ``exportTo`` is visible in ``namespace``.
    A rule stays visible in its own namespace unless it says ``~``."""
    if owner == namespace:
        return "~" not in export_to
    if not export_to:
        return True
    return "*" in export_to or namespace in export_to


def pick_destination_rule(
    rules: Iterable[DestinationRule],
    caller_namespace: str,
    host_namespace: str | None,
    root_namespace: str,
) -> DestinationRule | None:
    """Istio's order among the rules for one host: the caller's namespace, then the
    host's, then the root namespace, then any other in lexical order — each only if
    exported to the caller. Among rules of one namespace the first given wins (two are
    a validation error)."""
    best: DestinationRule | None = None
    best_rank: tuple[int, str] | None = None
    for rule in rules:
        owner = rule.metadata.namespace
        if not exported_to(rule.spec.export_to, owner, caller_namespace):
            continue
        if owner == caller_namespace:
            rank = (0, "")
        elif owner == host_namespace:
            rank = (1, "")
        elif owner == root_namespace:
            rank = (2, "")
        else:
            rank = (3, owner)
        if best_rank is None or rank < best_rank:
            best, best_rank = rule, rank
    return best
