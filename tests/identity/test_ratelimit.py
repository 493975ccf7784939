from __future__ import annotations

import pytest

from meshd.ratelimit import KeyedLimiter, TokenBucket


def test_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket.full(rate=2, burst=2, now=0)
    assert bucket.take(0) == 0
    assert bucket.take(0) == 0
    assert bucket.take(0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0


def test_keyed_limiter_limits_each_key_and_the_total() -> None:
    limiter = KeyedLimiter(rate=3, burst=3, per_key_rate=1, per_key_burst=2)
    assert [limiter.take("a", 0) for _ in range(3)] == [0, 0, pytest.approx(1.0)]
    assert limiter.take("b", 0) == 0
    # The global bucket is empty now; b's refused request does not spend b's token.
    assert limiter.take("b", 0) > 0
    assert limiter.take("b", 1.0) == 0


def test_keyed_limiter_forgets_the_oldest_keys() -> None:
    limiter = KeyedLimiter(rate=1000, burst=1000, per_key_rate=1, per_key_burst=1, max_keys=2)
    for key in ("a", "b", "c"):
        assert limiter.take(key, 0) == 0
    assert limiter.take("a", 0) == 0, "a was forgotten, so it starts with a full bucket"
