"""Service settings from the environment, and the round request's own checks.

The services' decisions are tested in `test_decisions_<service>.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

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
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No FEDSAGA_* variables, and a config file path that does not exist yet."""
    for name in list(os.environ):
        if name.startswith("FEDSAGA_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FEDSAGA_CONFIG", str(tmp_path / "config.toml"))
    return monkeypatch


def test_a_config_file_fills_in_what_the_environment_does_not(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Prepare
    (tmp_path / "config.toml").write_text(
        'mqtt_url = "mqtts://ops@broker.example"\n'
        'redis_url = "redis://from-file:6379/0"\n'
        "canary_stages = [20, 100]\n"
    )
    clean_env.setenv("FEDSAGA_REDIS_URL", "redis://from-env:6379/0")

    # Execute
    loaded = Settings()

    # Assert: the environment wins over the file, the file over the defaults
    assert loaded.redis_url == "redis://from-env:6379/0"
    assert loaded.mqtt_endpoint("fedsaga-ops").url == "mqtts://ops@broker.example:8883"
    assert loaded.canary_stages == (20, 100)


def test_a_service_logs_in_as_its_identity_unless_given_a_username(
    clean_env: pytest.MonkeyPatch,
) -> None:
    aggregator = "fedsaga-aggregator-0"
    with_password = Settings(mqtt_password="p").mqtt_endpoint(aggregator)
    assert (with_password.username, with_password.password) == (aggregator, "p")
    named = Settings(mqtt_username="u", mqtt_password="p").mqtt_endpoint(aggregator)
    assert (named.username, named.password) == ("u", "p")
    anonymous = Settings().mqtt_endpoint(aggregator)  # the dev broker
    assert (anonymous.username, anonymous.password) == (None, None)


def test_host_and_port_from_a_stronger_source_beat_a_weaker_sources_url(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Prepare: a profile naming the production broker; `up`'s exports name the local one
    (tmp_path / "config.toml").write_text('mqtt_url = "mqtts://ops@prod.example:8883"\n')
    clean_env.setenv("FEDSAGA_MQTT_HOST", "127.0.0.1")
    clean_env.setenv("FEDSAGA_MQTT_PORT", "41234")

    # Execute / Assert: the environment wins; arguments in code win over both
    assert Settings().mqtt_endpoint().url == "mqtt://127.0.0.1:41234"
    assert Settings(mqtt_port=5).mqtt_endpoint().url == "mqtt://127.0.0.1:5"
    clean_env.delenv("FEDSAGA_MQTT_HOST")
    clean_env.delenv("FEDSAGA_MQTT_PORT")
    assert Settings().mqtt_endpoint().url == "mqtts://ops@prod.example:8883"


def test_a_private_stacks_settings_ignore_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    # Prepare: an operator's shell
    clean_env.setenv("FEDSAGA_LOG_FORMAT", "json")
    clean_env.setenv("FEDSAGA_MQTT_URL", "mqtts://ops@prod.example:8883")

    # Execute
    isolated = Settings.isolated(mqtt_port=1999)

    # Assert: only the defaults and what was given; and its children get exactly that
    assert isolated.log_format == "console"
    assert isolated.mqtt_endpoint().url == "mqtt://127.0.0.1:1999"
    assert isolated.env()["FEDSAGA_MQTT_URL"] == "null"


def test_a_password_is_never_printed(clean_env: pytest.MonkeyPatch) -> None:
    assert "s3cret" not in repr(Settings(mqtt_password="s3cret"))
    with pytest.raises(ValidationError) as caught:
        Settings(mqtt_url="mqtts://ops:s3cret@broker:99999")
    assert "s3cret" not in str(caught.value)
    assert "ops:***@broker" in str(caught.value)


def test_an_mqtt_url_wins_over_host_and_port_from_the_same_source(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Prepare
    ca = tmp_path / "ca.pem"
    ca.write_text("a CA")
    clean_env.setenv("FEDSAGA_MQTT_HOST", "ignored")
    clean_env.setenv("FEDSAGA_MQTT_URL", "mqtts://fedsaga-ops:s%40cret@broker:9883")
    clean_env.setenv("FEDSAGA_MQTT_CA_FILE", str(ca))

    # Execute
    endpoint = Settings().mqtt_endpoint("fedsaga-ops")

    # Assert
    assert (endpoint.host, endpoint.port) == ("broker", 9883)
    assert (endpoint.username, endpoint.password) == ("fedsaga-ops", "s@cret")
    assert endpoint.uses_tls
    assert endpoint.ca_file == str(ca)


def test_a_missing_ca_file_is_refused_naming_it(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("FEDSAGA_MQTT_CA_FILE", "/nonexistent/ca.pem")
    with pytest.raises(ValidationError, match=r"no file /nonexistent/ca\.pem"):
        Settings()


def test_a_bad_mqtt_url_is_refused_naming_it(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("FEDSAGA_MQTT_URL", "http://broker:1883")
    with pytest.raises(ValidationError, match="http://broker:1883"):
        Settings()


def test_settings_without_variables_gives_the_defaults(clean_env: pytest.MonkeyPatch) -> None:
    # Prepare: clean_env

    # Execute
    loaded = Settings()

    # Assert: the documented defaults, and no broker URL to override host and port
    assert (loaded.mqtt_url, loaded.mqtt_host, loaded.mqtt_port) == (None, "127.0.0.1", 1883)
    assert loaded.redis_url == "redis://127.0.0.1:6379/0"
    assert loaded.canary_stages == (10, 50, 100)
    assert (loaded.instance, loaded.shared, loaded.log_format) == ("0", False, "console")


def test_settings_reads_and_converts_fedsaga_variables(clean_env: pytest.MonkeyPatch) -> None:
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
    loaded = Settings()

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
        Settings()


def test_overrides_win_over_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    # Prepare
    clean_env.setenv("FEDSAGA_INSTANCE", "from-env")
    clean_env.setenv("FEDSAGA_MQTT_PORT", "1884")

    # Execute
    loaded = Settings(instance="override")

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
        Settings()


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
    loaded = Settings()

    # Assert
    assert loaded == original


def test_env_names_every_field_as_a_string(clean_env: pytest.MonkeyPatch) -> None:
    # Prepare
    current = Settings(canary_stages=(5, 25, 100))

    # Execute
    env = current.env()

    # Assert: every field as a string, unset ones as null, and no config file to read
    assert set(env) == {f"FEDSAGA_{name.upper()}" for name in Settings.model_fields} | {
        "FEDSAGA_CONFIG"
    }
    assert env["FEDSAGA_MQTT_URL"] == "null"
    assert env["FEDSAGA_CONFIG"] == os.devnull
    assert all(isinstance(v, str) for v in env.values())
    assert env["FEDSAGA_CANARY_STAGES"] == "5,25,100"


def test_settings_are_frozen() -> None:
    # Prepare
    current = Settings()

    # Execute / Assert
    with pytest.raises(ValidationError, match="frozen"):
        current.mqtt_port = 1  # type: ignore[misc]
