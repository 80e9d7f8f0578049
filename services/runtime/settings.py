"""Settings of every fedsaga process: FEDSAGA_* environment variables, then a config file.

One reader (pydantic-settings) for the services, the CLI, the Python client and the fleet
simulator. Precedence: values passed in code (the CLI's flags), then `FEDSAGA_<FIELD>`
environment variables, then the TOML file named by `FEDSAGA_CONFIG` (by default
`~/.config/fedsaga/config.toml`, when it exists), then the defaults below. A config file holds
the same names in lower case:

    mqtt_url = "mqtts://fedsaga-ops@broker.example:8883"
    mqtt_ca_file = "/etc/fedsaga/ca.pem"
    redis_url = "redis://redis.example:6379/0"  # a Redis Cluster: "redis+cluster://node:7000"
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from schemas.mqtt import MqttEndpoint
from services.runtime.redis_url import parse_redis_url

# How an unset value (None) reads in an environment variable.
NULL = "null"


class _BrokerPerSource(PydanticBaseSettingsSource):
    """A settings source in which naming the broker's host or port without a URL clears the
    URL, so `FEDSAGA_MQTT_PORT` (or `Settings(mqtt_port=...)`) beats a profile's `mqtt_url`
    as any stronger source beats a weaker one."""

    def __init__(self, inner: PydanticBaseSettingsSource) -> None:
        super().__init__(inner.settings_cls)
        self.inner = inner

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self.inner.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        values = self.inner()
        if ("mqtt_host" in values or "mqtt_port" in values) and "mqtt_url" not in values:
            values = {**values, "mqtt_url": None}
        return values


def config_file() -> Path:
    """The TOML file settings are read from (it need not exist)."""
    named = os.environ.get("FEDSAGA_CONFIG")
    if named:
        return Path(named).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "fedsaga" / "config.toml"


class Settings(BaseSettings):
    """Where the broker and Redis are, and how this instance identifies itself."""

    model_config = SettingsConfigDict(
        env_prefix="FEDSAGA_",
        env_parse_none_str=NULL,
        frozen=True,
        extra="ignore",
        hide_input_in_errors=True,  # a bad URL's message must not print its password
    )

    # The broker: either `mqtt_url` (mqtt[s]://user[:password]@host[:port]) or host and port,
    # whichever the stronger source names (a source that sets host or port, and no URL,
    # clears a URL from a weaker one); TLS when the URL says mqtts, `mqtt_tls` is set, or a
    # CA file is given.
    mqtt_url: str | None = None
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    # Credentials and TLS for a broker like mosquitto/prod.conf; the dev broker needs none.
    # With a password and no username, an instance logs in as its identity
    # (`fedsaga-{service}-{instance}`): prod.conf makes the username the client id.
    mqtt_username: str | None = None
    mqtt_password: str | None = Field(default=None, repr=False)
    mqtt_tls: bool = False
    mqtt_ca_file: str | None = None  # set: connect over TLS, verifying the broker with it
    mqtt_cert_file: str | None = None  # a client certificate, where the broker asks for one
    mqtt_key_file: str | None = None
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
    canary_stages: Annotated[tuple[int, ...], NoDecode] = (10, 50, 100)
    canary_tolerance: float = 0.05
    canary_timeout_ms: int = 10_000
    # ... plus this much per device a stage adds: sending the model to and hearing back from
    # 1,000 devices takes longer than from 10 (a fixed 10 s failed a healthy 100% stage).
    canary_ms_per_device: int = 20
    # Observability: Prometheus metrics served over HTTP on this port (0: not served); log
    # lines as `json` or key=value `console` lines, at this level (services/runtime/logging.py).
    metrics_port: int = 0
    log_format: str = "console"
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _instances(self) -> Settings:
        # Two instances with one client id would take each other's broker session over and
        # over, and share one in-flight journal.
        if self.shared and self.instance == "0":
            raise ValueError("with FEDSAGA_SHARED, give each instance its own FEDSAGA_INSTANCE")
        return self

    # False: read nothing but the values given (see `isolated`).
    _reads_environment: ClassVar[bool] = True

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        if not cls._reads_environment:
            return (init_settings,)
        toml = TomlConfigSettingsSource(settings_cls, toml_file=config_file())
        return tuple(_BrokerPerSource(source) for source in (init_settings, env_settings, toml))

    @classmethod
    def isolated(cls, **values: Any) -> Settings:
        """The defaults and `values` only: no environment, no config file (a private stack's
        settings, which its child processes then get whole through `env()`)."""
        return _Isolated(**values)

    @field_validator("canary_stages", mode="before")
    @classmethod
    def _stages_text(cls, value: object) -> object:
        # FEDSAGA_CANARY_STAGES=10,50,100
        return tuple(int(x) for x in value.split(",")) if isinstance(value, str) else value

    @field_validator("mqtt_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None:
            MqttEndpoint.from_url(value)  # a bad URL fails here, naming itself (no password)
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str) -> str:
        parse_redis_url(value)  # one server or a cluster (redis+cluster://); see redis_url.py
        return value

    @field_validator("mqtt_ca_file", "mqtt_cert_file", "mqtt_key_file")
    @classmethod
    def _file(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).expanduser().is_file():
            raise ValueError(f"no file {value}")
        return value

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

    def mqtt_endpoint(self, identity: str | None = None) -> MqttEndpoint:
        """The broker, logged in as the instance `identity`.

        The username is the explicit one (in the URL or `mqtt_username`); with a password and
        no username, the identity itself (its client id, which mosquitto/prod.conf ties to the
        username); with neither, anonymous. Without an identity (a fleet whose devices log in
        as themselves), only what is configured.
        """
        if self.mqtt_url is not None:
            base = MqttEndpoint.from_url(self.mqtt_url)
        else:
            base = MqttEndpoint(host=self.mqtt_host, port=self.mqtt_port)
        password = base.password if base.password is not None else self.mqtt_password
        username = base.username or self.mqtt_username
        if username is None and password is not None and identity is not None:
            username = identity
        return base.model_copy(
            update={
                "username": username,
                "password": password,
                "tls": base.tls or self.mqtt_tls,
                "ca_file": self.mqtt_ca_file,
                "cert_file": self.mqtt_cert_file,
                "key_file": self.mqtt_key_file,
            }
        )

    def env(self) -> dict[str, str]:
        """These settings as environment variables for a child process: every field, unset
        ones as `null`, and no config file, so nothing else the child finds can change them."""
        out = {"FEDSAGA_CONFIG": os.devnull}
        for name, value in self.model_dump().items():
            if value is None:
                text = NULL
            elif isinstance(value, tuple):
                text = ",".join(map(str, value))
            else:
                text = str(value)
            out[f"FEDSAGA_{name.upper()}"] = text
        return out


class _Isolated(Settings):
    """Settings read from nothing but the values given (see `Settings.isolated`)."""

    _reads_environment: ClassVar[bool] = False
