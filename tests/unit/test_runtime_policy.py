"""The runtime's error policy and compensation chaining, as the pure functions they are."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import topics
from schemas.events import RoundFailed, StepCompensated
from schemas.steps import Step
from services.runtime.policy import RetryPolicy, describe
from services.runtime.saga import compensation, refusal, triggered_by_failure


def test_backoff_doubles_from_the_base_and_stops_at_the_cap() -> None:
    policy = RetryPolicy(max_attempts=10, base_ms=200, cap_ms=1_000)
    assert [policy.backoff_ms(n) for n in range(6)] == [0, 200, 400, 800, 1_000, 1_000]


@given(st.integers(1, 10_000), st.integers(1, 5_000), st.integers(1, 60_000))
def test_backoff_never_shrinks_and_never_passes_the_cap(attempts: int, base: int, cap: int) -> None:
    policy = RetryPolicy(base_ms=base, cap_ms=cap)
    assert policy.backoff_ms(attempts) <= cap
    assert policy.backoff_ms(attempts) <= policy.backoff_ms(attempts + 1)


def test_a_message_is_retried_until_its_last_attempt_then_dead_lettered() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert [policy.after_failure(n) for n in (1, 2, 3, 4)] == [
        "retry",
        "retry",
        "dead_letter",
        "dead_letter",
    ]


def test_describe_names_the_error_in_one_line() -> None:
    assert describe(KeyError("base_3")) == "KeyError: 'base_3'"
    assert describe(RuntimeError("a\nb")) == "RuntimeError: a"
    assert describe(TimeoutError()) == "TimeoutError"


@pytest.mark.parametrize("failed", list(Step))
def test_only_the_failed_steps_service_starts_compensating(failed: Step) -> None:
    starters = [s for s in Step if triggered_by_failure(s, failed)]
    assert starters == [failed]


@given(st.sampled_from(list(Step)), st.sampled_from(list(Step)))
def test_a_step_compensates_only_when_the_round_failed_at_or_after_it(
    step: Step, failed: Step
) -> None:
    why = refusal(step, "compensating", failed)
    assert (why is None) == (step <= failed)


@pytest.mark.parametrize("status", [None, "running", "succeeded"])
def test_a_round_that_is_not_failing_is_not_compensated(status: str | None) -> None:
    assert refusal(Step.SELECT, status, 6) is not None


def test_the_chain_runs_from_the_failed_step_down_to_selection() -> None:
    # Prepare: the filters each step's compensation listens on
    async def undo(round_id: str, ctx: object) -> str:
        return "undone"

    listens = {s: [r.topic for r in compensation(s, undo)] for s in Step}  # type: ignore[arg-type]

    # Assert: every step hears RoundFailed; each but the last hears the next step's done
    failed = topics.round_filter(RoundFailed.topic_name)
    for step, filters in listens.items():
        assert filters[0] == failed
        after = [topics.compensated_filter(step + 1)] if step < Step.DEPLOY else []
        assert filters[1:] == after
    assert [r.model for r in compensation(Step.TRAIN, undo)] == [RoundFailed, StepCompensated]  # type: ignore[arg-type]
