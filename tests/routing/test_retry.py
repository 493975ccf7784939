"""Retry classification (Envoy's retry_on conditions), the retry decision, back-off and
the retry budget."""

from __future__ import annotations

import random

import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from meshd.compile.snapshot import MeshSettings, RetryPolicy
from sidecar.routing.retry import (
    Failure,
    Outcome,
    RetryBudget,
    RetryStatus,
    backoff_ms,
    compile_retry,
    decide_retry,
    should_retry,
)

CF, RESET, REFUSED, TIMEOUT = (
    Failure.CONNECT_FAILURE,
    Failure.RESET,
    Failure.REFUSED_STREAM,
    Failure.TIMEOUT,
)

#: outcome -> expected, per condition: the classification table.
TABLE: dict[str, dict[Outcome, bool]] = {
    "5xx": {
        500: True, 501: True, 502: True, 503: True, 504: True, 599: True,
        200: False, 404: False, 409: False, 429: False,
        CF: True, RESET: True, REFUSED: True, TIMEOUT: True,
    },
    "gateway-error": {
        502: True, 503: True, 504: True,
        500: False, 501: False, 505: False, 409: False, 200: False,
        CF: True, RESET: True, REFUSED: True, TIMEOUT: True,
    },
    "reset": {
        CF: True, RESET: True, REFUSED: True, TIMEOUT: True,
        500: False, 503: False, 200: False,
    },
    "connect-failure": {
        CF: True, RESET: False, REFUSED: False, TIMEOUT: False,
        503: False, 502: False,
    },
    "refused-stream": {
        REFUSED: True, CF: False, RESET: False, TIMEOUT: False,
        503: False,
    },
    "retriable-4xx": {
        409: True, 400: False, 404: False, 429: False, 503: False,
        CF: False, RESET: False,
    },
}  # fmt: skip

CASES = [(cond, outcome, want) for cond, row in TABLE.items() for outcome, want in row.items()]


@pytest.mark.parametrize(("condition", "outcome", "expected"), CASES)
def test_classification(condition: str, outcome: Outcome, expected: bool) -> None:
    policy = RetryPolicy(attempts=2, retry_on=(condition,))
    assert should_retry(policy, outcome) is expected
    assert should_retry(compile_retry(policy), outcome) is expected


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (503, True),
        (429, True),
        (502, False),
        (500, False),
        (CF, True),
        (REFUSED, True),
        (RESET, False),
    ],
)
def test_meshd_default_policy(outcome: Outcome, expected: bool) -> None:
    """The compiler's default: connect-failure, refused-stream and a 503 (Istio's default
    without its gRPC conditions); 429 listed here as a bare status code."""
    policy = RetryPolicy(
        2, retry_on=("connect-failure", "refused-stream"), retry_on_status=(503, 429)
    )
    assert should_retry(policy, outcome) is expected


def test_5xx_is_exactly_the_5xx_range() -> None:
    rule = compile_retry(RetryPolicy(1, retry_on=("5xx",)))
    assert {s for s in range(100, 1000) if should_retry(rule, s)} == set(range(500, 600))


def test_conditions_combine() -> None:
    rule = compile_retry(RetryPolicy(3, 500, ("gateway-error", "retriable-4xx"), (418,)))
    assert {s for s in range(100, 600) if should_retry(rule, s)} == {409, 418, 502, 503, 504}
    assert rule.failures == frozenset(Failure)
    assert (rule.attempts, rule.per_try_timeout_ms) == (3, 500)


def test_no_conditions_retry_nothing() -> None:
    rule = compile_retry(RetryPolicy(2, retry_on=()))
    assert not any(should_retry(rule, o) for o in [*Failure, 500, 503, 409])


# --- the decision: condition, attempts left, budget -------------------------------------


def test_decide_retry_order() -> None:
    rule = compile_retry(RetryPolicy(2, retry_on=("5xx",)))
    budget = RetryBudget(20.0, 1)
    budget.begin_request()
    assert decide_retry(None, 503, 0, budget) is RetryStatus.NO
    assert decide_retry(rule, 200, 0, budget) is RetryStatus.NO
    assert decide_retry(rule, 404, 0, budget) is RetryStatus.NO
    assert decide_retry(rule, 503, 2, budget) is RetryStatus.LIMIT_EXCEEDED
    assert decide_retry(rule, 503, 0, budget) is RetryStatus.YES
    assert budget.active_retries == 1
    # the budget (min concurrency 1) is now full
    assert decide_retry(rule, RESET, 1, budget) is RetryStatus.OVERFLOW
    assert budget.overflows == 1
    budget.end_retry()
    assert decide_retry(rule, RESET, 1, budget) is RetryStatus.YES
    assert decide_retry(rule, 503, 0, None) is RetryStatus.YES  # no budget: unbounded


# --- back-off ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retries_done", "ceiling"), [(0, 25.0), (1, 75.0), (2, 175.0), (3, 250.0), (40, 250.0)]
)
def test_backoff_is_jittered_exponential_and_capped(retries_done: int, ceiling: float) -> None:
    rng = random.Random(3)
    samples = [backoff_ms(retries_done, rng) for _ in range(500)]
    assert all(0.0 <= x <= ceiling for x in samples)
    assert max(samples) > ceiling * 0.8  # the whole range is used
    assert backoff_ms(retries_done, random.Random(9)) == backoff_ms(retries_done, random.Random(9))


# --- the budget --------------------------------------------------------------------------


def test_budget_minimum_concurrency_with_few_requests() -> None:
    budget = RetryBudget.from_settings(MeshSettings())  # 20 %, min 3
    for _ in range(5):
        budget.begin_request()
    assert budget.limit == 3  # 20 % of 5 is 1, below the minimum
    assert [budget.try_begin_retry() for _ in range(4)] == [True, True, True, False]
    assert (budget.admitted, budget.overflows) == (3, 1)


def test_budget_percent_of_active_requests() -> None:
    budget = RetryBudget(20.0, 3)
    for _ in range(100):
        budget.begin_request()
    assert budget.limit == 20
    assert sum(budget.try_begin_retry() for _ in range(30)) == 20
    for _ in range(50):
        budget.end_request()
    assert budget.limit == 10
    assert not budget.try_begin_retry()  # 20 active retries, limit 10
    for _ in range(11):
        budget.end_retry()
    assert budget.try_begin_retry()  # 9 active now
    assert "RetryBudget(20.0%" in repr(budget)


def test_budget_counts_never_go_negative_and_bad_settings_are_refused() -> None:
    budget = RetryBudget()
    budget.end_request()
    budget.end_retry()
    assert (budget.active_requests, budget.active_retries) == (0, 0)
    with pytest.raises(ValueError, match="negative"):
        RetryBudget(-1.0, 3)


class BudgetMachine(RuleBasedStateMachine):
    """Whatever the interleaving, a retry is admitted only below the limit of the
    moment, and the counters track what is outstanding."""

    def __init__(self) -> None:
        super().__init__()
        self.budget = RetryBudget(25.0, 2)
        self.requests = 0
        self.retries = 0

    @rule()
    def begin_request(self) -> None:
        self.budget.begin_request()
        self.requests += 1

    @precondition(lambda self: self.requests > 0)
    @rule()
    def end_request(self) -> None:
        self.budget.end_request()
        self.requests -= 1

    @rule()
    def try_retry(self) -> None:
        limit = max(2, int(0.25 * self.requests))
        admitted = self.budget.try_begin_retry()
        assert admitted is (self.retries < limit)
        self.retries += admitted

    @precondition(lambda self: self.retries > 0)
    @rule()
    def end_retry(self) -> None:
        self.budget.end_retry()
        self.retries -= 1

    @invariant()
    def counters_match(self) -> None:
        assert self.budget.active_requests == self.requests
        assert self.budget.active_retries == self.retries


TestBudgetMachine = BudgetMachine.TestCase
TestBudgetMachine.settings = settings(max_examples=50, stateful_step_count=40, deadline=None)
