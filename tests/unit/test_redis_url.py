"""Redis URLs: one server, or a Redis Cluster (`redis+cluster://`), as the settings read them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.runtime.redis_url import parse_redis_url
from services.runtime.settings import Settings


@pytest.mark.parametrize(
    "url",
    ["redis://10.0.0.2:6380/3", "rediss://user:pw@redis.example:6379/0", "unix:///run/r.sock"],
)
def test_a_single_server_url_is_passed_through_as_given(url: str) -> None:
    # Execute
    target = parse_redis_url(url)

    # Assert
    assert (target.cluster, target.url, target.nodes) == (False, url, ())


def test_a_cluster_url_names_its_nodes_and_connects_through_the_first() -> None:
    # Execute: three nodes, one without a port, one IPv6; TLS, credentials and options
    target = parse_redis_url(
        "rediss+cluster://ops:s3cret@node-a:7000,node-b,[::1]:7002/0?ssl_cert_reqs=none"
    )

    # Assert
    assert target.cluster
    assert target.nodes == (("node-a", 7000), ("node-b", 6379), ("::1", 7002))
    assert target.url == "rediss://ops:s3cret@node-a:7000?ssl_cert_reqs=none"


def test_a_cluster_url_with_an_ipv6_node_first_keeps_its_brackets() -> None:
    assert parse_redis_url("redis+cluster://[::1]:7000").url == "redis://[::1]:7000"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://node:7000/1", "database 0 only"),
        ("redis+cluster://node:7000?db=2", "database 0 only"),
        ("redis+cluster://", "'' is not a node"),
        ("redis+cluster://a:7000,,b:7001", "'' is not a node"),
        ("redis+cluster://a:seven", "'a:seven' is not a node"),
        ("redis+cluster://a:70000", "'a:70000' is not a node"),
        ("redis+cluster://a:0", "'a:0' is not a node"),
        ("redis+cluster://a:", "'a:' is not a node"),
        ("redis+cluster://[::1:7000", "not a URL: Invalid IPv6 URL"),
        ("http://redis:6379", "scheme must be one of redis, rediss, unix, redis+cluster"),
        ("cluster://redis:6379", "scheme must be one of"),
    ],
)
def test_a_malformed_url_is_refused_saying_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("[", r"\[").replace("+", r"\+")):
        parse_redis_url(url)


def test_the_settings_take_a_cluster_url_and_refuse_a_bad_one_without_its_password() -> None:
    # Execute
    good = Settings.isolated(redis_url="redis+cluster://10.0.0.1:7000,10.0.0.2:7000")
    with pytest.raises(ValidationError) as caught:
        Settings.isolated(redis_url="redis+cluster://ops:s3cret@10.0.0.1:7000/2")

    # Assert
    assert good.redis_url == "redis+cluster://10.0.0.1:7000,10.0.0.2:7000"
    assert "database 0 only" in str(caught.value)
    assert "ops:***@10.0.0.1" in str(caught.value)
    assert "s3cret" not in str(caught.value)
