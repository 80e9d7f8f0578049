"""Broker endpoints from URLs, and what they hand to the MQTT client."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.mqtt import MqttEndpoint


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("mqtt://broker", "broker", 1883, False),
        ("mqtts://broker", "broker", 8883, True),
        ("tcp://10.0.0.1:1999", "10.0.0.1", 1999, False),
        ("ssl://broker.example:443", "broker.example", 443, True),
    ],
)
def test_the_scheme_sets_tls_and_the_default_port(
    url: str, host: str, port: int, tls: bool
) -> None:
    endpoint = MqttEndpoint.from_url(url)
    assert (endpoint.host, endpoint.port, endpoint.uses_tls) == (host, port, tls)


@pytest.mark.parametrize(
    "url", ["http://broker", "broker:1883", "mqtt://", "mqtt://b:99999", "mqtt://b/topic"]
)
def test_what_is_not_an_mqtt_url_is_refused_naming_it(url: str) -> None:
    with pytest.raises(ValueError, match=re.escape(url)):
        MqttEndpoint.from_url(url)


def test_the_printed_url_keeps_the_user_and_drops_the_password() -> None:
    # Execute
    endpoint = MqttEndpoint.from_url("mqtts://fedsaga-ops:p%40ss@broker:8883")

    # Assert
    assert endpoint.password == "p@ss"
    assert endpoint.url == "mqtts://fedsaga-ops@broker:8883"
    assert "p@ss" not in repr(endpoint)


@given(
    user=st.text(min_size=1, max_size=20).filter(lambda u: u.isprintable()),
    port=st.integers(1, 65_535),
    tls=st.booleans(),
)
def test_the_printed_url_reads_back_as_the_same_endpoint(user: str, port: int, tls: bool) -> None:
    endpoint = MqttEndpoint(host="broker.example", port=port, username=user, tls=tls)
    assert MqttEndpoint.from_url(endpoint.url) == endpoint


def test_a_ca_file_alone_means_tls_and_reaches_the_client() -> None:
    # Execute
    options = MqttEndpoint(host="b", ca_file="/etc/ca.pem").client_options()

    # Assert
    assert options["tls_params"].ca_certs == "/etc/ca.pem"
    assert "username" not in options


def test_a_plain_endpoint_asks_the_client_for_no_tls_and_no_login() -> None:
    assert MqttEndpoint().client_options() == {"hostname": "127.0.0.1", "port": 1883}


def test_an_ipv6_broker_prints_in_brackets_and_reads_back() -> None:
    endpoint = MqttEndpoint(host="::1", port=1883)
    assert endpoint.url == "mqtt://[::1]:1883"
    assert MqttEndpoint.from_url(endpoint.url) == endpoint
