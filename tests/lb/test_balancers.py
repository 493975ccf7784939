"""Load balancers: round robin order and weights, power of two choices, random,
passthrough, consistent hashing (stability, weights, cookies, source IP, query)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from meshd.compile import snapshot as s
from sidecar.lb import (
    PASSTHROUGH,
    Balancers,
    Choice,
    ConsistentHashBalancer,
    LeastRequestBalancer,
    LoadRegistry,
    RandomBalancer,
    RoundRobinBalancer,
    SetCookie,
    build_balancer,
)
from sidecar.lb.balancers import MAX_SCHEDULE, hash_key, table_size
from sidecar.routing import Headers, RequestView
from tests.routing.goldens import snapshot


def endpoints(n: int, weights: list[int] | None = None) -> tuple[s.Endpoint, ...]:
    ws = weights or [1] * n
    return tuple(s.Endpoint(f"198.18.0.{i + 1}", 15006, weight=ws[i]) for i in range(n))


def cluster(
    eps: tuple[s.Endpoint, ...],
    policy: str = "ROUND_ROBIN",
    consistent_hash: s.ConsistentHash | None = None,
) -> s.Cluster:
    lb = s.LoadBalancer(policy, consistent_hash)  # type: ignore[arg-type]
    return s.Cluster("outbound|80||svc", "svc", 80, None, "http", eps, lb=lb)


def pick(balancer: object, rng: random.Random, **kwargs: object) -> Choice:
    result = balancer.choose(rng, **kwargs)  # type: ignore[attr-defined]
    assert isinstance(result, Choice)
    return result


def addresses(balancer: object, rng: random.Random, n: int, **kwargs: object) -> list[str]:
    return [pick(balancer, rng, **kwargs).endpoint.address for _ in range(n)]


RNG = random.Random(11)


# --- round robin -------------------------------------------------------------------------


def test_round_robin_order() -> None:
    rr = build_balancer(cluster(endpoints(3)), LoadRegistry())
    assert isinstance(rr, RoundRobinBalancer)
    assert addresses(rr, RNG, 7) == ["198.18.0.1", "198.18.0.2", "198.18.0.3"] * 2 + ["198.18.0.1"]


def test_round_robin_start_offset() -> None:
    rr = RoundRobinBalancer(cluster(endpoints(3)), LoadRegistry(), start=2)
    assert addresses(rr, RNG, 3) == ["198.18.0.3", "198.18.0.1", "198.18.0.2"]
    seeded = build_balancer(cluster(endpoints(3)), LoadRegistry(), random.Random(4))
    assert sorted(addresses(seeded, RNG, 3)) == ["198.18.0.1", "198.18.0.2", "198.18.0.3"]


@pytest.mark.parametrize("weights", [[3, 1], [5, 1, 1], [2, 4, 6], [1, 1, 7]])
def test_round_robin_weights_per_cycle_and_interleaved(weights: list[int]) -> None:
    rr = build_balancer(cluster(endpoints(len(weights), weights)), LoadRegistry())
    assert isinstance(rr, RoundRobinBalancer)
    cycle = len(rr.schedule)
    picks = addresses(rr, RNG, cycle * 3)
    counts = Counter(picks)
    total = sum(weights)
    for i, w in enumerate(weights):
        assert counts[f"198.18.0.{i + 1}"] * total == w * len(picks)
    # interleaved: the heaviest endpoint's turns are spread between the others' (at most
    # one more in a row than an even spread would give, counting across cycles)
    heaviest = f"198.18.0.{weights.index(max(weights)) + 1}"
    longest = run = 0
    for a in picks:
        run = run + 1 if a == heaviest else 0
        longest = max(longest, run)
    others = total - max(weights)
    assert longest <= -(-max(weights) // others) + 1


def test_round_robin_huge_weights_are_scaled() -> None:
    rr = build_balancer(cluster(endpoints(2, [1_000_000, 1])), LoadRegistry())
    assert isinstance(rr, RoundRobinBalancer)
    assert len(rr.schedule) <= MAX_SCHEDULE + 2
    counts = Counter(c.index for c in rr.schedule)
    assert counts[1] >= 1


# --- least request (power of two choices) ------------------------------------------------


def test_p2c_prefers_the_less_loaded() -> None:
    loads = LoadRegistry()
    lr = build_balancer(cluster(endpoints(2), "LEAST_REQUEST"), loads)
    assert isinstance(lr, LeastRequestBalancer)
    loads.get("198.18.0.1", 15006).active = 5
    assert set(addresses(lr, RNG, 200)) == {"198.18.0.2"}


def test_p2c_never_picks_the_single_busiest_of_many() -> None:
    loads = LoadRegistry()
    lr = build_balancer(cluster(endpoints(5), "LEAST_REQUEST"), loads)
    busy = loads.get("198.18.0.3", 15006)
    busy.active = 10
    counts = Counter(addresses(lr, RNG, 2000))
    assert counts["198.18.0.3"] == 0
    assert len(counts) == 4
    busy.active = 0  # all equal again: all are used
    assert len(set(addresses(lr, RNG, 500))) == 5


def test_p2c_tracks_in_flight_requests() -> None:
    """Requests that stay in flight spread evenly: each pick bumps its endpoint's load."""
    loads = LoadRegistry()
    lr = build_balancer(cluster(endpoints(4), "LEAST_REQUEST"), loads)
    for _ in range(400):
        pick(lr, RNG).load.active += 1
    actives = [loads.get(f"198.18.0.{i}", 15006).active for i in range(1, 5)]
    assert max(actives) - min(actives) <= 3


def test_p2c_weighted_compares_load_per_weight() -> None:
    loads = LoadRegistry()
    lr = build_balancer(cluster(endpoints(2, [3, 1]), "LEAST_REQUEST"), loads)
    loads.get("198.18.0.1", 15006).active = 2  # 2/3 per unit of weight
    loads.get("198.18.0.2", 15006).active = 1  # 1/1
    assert set(addresses(lr, RNG, 100)) == {"198.18.0.1"}


def test_single_endpoint_and_no_endpoint() -> None:
    rng = random.Random(1)
    for policy in ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"):
        one = build_balancer(cluster(endpoints(1), policy), LoadRegistry())
        assert addresses(one, rng, 3) == ["198.18.0.1"] * 3
        assert build_balancer(cluster((), policy), LoadRegistry()).choose(rng) is None


# --- random and passthrough --------------------------------------------------------------


def test_random_honours_weights() -> None:
    rb = build_balancer(cluster(endpoints(2, [3, 1]), "RANDOM"), LoadRegistry())
    assert isinstance(rb, RandomBalancer)
    counts = Counter(addresses(rb, random.Random(5), 4000))
    assert abs(counts["198.18.0.1"] / 4000 - 0.75) < 0.03
    uniform = build_balancer(cluster(endpoints(4), "RANDOM"), LoadRegistry())
    assert len(set(addresses(uniform, random.Random(5), 200))) == 4


def test_passthrough_is_a_marker() -> None:
    pb = build_balancer(cluster(endpoints(2), "PASSTHROUGH"), LoadRegistry())
    assert pb.choose(RNG) is PASSTHROUGH
    assert repr(PASSTHROUGH) == "PASSTHROUGH"


@pytest.mark.parametrize("policy", ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"])
def test_avoid_prefers_an_endpoint_not_yet_tried(policy: str) -> None:
    balancer = build_balancer(cluster(endpoints(3), policy), LoadRegistry())
    rng = random.Random(2)
    for _ in range(100):
        first = pick(balancer, rng)
        again = pick(balancer, rng, avoid=(first.endpoint,))
        assert again.endpoint != first.endpoint


# --- loads across snapshots --------------------------------------------------------------


def test_loads_are_shared_across_rebuilds_and_pruned() -> None:
    loads = LoadRegistry()
    c = cluster(endpoints(2), "LEAST_REQUEST")
    first = build_balancer(c, loads)
    first.choices[1].load.active += 1  # a request in flight on endpoint 2
    second = build_balancer(c, loads)  # a new snapshot: same endpoints, same loads
    assert [ch.load.active for ch in second.choices] == [0, 1]
    assert second.choices[1].load is first.choices[1].load
    assert len(loads) == 2
    loads.prune([cluster(endpoints(1))])  # endpoint 2 left the config but is still busy
    assert len(loads) == 2
    second.choices[1].load.active -= 1
    loads.prune([cluster(endpoints(1))])  # now idle: forgotten
    assert len(loads) == 1
    loads.prune([])
    assert len(loads) == 0
    assert "active=0" in repr(second.choices[0].load)


def test_balancers_are_built_on_first_use() -> None:
    snap = snapshot("route-features", "client-1.default")
    balancers = Balancers(snap.outbound.clusters, LoadRegistry(), random.Random(1))
    name = "outbound|8080|v2|shop.default.svc.cluster.local"
    assert name in balancers
    b = balancers.get(name)
    assert b is balancers.get(name)
    assert isinstance(b, ConsistentHashBalancer)
    assert balancers.get("nope") is None


# --- consistent hashing ------------------------------------------------------------------


def ring(eps: tuple[s.Endpoint, ...], kind: str = "header", **kw: object) -> ConsistentHashBalancer:
    ch = s.ConsistentHash(kind, kw.pop("name", "x-user"), **kw)  # type: ignore[arg-type]
    b = build_balancer(cluster(eps, consistent_hash=ch), LoadRegistry())
    assert isinstance(b, ConsistentHashBalancer)
    return b


KEYS = [f"user-{i}" for i in range(10_000)]


def owners(b: ConsistentHashBalancer) -> list[str]:
    return [b.owner(k).endpoint.address for k in KEYS]


def test_same_key_same_endpoint_in_every_instance() -> None:
    a, b = ring(endpoints(5)), ring(endpoints(5))
    assert owners(a) == owners(b)
    req = RequestView(headers=Headers.of({"x-user": "alice"}))
    assert pick(a, RNG, request=req).endpoint == pick(b, random.Random(99), request=req).endpoint
    assert hash_key("alice") == hash_key("alice")


def test_keys_spread_over_endpoints() -> None:
    counts = Counter(owners(ring(endpoints(5))))
    assert len(counts) == 5
    assert all(abs(n / len(KEYS) - 0.2) < 0.05 for n in counts.values())


@pytest.mark.parametrize("n", [3, 10, 25])
def test_adding_an_endpoint_moves_about_1_in_n_keys_all_to_the_new_one(n: int) -> None:
    before = owners(ring(endpoints(n)))
    after = owners(ring(endpoints(n + 1)))
    moved = [(b, a) for b, a in zip(before, after, strict=True) if a != b]
    new = f"198.18.0.{n + 1}"
    assert all(a == new for _, a in moved)
    assert len(moved) / len(KEYS) <= 1.35 / (n + 1)


@pytest.mark.parametrize("n", [4, 10, 25])
def test_removing_an_endpoint_moves_only_its_keys(n: int) -> None:
    full = endpoints(n)
    gone = full[n // 2]
    before = owners(ring(full))
    after = owners(ring(tuple(e for e in full if e != gone)))
    moved = [b for b, a in zip(before, after, strict=True) if a != b]
    assert set(moved) <= {gone.address}
    assert len(moved) / len(KEYS) <= 1.35 / n


def test_weights_are_honoured() -> None:
    b = ring(endpoints(3, [2, 1, 1]))
    counts = Counter(owners(b))
    assert abs(counts["198.18.0.1"] / len(KEYS) - 0.5) < 0.06
    # adding a weighted endpoint still moves keys only to it
    grown = owners(ring((*endpoints(3, [2, 1, 1]), s.Endpoint("198.18.0.9", 15006, weight=3))))
    before = owners(b)
    assert {a for x, a in zip(before, grown, strict=True) if a != x} == {"198.18.0.9"}


def test_ring_size() -> None:
    assert table_size(1024, 3) == 1024
    assert table_size(64, 3) == 64
    assert table_size(1024, 1000) == 8000
    small = ring(endpoints(3), minimum_ring_size=64)
    assert len(set(owners(small))) == 3


def test_header_absent_picks_at_random() -> None:
    b = ring(endpoints(4))
    spread = {pick(b, random.Random(i), request=RequestView()).endpoint.address for i in range(200)}
    assert len(spread) == 4


def test_source_ip_and_query_param_keys() -> None:
    by_ip = ring(endpoints(4), "source_ip", name="")
    first = pick(by_ip, RNG, source_ip="198.18.5.5").endpoint
    assert all(
        pick(by_ip, random.Random(i), source_ip="198.18.5.5").endpoint == first for i in range(20)
    )
    by_query = ring(endpoints(4), "query_param", name="tenant")
    req = RequestView(query="tenant=acme&x=1")
    first = pick(by_query, RNG, request=req).endpoint
    assert first == by_query.owner("acme").endpoint
    assert by_query.key(None, None) is None


def test_avoid_walks_to_another_endpoint() -> None:
    b = ring(endpoints(3))
    req = RequestView(headers=Headers.of({"x-user": "bob"}))
    first = pick(b, RNG, request=req)
    second = pick(b, RNG, request=req, avoid=(first.endpoint,))
    assert second.endpoint != first.endpoint
    third = pick(b, RNG, request=req, avoid=(first.endpoint, second.endpoint))
    assert third.endpoint not in (first.endpoint, second.endpoint)


# --- cookies (Istio's httpCookie) --------------------------------------------------------


def cookie_ring(ttl_ms: int | None, path: str | None = "/") -> ConsistentHashBalancer:
    return ring(endpoints(4), "cookie", name="session", cookie_ttl_ms=ttl_ms, cookie_path=path)


def test_cookie_present_hashes_its_value() -> None:
    b = cookie_ring(3_600_000)
    req = RequestView(headers=Headers.of({"cookie": "a=1; session=abc"}))
    choice = pick(b, RNG, request=req)
    assert choice.set_cookie is None
    assert choice.endpoint == b.owner("abc").endpoint


def test_cookie_absent_with_ttl_is_generated_and_sticks() -> None:
    b = cookie_ring(3_600_000)
    choice = pick(b, random.Random(8), request=RequestView())
    cookie = choice.set_cookie
    assert cookie is not None
    assert (cookie.name, cookie.path, cookie.max_age_s) == ("session", "/", 3600)
    assert cookie.header_value() == f"session={cookie.value}; Max-Age=3600; Path=/; HttpOnly"
    # the client sends it back: same endpoint, nothing more to set
    back = RequestView(headers=Headers.of({"cookie": f"session={cookie.value}"}))
    for i in range(20):
        again = pick(b, random.Random(i), request=back)
        assert again.endpoint == choice.endpoint
        assert again.set_cookie is None


def test_cookie_ttl_zero_is_a_session_cookie_and_no_ttl_sets_none() -> None:
    session = pick(cookie_ring(0, path=None), RNG, request=RequestView()).set_cookie
    assert session == SetCookie("session", session.value if session else "", None, None)
    assert session is not None
    assert session.header_value() == f"session={session.value}; HttpOnly"
    assert pick(cookie_ring(None), RNG, request=RequestView()).set_cookie is None


def test_golden_cookie_and_header_hashing_clusters() -> None:
    snap = snapshot("route-features", "client-1.default")
    by_name = {c.name: c for c in snap.outbound.clusters}
    shop = "shop.default.svc.cluster.local"
    cookie = build_balancer(by_name[f"outbound|8080||{shop}"], LoadRegistry())
    choice = pick(cookie, RNG, request=RequestView())
    assert choice.set_cookie is not None
    assert choice.set_cookie.header_value().endswith("; Max-Age=3600; Path=/; HttpOnly")
    header = build_balancer(by_name[f"outbound|8080|v2|{shop}"], LoadRegistry())
    assert isinstance(header, ConsistentHashBalancer)
    assert header.policy.name == "x-user"
    req = RequestView(headers=Headers.of({"X-User": "carol"}))
    assert pick(header, RNG, request=req).set_cookie is None


def test_golden_weighted_source_ip_cluster() -> None:
    snap = snapshot("serviceentry-external", "app-1.default")
    payments = next(
        c for c in snap.outbound.clusters if c.name == "outbound|8443||payments.example.net"
    )
    b = build_balancer(payments, LoadRegistry())
    assert isinstance(b, ConsistentHashBalancer)
    counts = Counter(b.owner(f"198.18.7.{i % 250}.{i}").endpoint.address for i in range(5000))
    heavy = max(payments.endpoints, key=lambda e: e.weight)
    assert counts.most_common(1)[0][0] == heavy.address
