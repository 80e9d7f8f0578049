"""How many clients a private broker may hold: its open-file limit and max_connections."""

from __future__ import annotations

import pytest

from deploy.limits import BROKER_FILES_RESERVE, STACK_CLIENTS, broker_files, option_value
from deploy.servers import MOSQUITTO_CONF, PROD_CONF, ROOT


def test_the_soft_limit_rises_to_the_configured_connections_when_the_hard_limit_allows() -> None:
    files = broker_files(configured=20_000, devices=10_000, soft=1_024, hard=1 << 20)
    assert files.soft == 20_000 + BROKER_FILES_RESERVE
    assert files.max_connections == 20_000


def test_a_lower_hard_limit_lowers_max_connections_to_what_it_holds() -> None:
    # Prepare: this machine's limits are 20,000 both
    # Execute
    files = broker_files(configured=20_000, devices=10_000, soft=20_000, hard=20_000)

    # Assert: the broker refuses the client past what it can hold rather than fail accept()
    assert files.soft == 20_000
    assert files.max_connections == 20_000 - BROKER_FILES_RESERVE


def test_too_many_devices_for_the_hard_limit_fail_saying_how_to_raise_it() -> None:
    with pytest.raises(RuntimeError, match=r"needs 10128 open files.*hard limit of 4096.*ulimit"):
        broker_files(configured=20_000, devices=10_000, soft=1_024, hard=4_096)


def test_devices_the_hard_limit_holds_start_even_under_a_low_soft_limit() -> None:
    files = broker_files(configured=20_000, devices=3_000, soft=1_024, hard=4_096)
    assert files.soft == 4_096
    assert files.max_connections >= 3_000 + STACK_CLIENTS


def test_the_soft_limit_never_goes_down() -> None:
    files = broker_files(configured=20_000, devices=0, soft=50_000, hard=60_000)
    assert (files.soft, files.max_connections) == (50_000, 20_000)


def test_unlimited_connections_get_what_the_hard_limit_holds() -> None:
    files = broker_files(configured=-1, devices=10, soft=1_024, hard=8_192)
    assert (files.soft, files.max_connections) == (8_192, 8_192 - BROKER_FILES_RESERVE)


def test_a_config_allowing_fewer_connections_than_devices_says_so() -> None:
    with pytest.raises(RuntimeError, match=r"raise max_connections"):
        broker_files(configured=1_000, devices=5_000, soft=1_024, hard=1 << 20)


def test_the_configs_hold_ten_thousand_devices() -> None:
    # dev.conf (the tests, the bench, `fedsaga up`), compose.conf and prod.conf
    for conf in (MOSQUITTO_CONF, ROOT / "mosquitto" / "compose.conf", PROD_CONF):
        text = conf.read_text()
        assert int(option_value(text, "max_connections") or 0) >= 10_000 + STACK_CLIENTS
        # a service may fall 10 iterations of a 10,000 cohort behind without a silent drop
        assert int(option_value(text, "max_queued_messages") or 0) >= 100_000
