"""Typed errors of the control plane.

Every error carries what failed and what to do next. The REST layer translates them
into RFC 9457 problem documents (``meshd.api.problems``); meshctl prints them.
Foreign exceptions are translated at the edge: ``raise StoreUnavailable(...) from exc``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with one field. ``field`` is a path like ``spec.http[0].route[1].weight``;
    ``resource`` names the resource (``VirtualService default/reviews``) in a batch."""

    field: str
    message: str
    resource: str | None = None

    def to_json(self) -> dict[str, str]:
        out = {"field": self.field, "message": self.message}
        if self.resource is not None:
            out["resource"] = self.resource
        return out

    def __str__(self) -> str:
        where = f"{self.resource}: " if self.resource else ""
        return f"{where}{self.field}: {self.message}"


class MeshError(Exception):
    """Base of every error meshd raises on purpose."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"

    def __init__(
        self,
        detail: str,
        *,
        errors: tuple[FieldError, ...] | list[FieldError] = (),
        **context: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = tuple(errors)
        self.context = context

    def __str__(self) -> str:
        if not self.errors:
            return self.detail
        return self.detail + "".join(f"\n  - {e}" for e in self.errors)


class BadRequest(MeshError):
    status = 400
    slug = "bad-request"
    title = "Bad request"


class ValidationFailed(MeshError):
    """A resource (or a batch of them) is invalid; ``errors`` name each field."""

    status = 422
    slug = "validation"
    title = "Invalid resource"


class Unauthorized(MeshError):
    status = 401
    slug = "unauthorized"
    title = "Authentication required"


class Forbidden(MeshError):
    status = 403
    slug = "forbidden"
    title = "Not allowed"


class NotFound(MeshError):
    status = 404
    slug = "not-found"
    title = "Not found"


class Conflict(MeshError):
    """A write lost a compare-and-set race, or would break another resource."""

    status = 409
    slug = "conflict"
    title = "Conflict"


class RateLimited(MeshError):
    status = 429
    slug = "rate-limited"
    title = "Too many requests"


class StoreUnavailable(MeshError):
    """The backing store (sqlite file or Consul) cannot be reached or written."""

    status = 503
    slug = "store-unavailable"
    title = "Store unavailable"


class ConfigError(MeshError):
    """meshd was started with settings that cannot work (bad flag, unsafe listen address)."""

    status = 500
    slug = "config"
    title = "Invalid configuration"


class CsrRejected(BadRequest):
    """A certificate signing request breaks the signing policy (wrong identity, CA:true,
    weak key, other SANs...); ``detail`` says which rule."""

    slug = "csr-rejected"
    title = "Certificate request refused"


class CaUnavailable(MeshError):
    """The CA backend (Vault/OpenBao, or the embedded CA's key material) cannot sign."""

    status = 503
    slug = "ca-unavailable"
    title = "Certificate authority unavailable"
