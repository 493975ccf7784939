"""Size limits of the HTTP/1.1 parser.

They bound what the parser holds while a head is incomplete, so a peer cannot make a
connection buffer without end. Bodies are not limited here: they stream through as
:class:`~sidecar.protocol.events.Data` and the proxy applies any body limit itself.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class Limits:
    """Parser limits; the defaults follow nginx and Envoy."""

    max_request_line: int = 8 * 1024
    """Bytes of the request line (or a response's status line), CRLF excluded.
    Longer: 414 URI Too Long (502 for a response)."""

    max_header_bytes: int = 64 * 1024
    """Bytes of a whole head: start line, header fields, the empty line. Longer: 431
    Request Header Fields Too Large (502 for a response). Also bounds a trailer
    section."""

    max_header_count: int = 100
    """Header fields in one head (or trailer section). More: 431 (502 for a response)."""

    max_chunk_line: int = 1024
    """Bytes of one chunk-size line, extensions included, CRLF excluded. Longer: 400
    (502 for a response)."""

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Limits.{field.name} must be a positive int, not {value!r}")
        if self.max_request_line > self.max_header_bytes:
            raise ValueError("Limits.max_request_line must not exceed max_header_bytes")


DEFAULT_LIMITS = Limits()
