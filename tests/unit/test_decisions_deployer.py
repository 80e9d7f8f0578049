"""The deployer's decisions: rollout order, stages, and the canary verdicts per device and stage."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.device import DeviceStatus
from services.deployer.decisions import (
    MAX_UNHEALTHY,
    PENDING,
    StageTally,
    decidable,
    device_verdict,
    rollout_order,
    stage_devices,
    stage_outcomes,
    stage_sizes,
    stage_timeout_ms,
    stage_verdict,
    tally,
    worth_judging,
)

PROPERTY = settings(database=None, deadline=None)


# --- stage_sizes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fleet", "percents", "expected"),
    [
        (10, (10, 50, 100), [1, 5, 10]),
        (100, (10, 50, 100), [10, 50, 100]),
        (7, (10, 50, 100), [1, 4, 7]),
        (3, (10, 50, 100), [1, 2, 3]),
        (2, (10, 50, 100), [1, 1, 2]),
        (1, (10, 50, 100), [1, 1, 1]),
        (0, (10, 50, 100), [0, 0, 0]),
        (11, (10, 50, 100), [2, 6, 11]),
        (40, (5, 25, 100), [2, 10, 40]),
        (9, (100,), [9]),
    ],
)
def test_stage_sizes_examples(fleet: int, percents: tuple[int, ...], expected: list[int]) -> None:
    # Prepare: nothing beyond the parameters

    # Execute
    sizes = stage_sizes(fleet, percents)

    # Assert
    assert sizes == expected


percent_plans = st.lists(st.integers(1, 99), max_size=5, unique=True).map(
    lambda ps: (*sorted(ps), 100)
)


@PROPERTY
@given(fleet=st.integers(0, 10**7), percents=percent_plans)
def test_stage_sizes_properties(fleet: int, percents: tuple[int, ...]) -> None:
    # Prepare: nothing beyond the parameters

    # Execute
    sizes = stage_sizes(fleet, percents)

    # Assert
    assert len(sizes) == len(percents)
    assert sizes == sorted(sizes)  # cumulative: never shrinks
    assert sizes[-1] == fleet  # the last stage is everybody
    assert all(0 <= s <= fleet for s in sizes)
    if fleet:
        assert sizes[0] >= 1
        for size, pct in zip(sizes, percents, strict=True):
            assert size * 100 >= fleet * pct  # every stage covers at least its share
    else:
        assert sizes == [0] * len(percents)


@PROPERTY
@given(fleet=st.integers(1, 10**7), percents=percent_plans)
def test_stage_sizes_equal_integer_ceiling(fleet: int, percents: tuple[int, ...]) -> None:
    # Prepare: the exact answer in integer arithmetic
    expected = [max(1, -(-fleet * p // 100)) for p in percents]

    # Execute
    sizes = stage_sizes(fleet, percents)

    # Assert
    assert sizes == expected
    assert expected == [max(1, math.ceil(fleet * p / 100)) for p in percents]


# --- stage_devices -----------------------------------------------------------------------------


def test_stages_add_the_next_slice_of_the_rollout_order() -> None:
    # Prepare
    fleet = [f"d{i}" for i in range(10)]

    # Execute
    stages = [stage_devices(fleet, (10, 50, 100), stage) for stage in (1, 2, 3)]

    # Assert
    assert stages == [["d0"], ["d1", "d2", "d3", "d4"], ["d5", "d6", "d7", "d8", "d9"]]


def test_a_tiny_fleet_leaves_later_stages_nothing_to_add() -> None:
    # Prepare
    fleet = ["only"]

    # Execute
    stages = [stage_devices(fleet, (10, 50, 100), stage) for stage in (1, 2, 3)]

    # Assert
    assert stages == [["only"], [], []]


@PROPERTY
@given(size=st.integers(0, 300), percents=percent_plans)
def test_stages_partition_the_fleet_in_order(size: int, percents: tuple[int, ...]) -> None:
    # Prepare
    fleet = [f"d{i}" for i in range(size)]

    # Execute
    stages = [stage_devices(fleet, percents, s) for s in range(1, len(percents) + 1)]

    # Assert: every device in exactly one stage, in rollout order
    assert [d for stage in stages for d in stage] == fleet


# --- rollout_order -------------------------------------------------------------------------------


def test_rollout_order_is_the_online_devices_shuffled_by_seed() -> None:
    # Prepare
    statuses = [DeviceStatus(device_id=f"d{i}") for i in range(20)]
    statuses.append(DeviceStatus(device_id="gone", state="offline"))

    # Execute
    first, again, other = (rollout_order(statuses, seed) for seed in (1, 1, 2))

    # Assert
    assert sorted(first) == sorted(f"d{i}" for i in range(20))
    assert first == again
    assert first != other


def test_rollout_order_does_not_depend_on_the_registry_order() -> None:
    # Prepare
    statuses = [DeviceStatus(device_id=f"d{i}") for i in range(20)]

    # Execute
    forward = rollout_order(statuses, seed=5)
    backward = rollout_order(list(reversed(statuses)), seed=5)

    # Assert
    assert forward == backward


def test_rollout_order_of_an_offline_fleet_is_empty() -> None:
    # Prepare
    statuses = [DeviceStatus(device_id="d1", state="offline")]

    # Execute
    order = rollout_order(statuses, seed=0)

    # Assert
    assert order == []


# --- device_verdict ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "metrics", "expected"),
    [
        ("deployed", {"accuracy": 0.9, "previous_accuracy": 0.9}, "ok"),
        ("deployed", {"accuracy": 0.95, "previous_accuracy": 0.9}, "ok"),
        ("deployed", {"accuracy": 0.89, "previous_accuracy": 0.9}, "ok"),  # within 0.02
        ("deployed", {"accuracy": 0.85, "previous_accuracy": 0.9}, "bad"),
        ("deployed", {"accuracy": 0.5}, "ok"),  # no previous version: nothing to regress from
        ("deployed", {"previous_accuracy": 0.5}, "bad"),  # no accuracy reported
        ("deploy_failed", {}, "failed"),
        ("deploy_failed", {"accuracy": 1.0, "previous_accuracy": 0.0}, "failed"),
        ("training", {}, None),
        ("failed", {}, None),
        ("rolled_back", {"accuracy": 1.0}, None),
    ],
)
def test_device_verdict_examples(
    status: str, metrics: dict[str, float], expected: str | None
) -> None:
    # Prepare: tolerance 0.02

    # Execute
    verdict = device_verdict(status, metrics, 0.02)

    # Assert
    assert verdict == expected


unit = st.floats(0.0, 1.0)


@PROPERTY
@given(acc=unit, prev=unit, tolerance=st.floats(0.0, 0.5), more=st.floats(0.0, 1.0))
def test_device_verdict_is_monotone_in_accuracy(
    acc: float, prev: float, tolerance: float, more: float
) -> None:
    # Prepare
    better = acc + more

    # Execute
    verdict = device_verdict("deployed", {"accuracy": acc, "previous_accuracy": prev}, tolerance)
    improved = device_verdict(
        "deployed", {"accuracy": better, "previous_accuracy": prev}, tolerance
    )

    # Assert: a device doing no worse than its previous version is ok, and more accuracy
    # never turns ok into bad
    assert verdict in ("ok", "bad")
    if acc >= prev:
        assert verdict == "ok"
    if verdict == "ok":
        assert improved == "ok"


# --- deployment states ---------------------------------------------------------------------------


def test_stage_outcomes_are_those_of_the_stage_asked_for() -> None:
    # Prepare
    deployment = {"a": "ok:1", "b": "pending:2", "c": "bad:2", "d": "ok:12", "e": "failed:2"}

    # Execute
    outcomes = stage_outcomes(deployment, 2)

    # Assert
    assert sorted(outcomes) == ["bad", "failed", "pending"]


def test_a_tally_counts_a_stage_by_standing() -> None:
    # Prepare
    outcomes = ["ok", "pending", "bad", "ok", "failed", "ok"]

    # Execute
    counts = tally(outcomes)

    # Assert
    assert counts == StageTally(pending=1, ok=3, bad=1, failed=1)
    assert counts.devices == 6
    assert counts.kept


# --- stage_verdict -------------------------------------------------------------------------------


def test_a_stage_with_a_pending_device_waits_until_it_times_out() -> None:
    # Prepare
    outcomes = ["ok", "ok", "pending"]

    # Execute
    waiting = stage_verdict(tally(outcomes), stage=1, percent=10, timed_out=False)
    timed_out = stage_verdict(tally(outcomes), stage=1, percent=10, timed_out=True)

    # Assert: at the timeout a silent device counts as unhealthy (1/3 > 20%)
    assert not waiting.decided
    assert timed_out.decided
    assert timed_out.reason == "canary stage 1 (10%): 1/3 devices unhealthy (pending)"


def test_a_stage_fails_above_the_unhealthy_share_and_names_the_causes() -> None:
    # Prepare
    outcomes = ["ok", "bad", "failed", "ok", "bad"]

    # Execute
    verdict = stage_verdict(tally(outcomes), stage=2, percent=50, timed_out=False)

    # Assert
    assert not verdict.passed
    assert verdict.reason == "canary stage 2 (50%): 3/5 devices unhealthy (bad, failed)"
    assert (verdict.devices, verdict.healthy) == (5, 2)


def test_a_stage_passes_at_exactly_the_unhealthy_share() -> None:
    # Prepare: 1 in 5 is 20%, not more
    outcomes = ["ok", "ok", "ok", "ok", "bad"]

    # Execute
    verdict = stage_verdict(tally(outcomes), stage=3, percent=100, timed_out=False)

    # Assert
    assert verdict.passed
    assert (verdict.devices, verdict.healthy) == (5, 4)


@pytest.mark.parametrize("timed_out", [False, True])
def test_an_empty_stage_passes(timed_out: bool) -> None:
    # Prepare: a stage that added no device (10% and 50% of a fleet of one)

    # Execute
    verdict = stage_verdict(tally([]), stage=2, percent=50, timed_out=timed_out)

    # Assert
    assert verdict.passed
    assert (verdict.devices, verdict.healthy) == (0, 0)


outcome_lists = st.lists(st.sampled_from(["ok", "bad", "failed", "pending"]), max_size=50)


@PROPERTY
@given(size=st.integers(0, 50), timed_out=st.booleans())
def test_a_stage_with_every_device_ok_always_passes(size: int, timed_out: bool) -> None:
    # Prepare
    outcomes = ["ok"] * size

    # Execute
    verdict = stage_verdict(tally(outcomes), stage=1, percent=10, timed_out=timed_out)

    # Assert
    assert verdict.passed
    assert verdict.healthy == size


@PROPERTY
@given(outcomes=outcome_lists, timed_out=st.booleans())
def test_a_stage_verdict_follows_the_unhealthy_share(outcomes: list[str], timed_out: bool) -> None:
    # Prepare
    unhealthy = sum(o != "ok" for o in outcomes)

    # Execute
    verdict = stage_verdict(tally(outcomes), stage=1, percent=10, timed_out=timed_out)

    # Assert
    assert verdict.decided == (timed_out or "pending" not in outcomes)
    if verdict.decided:
        assert verdict.passed == (unhealthy <= MAX_UNHEALTHY * len(outcomes))
        assert (verdict.reason is None) == verdict.passed


@PROPERTY
@given(outcomes=outcome_lists)
def test_one_more_healthy_device_never_fails_a_passing_stage(outcomes: list[str]) -> None:
    # Prepare
    before = stage_verdict(tally(outcomes), stage=1, percent=10, timed_out=True)

    # Execute
    after = stage_verdict(tally([*outcomes, "ok"]), stage=1, percent=10, timed_out=True)

    # Assert
    if before.passed:
        assert after.passed
    assert after.healthy == before.healthy + 1
    assert after.devices == before.devices + 1


# --- worth_judging: counters kept with each report ------------------------------------------


def test_a_stage_is_worth_judging_once_its_last_pending_device_reported() -> None:
    # Prepare: three devices, reports arriving one by one
    reported = [
        StageTally(pending=3),
        StageTally(pending=2, ok=1),
        StageTally(pending=1, ok=1, bad=1),
        StageTally(pending=0, ok=2, bad=1),
    ]

    # Execute
    worth = [worth_judging(c) for c in reported]

    # Assert: no full read until nothing is pending
    assert worth == [False, False, False, True]


def test_counters_that_cannot_be_real_always_send_for_a_full_read() -> None:
    # Prepare: a stage armed before counters were kept counts its reports down from nothing
    legacy = StageTally(pending=-2, ok=2)

    # Execute / Assert
    assert not legacy.kept
    assert worth_judging(legacy)


tallies = st.builds(
    StageTally,
    pending=st.integers(0, 40),
    ok=st.integers(0, 40),
    bad=st.integers(0, 40),
    failed=st.integers(0, 40),
)


@PROPERTY
@given(counts=tallies)
def test_worth_judging_is_exactly_when_a_stage_could_be_decided(counts: StageTally) -> None:
    # Prepare: counters that are real counts

    # Execute
    worth = worth_judging(counts)
    verdict = stage_verdict(counts, stage=1, percent=10, timed_out=False)

    # Assert: never misses a stage it could decide, never reads one it could not
    assert worth == verdict.decided == decidable(counts, timed_out=False)


@PROPERTY
@given(
    counts=tallies,
    minus=st.integers(1, 40),
    which=st.sampled_from(["pending", "ok", "bad", "failed"]),
)
def test_any_negative_counter_sends_for_a_full_read(
    counts: StageTally, minus: int, which: str
) -> None:
    # Prepare
    broken = StageTally(**{**counts.__dict__, which: -minus})

    # Execute / Assert
    assert not broken.kept
    assert worth_judging(broken)


def _report(standing: dict[str, str], counters: dict[str, int], device: str, verdict: str) -> None:
    """The rule the deployment store's judge script follows, written out in Python: a pending
    device takes its verdict once and moves between its stage's counters; nothing else moves."""
    if standing.get(device) == PENDING:
        standing[device] = verdict
        counters[PENDING] -= 1
        counters[verdict] += 1


@PROPERTY
@given(
    size=st.integers(0, 30),
    reports=st.lists(
        st.tuples(st.integers(0, 40), st.sampled_from(["ok", "bad", "failed"])), max_size=80
    ),
)
def test_counters_kept_report_by_report_equal_a_full_tally(
    size: int, reports: list[tuple[int, str]]
) -> None:
    # Prepare: a stage of `size` devices; reports in any order, repeated, and from strangers
    standing = {f"d{i}": PENDING for i in range(size)}
    counters = {PENDING: size, "ok": 0, "bad": 0, "failed": 0}

    for n, verdict in reports:
        # Execute
        _report(standing, counters, f"d{n}", verdict)
        kept = StageTally(**counters)

        # Assert: the counters are the full read's tally, so they judge as it would
        full = tally(standing.values())
        assert kept == full
        assert (
            worth_judging(kept) == stage_verdict(full, stage=1, percent=10, timed_out=False).decided
        )


# --- stage_timeout_ms ---------------------------------------------------------------------------


def test_a_stage_waits_longer_the_more_devices_it_deploys_to() -> None:
    # A stage of 10 devices waits about the base; the 100% stage of 2,000 devices much longer
    assert stage_timeout_ms(10_000, 20, 10) == 10_200
    assert stage_timeout_ms(10_000, 20, 1_000) == 30_000
    assert stage_timeout_ms(10_000, 0, 1_000) == 10_000  # the old fixed timeout, when asked


@given(base=st.integers(0, 10**6), per=st.integers(0, 1_000), devices=st.integers(0, 10**5))
def test_a_stage_timeout_never_shrinks_with_more_devices(base: int, per: int, devices: int) -> None:
    assert stage_timeout_ms(base, per, devices + 1) >= stage_timeout_ms(base, per, devices)
