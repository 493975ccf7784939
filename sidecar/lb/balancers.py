"""Load balancers: pick one endpoint of a cluster for a request.

Built once per cluster when a snapshot is applied (:func:`build_balancer`), then asked
per request: ``balancer.choose(rng, request, source_ip) -> Choice | Passthrough | None``.
Nothing here reads a clock or the global ``random``: the caller injects a
``random.Random``.

- ``ROUND_ROBIN``: a precomputed, interleaved schedule in which every endpoint appears
  ``weight`` times per cycle (smooth weighted round robin);
- ``LEAST_REQUEST``: power of two choices over the endpoints' in-flight counts (two
  distinct endpoints drawn by weight; the one with fewer active requests per unit of
  weight wins);
- ``RANDOM``: one endpoint drawn by weight;
- ``PASSTHROUGH``: :data:`PASSTHROUGH`, a marker telling the caller to connect to the
  request's original destination;
- consistent hashing (``LoadBalancer.consistent_hash``, which wins over ``policy``):
  see :class:`ConsistentHashBalancer`.

In-flight counts live in :class:`Load` objects held by a :class:`LoadRegistry` that
outlives snapshots (keyed by endpoint address and port), so a config swap does not
forget which endpoints are busy. The proxy increments ``choice.load.active`` when it
sends a request and decrements it when the exchange ends.

``None`` from ``choose`` means the cluster has no endpoint (the caller answers 503,
"no healthy upstream", as Envoy does).
"""

from __future__ import annotations

import hashlib
import math
import sys
from array import array
from bisect import bisect_right
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate
from random import Random
from typing import Final

from meshd.compile.snapshot import Cluster, ConsistentHash, Endpoint
from sidecar.routing.request import RequestView, cookie_value

__all__ = [
    "HOST_SELECTION_RETRIES",
    "PASSTHROUGH",
    "Balancer",
    "Balancers",
    "Choice",
    "ConsistentHashBalancer",
    "LeastRequestBalancer",
    "Load",
    "LoadRegistry",
    "Passthrough",
    "PassthroughBalancer",
    "RandomBalancer",
    "RoundRobinBalancer",
    "SetCookie",
    "build_balancer",
    "hash_key",
]

HOST_SELECTION_RETRIES: Final = 5
"""How many times ``choose`` redraws to avoid the endpoints in ``avoid`` (Istio sets
Envoy's ``previous_hosts`` retry predicate with 5 attempts)."""

MAX_SCHEDULE: Final = 8192
"""Round-robin schedules longer than this are built from proportionally scaled weights."""


class Load:
    """In-flight requests of one endpoint (``active``), shared by every balancer that
    has the endpoint."""

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = 0

    def __repr__(self) -> str:
        return f"Load(active={self.active})"


class LoadRegistry:
    """``(address, port) -> Load``, kept for the life of a worker across snapshots."""

    __slots__ = ("_loads",)

    def __init__(self) -> None:
        self._loads: dict[tuple[str, int], Load] = {}

    def get(self, address: str, port: int) -> Load:
        key = (address, port)
        load = self._loads.get(key)
        if load is None:
            load = self._loads[key] = Load()
        return load

    def prune(self, clusters: Iterable[Cluster]) -> None:
        """Forget idle endpoints none of ``clusters`` has (after a config swap)."""
        keep = {(ep.address, ep.port) for c in clusters for ep in c.endpoints}
        for key in [k for k, load in self._loads.items() if k not in keep and not load.active]:
            del self._loads[key]

    def __len__(self) -> int:
        return len(self._loads)


@dataclass(frozen=True, slots=True)
class SetCookie:
    """A cookie the caller sets on the response (consistent hashing on a cookie the
    request did not carry, with a TTL: Istio's ``httpCookie``). ``max_age_s`` None is a
    session cookie (TTL 0)."""

    name: str
    value: str
    path: str | None
    max_age_s: int | None

    def header_value(self) -> str:
        """The ``Set-Cookie`` value, as Envoy writes it."""
        parts = [f"{self.name}={self.value}"]
        if self.max_age_s is not None:
            parts.append(f"Max-Age={self.max_age_s}")
        if self.path:
            parts.append(f"Path={self.path}")
        parts.append("HttpOnly")
        return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class Choice:
    """The endpoint picked, its index in ``cluster.endpoints``, its shared
    :class:`Load`, and a cookie to set on the response (consistent hashing only)."""

    endpoint: Endpoint
    index: int
    load: Load
    set_cookie: SetCookie | None = None


class Passthrough:
    """Marker: connect to the request's original destination (``PASSTHROUGH``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "PASSTHROUGH"


PASSTHROUGH: Final = Passthrough()


class Balancer:
    """Base of the balancers: ``choose`` one endpoint of ``cluster``."""

    __slots__ = ("choices", "cluster")

    def __init__(self, cluster: Cluster, loads: LoadRegistry) -> None:
        self.cluster = cluster
        self.choices: tuple[Choice, ...] = tuple(
            Choice(ep, i, loads.get(ep.address, ep.port)) for i, ep in enumerate(cluster.endpoints)
        )

    def choose(
        self,
        rng: Random,
        request: RequestView | None = None,
        source_ip: str | None = None,
        avoid: Collection[Endpoint] = (),
    ) -> Choice | Passthrough | None:
        """An endpoint for one attempt. ``avoid``: endpoints already tried for this
        request (a retry prefers another one when there is one)."""
        choices = self.choices
        if not choices:
            return None
        choice = self._pick(rng, request, source_ip)
        if avoid and len(choices) > 1:
            for _ in range(HOST_SELECTION_RETRIES):
                if choice.endpoint not in avoid:
                    break
                choice = self._pick(rng, request, source_ip)
        return choice

    def _pick(self, rng: Random, request: RequestView | None, source_ip: str | None) -> Choice:
        raise NotImplementedError


class PassthroughBalancer(Balancer):
    __slots__ = ()

    def choose(
        self,
        rng: Random,
        request: RequestView | None = None,
        source_ip: str | None = None,
        avoid: Collection[Endpoint] = (),
    ) -> Choice | Passthrough | None:
        return PASSTHROUGH


class RoundRobinBalancer(Balancer):
    """Weighted round robin over a precomputed, interleaved schedule (every endpoint
    ``weight`` times per cycle). ``start`` offsets the first
    pick (give each worker a random one so they do not all start on endpoint 0)."""

    __slots__ = ("_next", "schedule")

    def __init__(self, cluster: Cluster, loads: LoadRegistry, start: int = 0) -> None:
        super().__init__(cluster, loads)
        self.schedule: tuple[Choice, ...] = tuple(
            self.choices[i] for i in _schedule([c.endpoint.weight for c in self.choices])
        )
        self._next = start % len(self.schedule) if self.schedule else 0

    def _pick(self, rng: Random, request: RequestView | None, source_ip: str | None) -> Choice:
        schedule = self.schedule
        i = self._next
        self._next = i + 1 if i + 1 < len(schedule) else 0
        return schedule[i]


def _schedule(weights: list[int]) -> list[int]:
    """Endpoint indices, each ``weight`` times (weights divided by their GCD),
    interleaved by smooth weighted round robin (nginx's: every step each endpoint gains
    its weight, the richest is picked and pays the total), which spreads a heavy
    endpoint's turns evenly. Very long schedules use earliest-deadline-first order (Envoy's
    weighted round robin), which is cheaper to build."""
    if not weights:
        return []
    w = [max(1, x) for x in weights]
    g = 0
    for x in w:
        g = math.gcd(g, x)
    w = [x // g for x in w]
    total = sum(w)
    if total == len(w):
        return list(range(len(w)))
    if total > MAX_SCHEDULE:
        scale = MAX_SCHEDULE / total
        w = [max(1, round(x * scale)) for x in w]
        total = sum(w)
    if total * len(w) > _SMOOTH_LIMIT:
        due = [((k + 0.5) / x, i) for i, x in enumerate(w) for k in range(x)]
        due.sort()
        return [i for _, i in due]
    current = [0] * len(w)
    order: list[int] = []
    indices = range(len(w))
    for _ in range(total):
        for i in indices:
            current[i] += w[i]
        best = max(indices, key=current.__getitem__)
        current[best] -= total
        order.append(best)
    return order


_SMOOTH_LIMIT = 200_000


class _Weighted(Balancer):
    """Shared by RANDOM and LEAST_REQUEST: draw an index with probability by weight."""

    __slots__ = ("_cumulative", "_total", "_uniform")

    def __init__(self, cluster: Cluster, loads: LoadRegistry) -> None:
        super().__init__(cluster, loads)
        weights = [max(1, c.endpoint.weight) for c in self.choices]
        self._uniform = len(set(weights)) <= 1
        self._cumulative = list(accumulate(weights))
        self._total = self._cumulative[-1] if weights else 0

    def _draw(self, rng: Random) -> int:
        if self._uniform:
            return int(rng.random() * len(self.choices))
        return bisect_right(self._cumulative, rng.random() * self._total)


class RandomBalancer(_Weighted):
    __slots__ = ()

    def _pick(self, rng: Random, request: RequestView | None, source_ip: str | None) -> Choice:
        return self.choices[self._draw(rng)]


class LeastRequestBalancer(_Weighted):
    """Power of two choices: two distinct endpoints drawn (by weight), the one with
    fewer in-flight requests per unit of weight wins (the first drawn on a tie)."""

    __slots__ = ()

    def _pick(self, rng: Random, request: RequestView | None, source_ip: str | None) -> Choice:
        choices = self.choices
        n = len(choices)
        if n == 1:
            return choices[0]
        if self._uniform:
            i = int(rng.random() * n)
            j = int(rng.random() * (n - 1))
            if j >= i:
                j += 1
            a, b = choices[i], choices[j]
            return b if b.load.active < a.load.active else a
        i = self._draw(rng)
        j = i
        for _ in range(8):
            j = self._draw(rng)
            if j != i:
                break
        a, b = choices[i], choices[j]
        if b.load.active * a.endpoint.weight < a.load.active * b.endpoint.weight:
            return b
        return a


# --- consistent hashing -------------------------------------------------------------------


def hash_key(key: str) -> int:
    """The 64-bit hash of a hash key (BLAKE2b: the same in every process and on every
    host, so all sidecars send one key to one endpoint)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def table_size(minimum_ring_size: int, endpoints: int) -> int:
    """Slots of the lookup table: ``minimum_ring_size``, raised to 8 per endpoint for
    large clusters so that every endpoint keeps a share (building costs O(endpoints x
    slots): ~1 ms for 10 endpoints, ~10 ms for 100, so it is memoised per endpoint set)."""
    return max(minimum_ring_size, 8 * endpoints, 1)


_LN_2_64 = 64 * math.log(2)
_TAG_LIMIT = 1 << 16


def _scores(address: str, port: int, size: int) -> array[int]:
    """Endpoint ``address:port``'s score for every slot: ``size`` 64-bit values from
    SHAKE-128 of its address (the same on every host: little-endian by definition)."""
    scores = array("Q")
    scores.frombytes(hashlib.shake_128(f"{address}:{port}".encode()).digest(8 * size))
    if sys.byteorder == "big":
        scores.byteswap()
    return scores


@lru_cache(maxsize=256)
def _slot_owners(keys: tuple[tuple[str, int, int], ...], size: int) -> tuple[int, ...]:
    """For every slot, the endpoint that wins it by weighted rendezvous hashing:
    ``argmax_i weight_i / -ln(u_i(slot))`` (equal weights: the highest score). An
    endpoint's score for a slot depends only on that slot and that endpoint, so adding
    an endpoint moves exactly the slots it wins (about weight / total of them) and
    removing one moves only its own."""
    weights = [max(1, w) for _, _, w in keys]
    if len(set(weights)) <= 1 and len(keys) < _TAG_LIMIT:
        # The endpoint's index goes into the two low bytes of each score, so one C-level
        # max() per slot and endpoint keeps both the best score and who has it.
        best: list[int] = [0] * size
        for i, (address, port, _) in enumerate(keys):
            tagged = bytearray(hashlib.shake_128(f"{address}:{port}".encode()).digest(8 * size))
            tagged[0::8] = bytes((i & 0xFF,)) * size
            tagged[1::8] = bytes((i >> 8,)) * size
            scores = array("Q")
            scores.frombytes(tagged)
            if sys.byteorder == "big":
                scores.byteswap()
            best = list(map(max, best, scores))
        return tuple(v & 0xFFFF for v in best)
    owners = [0] * size
    best_f = [-1.0] * size
    for i, (address, port, _) in enumerate(keys):
        w = weights[i]
        for slot, x in enumerate(_scores(address, port, size)):
            f = w / (_LN_2_64 - math.log(x + 0.5))
            if f > best_f[slot]:
                best_f[slot] = f
                owners[slot] = i
    return tuple(owners)


class ConsistentHashBalancer(Balancer):
    """Consistent hashing (Istio's ``consistentHash``) on a header, a cookie, the source
    IP or a query parameter.

    The key's hash selects one of ``size`` slots (at least ``minimum_ring_size``); each
    slot belongs to an endpoint chosen by weighted rendezvous hashing, so an endpoint
    owns about ``weight / total`` of the slots and a change of the endpoint set moves
    only the keys of the slots that change hands (~1/n per endpoint added or removed).
    When the request has no key, a random slot is used (Envoy's behaviour), except for a
    cookie with a TTL: then a cookie value is generated (from ``rng``), its endpoint
    chosen, and :attr:`Choice.set_cookie` tells the caller to set it.
    """

    __slots__ = ("_by_cookie", "_owners", "_size", "policy")

    def __init__(self, cluster: Cluster, loads: LoadRegistry, policy: ConsistentHash) -> None:
        super().__init__(cluster, loads)
        self.policy = policy
        keys = tuple((c.endpoint.address, c.endpoint.port, c.endpoint.weight) for c in self.choices)
        self._size = table_size(policy.minimum_ring_size, len(keys))
        self._owners = _slot_owners(keys, self._size) if keys else ()
        self._by_cookie = policy.kind == "cookie"

    def owner(self, key: str) -> Choice:
        """The endpoint of hash key ``key``."""
        return self.choices[self._owners[hash_key(key) % self._size]]

    def key(self, request: RequestView | None, source_ip: str | None) -> str | None:
        """The hash key of a request (None: it has none)."""
        p = self.policy
        if p.kind == "source_ip":
            return source_ip
        if request is None:
            return None
        if p.kind == "header":
            return request.headers.get(p.name)
        if p.kind == "cookie":
            return cookie_value(request.headers, p.name)
        return request.query_param(p.name)

    def choose(
        self,
        rng: Random,
        request: RequestView | None = None,
        source_ip: str | None = None,
        avoid: Collection[Endpoint] = (),
    ) -> Choice | Passthrough | None:
        choices = self.choices
        if not choices:
            return None
        key = self.key(request, source_ip)
        set_cookie: SetCookie | None = None
        if key is None:
            p = self.policy
            if self._by_cookie and p.cookie_ttl_ms is not None:
                key = f"{rng.getrandbits(64):016x}"
                max_age = p.cookie_ttl_ms // 1000 if p.cookie_ttl_ms > 0 else None
                set_cookie = SetCookie(p.name, key, p.cookie_path, max_age)
                slot = hash_key(key) % self._size
            else:
                slot = int(rng.random() * self._size)
        else:
            slot = hash_key(key) % self._size
        owners = self._owners
        choice = choices[owners[slot]]
        if avoid and len(choices) > 1 and choice.endpoint in avoid:
            # Walk on along the table to the next slot of an endpoint not yet tried.
            size = self._size
            for step in range(1, size):
                candidate = choices[owners[(slot + step) % size]]
                if candidate.endpoint not in avoid:
                    choice = candidate
                    break
        if set_cookie is not None:
            return Choice(choice.endpoint, choice.index, choice.load, set_cookie)
        return choice

    def _pick(self, rng: Random, request: RequestView | None, source_ip: str | None) -> Choice:
        result = self.choose(rng, request, source_ip)
        assert isinstance(result, Choice)
        return result


class Balancers:
    """Every cluster's balancer, built on first use (a snapshot swap pays only for the
    clusters that are called). ``get(name)`` is None for an unknown cluster."""

    __slots__ = ("_built", "_clusters", "_rng", "loads")

    def __init__(
        self, clusters: Iterable[Cluster], loads: LoadRegistry, rng: Random | None = None
    ) -> None:
        self._clusters = {c.name: c for c in clusters}
        self._built: dict[str, Balancer] = {}
        self._rng = rng
        self.loads = loads

    def get(self, name: str) -> Balancer | None:
        balancer = self._built.get(name)
        if balancer is None:
            cluster = self._clusters.get(name)
            if cluster is None:
                return None
            balancer = self._built[name] = build_balancer(cluster, self.loads, self._rng)
        return balancer

    def __contains__(self, name: object) -> bool:
        return name in self._clusters


def build_balancer(cluster: Cluster, loads: LoadRegistry, rng: Random | None = None) -> Balancer:
    """The balancer for ``cluster``'s load-balancer settings. ``rng`` (optional) gives a
    round-robin balancer a random starting point."""
    lb = cluster.lb
    if lb.consistent_hash is not None:
        return ConsistentHashBalancer(cluster, loads, lb.consistent_hash)
    if lb.policy == "PASSTHROUGH":
        return PassthroughBalancer(cluster, loads)
    if lb.policy == "LEAST_REQUEST":
        return LeastRequestBalancer(cluster, loads)
    if lb.policy == "RANDOM":
        return RandomBalancer(cluster, loads)
    start = (
        int(rng.random() * len(cluster.endpoints)) if rng is not None and cluster.endpoints else 0
    )
    return RoundRobinBalancer(cluster, loads, start)
