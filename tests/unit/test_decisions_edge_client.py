"""The device's decisions: train, pause or fail; corrupt, drain and report under chaos."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_client.config import DeviceProfile, FailureRates
from edge_client.decisions import (
    CHAOS_REASONS,
    PAUSE,
    TRAIN,
    battery_after_training,
    corrupts_update,
    reported_accuracy,
    training_decision,
)
from schemas.device import FailureReason
from schemas.ops import Chaos

PROPERTY = settings(database=None, deadline=None)

unit = st.floats(0.0, 1.0)
chaoses = st.sampled_from(list(Chaos))
rates = st.builds(
    FailureRates,
    battery_died=st.floats(0.0, 0.3),
    network_timeout=st.floats(0.0, 0.3),
    device_suspended=st.floats(0.0, 0.3),
)
profiles = st.builds(
    DeviceProfile,
    charging=st.booleans(),
    failures=rates,
    pause_below=unit,
    chaos_share=unit,
    honor_chaos=st.booleans(),
)


def test_every_simulated_failure_rate_is_a_failure_reason() -> None:
    # Prepare / Execute
    names = list(FailureRates.model_fields)

    # Assert: the profile's rates, the chaos reasons and the enum are one list
    assert [FailureReason(n) for n in names] == list(CHAOS_REASONS)


@pytest.mark.parametrize(
    ("charging", "battery", "expected"),
    [(False, 0.1, PAUSE), (False, 0.15, TRAIN), (True, 0.0, TRAIN), (False, 1.0, TRAIN)],
)
def test_a_device_pauses_below_its_threshold_unless_charging(
    charging: bool, battery: float, expected: object
) -> None:
    # Prepare
    profile = DeviceProfile(charging=charging, pause_below=0.15)

    # Execute
    decision = training_decision(profile, battery, Chaos.NONE, np.random.default_rng(0))

    # Assert
    assert decision == expected


def test_a_paused_device_reports_low_battery_and_draws_nothing() -> None:
    # Prepare
    profile = DeviceProfile(failures=FailureRates(battery_died=1.0))
    rng = np.random.default_rng(7)

    # Execute
    decision = training_decision(profile, 0.0, Chaos.PARTICIPATION, rng)

    # Assert
    assert decision.action == "pause"
    assert decision.reason is FailureReason.LOW_BATTERY
    assert rng.random() == np.random.default_rng(7).random()


@pytest.mark.parametrize("reason", CHAOS_REASONS)
def test_a_certain_failure_rate_always_fails_with_its_reason(reason: FailureReason) -> None:
    # Prepare
    profile = DeviceProfile(failures=FailureRates(**{reason.value: 1.0}))

    # Execute
    decisions = {
        training_decision(profile, 1.0, Chaos.NONE, np.random.default_rng(s)) for s in range(20)
    }

    # Assert
    assert {(d.action, d.reason) for d in decisions} == {("fail", reason)}


def test_participation_chaos_fails_about_the_chaos_share() -> None:
    # Prepare
    profile = DeviceProfile(chaos_share=0.8)
    rng = np.random.default_rng(0)

    # Execute
    decisions = [training_decision(profile, 1.0, Chaos.PARTICIPATION, rng) for _ in range(2000)]

    # Assert
    failed = [d for d in decisions if d.action == "fail"]
    assert 0.75 < len(failed) / len(decisions) < 0.85
    assert {d.reason for d in failed} == set(CHAOS_REASONS)


@PROPERTY
@given(profile=profiles, battery=unit, chaos=chaoses, seed=st.integers(0, 2**32))
def test_a_seeded_device_decides_the_same_way_every_time(
    profile: DeviceProfile, battery: float, chaos: Chaos, seed: int
) -> None:
    # Prepare
    first_rng, again_rng = np.random.default_rng(seed), np.random.default_rng(seed)

    # Execute
    first = training_decision(profile, battery, chaos, first_rng)
    again = training_decision(profile, battery, chaos, again_rng)

    # Assert: the same decision, and the generator left where the next draw is the same
    assert first == again
    assert first_rng.random() == again_rng.random()


@PROPERTY
@given(profile=profiles, battery=unit, chaos=chaoses, seed=st.integers(0, 2**32))
def test_only_a_device_that_is_told_to_train_may_fail_by_chance(
    profile: DeviceProfile, battery: float, chaos: Chaos, seed: int
) -> None:
    # Prepare
    rng = np.random.default_rng(seed)

    # Execute
    decision = training_decision(profile, battery, chaos, rng)

    # Assert
    if decision.action == "pause":
        assert not profile.charging
        assert battery < profile.pause_below
    if decision.action == "fail":
        assert decision.reason in CHAOS_REASONS
    if decision.action == "train":
        assert decision.reason is None
    if profile.charging and profile.failures == FailureRates() and chaos != Chaos.PARTICIPATION:
        assert decision == TRAIN


# --- chaos and battery after the decision --------------------------------------------------------


@pytest.mark.parametrize(
    ("honor", "chaos", "corrupt", "factor"),
    [
        (True, Chaos.NONE, False, 1.0),
        (True, Chaos.VALIDATION, True, 1.0),
        (True, Chaos.DEPLOYMENT, False, 0.5),
        (True, Chaos.PARTICIPATION, False, 1.0),
        (False, Chaos.VALIDATION, False, 1.0),
        (False, Chaos.DEPLOYMENT, False, 1.0),
    ],
)
def test_chaos_corrupts_updates_and_halves_reported_accuracy_only_where_honoured(
    honor: bool, chaos: Chaos, corrupt: bool, factor: float
) -> None:
    # Prepare
    profile = DeviceProfile(honor_chaos=honor)

    # Execute
    corrupts = corrupts_update(profile, chaos)
    reported = reported_accuracy(profile, chaos, 0.9)

    # Assert
    assert corrupts is corrupt
    assert reported == pytest.approx(0.9 * factor)


@PROPERTY
@given(charging=st.booleans(), battery=unit, drain=st.floats(0.0, 0.5))
def test_training_drains_the_battery_unless_charging_and_never_below_zero(
    charging: bool, battery: float, drain: float
) -> None:
    # Prepare
    profile = DeviceProfile(charging=charging, drain_per_iteration=drain)

    # Execute
    after = battery_after_training(profile, battery)

    # Assert
    assert 0.0 <= after <= battery
    if charging:
        assert after == battery
    else:
        assert after == max(0.0, battery - drain)
