"""Helpers both store backends use: body encoding, compare-and-set checks, and the
errors they raise, worded the same whichever backend is behind them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from meshd.errors import BadRequest, Conflict, NotFound
from meshd.schema.base import ResourceKey
from meshd.store.base import Operation, StoredResource


def encode_body(key: ResourceKey, body: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The body as stored (a plain JSON object, so it compares equal to what is read back
    later) and its JSON text."""
    try:
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BadRequest(
            f"{key}: the body cannot be stored as JSON ({exc}); serialise it with "
            "meshd.schema.base.dump",
            key=str(key),
        ) from exc
    decoded = json.loads(text)
    if not isinstance(decoded, dict):
        raise BadRequest(f"{key}: the body must be a JSON object", key=str(key))
    return decoded, text


def encode_record(collection: str, record_id: str, data: Mapping[str, Any]) -> str:
    try:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BadRequest(
            f"record {collection}/{record_id} cannot be stored as JSON ({exc})",
            collection=collection,
            id=record_id,
        ) from exc


def check_expected_revision(
    key: ResourceKey, current: StoredResource | None, expected: int | None
) -> None:
    """Raise ``Conflict`` unless ``expected`` (0: must not exist) matches ``current``."""
    if expected is None:
        return
    actual = current.revision if current is not None else 0
    if expected == actual:
        return
    if expected == 0:
        detail = (
            f"{key} already exists (revision {actual}): read it and apply again with "
            f"resourceVersion {actual}, or without a resourceVersion to replace it"
        )
    elif current is None:
        detail = (
            f"{key} does not exist (expected revision {expected}): it was deleted "
            "meanwhile; re-read it and retry"
        )
    else:
        detail = (
            f"{key} was changed by someone else (expected revision {expected}, "
            f"found {actual}): re-read it and retry"
        )
    raise Conflict(detail, key=str(key), expected_revision=expected, revision=actual)


def lost_race(key: ResourceKey) -> Conflict:
    return Conflict(
        f"{key} was changed concurrently by another writer: re-read it and retry",
        key=str(key),
    )


def not_found(key: ResourceKey) -> NotFound:
    return NotFound(f"{key} not found", key=str(key))


def history_operation(operation: Operation, existed: bool) -> Operation:
    """What the history records for a put: ``rollback`` as given, otherwise ``create`` or
    ``update`` by whether the resource existed (callers need not know beforehand)."""
    if operation == "delete":
        raise ValueError("put() cannot record a delete; call delete()")
    if operation == "rollback":
        return "rollback"
    return "update" if existed else "create"
