"""Reading resources from what users send: YAML or JSON text to validated models.

- :func:`parse_documents` turns a body into plain mappings (multi-document YAML, a JSON
  object or list, or a Kubernetes ``kind: List``); malformed text is a
  :class:`~meshd.errors.BadRequest` naming the line and column.
- :func:`parse_resource` turns one mapping into its model and validates it on its own;
  every problem is a :class:`~meshd.errors.FieldError` with a wire path such as
  ``spec.http[0].route[1].weight``, raised together as
  :class:`~meshd.errors.ValidationFailed`.
- :func:`parse_many` does both for a whole body and reports every error of every
  document at once.
"""

from __future__ import annotations

import difflib
import json
import types
import typing
from collections.abc import Hashable, Mapping
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_camel

from meshd.errors import BadRequest, FieldError, ValidationFailed
from meshd.schema.base import Resource, ResourceKey
from meshd.schema.kinds import BY_KIND, KindInfo, known_kinds
from meshd.schema.validate import validate_resource

try:
    from yaml import CSafeLoader as _SafeLoader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]

MAX_NODES = 500_000
"""Values (mappings, lists and scalars) one body may hold, counting every use of a YAML
alias: bounds the work an ``&anchor``/``*alias`` bomb can cause."""
MAX_DEPTH = 64
"""Nesting depth of one document; Istio's deepest field is far shallower."""

_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE = "tag:yaml.org,2002:merge"


class _Loader(_SafeLoader):
    """Safe YAML as Kubernetes reads it: no timestamps (``creationTimestamp`` stays a
    string, as in JSON) and no duplicate keys (a repeated field would otherwise silently
    win over the first)."""

    # PyYAML looks resolvers up on the class; this copy leaves SafeLoader's untouched.
    yaml_implicit_resolvers = {  # noqa: RUF012
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP]
        for first, resolvers in _SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# --- text to mappings ----------------------------------------------------------------------

_YAML_TYPES = frozenset(
    {"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain"}
)


def _format(content_type: str | None) -> Literal["json", "yaml"]:
    if content_type is None:
        return "yaml"
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return "json"
    if media in ("", "*/*", "application/octet-stream") or media in _YAML_TYPES:
        return "yaml"
    if media.endswith("+yaml"):
        return "yaml"
    raise BadRequest(
        f"unsupported content type {content_type!r}: send application/yaml or application/json",
        content_type=content_type,
    )


class _DuplicateKey(ValueError):
    pass


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _load_json(text: str) -> list[Any]:
    try:
        data = json.loads(text, object_pairs_hook=_json_object, parse_constant=_json_constant)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
            line=exc.lineno,
            column=exc.colno,
        ) from None
    except _DuplicateKey as exc:
        raise BadRequest(f"invalid JSON: key {exc.args[0]!r} appears twice in one object") from None
    except RecursionError:
        raise BadRequest("invalid JSON: it nests too deeply") from None
    except ValueError as exc:
        raise BadRequest(f"invalid JSON: {exc}") from None
    return data if isinstance(data, list) else [data]


def _load_yaml(text: str) -> list[Any]:
    try:
        return list(yaml.load_all(text, Loader=_Loader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "malformed YAML"
        if mark is None:
            raise BadRequest(f"invalid YAML: {problem}") from None
        line, column = mark.line + 1, mark.column + 1
        raise BadRequest(
            f"invalid YAML at line {line}, column {column}: {problem}", line=line, column=column
        ) from None
    except RecursionError:
        raise BadRequest("invalid YAML: it nests too deeply") from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
        # Explicit tags (`!!int abc`, `!!float x`) fail in the constructors with plain errors.
        raise BadRequest(f"invalid YAML: {exc}") from None


def _check_shape(doc: object, number: int, budget: int) -> int:
    """Walks ``doc`` without recursion; returns the node budget left."""
    stack: list[tuple[object, int]] = [(doc, 0)]
    while stack:
        node, depth = stack.pop()
        budget -= 1
        if budget < 0:
            raise BadRequest(
                f"the body holds more than {MAX_NODES} values (YAML aliases count each time "
                "they are used); split it into smaller applies"
            )
        if depth > MAX_DEPTH:
            raise BadRequest(
                f"document {number} nests deeper than {MAX_DEPTH} levels "
                "(or refers to itself through a YAML alias)"
            )
        if isinstance(node, dict):
            stack.extend((value, depth + 1) for value in node.values())
        elif isinstance(node, list | tuple):
            stack.extend((value, depth + 1) for value in node)
    return budget


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _expand(doc: object, number: int) -> list[dict[str, Any]]:
    if isinstance(doc, dict) and doc.get("kind") == "List" and "items" in doc:
        items = doc["items"]
        if not isinstance(items, list):
            raise BadRequest(f"document {number}: the 'items' of a List must be a list")
    elif isinstance(doc, list):
        items = doc
    else:
        items = [doc]
    for item in items:
        if not isinstance(item, dict):
            raise BadRequest(
                f"document {number} holds {_describe(item)}, not a resource: expected an "
                "object with apiVersion, kind, metadata and spec"
            )
    return items


def parse_documents(text: str | bytes, content_type: str | None = None) -> list[dict[str, Any]]:
    """The resources in a request body, as plain mappings.

    YAML (default) may hold several ``---``-separated documents; empty ones are skipped.
    JSON (``application/json``) is one object or a list of them. Either may be a
    Kubernetes ``kind: List`` whose ``items`` are the resources.
    """
    form = _format(content_type)
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise BadRequest(
                f"the body is not UTF-8 text: {exc.reason} at byte {exc.start}"
            ) from None
    raw = _load_json(text) if form == "json" else _load_yaml(text)
    budget = MAX_NODES
    documents: list[dict[str, Any]] = []
    for number, doc in enumerate(raw, start=1):
        if doc is None:
            continue
        budget = _check_shape(doc, number, budget)
        documents.extend(_expand(doc, number))
    return documents


# --- mappings to models --------------------------------------------------------------------


def _label(doc: object, index: int | None) -> str | None:
    """How errors name a resource: ``VirtualService default/reviews`` if its kind and name
    can be read, else ``document N`` (N counts from 1)."""
    if isinstance(doc, dict):
        kind, meta = doc.get("kind"), doc.get("metadata")
        if isinstance(kind, str) and kind and isinstance(meta, dict):
            name, namespace = meta.get("name"), meta.get("namespace", "default")
            if isinstance(name, str) and name and isinstance(namespace, str) and namespace:
                return f"{kind} {namespace}/{name}"
    return None if index is None else f"document {index + 1}"


def _kind_of(doc: Mapping[Any, Any], label: str | None) -> tuple[KindInfo | None, list[FieldError]]:
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    errors: list[FieldError] = []
    if not isinstance(api_version, str) or not api_version:
        errors.append(
            FieldError(
                "apiVersion", "field 'apiVersion' is required, e.g. networking.istio.io/v1", label
            )
        )
    if not isinstance(kind, str) or not kind:
        errors.append(FieldError("kind", "field 'kind' is required, e.g. VirtualService", label))
    if errors or not isinstance(api_version, str) or not isinstance(kind, str):
        return None, errors
    info = BY_KIND.get(kind)
    if info is None:
        by_case = {k.lower(): k for k in BY_KIND}
        guess = by_case.get(kind.lower()) or next(
            iter(difflib.get_close_matches(kind, list(BY_KIND), n=1)), None
        )
        hint = f" (did you mean {guess}?)" if guess else ""
        return None, [
            FieldError("kind", f"unknown kind {kind!r}{hint}; meshd accepts {known_kinds()}", label)
        ]
    group, slash, version = api_version.partition("/")
    aliases = ", ".join(info.versions[1:])
    if not slash:
        message = f"apiVersion {api_version!r} must be '<group>/<version>': use {info.api_version}"
    elif group != info.group:
        message = (
            f"{kind} belongs to the API group {info.group!r}, not {group!r}: "
            f"use apiVersion {info.api_version}"
        )
    elif version not in info.versions:
        message = (
            f"version {version!r} of {info.group} is not served: use {info.api_version} "
            f"({aliases} also accepted)"
        )
    else:
        return info, []
    return None, [FieldError("apiVersion", message, label)]


def _unwrap(annotation: Any) -> Any:
    """The type a value of ``annotation`` is checked against: no Annotated, no Optional."""
    while True:
        origin = get_origin(annotation)
        if origin is typing.Annotated:
            annotation = get_args(annotation)[0]
        elif origin is Union or origin is types.UnionType:
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _model_field(model: type[BaseModel], name: str) -> Any:
    for field_name, info in model.model_fields.items():
        if (info.alias or field_name) == name:
            return info.annotation
    return None


def _wire_path(
    model: type[BaseModel], loc: tuple[int | str, ...]
) -> tuple[str, type[BaseModel] | None]:
    """pydantic's error location as a wire path, and the model holding its last field."""
    path = ""
    current: Any = model
    holder: type[BaseModel] | None = None
    for element in loc:
        if element == "[key]":
            continue
        current = _unwrap(current)
        origin = get_origin(current)
        if (
            isinstance(current, type)
            and issubclass(current, BaseModel)
            and isinstance(element, str)
        ):
            holder = current
            path = f"{path}.{element}" if path else element
            current = _model_field(current, element)
        elif origin in (list, tuple) and isinstance(element, int):
            path = f"{path}[{element}]"
            current = get_args(current)[0] if get_args(current) else None
        elif origin is dict:
            path = f"{path}[{element!r}]"
            current = get_args(current)[1] if get_args(current) else None
        else:
            path = (
                f"{path}.{element}" if path and isinstance(element, str) else f"{path}[{element!r}]"
            )
            current = None
    return path, holder


_TYPE_WORDS = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


def _message(error: Mapping[str, Any], holder: type[BaseModel] | None) -> str:
    kind: str = error["type"]
    loc: tuple[Any, ...] = error["loc"]
    name = loc[-1] if loc else ""
    value = error.get("input")
    if kind == "extra_forbidden":
        text = f"unknown field {name!r}"
        if holder is not None and isinstance(name, str):
            aliases = [info.alias or n for n, info in holder.model_fields.items()]
            close = [to_camel(name)] if to_camel(name) in aliases else []
            close = close or difflib.get_close_matches(name, aliases, n=1)
            if close:
                text += f"; did you mean {close[0]!r}?"
        return text
    if kind == "missing":
        return f"field {name!r} is required"
    if kind in ("value_error", "assertion_error"):
        cause = (error.get("ctx") or {}).get("error")
        return str(cause) if cause is not None else str(error["msg"])
    prefix = "invalid key: " if loc and loc[-1] == "[key]" else ""
    if kind in _TYPE_WORDS:
        return f"{prefix}expected {_TYPE_WORDS[kind]}, got {_describe(value)}"
    if kind == "literal_error":
        expected = str(error["msg"]).replace("Input should be ", "")
        return f"{prefix}invalid value {_describe(value)}: use {expected}"
    message = str(error["msg"]).replace("Input should be", "must be")
    return f"{prefix}{message} (got {_describe(value)})"


def _field_errors(
    exc: ValidationError, model: type[BaseModel], label: str | None
) -> list[FieldError]:
    out: list[FieldError] = []
    for error in exc.errors(include_url=False):
        path, holder = _wire_path(model, tuple(error["loc"]))
        out.append(FieldError(path or "(document)", _message(error, holder), label))
    return out


def parse_resource(
    doc: object, index: int | None = None, *, default_namespace: str | None = None
) -> Resource[Any]:
    """The validated model of one resource mapping.

    ``index`` (0-based) is the document's position in its batch, used to name the
    resource in errors when its kind and name cannot be read. ``default_namespace``
    (like ``kubectl apply -n``) is written into a resource that names no namespace;
    without it such a resource is in ``default``. Raises :class:`ValidationFailed` with
    every problem found at the first failing stage: the kind, the fields, the fields
    meshd does not enforce, the rules between fields.
    """
    if default_namespace is not None and isinstance(doc, dict):
        meta = doc.get("metadata")
        if isinstance(meta, dict) and "namespace" not in meta:
            doc = {**doc, "metadata": {**meta, "namespace": default_namespace}}
    label = _label(doc, index)
    what = label or "the resource"
    if not isinstance(doc, dict):
        raise ValidationFailed(
            f"{what} is not a resource",
            errors=[
                FieldError(
                    "(document)",
                    f"expected an object with apiVersion, kind, metadata and spec, got "
                    f"{_describe(doc)}",
                    label,
                )
            ],
        )
    info, errors = _kind_of(doc, label)
    if info is None:
        raise ValidationFailed(f"{what} is invalid", errors=errors)
    try:
        resource = info.model.model_validate(doc, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise ValidationFailed(
            f"{what} is invalid", errors=_field_errors(exc, info.model, label)
        ) from None
    errors = validate_resource(resource)
    if errors:
        raise ValidationFailed(f"{what} is invalid", errors=errors)
    return resource


def parse_many(
    text: str | bytes,
    content_type: str | None = None,
    *,
    default_namespace: str | None = None,
) -> list[Resource[Any]]:
    """Every resource of a request body, in order. Problems of all documents are raised
    together as one :class:`ValidationFailed`; a resource may appear only once.
    ``default_namespace`` is as for :func:`parse_resource`."""
    documents = parse_documents(text, content_type)
    resources: list[Resource[Any]] = []
    errors: list[FieldError] = []
    invalid = 0
    first: dict[ResourceKey, int] = {}
    for index, doc in enumerate(documents):
        try:
            resource = parse_resource(doc, index, default_namespace=default_namespace)
        except ValidationFailed as exc:
            invalid += 1
            errors.extend(exc.errors)
            continue
        seen = first.setdefault(resource.key, index)
        if seen != index:
            invalid += 1
            errors.append(
                FieldError(
                    "metadata.name",
                    f"{resource.key} is also document {seen + 1}; a batch may hold each "
                    "resource once",
                    f"document {index + 1}",
                )
            )
            continue
        resources.append(resource)
    if errors:
        detail = (
            f"{invalid} of {len(documents)} resources are invalid"
            if len(documents) > 1
            else "the resource is invalid"
        )
        raise ValidationFailed(detail, errors=errors)
    return resources
