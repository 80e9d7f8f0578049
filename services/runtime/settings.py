"""Service settings, read from FEDSAGA_* environment variables."""

from __future__ import annotations

import os
from typing import Any

from aiomqtt import TLSParameters
from pydantic import BaseModel, ConfigDict, field_validator, model_validator


class Settings(BaseModel):
    """Where the broker and Redis are, and how this instance identifies itself."""

    model_config = ConfigDict(frozen=True)

    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    # Credentials and TLS for a broker like mosquitto/prod.conf; the dev broker needs none.
    # With a password and no username, an instance logs in as its identity
    # (`fedsaga-{service}-{instance}`): prod.conf makes the username the client id.
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_ca_file: str | None = None  # set: connect over TLS, verifying the broker with it
    redis_url: str = "redis://127.0.0.1:6379/0"
    instance: str = "0"
    # Several instances of one service share its subscriptions ($share/...) when set.
    shared: bool = False
    session_expiry_s: int = 3600
    key_ttl_s: int = 7 * 24 * 3600
    timer_poll_ms: int = 50
    # A device whose last will arrives mid-round fails only if still offline this much later.
    offline_grace_ms: int = 3000
    # A device is a candidate for selection and deployment only if its status (devices
    # re-announce it every `status_interval_s`, 60 s by default) arrived this recently; a
    # registry entry not heard from in `key_ttl_s` is forgotten.
    device_fresh_ms: int = 300_000
    # FedAvg weighs an update by its examples, capped at this multiple of the cohort's
    # median registered count, so one device's claim cannot dominate the average.
    example_cap_factor: float = 4.0
    # Data the validator holds out (disjoint from every device's data by construction).
    data_seed: int = 0
    holdout_fraction: float = 0.2
    max_regression: float = 0.02
    # Canary: fraction of the fleet per stage, health tolerance, stage timeout.
    canary_stages: tuple[int, ...] = (10, 50, 100)
    canary_tolerance: float = 0.05
    canary_timeout_ms: int = 10_000

    @model_validator(mode="after")
    def _instances(self) -> Settings:
        # Two instances with one client id would take each other's broker session over and
        # over, and share one in-flight journal.
        if self.shared and self.instance == "0":
            raise ValueError("with FEDSAGA_SHARED, give each instance its own FEDSAGA_INSTANCE")
        return self

    @field_validator("canary_stages")
    @classmethod
    def _stages(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if (
            not value
            or value[-1] != 100
            or any(a >= b for a, b in zip((0, *value), value, strict=False))
        ):
            raise ValueError("canary_stages must rise strictly within 1..100 and end at 100")
        return value

    def service_identity(self, service: str) -> str:
        """The MQTT client id of this instance of `service` (one broker session, one journal)."""
        return f"fedsaga-{service}-{self.instance}"

    def mqtt_username_for(self, identity: str) -> str | None:
        """The username an instance logs in with: the explicit one, else with a password its
        identity (its client id, which mosquitto/prod.conf ties to the username), else none."""
        if self.mqtt_username is not None:
            return self.mqtt_username
        return identity if self.mqtt_password is not None else None

    def mqtt_options(self, identity: str) -> dict[str, Any]:
        """Keyword arguments for `aiomqtt.Client` for the instance `identity`: credentials and
        TLS, when configured."""
        options: dict[str, Any] = {}
        username = self.mqtt_username_for(identity)
        if username is not None:
            options["username"] = username
            options["password"] = self.mqtt_password
        if self.mqtt_ca_file is not None:
            options["tls_params"] = TLSParameters(ca_certs=self.mqtt_ca_file)
        return options

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Settings from the environment (`FEDSAGA_MQTT_PORT=1884` etc.), then overrides."""
        values: dict[str, object] = {}
        for name in cls.model_fields:
            raw = os.environ.get(f"FEDSAGA_{name.upper()}")
            if raw is not None:
                values[name] = (
                    tuple(int(x) for x in raw.split(",")) if name == "canary_stages" else raw
                )
        values.update(overrides)
        return cls.model_validate(values)

    def env(self) -> dict[str, str]:
        """These settings as environment variables, for a child process."""
        out = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
            out[f"FEDSAGA_{name.upper()}"] = text
        return out
