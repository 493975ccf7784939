"""Header fields: an immutable, ordered sequence of ``(name, value)`` byte pairs.

Names are lowercased (HTTP/1.1 field names are case-insensitive; the proxy writes them
lowercased, as Envoy does). Values keep their bytes, without the optional whitespace
around them. The order, and repeated fields, are kept exactly.

A :class:`Headers` built by the parser holds what llhttp and our own checks accepted; one
built by the caller (``Headers([(b"x-request-id", rid)])`` or the ``with_*`` methods) is
validated field by field, so whatever reaches ``send`` cannot inject a line break or a
control byte into a head.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Final, cast, overload

from sidecar.protocol.errors import LocalProtocolError

TOKEN: Final = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
"""RFC 9110 ``token``: a field name, a method, a transfer coding."""

_token = re.compile(TOKEN).fullmatch
# A field value once its leading and trailing whitespace is gone: visible bytes, SP,
# HTAB and obs-text; never NUL, CR, LF or another control byte.
_value = re.compile(rb"[^\x00-\x08\x0a-\x1f\x7f]*").fullmatch

Field = tuple[bytes, bytes]


def _as_bytes(text: object, what: str) -> bytes:
    if type(text) is bytes:
        return text
    if isinstance(text, str):
        try:
            return text.encode("ascii")
        except UnicodeEncodeError:
            raise LocalProtocolError(f"header {what} {text!r} is not ASCII") from None
    if isinstance(text, bytes | bytearray | memoryview):
        return bytes(text)
    raise LocalProtocolError(f"header {what} {text!r} is not bytes or str")


def _checked_pair(field: object) -> Field:
    if not isinstance(field, tuple | list) or len(field) != 2:
        raise LocalProtocolError(f"a header field is a (name, value) pair, not {field!r}")
    return check_field(field[0], field[1])


def check_field(name: object, value: object) -> Field:
    """One field as it may be sent: the name a token (returned lowercased), the value
    without surrounding whitespace and free of control bytes other than HTAB.

    Raises :class:`LocalProtocolError` when it is not.
    """
    name_b = _as_bytes(name, "name")
    value_b = _as_bytes(value, "value").strip(b" \t")
    if _token(name_b) is None:
        raise LocalProtocolError(f"header name {name_b!r} is not a token")
    if _value(value_b) is None:
        raise LocalProtocolError(
            f"header {name_b.decode('ascii')!r} has a control byte (CR, LF, NUL...) in its value"
        )
    return name_b.lower(), value_b


class Headers(Sequence[Field]):
    """Immutable, ordered ``(lowercased name, value)`` pairs, with fast lookups.

    ``get``/``contains`` use an index built on first use; ``get_all`` and
    ``get_tokens`` scan. Equality holds with another :class:`Headers` or with a list or
    tuple of the same pairs.
    """

    __slots__ = ("_fields", "_index")

    _fields: tuple[Field, ...]
    _index: dict[bytes, bytes] | None

    def __init__(self, fields: Iterable[tuple[bytes | str, bytes | str]] = ()) -> None:
        self._index = None
        if type(fields) is tuple and not fields:
            self._fields = ()  # Headers() and Headers.trusted: nothing to check
            return
        # Checked one by one as objects: callers outside typed code (tests, a user's
        # filter) get a LocalProtocolError naming the bad field, compiled or not.
        try:
            given = iter(cast("Iterable[object]", fields))
        except TypeError:
            raise LocalProtocolError(f"headers are (name, value) pairs, not {fields!r}") from None
        self._fields = tuple([_checked_pair(field) for field in given])

    @classmethod
    def trusted(cls, fields: Sequence[Field]) -> Headers:
        """Wrap fields that are already valid and lowercased (the parser's), unchecked."""
        self = cls()  # not cls.__new__: compiled classes have none to call
        self._fields = fields if type(fields) is tuple else tuple(fields)
        return self

    # --- the sequence -------------------------------------------------------------------

    @property
    def fields(self) -> tuple[Field, ...]:
        """The pairs as a tuple."""
        return self._fields

    def __len__(self) -> int:
        return len(self._fields)

    @overload
    def __getitem__(self, index: int) -> Field: ...

    @overload
    def __getitem__(self, index: slice) -> Headers: ...

    def __getitem__(self, index: int | slice) -> Field | Headers:
        if isinstance(index, slice):
            return Headers.trusted(self._fields[index])
        return self._fields[index]

    def __iter__(self) -> Iterator[Field]:
        return iter(self._fields)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return self._fields == other._fields
        if isinstance(other, tuple | list):
            return self._fields == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._fields)

    def __repr__(self) -> str:
        return f"Headers({list(self._fields)!r})"

    # --- lookups ------------------------------------------------------------------------

    def _lookup(self) -> dict[bytes, bytes]:
        index = self._index
        if index is None:
            # reversed: the first of repeated fields wins
            index = self._index = dict(reversed(self._fields))
        return index

    @overload
    def get(self, name: bytes) -> bytes | None: ...

    @overload
    def get(self, name: bytes, default: bytes) -> bytes: ...

    def get(self, name: bytes, default: bytes | None = None) -> bytes | None:
        """The value of the first field called ``name`` (any case), else ``default``."""
        return self._lookup().get(name.lower(), default)

    def contains(self, name: bytes) -> bool:
        """Whether a field called ``name`` (any case) is present."""
        return name.lower() in self._lookup()

    def get_all(self, name: bytes) -> list[bytes]:
        """Every value of the fields called ``name``, in order."""
        name = name.lower()
        return [v for n, v in self._fields if n == name]

    def get_tokens(self, name: bytes) -> list[bytes]:
        """A list-valued field (``Connection``, ``Transfer-Encoding``...) as its
        lowercased, comma-separated members from every field called ``name``; empty
        members are dropped."""
        out: list[bytes] = []
        for value in self.get_all(name):
            for raw in value.lower().split(b","):
                member = raw.strip(b" \t")
                if member:
                    out.append(member)
        return out

    # --- new headers from these ---------------------------------------------------------

    def with_added(self, name: bytes | str, value: bytes | str) -> Headers:
        """These fields and one more at the end."""
        return Headers.trusted((*self._fields, check_field(name, value)))

    def with_set(self, name: bytes | str, value: bytes | str) -> Headers:
        """These fields with every ``name`` field replaced by one with ``value`` (where
        the first one was; at the end when there was none)."""
        field = check_field(name, value)
        out: list[Field] = []
        placed = False
        for pair in self._fields:
            if pair[0] == field[0]:
                if not placed:
                    out.append(field)
                    placed = True
            else:
                out.append(pair)
        if not placed:
            out.append(field)
        return Headers.trusted(out)

    def without(self, *names: bytes) -> Headers:
        """These fields except those called any of ``names`` (any case)."""
        drop = {n.lower() for n in names}
        if not drop.intersection(self._lookup()):
            return self
        return Headers.trusted([pair for pair in self._fields if pair[0] not in drop])


EMPTY: Final = Headers.trusted(())
"""No header fields."""
