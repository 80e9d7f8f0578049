"""The selector's decisions: eligibility, ranking, the cohort's minimum, the round's budget."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.device import DeviceStatus
from schemas.ops import RoundRequested
from services.selector.decisions import (
    LEASE_MARGIN_MS,
    MIN_BATTERY,
    MIN_MEMORY_MB,
    ROUND_MARGIN_MS,
    cohort_shortfall,
    deadline_action,
    eligible,
    example_cap,
    lease_ms,
    model_refusal,
    rank,
    round_budget_ms,
    stop_step,
)

PROPERTY = settings(database=None, deadline=None)


def _status(device_id: str = "d1", **fields: object) -> DeviceStatus:
    base: dict[str, object] = {
        "state": "idle",
        "battery": 0.8,
        "charging": False,
        "network": "wifi",
        "memory_mb": 512,
        "num_examples": 100,
    }
    return DeviceStatus(device_id=device_id, **{**base, **fields})


def _key(s: DeviceStatus) -> tuple[bool, bool, float]:
    return (not s.charging, s.network != "wifi", -s.battery)


statuses = st.builds(
    lambda i, charging, network, battery: _status(
        f"d{i}", charging=charging, network=network, battery=battery
    ),
    st.integers(0, 10**6),
    st.booleans(),
    st.sampled_from(["wifi", "cellular"]),
    st.sampled_from([0.0, 0.2, 0.5, 1.0]) | st.floats(0.0, 1.0),
)
fleets = st.lists(statuses, max_size=30, unique_by=lambda s: s.device_id)


# --- eligible ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"state": "training"},
        {"network": "cellular"},
        {"battery": MIN_BATTERY},
        {"battery": 0.0, "charging": True},
        {"memory_mb": MIN_MEMORY_MB},
        {"num_examples": 1},
    ],
    ids=repr,
)
def test_eligible_devices(fields: dict[str, object]) -> None:
    # Prepare
    status = _status(**fields)

    # Execute
    ok = eligible(status)

    # Assert
    assert ok is True


@pytest.mark.parametrize(
    "fields",
    [
        {"state": "paused"},
        {"state": "offline"},
        {"network": "none"},
        {"network": "none", "charging": True},
        {"battery": MIN_BATTERY - 0.01},
        {"battery": 0.0},
        {"memory_mb": MIN_MEMORY_MB - 1},
        {"num_examples": 0},
        {"state": "offline", "charging": True, "battery": 1.0},
    ],
    ids=repr,
)
def test_ineligible_devices(fields: dict[str, object]) -> None:
    # Prepare
    status = _status(**fields)

    # Execute
    ok = eligible(status)

    # Assert
    assert ok is False


# --- rank ---------------------------------------------------------------------------


def test_rank_puts_plugged_in_first_then_wifi_then_fuller_batteries() -> None:
    # Prepare
    fleet = [
        _status("cell-low", network="cellular", battery=0.3),
        _status("wifi-low", battery=0.3),
        _status("plugged-cell-empty", network="cellular", battery=0.0, charging=True),
        _status("cell-full", network="cellular", battery=1.0),
        _status("wifi-full", battery=1.0),
        _status("plugged-wifi-low", battery=0.1, charging=True),
    ]

    # Execute
    ranked = [s.device_id for s in rank(fleet, seed=0)]

    # Assert
    assert ranked == [
        "plugged-wifi-low",
        "plugged-cell-empty",
        "wifi-full",
        "wifi-low",
        "cell-full",
        "cell-low",
    ]


@PROPERTY
@given(fleet=fleets, seed=st.integers(0, 2**32))
def test_rank_is_a_sorted_permutation(fleet: list[DeviceStatus], seed: int) -> None:
    # Prepare: nothing beyond the fleet

    # Execute
    ranked = rank(fleet, seed)

    # Assert
    assert sorted(s.device_id for s in ranked) == sorted(s.device_id for s in fleet)
    keys = [_key(s) for s in ranked]
    assert keys == sorted(keys)


@PROPERTY
@given(fleet=fleets, seed=st.integers(0, 2**32))
def test_rank_is_deterministic_for_a_seed(fleet: list[DeviceStatus], seed: int) -> None:
    # Prepare
    again = list(fleet)

    # Execute
    first = rank(fleet, seed)
    second = rank(again, seed)

    # Assert
    assert [s.device_id for s in first] == [s.device_id for s in second]


def test_rank_breaks_ties_by_seed() -> None:
    # Prepare: ten devices nobody can tell apart
    fleet = [_status(f"d{i}") for i in range(10)]

    # Execute
    orders = {tuple(s.device_id for s in rank(fleet, seed)) for seed in range(10)}

    # Assert
    assert len(orders) > 1


def test_rank_does_not_modify_its_input() -> None:
    # Prepare
    fleet = [_status(f"d{i}", battery=i / 10) for i in range(5)]
    before = list(fleet)

    # Execute
    rank(fleet, seed=3)

    # Assert
    assert fleet == before


def test_rank_of_nobody_is_empty() -> None:
    # Prepare / Execute
    ranked = rank([], seed=0)

    # Assert
    assert ranked == []


@PROPERTY
@given(fleet=fleets)
def test_charging_devices_never_rank_below_unplugged_ones(fleet: list[DeviceStatus]) -> None:
    # Prepare: nothing beyond the fleet

    # Execute
    ranked = rank(fleet, seed=0)

    # Assert
    plugged = [s.charging for s in ranked]
    assert plugged == sorted(plugged, reverse=True)


# --- round_budget_ms / lease_ms ---------------------------------------------------------------


def test_the_round_budget_grows_with_the_fleet_the_rollout_reaches() -> None:
    # The stages' per-device time, summed over the stages, reaches every device once
    request = RoundRequested(round_id="r1", training_rounds=1, iteration_timeout_ms=1_000)
    small = round_budget_ms(request, (10, 50, 100), 10_000, canary_ms_per_device=20, fleet=10)
    large = round_budget_ms(request, (10, 50, 100), 10_000, canary_ms_per_device=20, fleet=2_000)
    assert large - small == 20 * (2_000 - 10)


def test_round_budget_covers_every_iteration_and_stage_and_a_margin() -> None:
    # Prepare: 25 iterations of 30 s, three canary stages of 20 s
    request = RoundRequested(round_id="r1", training_rounds=25, iteration_timeout_ms=30_000)

    # Execute
    budget = round_budget_ms(request, (10, 50, 100), 20_000)

    # Assert
    assert budget == 25 * 30_000 + 3 * 20_000 + ROUND_MARGIN_MS


@PROPERTY
@given(
    rounds=st.integers(1, 99),
    timeout=st.integers(100, 3_600_000),
    stages=st.lists(st.integers(1, 100), max_size=10).map(tuple),
    stage_timeout=st.integers(0, 10**7),
)
def test_round_budget_grows_with_every_input_and_leases_outlive_it(
    rounds: int, timeout: int, stages: tuple[int, ...], stage_timeout: int
) -> None:
    # Prepare
    def request(n: int) -> RoundRequested:
        return RoundRequested(round_id="r1", training_rounds=n, iteration_timeout_ms=timeout)

    # Execute
    budget = round_budget_ms(request(rounds), stages, stage_timeout)

    # Assert
    assert budget >= rounds * timeout + ROUND_MARGIN_MS
    assert round_budget_ms(request(rounds + 1), stages, stage_timeout) > budget
    assert round_budget_ms(request(rounds), (*stages, 100), stage_timeout) >= budget
    assert lease_ms(budget) == budget + LEASE_MARGIN_MS > budget


# --- cohort_shortfall ---------------------------------------------------------------------------


def test_a_cohort_below_the_minimum_says_how_many_were_eligible() -> None:
    # Prepare: 3 leased of 30 registered, 5 needed

    # Execute
    reason = cohort_shortfall(3, 30, 5)

    # Assert
    assert reason == "only 3 eligible devices of 30 registered; need 5"


@PROPERTY
@given(cohort=st.integers(0, 10**6), registered=st.integers(0, 10**6), need=st.integers(1, 10**6))
def test_a_cohort_falls_short_exactly_when_below_the_minimum(
    cohort: int, registered: int, need: int
) -> None:
    # Prepare: nothing beyond the parameters

    # Execute
    reason = cohort_shortfall(cohort, registered, need)

    # Assert
    assert (reason is None) == (cohort >= need)


def test_a_shortfall_names_the_rounds_that_hold_the_eligible_devices() -> None:
    # Execute: a second round while r1 holds 12 devices and r0 holds 3
    reason = cohort_shortfall(0, 15, 3, {"r1": 12, "r0": 3})

    # Assert
    assert reason == (
        "only 0 eligible devices of 15 registered; need 3 "
        "(eligible devices leased: 3 to round r0, 12 to round r1)"
    )


# --- model_refusal ------------------------------------------------------------------------------


def test_an_unknown_model_is_refused_unless_the_request_creates_it() -> None:
    # Prepare: a typo of the model's name
    typo = RoundRequested(round_id="r1", model_name="digts-mlp")

    # Execute / Assert
    assert model_refusal(typo, [], version_known=False) == (
        "model digts-mlp does not exist; set create_model to start a new lineage"
    )
    assert model_refusal(typo.model_copy(update={"create_model": True}), [], False) is None
    assert model_refusal(typo, ["1.0.0"], version_known=False) is None


def test_a_start_version_must_exist_even_for_a_new_lineage() -> None:
    request = RoundRequested(round_id="r1", model_version="9.9.9", create_model=True)
    assert model_refusal(request, ["1.0.0"], version_known=False) == (
        "model digits-mlp has no version 9.9.9"
    )
    assert model_refusal(request, ["1.0.0", "9.9.9"], version_known=True) is None


# --- stop_step ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (1, 1),  # selecting: release the leases
        (2, 4),  # the training loop: an aggregate or an earlier model may exist at any point
        (3, 4),
        (4, 4),
        (5, 5),  # validating
        (6, 6),  # rolling out: roll back
    ],
)
def test_a_stop_fails_the_round_at_the_last_step_that_may_have_done_work(
    step: int, expected: int
) -> None:
    assert stop_step("running", step) == expected


@pytest.mark.parametrize("status", ["compensating", "failed", "succeeded", "unknown"])
def test_only_a_running_round_can_be_stopped(status: str) -> None:
    assert stop_step(status, 3) == f"round is {status}, not running"


def test_the_deadline_fails_a_running_round_and_nudges_a_compensating_one() -> None:
    assert deadline_action("running") == "fail"
    assert deadline_action("compensating") == "nudge"
    assert [deadline_action(s) for s in ("failed", "succeeded", None)] == [None, None, None]


def test_the_example_cap_is_a_multiple_of_the_cohorts_median() -> None:
    assert example_cap([40, 50, 60, 10**9], factor=4.0) == 220
    assert example_cap([], factor=4.0) == 1
    assert example_cap([0, 0, 1], factor=4.0) == 1


@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=50), st.integers(0, 10**12))
def test_one_liar_cannot_outweigh_the_rest_of_the_cohort(honest: list[int], claim: int) -> None:
    cap = example_cap([*honest, claim], factor=4.0)
    # With at least two honest devices, the liar's weight is bounded by the honest counts
    if len(honest) >= 2:
        assert min(claim, cap) <= 4 * max(honest) + 1
