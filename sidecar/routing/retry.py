"""Retry policy: may this attempt's outcome be retried, and does the budget allow it.

Envoy's conditions (``x-envoy-retry-on``), as Istio's ``retryOn`` names them:

- ``5xx``: any 5xx response, and any attempt that got no response at all (connect
  failure, reset, refused stream, per-try timeout);
- ``gateway-error``: a 502, 503 or 504 response, and (as in Envoy, which counts a reset
  as a 5xx) any attempt that got no response at all;
- ``reset``: no response at all (connect failure, reset, refused stream, per-try
  timeout);
- ``connect-failure``: the connection to the upstream could not be made;
- ``refused-stream``: the upstream refused the stream before processing it;
- ``retriable-4xx``: a 409 response;

plus ``retry_on_status``: the bare status codes Istio lets users list (Envoy's
``retriable-status-codes``). ``RetryPolicy.attempts`` is the number of *retries*
(Istio's meaning): a request is tried at most ``attempts + 1`` times. The per-try
timeout and the route timeout are the caller's (a route timeout ends all attempts and is
never retried).

:class:`RetryBudget` bounds concurrent retries the way Envoy's ``retry_budget`` circuit
breaker does, so retries cannot multiply an outage: a retry may start only while
``active_retries < max(min_concurrency, budget_percent% of active_requests)``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import lru_cache
from random import Random

from meshd.compile.snapshot import MeshSettings, RetryPolicy

__all__ = [
    "BACKOFF_BASE_MS",
    "BACKOFF_MAX_MS",
    "Failure",
    "Outcome",
    "RetryBudget",
    "RetryRule",
    "RetryStatus",
    "backoff_ms",
    "compile_retry",
    "decide_retry",
    "should_retry",
]


class Failure(enum.Enum):
    """An attempt that ended without a response."""

    CONNECT_FAILURE = "connect-failure"
    """No connection to the upstream (refused, unreachable, connect timeout, TLS failure)."""
    RESET = "reset"
    """The connection or stream was reset / closed after the request was (partly) sent."""
    REFUSED_STREAM = "refused-stream"
    """The upstream refused the stream before processing it: HTTP/2 REFUSED_STREAM. The
    HTTP/1.1 client may report a pooled keep-alive connection that the upstream had
    closed before it read the request this way too (nothing was processed)."""
    TIMEOUT = "timeout"
    """The per-try timeout fired before a response head arrived."""


Outcome = Failure | int
"""What one attempt got: a :class:`Failure`, or the response status."""


@dataclass(frozen=True, slots=True)
class RetryRule:
    """A :class:`RetryPolicy` compiled for fast classification."""

    attempts: int
    per_try_timeout_ms: int | None
    statuses: frozenset[int]
    """Every status that is retried (5xx range expanded, 409, ``retry_on_status``)."""
    failures: frozenset[Failure]
    """Every :class:`Failure` that is retried."""
    policy: RetryPolicy


_NO_RESPONSE = frozenset(Failure)


@lru_cache(maxsize=1024)
def compile_retry(policy: RetryPolicy) -> RetryRule:
    statuses: set[int] = set(policy.retry_on_status)
    failures: set[Failure] = set()
    for cond in policy.retry_on:
        if cond == "5xx":
            statuses.update(range(500, 600))
            failures.update(_NO_RESPONSE)
        elif cond == "gateway-error":
            statuses.update((502, 503, 504))
            failures.update(_NO_RESPONSE)
        elif cond == "reset":
            failures.update(_NO_RESPONSE)
        elif cond == "connect-failure":
            failures.add(Failure.CONNECT_FAILURE)
        elif cond == "refused-stream":
            failures.add(Failure.REFUSED_STREAM)
        elif cond == "retriable-4xx":
            statuses.add(409)
        # meshd.compile.check rejects any other condition before a snapshot is served.
    return RetryRule(
        attempts=policy.attempts,
        per_try_timeout_ms=policy.per_try_timeout_ms,
        statuses=frozenset(statuses),
        failures=frozenset(failures),
        policy=policy,
    )


def should_retry(rule: RetryRule | RetryPolicy, outcome: Outcome) -> bool:
    """Whether ``outcome`` is one the policy retries (ignoring attempts left and budget)."""
    if isinstance(rule, RetryPolicy):
        rule = compile_retry(rule)
    if isinstance(outcome, Failure):
        return outcome in rule.failures
    return outcome in rule.statuses


class RetryStatus(enum.Enum):
    """Envoy's answer to "retry?", which its stats distinguish."""

    YES = "yes"
    """Retry: a retry slot of the budget is now held (release it with ``end_retry``)."""
    NO = "no"
    """The outcome is a success or not a retriable failure."""
    LIMIT_EXCEEDED = "limit_exceeded"
    """All ``attempts`` retries are spent (``upstream_rq_retry_limit_exceeded``)."""
    OVERFLOW = "overflow"
    """The retry budget is exhausted (``upstream_rq_retry_overflow``)."""


def decide_retry(
    rule: RetryRule | None, outcome: Outcome, retries_done: int, budget: RetryBudget | None
) -> RetryStatus:
    """The whole decision after an attempt: condition, then attempts left, then budget
    (Envoy's order). On :attr:`RetryStatus.YES` the budget counts one more active retry;
    the caller calls ``budget.end_retry()`` when that retry attempt ends."""
    if rule is None or not should_retry(rule, outcome):
        return RetryStatus.NO
    if retries_done >= rule.attempts:
        return RetryStatus.LIMIT_EXCEEDED
    if budget is not None and not budget.try_begin_retry():
        return RetryStatus.OVERFLOW
    return RetryStatus.YES


BACKOFF_BASE_MS = 25.0
BACKOFF_MAX_MS = 250.0


def backoff_ms(
    retries_done: int,
    rng: Random,
    base_ms: float = BACKOFF_BASE_MS,
    max_ms: float = BACKOFF_MAX_MS,
) -> float:
    """How long to wait before retry number ``retries_done + 1``: Envoy's fully
    jittered exponential back-off (uniform in ``[0, (2**(n+1) - 1) * base)``, capped at
    ``max_ms``; Envoy's defaults 25 ms and 250 ms, which Istio does not expose)."""
    ceiling = ((1 << (min(retries_done, 30) + 1)) - 1) * base_ms
    return min(rng.random() * ceiling, max_ms)


class RetryBudget:
    """Concurrent-retry budget for one upstream cluster (Envoy scopes it per cluster).

    ``begin_request()``/``end_request()`` bracket every request routed to the cluster,
    over all its attempts; ``try_begin_retry()``/``end_retry()`` bracket each retry
    attempt. A retry is admitted while ``active_retries`` is below
    ``max(min_concurrency, floor(budget_percent / 100 * active_requests))``. Not
    thread-safe: one per worker, used from its event loop.
    """

    __slots__ = (
        "active_requests",
        "active_retries",
        "admitted",
        "budget_percent",
        "min_concurrency",
        "overflows",
    )

    def __init__(self, budget_percent: float = 20.0, min_concurrency: int = 3) -> None:
        if budget_percent < 0 or min_concurrency < 0:
            raise ValueError("budget_percent and min_concurrency must not be negative")
        self.budget_percent = budget_percent
        self.min_concurrency = min_concurrency
        self.active_requests = 0
        self.active_retries = 0
        self.admitted = 0
        self.overflows = 0

    @classmethod
    def from_settings(cls, mesh: MeshSettings) -> RetryBudget:
        return cls(mesh.retry_budget_percent, mesh.retry_budget_min_concurrency)

    @property
    def limit(self) -> int:
        """How many retries may be active right now."""
        return max(self.min_concurrency, int(self.budget_percent * self.active_requests / 100.0))

    def begin_request(self) -> None:
        self.active_requests += 1

    def end_request(self) -> None:
        if self.active_requests > 0:
            self.active_requests -= 1

    def try_begin_retry(self) -> bool:
        """Take a retry slot if the budget has one (counted in ``overflows`` if not)."""
        if self.active_retries < self.limit:
            self.active_retries += 1
            self.admitted += 1
            return True
        self.overflows += 1
        return False

    def end_retry(self) -> None:
        if self.active_retries > 0:
            self.active_retries -= 1

    def __repr__(self) -> str:
        return (
            f"RetryBudget({self.budget_percent}%, min {self.min_concurrency}: "
            f"{self.active_retries}/{self.limit} retries, {self.active_requests} requests)"
        )
