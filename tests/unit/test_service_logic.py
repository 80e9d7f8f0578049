"""Service settings from the environment, and the round request's own checks.

The services' decisions are tested in `test_decisions_<service>.py`.
"""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from schemas.ops import RoundRequested
from services.runtime.settings import Settings


def test_a_seed_numpy_cannot_use_is_refused_by_the_request() -> None:
    # Execute / Assert: refused up front, not after the round record exists
    with pytest.raises(ValidationError):
        RoundRequested(round_id="r1", seed=-1)


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
