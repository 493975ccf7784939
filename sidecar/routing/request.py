"""What routing, load balancing and authorization read of a request: :class:`RequestView`.

Built once per request from the parsed head (:meth:`RequestView.from_head`) and cheap to
build: the header list is kept as it came from the parser and a lowercase mapping is made
only when something asks for a header; the query string is parsed only when a route
matches on query parameters or a hash policy reads one.

Paths are normalised as Envoy does with Istio's default ``pathNormalization: BASE``
(RFC 3986 section 6: percent-encoded unreserved characters decoded, other percent-escapes
upper-cased, ``.`` and ``..`` segments removed). Routing and authorization see the
normalised path, so the proxy must forward that same path (``view.path`` plus ``?`` and
``view.query``): a policy that denies ``/admin`` must not be passed by ``/x/../admin``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol
from urllib.parse import unquote

__all__ = [
    "EMPTY_HEADERS",
    "HeaderLookup",
    "Headers",
    "RequestView",
    "cookie_value",
    "normalize_path",
    "split_authority",
]


class HeaderLookup(Protocol):
    """Anything with ``get(lowercase_name) -> value | None`` (a :class:`Headers` view or a
    plain ``dict``)."""

    def get(self, name: str, /) -> str | None: ...


class Headers:
    """A lowercase, read-only view of a request's headers.

    ``get(name)`` takes a lowercase name and gives the value, or None when the header is
    absent. A header sent several times reads as its values joined with ``,`` (``; `` for
    ``cookie``), which is how Envoy matches headers. The mapping is built on first use.
    """

    __slots__ = ("_map", "_raw")

    def __init__(self, raw: Sequence[tuple[bytes, bytes]] = ()) -> None:
        self._raw = raw
        self._map: dict[str, str] | None = None

    @classmethod
    def of(cls, headers: Mapping[str, str] | Sequence[tuple[str, str]]) -> Headers:
        """From text: a mapping or a list of ``(name, value)`` pairs (names in any case)."""
        view = cls()
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        built: dict[str, str] = {}
        for name, value in pairs:
            _put(built, name.lower(), value)
        view._map = built
        return view

    def _build(self) -> dict[str, str]:
        built: dict[str, str] = {}
        for name, value in self._raw:
            _put(built, name.decode("latin-1").lower(), value.decode("latin-1"))
        self._map = built
        return built

    def get(self, name: str, /) -> str | None:
        m = self._map
        if m is None:
            m = self._build()
        return m.get(name)

    def __contains__(self, name: object) -> bool:
        m = self._map
        if m is None:
            m = self._build()
        return name in m

    def as_dict(self) -> dict[str, str]:
        """A copy of the lowercase mapping."""
        m = self._map
        if m is None:
            m = self._build()
        return dict(m)

    def __repr__(self) -> str:
        return f"Headers({self.as_dict()!r})"


def _put(into: dict[str, str], name: str, value: str) -> None:
    old = into.get(name)
    if old is None:
        into[name] = value
    else:
        into[name] = f"{old}; {value}" if name == "cookie" else f"{old},{value}"


EMPTY_HEADERS = Headers()


class RequestView:
    """One request as the decision cores see it.

    - ``method``: as sent (``GET``);
    - ``path``: the path without the query (normalised when built by :meth:`from_head`);
    - ``query``: the raw query string without ``?`` ("" when none);
    - ``authority``: the Host (or absolute-form authority), lowercased, trailing dot
      dropped, port kept when one was sent;
    - ``port``: the port of the listener that took the request (what ``RouteMatch.port``
      compares with);
    - ``scheme``: ``http`` or ``https``;
    - ``headers``: a :class:`HeaderLookup` with lowercase names.
    """

    __slots__ = ("_query_map", "authority", "headers", "method", "path", "port", "query", "scheme")

    def __init__(
        self,
        method: str = "GET",
        path: str = "/",
        query: str = "",
        authority: str = "",
        port: int = 0,
        scheme: str = "http",
        headers: HeaderLookup = EMPTY_HEADERS,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.authority = authority
        self.port = port
        self.scheme = scheme
        self.headers = headers
        self._query_map: dict[str, str] | None = None

    @classmethod
    def from_head(
        cls,
        method: bytes | str,
        target: bytes | str,
        headers: Sequence[tuple[bytes, bytes]],
        *,
        port: int,
        scheme: str = "http",
        normalize: bool = True,
    ) -> RequestView:
        """From a parsed request head: ``target`` is the request-target as sent (origin
        form ``/p?q``, absolute form ``http://host/p?q`` whose authority replaces Host, as
        RFC 9112 section 3.2.2 says, authority form for CONNECT, or ``*``)."""
        m = method.decode("latin-1") if isinstance(method, bytes) else method
        t = target.decode("latin-1") if isinstance(target, bytes) else target
        authority: str | None = None
        if t.startswith("/"):
            raw_path = t
        elif "://" in t:
            scheme_part, _, rest = t.partition("://")
            scheme = scheme_part.lower()
            slash = _first_of(rest, "/?")
            authority, raw_path = rest[:slash], rest[slash:]
            if raw_path.startswith("?"):
                raw_path = "/" + raw_path
            elif not raw_path:
                raw_path = "/"
        elif m == "CONNECT":
            authority, raw_path = t, ""
        else:
            raw_path = t
        path, sep, query = raw_path.partition("?")
        del sep
        if normalize and path.startswith("/"):
            path = normalize_path(path)
        if authority is None:
            for name, value in headers:
                if len(name) == 4 and name.lower() == b"host":
                    authority = value.decode("latin-1")
                    break
            else:
                authority = ""
        return cls(m, path, query, _clean_authority(authority), port, scheme, Headers(headers))

    def query_param(self, name: str) -> str | None:
        """The first value of query parameter ``name`` (percent-decoded; ``""`` when it
        has no ``=``), or None when absent."""
        qm = self._query_map
        if qm is None:
            qm = {}
            if self.query:
                for part in self.query.split("&"):
                    if not part:
                        continue
                    key, _, value = part.partition("=")
                    key = unquote(key) if "%" in key else key
                    if key not in qm:
                        qm[key] = unquote(value) if "%" in value else value
            self._query_map = qm
        return qm.get(name)

    @property
    def target(self) -> str:
        """Path and query as they go on the request line."""
        return f"{self.path}?{self.query}" if self.query else self.path

    def __repr__(self) -> str:
        return (
            f"RequestView({self.method} {self.scheme}://{self.authority}{self.target} "
            f"port={self.port})"
        )


def _first_of(text: str, chars: str) -> int:
    best = len(text)
    for c in chars:
        i = text.find(c, 0, best)
        if i != -1:
            best = i
    return best


def _clean_authority(authority: str) -> str:
    a = authority.strip().lower()
    if "@" in a:  # userinfo never selects a host
        a = a.rpartition("@")[2]
    if a.endswith("."):
        return a[:-1]
    if ".:" in a:
        host, port = split_authority(a)
        if port is not None and host.endswith("."):
            return f"{host[:-1]}:{port}"
    return a


def split_authority(authority: str) -> tuple[str, int | None]:
    """``host[:port]`` (IPv6 in brackets) -> ``(host, port or None)``; a port that is
    not a number is left in the host."""
    if authority.startswith("["):
        end = authority.find("]")
        if end != -1:
            rest = authority[end + 1 :]
            if rest.startswith(":") and rest[1:].isdigit():
                return authority[: end + 1], int(rest[1:])
            return authority[: end + 1], None
        return authority, None
    host, sep, port = authority.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host, int(port)
    return authority, None


def cookie_value(headers: HeaderLookup, name: str) -> str | None:
    """The value of cookie ``name`` in the ``cookie`` header (quotes removed), or None."""
    raw = headers.get("cookie")
    if raw is None:
        return None
    for part in raw.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                return value[1:-1]
            return value
    return None


# --- path normalisation (RFC 3986 section 6, Envoy's normalize_path) -------------------

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")


def normalize_path(path: str) -> str:
    """Decode percent-encoded unreserved characters, upper-case the other escapes and
    remove ``.``/``..`` segments. Escaped slashes (``%2F``) stay escaped (Istio's default
    keeps them unchanged). Paths that need none of this are returned as they are."""
    if "%" in path:
        path = _decode_unreserved(path)
    if "/." in path:
        path = _remove_dot_segments(path)
    return path


def _decode_unreserved(path: str) -> str:
    out: list[str] = []
    i, n = 0, len(path)
    while i < n:
        c = path[i]
        if c == "%" and i + 2 < n and path[i + 1] in _HEX and path[i + 2] in _HEX:
            hx = path[i + 1 : i + 3]
            ch = chr(int(hx, 16))
            out.append(ch if ch in _UNRESERVED else "%" + hx.upper())
            i += 3
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    segments = path.split("/")
    out: list[str] = []
    last = len(segments) - 1
    for i, seg in enumerate(segments):
        if seg == ".":
            if i == last:
                out.append("")
            continue
        if seg == "..":
            if len(out) > 1:
                out.pop()
            if i == last:
                out.append("")
            continue
        out.append(seg)
    result = "/".join(out)
    return result if result.startswith("/") else "/" + result
