"""Snapshot -> wire bytes, sharing the encoding of outbound configs.

Every proxy in a namespace usually holds the very same OutboundConfig (the big
part: every service it may call). Encoding it once per digest and splicing the
bytes into each proxy's document keeps a push to 1,000 proxies from serialising
the same data 1,000 times. The result is byte-identical to ``codec.dumps``.
"""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict

from meshd.compile import codec
from meshd.compile.snapshot import ProxySnapshot

_PLACEHOLDER = "\x00outbound\x00"
_PLACEHOLDER_JSON = json.dumps(_PLACEHOLDER).encode()


class SnapshotEncoder:
    def __init__(self, max_outbounds: int = 256) -> None:
        self._outbound: OrderedDict[str, bytes] = OrderedDict()
        self._max = max_outbounds

    def encode(self, snap: ProxySnapshot) -> bytes:
        outbound = snap.outbound
        if not outbound.digest:
            return codec.dumps(snap)
        encoded = self._outbound.get(outbound.digest)
        if encoded is None:
            encoded = codec.dumps(outbound)
            self._outbound[outbound.digest] = encoded
            if len(self._outbound) > self._max:
                self._outbound.popitem(last=False)
        else:
            self._outbound.move_to_end(outbound.digest)
        plain = {
            f.name: _PLACEHOLDER if f.name == "outbound" else codec.to_plain(getattr(snap, f.name))
            for f in dataclasses.fields(snap)
        }
        head = json.dumps(plain, sort_keys=True, separators=(",", ":")).encode()
        return head.replace(_PLACEHOLDER_JSON, encoded, 1)
