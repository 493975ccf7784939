"""Reading the resources of ``-f``: files, directories (``*.yaml``, ``*.yml``, ``*.json``,
sorted; recursive with ``-R``) and ``-`` for stdin.

Every document is parsed here, so a YAML error is reported with the file and line it is
in before anything is sent; ``kind: List`` documents (what ``meshctl get -o json``
prints) are flattened into their items. The documents then travel to the server in ONE
multi-document YAML body (:func:`yaml_body`), so the server validates them together.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from meshd.ctl.errors import UsageError, yaml_problem

EXTENSIONS = (".yaml", ".yml", ".json")
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


class StrictLoader(yaml.SafeLoader):
    """YAML read as meshd reads it, so what is sent is what the file says: a repeated key
    is an error (not "the last one wins"), and dates stay strings (re-serialising a
    parsed timestamp would change its text)."""

    yaml_implicit_resolvers = {  # noqa: RUF012 - PyYAML's class-level resolver table
        first: [(tag, pattern) for tag, pattern in resolvers if tag != _TIMESTAMP_TAG]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys: set[Any] = set()
        for key_node, _value in node.value:
            if (
                not isinstance(key_node, yaml.ScalarNode)
                or key_node.tag == "tag:yaml.org,2002:merge"
            ):
                continue
            key = self.construct_object(key_node)
            if key in keys:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"the key {key!r} appears twice",
                    key_node.start_mark,
                )
            keys.add(key)
        return super().construct_mapping(node, deep=deep)


class _PlainDumper(yaml.SafeDumper):
    """Writes shared values out in full instead of as ``&id001``/``*id001`` aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} appears twice in one object")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


STDIN = "-"
STDIN_NAME = "<stdin>"


@dataclass(frozen=True, slots=True)
class Document:
    """One resource read from ``source`` (a path or ``<stdin>``); ``index`` counts the
    documents of that source from 1."""

    source: str
    index: int
    body: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.source} (document {self.index})"

    @property
    def kind(self) -> str:
        return str(self.body.get("kind", ""))

    @property
    def api_version(self) -> str:
        return str(self.body.get("apiVersion", ""))

    @property
    def name(self) -> str:
        meta = self.body.get("metadata")
        return str(meta.get("name", "")) if isinstance(meta, dict) else ""

    @property
    def namespace(self) -> str | None:
        meta = self.body.get("metadata")
        value = meta.get("namespace") if isinstance(meta, dict) else None
        return str(value) if value else None


def expand_paths(paths: Sequence[str], *, recursive: bool = False) -> list[str]:
    """Each of ``paths`` as the files to read, in order: a directory becomes its
    ``*.yaml``/``*.yml``/``*.json`` files, sorted by name."""
    out: list[str] = []
    stdin_seen = False
    for raw in paths:
        if raw == STDIN:
            if stdin_seen:
                raise UsageError("'-f -' (stdin) can be given only once")
            stdin_seen = True
            out.append(STDIN)
            continue
        path = Path(raw)
        if path.is_dir():
            found = _dir_files(path, recursive)
            if not found:
                deep = "" if recursive else " (add -R to include subdirectories)"
                raise UsageError(
                    f"directory {raw} holds no {', '.join('*' + e for e in EXTENSIONS)} files{deep}"
                )
            out.extend(str(p) for p in found)
        elif path.exists():
            out.append(raw)
        else:
            raise UsageError(f"{raw}: no such file or directory")
    return out


def _dir_files(directory: Path, recursive: bool) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return sorted(
        p for p in directory.glob(pattern) if p.suffix.lower() in EXTENSIONS and p.is_file()
    )


def read_documents(
    paths: Sequence[str],
    *,
    recursive: bool = False,
    stdin: TextIO | None = None,
    read_text: Callable[[str], str] | None = None,
) -> list[Document]:
    """Every resource in ``paths``; a usage error naming the file for anything unreadable,
    malformed, or not a resource. An empty result is an error too."""
    documents: list[Document] = []
    for name in expand_paths(paths, recursive=recursive):
        if name == STDIN:
            if stdin is None:
                raise UsageError("'-f -' needs the resources on stdin")
            text, source = stdin.read(), STDIN_NAME
        else:
            text, source = _read(name, read_text), name
        documents.extend(parse_text(text, source))
    if not documents:
        raise UsageError(f"no resources found in {', '.join(paths)}")
    return documents


def _read(path: str, read_text: Callable[[str], str] | None) -> str:
    try:
        if read_text is not None:
            return read_text(path)
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc


def parse_text(text: str, source: str) -> list[Document]:
    """The resources in one file's text: JSON for ``*.json`` (an object, a list of objects,
    or a ``List``), else multi-document YAML."""
    raw: list[Any]
    if source.lower().endswith(".json"):
        try:
            loaded = (
                json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constants)
                if text.strip()
                else None
            )
        except json.JSONDecodeError as exc:
            raise UsageError(
                f"{source} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
            ) from exc
        except (ValueError, RecursionError) as exc:
            raise UsageError(f"{source} is not valid JSON: {exc}") from exc
        raw = loaded if isinstance(loaded, list) else [loaded]
    else:
        try:
            raw = list(yaml.load_all(text, Loader=StrictLoader))
        except yaml.YAMLError as exc:
            raise UsageError(f"{source} is not valid YAML: {yaml_problem(exc)}") from exc
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            raise UsageError(f"{source} is not valid YAML: {exc}") from exc
    return list(_documents(raw, source))


def _documents(raw: Iterable[Any], source: str) -> Iterator[Document]:
    index = 0
    for item in raw:
        index += 1
        if item is None:  # an empty document, e.g. a trailing '---'
            continue
        if not isinstance(item, dict):
            raise UsageError(
                f"{source} (document {index}) is a {_type_name(item)}, not a resource",
                "Hint: a resource is a mapping with apiVersion, kind, metadata and spec",
            )
        if item.get("kind") == "List" and isinstance(item.get("items"), list):
            for sub in item["items"]:
                if not isinstance(sub, dict):
                    raise UsageError(f"{source} (document {index}): a List item is not a resource")
                yield _check(Document(source, index, sub))
            continue
        yield _check(Document(source, index, item))


def _check(doc: Document) -> Document:
    missing = [
        field
        for field, value in (
            ("apiVersion", doc.api_version),
            ("kind", doc.kind),
            ("metadata.name", doc.name),
        )
        if not value
    ]
    if missing:
        raise UsageError(f"{doc.where} has no {' and no '.join(missing)}")
    return doc


def _type_name(value: object) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


def check_namespace(documents: Iterable[Document], namespace: str | None) -> None:
    """With ``-n``, every document naming a namespace must name that one (as kubectl does)."""
    if namespace is None:
        return
    for doc in documents:
        if doc.namespace is not None and doc.namespace != namespace:
            raise UsageError(
                f"{doc.where}: {doc.kind} {doc.name} is in namespace {doc.namespace!r}, "
                f"but -n says {namespace!r}",
                f"Hint: drop -n, or pass -n {doc.namespace}",
            )


def yaml_body(documents: Iterable[Document]) -> bytes:
    """All documents as one multi-document YAML stream."""
    text: str = yaml.dump_all(
        [d.body for d in documents],
        Dumper=_PlainDumper,
        sort_keys=False,
        allow_unicode=True,
        explicit_start=True,
    )
    return text.encode()
