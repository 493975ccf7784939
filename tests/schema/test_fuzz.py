"""Whatever a client sends, parsing answers with BadRequest or ValidationFailed (an HTTP
400 or 422), never with another exception (a 500)."""

from __future__ import annotations

import contextlib
import json
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from meshd.errors import BadRequest, ValidationFailed
from meshd.schema.base import ObjectMeta, unsupported_reason
from meshd.schema.kinds import KINDS
from meshd.schema.parse import parse_many

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_WORDS = st.sampled_from(
    [
        "reviews", "reviews.default", "v1", "*", "*.example.com", "10.0.0.0/8", "1s", "0s",
        "bad", "/api/(v1", "^/a.*", "(a)\\1", "mesh", ".", "~", "ns/sa", "GET", "8080",
        "request.headers[x]", "source.ip", "ISTIO_MUTUAL", "STATIC", "end-user", "a b", "",
    ]
)  # fmt: skip
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 70000),
    st.floats(allow_nan=False),
    _WORDS,
    st.text(max_size=8),
)


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = get_origin(annotation)
        if origin is typing.Annotated:
            annotation = get_args(annotation)[0]
        elif origin is Union or origin is types.UnionType:
            members = [a for a in get_args(annotation) if a is not type(None)]
            annotation = members[0]
        else:
            return annotation


def _value(annotation: Any, depth: int, junk: bool) -> st.SearchStrategy[Any]:
    """Well-typed values for ``annotation``; with ``junk``, sometimes anything at all."""
    annotation = _unwrap(annotation)
    origin = get_origin(annotation)
    if depth > 5:
        typed: st.SearchStrategy[Any] = _SCALARS
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        typed = _message(annotation, depth + 1, junk)
    elif origin is list:
        typed = st.lists(_value(get_args(annotation)[0], depth + 1, junk), max_size=3)
    elif origin is dict:
        keys = st.one_of(_WORDS, st.sampled_from(["80", "8080", "0"]))
        typed = st.dictionaries(keys, _value(get_args(annotation)[1], depth + 1, junk), max_size=2)
    elif origin is Literal:
        typed = st.sampled_from([*get_args(annotation), "BOGUS"])
    elif annotation is bool:
        typed = st.booleans()
    elif annotation is int:
        typed = st.integers(-5, 70000)
    elif annotation is float:
        typed = st.floats(-1, 200)
    else:
        typed = _WORDS
    return st.one_of(typed, typed, typed, _SCALARS) if junk else typed


def _message(model: type[BaseModel], depth: int, junk: bool) -> st.SearchStrategy[dict[str, Any]]:
    if model is ObjectMeta and not junk:
        return st.fixed_dictionaries(
            {"name": st.sampled_from(["reviews", "a"])},
            optional={"namespace": st.sampled_from(["default", "istio-system", "foo"])},
        )
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for name, info in model.model_fields.items():
        if name in {"api_version", "kind", "status"}:
            continue
        # Without junk, leave out what meshd rejects anyway, to reach the semantic checks.
        if not junk and unsupported_reason(model, name) is not None:
            continue
        target = required if info.is_required() and not junk else optional
        target[info.alias or name] = _value(info.annotation, depth, junk)
    return st.fixed_dictionaries(required, optional=optional)


def _resource(junk: bool) -> st.SearchStrategy[dict[str, Any]]:
    def build(kind: Any) -> st.SearchStrategy[dict[str, Any]]:
        return st.builds(
            lambda version, body: (
                {"apiVersion": f"{kind.group}/{version}", "kind": kind.kind} | body
            ),
            st.sampled_from([*kind.versions, "v9"]) if junk else st.just(kind.versions[0]),
            _message(kind.model, 0, junk),
        )

    return st.sampled_from(KINDS).flatmap(build)


_json_like = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_WORDS, inner, max_size=3),
    max_leaves=12,
)


def _body() -> st.SearchStrategy[tuple[str, str | None]]:
    resources = st.lists(_resource(junk=True), min_size=1, max_size=3)
    typed = st.lists(_resource(junk=False), min_size=1, max_size=3)
    return st.one_of(
        st.tuples(typed.map(yaml.safe_dump_all), st.just(None)),
        st.tuples(resources.map(yaml.safe_dump_all), st.just(None)),
        st.tuples(resources.map(json.dumps), st.just("application/json")),
        st.tuples(_json_like.map(yaml.safe_dump), st.just("application/yaml")),
        st.tuples(st.text(alphabet=" :-\n\t[]{}&*!|>'\"#%@`,?abc01", max_size=60), st.just(None)),
        st.tuples(st.text(max_size=60), st.sampled_from([None, "application/json"])),
    )


@SETTINGS
@given(_body())
def test_parse_many_raises_only_mesh_errors(body: tuple[str, str | None]) -> None:
    text, content_type = body
    with contextlib.suppress(BadRequest, ValidationFailed):
        parse_many(text, content_type)


@SETTINGS
@given(st.binary(max_size=80))
def test_parse_many_on_bytes(data: bytes) -> None:
    with contextlib.suppress(BadRequest, ValidationFailed):
        parse_many(data)
