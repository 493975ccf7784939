"""Wire form of snapshots: dataclasses <-> JSON, driven by the type hints.

Generic over the frozen dataclasses of ``meshd.compile.snapshot`` so a field added
there needs no codec change. A field whose type is a union of tagged dataclasses
(``RouteAction``) is written as ``{"<TAG>": {...}}``. Decoding is strict: an
unknown field or a wrong type raises :class:`CodecError` naming the path, so a
sidecar NACKs a snapshot it cannot read instead of guessing. No pydantic here: the
sidecar uses this module.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar, Union

from meshd.compile import snapshot as snap

T = TypeVar("T")


class CodecError(ValueError):
    """A snapshot document does not have the shape of the dataclasses."""


# --- encoding ----------------------------------------------------------------------------


def to_plain(value: Any) -> Any:
    """A dataclass tree as JSON-ready dicts and lists (unions of tagged classes wrapped)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode_field(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [to_plain(v) for v in value]
    return value


def _encode_field(value: Any) -> Any:
    tag = getattr(type(value), "TAG", None)
    if isinstance(tag, str):
        return {tag: to_plain(value)}
    return to_plain(value)


def dumps(value: Any) -> bytes:
    """Canonical JSON (sorted keys, no spaces) so equal content gives equal bytes."""
    return json.dumps(to_plain(value), sort_keys=True, separators=(",", ":")).encode()


# --- decoding ----------------------------------------------------------------------------

Decoder = Callable[[Any, str], Any]


def from_plain(cls: type[T], data: Any) -> T:
    result: T = _decoder(cls)(data, "")
    return result


def loads(cls: type[T], raw: bytes | str) -> T:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CodecError(f"not JSON: {exc}") from exc
    return from_plain(cls, data)


def _fail(path: str, message: str) -> CodecError:
    return CodecError(f"{path or '<root>'}: {message}")


def _decoder(tp: Any) -> Decoder:
    cached: Decoder = _cached_decoder(tp)
    return cached


@cache
def _cached_decoder(tp: Any) -> Decoder:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return lambda v, _p: v
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass_decoder(tp)
    if origin in (Union, types.UnionType):
        return _union_decoder(args)
    if origin is tuple:
        return _tuple_decoder(args)
    if origin is typing.Literal:
        allowed = frozenset(args)

        def literal(v: Any, p: str) -> Any:
            if v not in allowed:
                raise _fail(p, f"{v!r} is not one of {sorted(map(str, allowed))}")
            return v

        return literal
    if tp in (int, float, str, bool):
        return _scalar_decoder(tp)
    if tp is type(None):

        def none(v: Any, p: str) -> None:
            if v is not None:
                raise _fail(p, "expected null")

        return none
    raise TypeError(f"codec cannot decode type {tp!r}")


def _scalar_decoder(tp: type) -> Decoder:
    def scalar(v: Any, p: str) -> Any:
        if tp is float and isinstance(v, int) and not isinstance(v, bool):
            return float(v)
        if type(v) is not tp:
            raise _fail(p, f"expected {tp.__name__}, got {type(v).__name__}")
        return v

    return scalar


def _tuple_decoder(args: tuple[Any, ...]) -> Decoder:
    if len(args) == 2 and args[1] is Ellipsis:
        item = _decoder(args[0])

        def homogeneous(v: Any, p: str) -> tuple[Any, ...]:
            if not isinstance(v, list):
                raise _fail(p, "expected a list")
            return tuple(item(x, f"{p}[{i}]") for i, x in enumerate(v))

        return homogeneous
    items = [_decoder(a) for a in args]

    def fixed(v: Any, p: str) -> tuple[Any, ...]:
        if not isinstance(v, list) or len(v) != len(items):
            raise _fail(p, f"expected a list of {len(items)}")
        return tuple(d(x, f"{p}[{i}]") for i, (d, x) in enumerate(zip(items, v, strict=True)))

    return fixed


def _union_decoder(args: tuple[Any, ...]) -> Decoder:
    optional = type(None) in args
    members = [a for a in args if a is not type(None)]
    tagged = {
        getattr(m, "TAG", None): m
        for m in members
        if isinstance(m, type) and dataclasses.is_dataclass(m)
    }
    if len(members) > 1 and None not in tagged and len(tagged) == len(members):
        by_tag = {tag: _decoder(m) for tag, m in tagged.items()}

        def tagged_union(v: Any, p: str) -> Any:
            if v is None and optional:
                return None
            if not isinstance(v, dict) or len(v) != 1:
                raise _fail(p, f"expected one of {sorted(map(str, by_tag))} as a single key")
            ((tag, body),) = v.items()
            if tag not in by_tag:
                raise _fail(p, f"unknown variant {tag!r}")
            return by_tag[tag](body, f"{p}.{tag}")

        return tagged_union
    if len(members) == 1:
        inner = _decoder(members[0])

        def maybe(v: Any, p: str) -> Any:
            return None if v is None and optional else inner(v, p)

        return maybe
    raise TypeError(f"codec cannot decode an untagged union {args!r}")


def _dataclass_decoder(cls: type[Any]) -> Decoder:
    hints = typing.get_type_hints(cls, vars(snap))
    fields = [f for f in dataclasses.fields(cls) if f.init]
    decoders = {f.name: _decoder(hints[f.name]) for f in fields}
    required = {
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }

    def decode(v: Any, p: str) -> Any:
        if not isinstance(v, dict):
            raise _fail(p, f"expected an object for {cls.__name__}")
        unknown = v.keys() - decoders.keys()
        if unknown:
            raise _fail(p, f"unknown field(s) {sorted(unknown)} in {cls.__name__}")
        missing = required - v.keys()
        if missing:
            raise _fail(p, f"missing field(s) {sorted(missing)} in {cls.__name__}")
        kwargs = {k: decoders[k](x, f"{p}.{k}" if p else k) for k, x in v.items()}
        return cls(**kwargs)

    return decode
