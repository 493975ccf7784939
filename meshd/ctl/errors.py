"""meshctl's errors and exit codes.

Every expected failure is a :class:`CtlError` carrying the lines to print and the exit
code; ``main`` prints them and never shows a traceback for them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
"""The server refused or failed the request, or could not be reached."""
EXIT_USAGE = 2
"""Bad arguments or local input (argparse's own code): nothing was sent."""
EXIT_NOT_FOUND = 3
"""The server answered 404: the resource, proxy, service or token does not exist."""


class CtlError(Exception):
    """An expected failure: ``lines`` are printed to stderr, the first after ``Error: ``."""

    exit_code: int = EXIT_FAILED

    def __init__(self, message: str, *details: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = tuple(details)
        if exit_code is not None:
            self.exit_code = exit_code

    def lines(self) -> list[str]:
        return [f"Error: {self.message}", *self.details]


class UsageError(CtlError):
    """Wrong arguments, an unreadable file, invalid local YAML, a missing token."""

    exit_code = EXIT_USAGE


class ServerError(CtlError):
    """The server answered with an error status (a problem document if it could)."""

    def __init__(
        self, status: int, problem: Mapping[str, Any] | None, *, raw: str = "", hint: str = ""
    ) -> None:
        self.status = status
        self.problem = dict(problem) if problem is not None else None
        lines = format_problem(status, problem, raw=raw, hint=hint)
        message = lines[0].removeprefix("Error: ")
        super().__init__(
            message, *lines[1:], exit_code=EXIT_NOT_FOUND if status == 404 else EXIT_FAILED
        )


def field_error_line(error: Mapping[str, Any]) -> str:
    """``  <resource>: <field>: <message>`` (the resource only when the server named one)."""
    parts = [str(error[k]) for k in ("resource", "field") if error.get(k)]
    parts.append(str(error.get("message", "invalid")))
    return "  " + ": ".join(parts)


def format_problem(
    status: int, problem: Mapping[str, Any] | None, *, raw: str = "", hint: str = ""
) -> list[str]:
    """The lines meshctl prints for an error answer: ``Error: <detail>``, one line per field
    error, then ``hint`` (what to do next) if any."""
    if problem is None:
        text = " ".join(raw.split())
        if len(text) > 300:
            text = text[:300] + "..."
        head = f"Error: the server answered HTTP {status}" + (f": {text}" if text else "")
        lines = [head]
    else:
        detail = str(problem.get("detail") or problem.get("title") or f"HTTP {status}")
        lines = [f"Error: {detail}"]
        errors = problem.get("errors")
        if isinstance(errors, Sequence) and not isinstance(errors, str):
            lines.extend(field_error_line(e) for e in errors if isinstance(e, Mapping))
    if hint:
        lines.append(f"Hint: {hint}")
    return lines


def yaml_problem(exc: Exception) -> str:
    """A YAML parser error as ``<problem> (line L, column C)``."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return str(problem)
