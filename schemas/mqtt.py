"""Where a broker is and how every fedsaga client connects to it: the one MQTT connection helper.

The services, the device agent, the fleet simulator, the CLI and the Python client all open
their connections here, so TLS (a CA, optionally a client certificate), credentials and MQTT 5
session rules are honoured the same way everywhere. An endpoint reads from a URL:

    mqtt://127.0.0.1:1883                   plain TCP (the development broker)
    mqtts://fedsaga-ops:secret@broker:8883  TLS, verified against the system CAs or `ca_file`

The device protocol's session rules (docs/device-protocol.md) are the keyword arguments of
`connect`: client id, clean start, session expiry, keepalive and last will.
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import aiomqtt
from aiomqtt import ProtocolVersion, TLSParameters, Will
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ConfigDict, Field

SCHEMES = {"mqtt": False, "tcp": False, "mqtts": True, "ssl": True}


def redact(url: str) -> str:
    """A URL (MQTT or Redis) without its password: safe to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


class MqttEndpoint(BaseModel):
    """A broker address with the credentials and TLS material to log in to it."""

    model_config = ConfigDict(frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65_535)
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    tls: bool = False  # also implied by a CA or a client certificate
    ca_file: str | None = None  # verify the broker against this CA (else the system's)
    cert_file: str | None = None  # a client certificate, for brokers that require one
    key_file: str | None = None

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> MqttEndpoint:
        """Parse `mqtt[s]://[user[:password]@]host[:port]`; the port defaults by scheme."""
        parts = urlsplit(url)
        shown = repr(redact(url))  # errors name the URL, never its password
        if parts.scheme not in SCHEMES:
            raise ValueError(f"{shown}: scheme must be one of {', '.join(SCHEMES)}")
        if not parts.hostname:
            raise ValueError(f"{shown}: no host")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"{shown}: an MQTT URL has no path or query")
        tls = SCHEMES[parts.scheme]
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"{shown}: {exc}") from None
        values: dict[str, Any] = {
            "host": parts.hostname,
            "port": port or (8883 if tls else 1883),
            "username": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password else None,
            "tls": tls,
        }
        return cls(**(values | overrides))

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.ca_file is not None or self.cert_file is not None

    @property
    def url(self) -> str:
        """The endpoint as a URL without its password: safe to print and to paste."""
        scheme = "mqtts" if self.uses_tls else "mqtt"
        user = f"{quote(self.username, safe='')}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address
        return f"{scheme}://{user}{host}:{self.port}"

    def login(self, username: str | None, password: str | None) -> MqttEndpoint:
        """The same broker with other credentials (a device's own, say)."""
        return self.model_copy(update={"username": username, "password": password})

    def client_options(self) -> dict[str, Any]:
        """`aiomqtt.Client` keyword arguments for the address, credentials and TLS."""
        options: dict[str, Any] = {"hostname": self.host, "port": self.port}
        if self.username is not None:
            options["username"] = self.username
            options["password"] = self.password
        if self.uses_tls:
            options["tls_params"] = TLSParameters(
                ca_certs=self.ca_file, certfile=self.cert_file, keyfile=self.key_file
            )
        return options


def connect(
    endpoint: MqttEndpoint,
    identifier: str,
    *,
    clean_start: bool = True,
    session_expiry_s: int | None = None,
    keepalive: int = 60,
    timeout: float = 10.0,
    will: Will | None = None,
) -> aiomqtt.Client:
    """An MQTT 5 client of `endpoint` as `identifier` (enter it with `async with`).

    `clean_start=False` with a session expiry keeps the broker session (subscriptions and
    queued QoS 1 messages) across reconnects and restarts of the process.
    """
    properties = None
    if session_expiry_s is not None:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = session_expiry_s
    return aiomqtt.Client(
        identifier=identifier,
        protocol=ProtocolVersion.V5,
        # No Nagle: a small packet (a PUBACK, an event) must not wait for the peer's delayed
        # ACK of the one before, ~40 ms each (bench/stack.py saw updates paced by it).
        socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
        clean_start=clean_start,
        properties=properties,
        keepalive=keepalive,
        timeout=timeout,
        will=will,
        **endpoint.client_options(),
    )
