"""Typed errors of the registry package (service discovery and the Consul HTTP client).

Foreign exceptions (httpx, json) are translated at the edge: ``raise ConsulUnavailable(...)
from exc``. Every message says what failed, where, and what to check next; callers in
``meshd`` translate these again into their own errors (``StoreUnavailable``, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class RegistryError(Exception):
    """Base of every error the registry package raises on purpose."""


class ConsulError(RegistryError):
    """Consul answered, but not with success.

    ``status`` is the HTTP status (``None`` when the request never got an answer),
    ``body`` the start of the response body, ``address`` the agent's base URL, and
    ``method``/``path`` the request that failed.
    """

    def __init__(
        self,
        message: str,
        *,
        address: str,
        method: str = "",
        path: str = "",
        status: int | None = None,
        body: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.address = address
        self.method = method
        self.path = path
        self.status = status
        self.body = body

    def __str__(self) -> str:
        return self.message


class ConsulUnavailable(ConsulError):
    """Consul could not be reached or could not serve the request right now: connection
    refused, a timeout, no cluster leader (5xx). Retrying later may succeed."""


class ConsulClientClosed(ConsulError):
    """The client was closed (``aclose``) and cannot send requests any more."""


class ConsulPermissionDenied(ConsulError):
    """Consul's ACLs rejected the request (403): the token lacks a permission."""


class ConsulNotFound(ConsulError):
    """The agent does not know the service or check a request names (a TTL update for a
    check that was never registered, or that the agent lost in a restart without its data
    directory): register the service again."""


@dataclass(frozen=True, slots=True)
class TxnOpError:
    """Why Consul rolled a transaction back: ``op_index`` is the failing operation's
    position in the request, ``what`` Consul's reason (``index is stale``, ...)."""

    op_index: int
    what: str


class TxnAborted(ConsulError):
    """A transaction was rolled back (409): a ``cas``/``check-index``/``delete-cas``
    precondition did not hold, so none of its operations were applied."""

    def __init__(
        self,
        message: str,
        *,
        address: str,
        errors: Sequence[TxnOpError],
        body: str = "",
    ) -> None:
        super().__init__(
            message, address=address, method="PUT", path="/v1/txn", status=409, body=body
        )
        self.errors = tuple(errors)


class TxnTooLarge(ConsulError):
    """A transaction has more operations (or bytes) than Consul accepts in one request.
    Raised before sending when the operation count is over the limit, or on a 413."""


class InstanceNotRegistered(RegistryError):
    """A health report or heartbeat names an instance the registry does not hold (never
    registered, deregistered, or expired after missing its heartbeats). Register it again
    with its whole description (``register``; ``PUT /v1/instances/{id}``)."""

    def __init__(self, message: str, *, instance_id: str) -> None:
        super().__init__(message)
        self.instance_id = instance_id


class InvalidInstance(RegistryError):
    """An instance cannot be registered as described: ``field`` says what (a label key or
    value over Consul's Meta limits, a TTL out of range, ...) and the message what to
    change."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class RegistryNotReady(RegistryError):
    """The registry has not read its catalog yet (meshd starting, Consul unreachable since
    start): its view would be incomplete. Retry shortly."""
