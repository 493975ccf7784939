"""Conventions every resource model follows.

- One external schema, one internal form: these pydantic models are the REST
  bodies, the stored rules and the compiler's input.
- Field names are snake_case in Python and camelCase on the wire (Istio's JSON),
  ``extra="forbid"`` so an unknown field is an error naming it.
- Models are frozen; a field of Istio's API that meshd does not translate into
  sidecar configuration is declared with :func:`unsupported`, so applying it is
  rejected by name (never silently ignored) and the generated reference says so.
- Serialise with :func:`dump` so a resource reads back exactly as written.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Any, Generic, Literal, NamedTuple, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from meshd.errors import FieldError

UNSUPPORTED_KEY = "x-meshd-unsupported"


class StrictModel(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        alias_generator=to_camel,
        frozen=True,
        validate_default=False,
        ser_json_inf_nan="strings",
    )


def unsupported(why: str = "meshd does not implement it yet") -> Any:
    """Declare an Istio field that is modelled but not enforced by meshd's sidecar.

    Applying a resource that sets it is rejected with the field path and ``why``.
    """
    return Field(default=None, json_schema_extra={UNSUPPORTED_KEY: why})


def unsupported_reason(model: type[BaseModel], name: str) -> str | None:
    extra = model.model_fields[name].json_schema_extra
    if isinstance(extra, dict):
        why = extra.get(UNSUPPORTED_KEY)
        if isinstance(why, str):
            return why
    return None


def _is_empty(value: object) -> bool:
    return value is None or (isinstance(value, list | dict | tuple | str) and len(value) == 0)


def find_unsupported(value: object, path: str = "") -> Iterator[FieldError]:
    """Every set field in ``value`` (recursively) that is declared :func:`unsupported`."""
    if isinstance(value, BaseModel):
        cls = type(value)
        # Declaration order, not set order, so errors come out the same every time.
        for name in cls.model_fields:
            if name not in value.model_fields_set:
                continue
            field_value = getattr(value, name)
            alias = cls.model_fields[name].alias or name
            sub = f"{path}.{alias}" if path else alias
            why = unsupported_reason(cls, name)
            if why is not None and not _is_empty(field_value):
                yield FieldError(sub, f"field '{alias}' is not supported: {why}")
                continue
            yield from find_unsupported(field_value, sub)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from find_unsupported(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from find_unsupported(item, f"{path}[{key!r}]" if path else str(key))


# --- scalar types shared by the resource models --------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_MS = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def duration_ms(text: str) -> float:
    """Milliseconds in a Go/Istio duration such as ``1.5s``, ``100ms`` or ``1h30m``."""
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None:
            raise ValueError(
                f"invalid duration {text!r}: use a number with a unit, e.g. '500ms', '2s', '1m30s'"
            )
        total += float(m.group(1)) * _UNIT_MS[m.group(2)]
        pos = m.end()
    if not text:
        raise ValueError("invalid duration '': use e.g. '500ms', '2s', '1m30s'")
    return total


def _check_duration(text: str) -> str:
    duration_ms(text)
    return text


Duration = Annotated[str, AfterValidator(_check_duration)]
"""A duration kept as written (so it reads back equal); ``duration_ms`` converts it."""

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _check_name(text: str) -> str:
    if len(text) > 253 or not _DNS_SUBDOMAIN.fullmatch(text):
        raise ValueError(
            f"invalid name {text!r}: use lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit (at most 253 characters)"
        )
    return text


def _check_namespace(text: str) -> str:
    if len(text) > 63 or not _DNS_LABEL.fullmatch(text):
        raise ValueError(
            f"invalid namespace {text!r}: use lowercase letters, digits and '-', "
            "starting and ending with a letter or digit (at most 63 characters)"
        )
    return text


ResourceName = Annotated[str, AfterValidator(_check_name)]
Namespace = Annotated[str, AfterValidator(_check_namespace)]


# --- the envelope ----------------------------------------------------------------------


class ObjectMeta(StrictModel):
    """Kubernetes-style metadata. ``resourceVersion`` is the resource's revision in meshd:
    on PUT it is a compare-and-set precondition; the other server-set fields that
    ``kubectl get -o yaml`` exports are accepted and not stored, so exported Istio
    resources apply unchanged."""

    name: ResourceName
    namespace: Namespace = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    resource_version: str | None = None
    # Server-set in Kubernetes; accepted so exported YAML applies, never stored.
    uid: str | None = Field(default=None, exclude=True)
    generation: int | None = Field(default=None, exclude=True)
    creation_timestamp: str | None = Field(default=None, exclude=True)
    managed_fields: list[dict[str, Any]] | None = Field(default=None, exclude=True)


SpecT = TypeVar("SpecT", bound=StrictModel)


class Resource(StrictModel, Generic[SpecT]):
    """``apiVersion``/``kind``/``metadata``/``spec``. Subclasses fix ``kind`` and the spec type
    and set the class variables ``group`` and ``versions`` (the first is the one stored)."""

    api_version: str
    kind: str
    metadata: ObjectMeta
    spec: SpecT
    # Kubernetes status is server-owned; accepted on input and never stored.
    status: dict[str, Any] | None = Field(default=None, exclude=True)

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, self.metadata.namespace, self.metadata.name)


AnyResource = Resource[Any]
"""A resource of any kind."""


class ResourceKey(NamedTuple):
    """The identity of a stored resource: ``(kind, namespace, name)`` with ``kind`` as
    Istio spells it (``VirtualService``)."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


def dump(resource: BaseModel) -> dict[str, Any]:
    """The wire form (camelCase, only the fields that were set): reads back equal."""
    return resource.model_dump(mode="json", by_alias=True, exclude_unset=True)


ProtocolName = Literal["http", "http2", "grpc", "tcp"]
