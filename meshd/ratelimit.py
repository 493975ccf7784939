"""Token buckets for rate limiting (pure: the caller passes the time)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    rate: float
    """Tokens added per second."""
    burst: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate, burst, burst, now)

    def take(self, now: float) -> float:
        """0 if a token was taken; else the seconds until one is available."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class KeyedLimiter:
    """One bucket per key (a credential), plus a global bucket. Keeps at most
    ``max_keys`` buckets; the least recently used go first (a full bucket is what a
    forgotten key would get anyway, so forgetting is never stricter)."""

    def __init__(
        self, *, rate: float, burst: float, per_key_rate: float, per_key_burst: float,
        max_keys: int = 100_000,
    ) -> None:  # fmt: skip
        self._global = TokenBucket.full(rate, burst, 0.0)
        self._per_key_rate = per_key_rate
        self._per_key_burst = per_key_burst
        self._keys: OrderedDict[str, TokenBucket] = OrderedDict()
        self._max_keys = max_keys

    def take(self, key: str, now: float) -> float:
        """0 if allowed; else seconds to wait. A refused request costs no token."""
        bucket = self._keys.get(key)
        if bucket is None:
            bucket = TokenBucket.full(self._per_key_rate, self._per_key_burst, now)
            self._keys[key] = bucket
            if len(self._keys) > self._max_keys:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(key)
        wait = bucket.take(now)
        if wait:
            return wait
        wait = self._global.take(now)
        if wait:
            bucket.tokens += 1  # give the per-key token back: the request did not happen
        return wait
