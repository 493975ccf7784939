"""The reference of every resource field, generated from the models.

``python -m meshd.schema.reference --write docs/reference/resources.md`` writes it
(``make docs``); ``--check PATH`` exits 1 when the file differs from what the models
say (``make lint``), so the reference cannot drift from the code.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel
from pydantic.fields import FieldInfo

from meshd.schema import base
from meshd.schema.base import unsupported_reason
from meshd.schema.kinds import KINDS
from meshd.schema.networking import check_regex, field_note, unsupported_values

_INTRO = """\
# Resource reference

<!-- Generated from the models in meshd/schema by `make docs`
     (python -m meshd.schema.reference --write docs/reference/resources.md). Do not edit. -->

meshd accepts Istio's resources as Istio writes them: every field of Istio's v1 API is
listed below, under Istio's message names, with its JSON (camelCase) name.

The **Supported** column says what meshd enforces. A field marked **no** is rejected
when it is set, with the reason shown, and so is an enum value listed as an exception:
a rule never silently does less than it says. Fields of a message that is only reachable
through unsupported fields are marked "—".

`apiVersion` may name any of the versions listed; resources are stored and read back
as the first one (`v1`).
"""


def _clean(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def _model_doc(model: type[BaseModel]) -> str:
    doc = model.__doc__ or ""
    return _clean(doc.split("\n\n", 1)[0])


def _anchor(model: type[BaseModel]) -> str:
    return model.__name__.lower()


def _unwrap_optional(annotation: Any) -> Any:
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _range(metadata: Sequence[Any]) -> tuple[int | None, int | None]:
    low: int | None = None
    high: int | None = None
    for item in metadata:
        if isinstance(item, FieldInfo):
            inner_low, inner_high = _range(item.metadata)
            low = inner_low if inner_low is not None else low
            high = inner_high if inner_high is not None else high
        else:
            # annotated_types' Ge and Le, as pydantic stores Field(ge=..., le=...).
            ge, le = getattr(item, "ge", None), getattr(item, "le", None)
            low = int(ge) if isinstance(ge, int) else low
            high = int(le) if isinstance(le, int) else high
    return low, high


def _render_annotated(annotation: Any, metadata: Sequence[Any]) -> str:
    for item in metadata:
        if isinstance(item, AfterValidator):
            if item.func is base._check_duration:
                return "duration"
            if item.func is check_regex:
                return "string (RE2 regex)"
    text = _render(annotation)
    low, high = _range(metadata)
    if low is not None and high is not None:
        text += f" ({low} to {high})"
    elif low is not None:
        text += f" (≥ {low})"
    return text


def _render(annotation: Any) -> str:
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is typing.Annotated:
        return _render_annotated(args[0], args[1:])
    if origin is Union or origin is types.UnionType:
        members = [a for a in args if a is not type(None)]
        return " or ".join(_render(a) for a in members)
    if origin is list:
        return f"{_render(args[0])}[]"
    if origin is dict:
        return f"map<{_render(args[0])}, {_render(args[1])}>"
    if origin is Literal:
        return "enum: " + ", ".join(f"`{a}`" for a in args)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{_anchor(annotation)})"
    names = {str: "string", int: "integer", bool: "boolean", float: "number"}
    if isinstance(annotation, type) and annotation in names:
        return names[annotation]
    return str(annotation)  # pragma: no cover - every modelled type is handled above


def _field_type(info: FieldInfo) -> str:
    text = _render_annotated(info.annotation, info.metadata)
    return f"{text} (required)" if info.is_required() else text


def _nested(annotation: Any) -> Iterator[type[BaseModel]]:
    """The models a field's values are built from."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in get_args(annotation):
        yield from _nested(arg)


def _messages(root: type[BaseModel], supported_only: bool) -> list[type[BaseModel]]:
    """Messages reachable from ``root`` (itself first), breadth first, in field order."""
    seen: list[type[BaseModel]] = [root]
    queue = deque([root])
    while queue:
        model = queue.popleft()
        for name, info in model.model_fields.items():
            if supported_only and unsupported_reason(model, name) is not None:
                continue
            for nested in _nested(info.annotation):
                if nested not in seen:
                    seen.append(nested)
                    queue.append(nested)
    return seen


def _support(model: type[BaseModel], name: str, enforced: bool) -> str:
    if not enforced:
        return "—"
    why = unsupported_reason(model, name)
    if why is not None:
        return f"**no**: {_clean(why)}"
    text = "yes"
    note = field_note(model, name)
    if note is not None:
        text += f": {_clean(note)}"
    values = unsupported_values(model, name)
    if values:
        exceptions = "; ".join(f"**not** `{v}` ({_clean(why)})" for v, why in values.items())
        text += f"; {exceptions}"
    return text


def _render_message(model: type[BaseModel], enforced: bool) -> list[str]:
    lines = [f"### {model.__name__}", "", _model_doc(model), ""]
    if not enforced:
        lines += ["Only used by fields meshd does not support; listed for completeness.", ""]
    lines += ["| Field | Type | Supported | Description |", "| --- | --- | --- | --- |"]
    for name, info in model.model_fields.items():
        wire = info.alias or name
        lines.append(
            f"| `{wire}` | {_field_type(info)} | {_support(model, name, enforced)} "
            f"| {_clean(info.description)} |"
        )
    lines.append("")
    return lines


def _spec_model(resource: type[BaseModel]) -> type[BaseModel]:
    spec = _unwrap_optional(resource.model_fields["spec"].annotation)
    if not (isinstance(spec, type) and issubclass(spec, BaseModel)):
        raise TypeError(f"{resource.__name__}.spec is not a model")
    return spec


def render() -> str:
    """The whole reference, as Markdown."""
    lines = [_INTRO, "## Kinds", "", "| Kind | apiVersion | Also accepted | Names |"]
    lines.append("| --- | --- | --- | --- |")
    for info in KINDS:
        names = ", ".join(f"`{n}`" for n in (info.plural, *info.short_names))
        also = ", ".join(f"`{info.group}/{v}`" for v in info.versions[1:])
        lines.append(
            f"| [{info.kind}](#{info.kind.lower()}) | `{info.api_version}` | {also} | {names} |"
        )
    lines.append("")

    enforced: set[type[BaseModel]] = set()
    for info in KINDS:
        enforced.update(_messages(_spec_model(info.model), supported_only=True))
    documented: set[type[BaseModel]] = set()
    for info in KINDS:
        spec = _spec_model(info.model)
        lines += [f"## {info.kind}", "", f"`{info.api_version}` — {_model_doc(info.model)}", ""]
        for model in _messages(spec, supported_only=False):
            if model in documented:
                continue
            documented.add(model)
            lines += _render_message(model, model in enforced)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m meshd.schema.reference",
        description="Generate (or check) the Markdown reference of the resource fields.",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", metavar="PATH", help="write the reference to PATH")
    action.add_argument("--check", metavar="PATH", help="exit 1 if PATH is not current")
    args = parser.parse_args(argv)
    text = render()
    if args.write is not None:
        path = Path(args.write)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return 0
    path = Path(args.check)
    try:
        current = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        current = None
    if current != text:
        print(f"{args.check} is stale; run `make docs`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
