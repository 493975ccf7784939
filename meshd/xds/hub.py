"""Per-proxy config state and the long-poll protocol.

``GET /v1/xds/{proxy}?version=V`` answers at once when the proxy's current snapshot
differs from V (and is not the version it NACKed), else waits for a change or until
the wait ends (304). Polling with ``version=V`` where V is the current version is an
implicit ACK of V — as in xDS, where the next request carries the applied version —
so a push to N proxies costs N responses and N polls, not also N ACK requests.
``POST /v1/xds/{proxy}/ack`` records an explicit ACK, or a NACK with its reason; a
NACKed version is not resent, and the proxy keeps running its last good config.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from meshd.compile import codec
from meshd.compile.snapshot import ProxySnapshot
from meshd.errors import NotFound
from meshd.xds.encode import Encoded


@dataclass(slots=True)
class ProxyState:
    proxy_id: str
    snapshot: ProxySnapshot | None = None
    document: Encoded | None = None
    published_at: float = 0.0
    changed: anyio.Event | None = None
    gone: bool = False
    first_seen: float = 0.0
    last_seen: float = 0.0
    active_polls: int = 0
    sent_version: str = ""
    acked_version: str = ""
    acked_at: float = 0.0
    nack_version: str = ""
    nack_reason: str = ""
    errors: tuple[str, ...] = field(default_factory=tuple)

    @property
    def version(self) -> str:
        return self.snapshot.version if self.snapshot else ""

    def wake(self) -> None:
        changed, self.changed = self.changed, None
        if changed is not None:
            changed.set()

    def sync_state(self) -> str:
        """istioctl proxy-status vocabulary."""
        if self.errors and not self.snapshot:
            return "ERROR"
        if not self.snapshot:
            return "PENDING"
        if self.version == self.acked_version:
            return "SYNCED" if not self.errors else "ERROR"
        if self.version == self.nack_version:
            return "NACKED"
        if self.version == self.sent_version:
            return "STALE"
        return "NOT SENT"


AckObserver = Callable[[ProxyState, float], None]


class XdsHub:
    """Holds the latest good snapshot of every proxy and the watches waiting on them.
    Runs on one event loop; no locks needed."""

    def __init__(self, on_ack: AckObserver | None = None, connected_grace_s: float = 90.0) -> None:
        self._proxies: dict[str, ProxyState] = {}
        self._closing = False
        self._on_ack = on_ack
        self._grace = connected_grace_s

    # --- fed by the compile loop ----------------------------------------------------------

    def publish(
        self,
        snapshots: Mapping[str, ProxySnapshot],
        errors: Mapping[str, tuple[str, ...]],
        proxies: Iterable[str],
        documents: Mapping[str, Encoded] | None = None,
    ) -> int:
        """Install a compile result. ``proxies`` is every proxy that exists now; state of
        the others is dropped (their watchers get 404). A proxy with errors keeps its
        previous good snapshot. ``documents`` are the snapshots already encoded (by
        the compile thread); any missing one is encoded here. Returns how many proxies
        got a new version."""
        now = time.time()
        alive = set(proxies)
        for pid in [pid for pid in self._proxies if pid not in alive]:
            gone = self._proxies.pop(pid)
            gone.gone = True
            gone.wake()
        changed = 0
        for pid in alive:
            state = self._proxies.get(pid) or self._proxies.setdefault(pid, ProxyState(pid))
            state.errors = errors.get(pid, ())
            snap = snapshots.get(pid)
            if snap is not None and snap.version != state.version:
                state.snapshot = snap
                doc = documents.get(pid) if documents is not None else None
                state.document = doc if doc is not None and doc.version == snap.version else None
                state.published_at = now
                changed += 1
                state.wake()
        return changed

    # --- the protocol ---------------------------------------------------------------------

    async def poll(
        self, proxy_id: str, version: str, wait_s: float, *, registered: bool = False
    ) -> Encoded | None:
        """The document of a snapshot the proxy does not have, or None after ``wait_s``
        without one (or at once when the hub is closing). A ``registered`` proxy that no
        compile has covered yet waits for its first snapshot instead of getting 404."""
        state = self._proxies.get(proxy_id)
        if state is None and registered:
            state = ProxyState(proxy_id)
            self._proxies[proxy_id] = state
        if state is None:
            raise NotFound(
                f"proxy {proxy_id!r} is not known: register its instance first "
                "(PUT /v1/instances/{id}), then poll again"
            )
        now = time.time()
        state.last_seen = now
        if not state.first_seen:
            state.first_seen = now
        state.active_polls += 1
        try:
            with anyio.move_on_after(wait_s):
                while not self._closing:
                    if state.gone:
                        raise NotFound(f"proxy {proxy_id!r} was deregistered")
                    snap = state.snapshot
                    # Checked on every wake-up, not only on arrival: after a meshd restart
                    # the proxy polls with the version it runs before meshd has compiled
                    # it, and that poll is its ACK once the same version is published.
                    if snap is not None and version == snap.version != state.acked_version:
                        self._ack(state, version)
                    if snap is not None and snap.version not in (version, state.nack_version):
                        if state.document is None:  # published without a document
                            state.document = Encoded(snap.version, (codec.dumps(snap), b"", b""))
                        state.sent_version = snap.version
                        return state.document
                    if state.changed is None:
                        state.changed = anyio.Event()
                    await state.changed.wait()
            return None
        finally:
            state.active_polls -= 1
            state.last_seen = time.time()

    def close(self) -> None:
        """Answer every waiting poll now (304): the server is shutting down and the
        proxies should reconnect, to this replica when it is back or to another."""
        self._closing = True
        for state in self._proxies.values():
            state.wake()

    def ack(self, proxy_id: str, version: str, error: str | None = None) -> None:
        state = self._proxies.get(proxy_id)
        if state is None:
            raise NotFound(f"proxy {proxy_id!r} is not known")
        state.last_seen = time.time()
        if error:
            state.nack_version = version
            state.nack_reason = error
        else:
            self._ack(state, version)

    def _ack(self, state: ProxyState, version: str) -> None:
        state.acked_version = version
        state.acked_at = time.time()
        if state.nack_version == version:
            state.nack_version = state.nack_reason = ""
        if self._on_ack is not None and version == state.version and state.published_at:
            self._on_ack(state, state.acked_at - state.published_at)

    # --- status ---------------------------------------------------------------------------

    def get(self, proxy_id: str) -> ProxyState:
        state = self._proxies.get(proxy_id)
        if state is None:
            raise NotFound(f"no proxy {proxy_id!r}; list them with meshctl proxy-status")
        return state

    def states(self) -> list[ProxyState]:
        return [self._proxies[k] for k in sorted(self._proxies)]

    def status(self, state: ProxyState) -> dict[str, Any]:
        now = time.time()
        snap = state.snapshot
        return {
            "proxy": state.proxy_id,
            "service": snap.service if snap else None,
            "namespace": snap.namespace if snap else None,
            "state": state.sync_state(),
            "connected": state.active_polls > 0
            or (bool(state.last_seen) and now - state.last_seen < self._grace),
            "lastSeen": state.last_seen or None,
            "version": state.version or None,
            "sentVersion": state.sent_version or None,
            "ackedVersion": state.acked_version or None,
            "nack": {"version": state.nack_version, "reason": state.nack_reason}
            if state.nack_version
            else None,
            "errors": list(state.errors),
        }
