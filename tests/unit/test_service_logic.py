"""Pure service logic: selector eligibility and ranking, canary stage sizes, settings from env."""

from __future__ import annotations

import math
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.device import DeviceStatus
from schemas.ops import RoundRequested
from services.deployer.handlers import stage_sizes
from services.runtime.settings import Settings
from services.selector.handlers import MIN_BATTERY, MIN_MEMORY_MB, eligible, rank

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


# --- selector: eligible ---------------------------------------------------------------------------


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


# --- selector: rank ---------------------------------------------------------------------------


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


def test_a_seed_numpy_cannot_use_is_refused_by_the_request() -> None:
    # Execute / Assert: refused up front, not after the round record exists
    with pytest.raises(ValidationError):
        RoundRequested(round_id="r1", seed=-1)


# --- deployer: stage_sizes ---------------------------------------------------------------------


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


# --- runtime settings ---------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("FEDSAGA_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_from_env_without_variables_gives_the_defaults(clean_env: pytest.MonkeyPatch) -> None:
    # Prepare: clean_env

    # Execute
    loaded = Settings.from_env()

    # Assert
    assert loaded == Settings()
    assert loaded.canary_stages == (10, 50, 100)


def test_from_env_reads_and_converts_fedsaga_variables(clean_env: pytest.MonkeyPatch) -> None:
    # Prepare
    clean_env.setenv("FEDSAGA_MQTT_HOST", "broker.local")
    clean_env.setenv("FEDSAGA_MQTT_PORT", "1884")
    clean_env.setenv("FEDSAGA_REDIS_URL", "redis://10.0.0.2:6380/3")
    clean_env.setenv("FEDSAGA_SHARED", "true")
    clean_env.setenv("FEDSAGA_INSTANCE", "b")
    clean_env.setenv("FEDSAGA_HOLDOUT_FRACTION", "0.3")
    clean_env.setenv("FEDSAGA_CANARY_STAGES", "5,25,100")
    clean_env.setenv("FEDSAGA_CANARY_TIMEOUT_MS", "2500")
    clean_env.setenv("FEDSAGA_NOT_A_SETTING", "ignored")
    clean_env.setenv("MQTT_PORT", "9999")

    # Execute
    loaded = Settings.from_env()

    # Assert
    assert loaded.mqtt_host == "broker.local"
    assert loaded.mqtt_port == 1884
    assert loaded.redis_url == "redis://10.0.0.2:6380/3"
    assert loaded.shared is True
    assert loaded.holdout_fraction == 0.3
    assert loaded.canary_stages == (5, 25, 100)
    assert loaded.canary_timeout_ms == 2500
    assert loaded.instance == "b"


def test_shared_instances_need_their_own_instance_name(clean_env: pytest.MonkeyPatch) -> None:
    # Prepare
    clean_env.setenv("FEDSAGA_SHARED", "true")

    # Execute / Assert: two "0"s would take each other's broker session over
    with pytest.raises(ValidationError, match="FEDSAGA_INSTANCE"):
        Settings.from_env()


def test_overrides_win_over_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    # Prepare
    clean_env.setenv("FEDSAGA_INSTANCE", "from-env")
    clean_env.setenv("FEDSAGA_MQTT_PORT", "1884")

    # Execute
    loaded = Settings.from_env(instance="override")

    # Assert
    assert loaded.instance == "override"
    assert loaded.mqtt_port == 1884


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FEDSAGA_MQTT_PORT", "not-a-port"),
        ("FEDSAGA_SHARED", "maybe"),
        ("FEDSAGA_CANARY_STAGES", "10,fifty,100"),
        ("FEDSAGA_CANARY_TOLERANCE", "lots"),
    ],
)
def test_unparseable_variables_raise_value_error(
    clean_env: pytest.MonkeyPatch,
    name: str,
    value: str,
) -> None:
    # Prepare
    clean_env.setenv(name, value)

    # Execute / Assert
    with pytest.raises(ValueError):  # noqa: PT011 - pydantic or int(), both ValueErrors
        Settings.from_env()


def test_env_round_trips(clean_env: pytest.MonkeyPatch) -> None:
    # Prepare
    original = Settings(
        mqtt_host="h",
        mqtt_port=1999,
        shared=True,
        instance="7",
        holdout_fraction=0.125,
        canary_stages=(5, 25, 100),
        canary_tolerance=0.01,
        data_seed=42,
    )
    for name, value in original.env().items():
        clean_env.setenv(name, value)

    # Execute
    loaded = Settings.from_env()

    # Assert
    assert loaded == original


def test_env_names_every_field_as_a_string(clean_env: pytest.MonkeyPatch) -> None:
    # Prepare
    current = Settings(canary_stages=(5, 25, 100))

    # Execute
    env = current.env()

    # Assert: every field that has a value, as a string; unset credentials are left out
    unset = {"mqtt_username", "mqtt_password", "mqtt_ca_file"}
    assert set(env) == {f"FEDSAGA_{name.upper()}" for name in Settings.model_fields} - {
        f"FEDSAGA_{name.upper()}" for name in unset
    }
    assert all(isinstance(v, str) for v in env.values())
    assert env["FEDSAGA_CANARY_STAGES"] == "5,25,100"


def test_settings_are_frozen() -> None:
    # Prepare
    current = Settings()

    # Execute / Assert
    with pytest.raises(ValidationError, match="frozen"):
        current.mqtt_port = 1  # type: ignore[misc]
