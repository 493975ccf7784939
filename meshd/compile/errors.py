"""Errors of the compiler.

Compiling never raises to its caller: a problem becomes an error message on every
proxy whose snapshot it concerns (that proxy keeps its last good snapshot).
:class:`RuleError` carries such a problem from deep in a translation to the point
where the compiler knows which resource it came from.
"""

from __future__ import annotations

from meshd.errors import MeshError


class RuleError(MeshError):
    """A rule that passed validation still cannot be translated (say, a value meshd's
    sidecar does not implement). The message says what and what to do."""

    status = 422
    slug = "compile"
    title = "Rule cannot be compiled"
