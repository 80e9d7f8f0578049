"""Log configuration: JSON lines that carry the bound round, key=value lines, the level."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from services.runtime.logging import configure


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Each test configures logging for itself; put the defaults back after it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root.handlers[:], root.level = handlers, level


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_a_json_line_parses_and_carries_the_bound_round_and_device() -> None:
    # Prepare
    out = io.StringIO()
    configure("aggregator", level="INFO", fmt="json", stream=out)
    log = structlog.get_logger()

    # Execute: as the runtime binds them around a handler
    with structlog.contextvars.bound_contextvars(round_id="r-7", device_id="d-3", iteration=2):
        log.info("update folded", weight=120)
    log.info("serving")

    # Assert
    folded, serving = (json.loads(line) for line in _lines(out))
    assert folded["event"] == "update folded"
    assert folded["round_id"] == "r-7"
    assert folded["device_id"] == "d-3"
    assert folded["iteration"] == 2
    assert folded["weight"] == 120
    assert folded["service"] == "aggregator"
    assert folded["level"] == "info"
    assert folded["timestamp"].endswith("Z")
    assert "round_id" not in serving  # unbound once the handler is done


def test_json_keeps_an_exception_as_structured_frames() -> None:
    # Prepare
    out = io.StringIO()
    configure("validator", fmt="json", stream=out)

    # Execute
    try:
        raise RuntimeError("holdout missing")
    except RuntimeError:
        structlog.get_logger().exception("handler failed")

    # Assert
    (line,) = (json.loads(text) for text in _lines(out))
    assert line["event"] == "handler failed"
    assert line["exception"][0]["exc_type"] == "RuntimeError"
    assert line["exception"][0]["exc_value"] == "holdout missing"


def test_console_lines_are_key_value_with_the_event_the_stack_waits_for() -> None:
    # Prepare
    out = io.StringIO()
    configure("selector", fmt="console", stream=out)

    # Execute
    with structlog.contextvars.bound_contextvars(round_id="r-1", device_id=None):
        structlog.get_logger().info("serving", subscriptions=5)

    # Assert: deploy/stack.py counts `event='serving'`; None context is left out
    (line,) = _lines(out)
    assert "level='info'" in line
    assert "service='selector'" in line
    assert "event='serving'" in line
    assert "round_id='r-1'" in line
    assert "subscriptions=5" in line
    assert "device_id" not in line


def test_the_level_filters_lines_below_it_in_any_case() -> None:
    # Prepare
    out = io.StringIO()
    configure("deployer", level="warning", fmt="json", stream=out)
    log = structlog.get_logger()

    # Execute
    log.debug("noise")
    log.info("chatter")
    log.warning("canary stage failed")

    # Assert
    assert [json.loads(line)["event"] for line in _lines(out)] == ["canary stage failed"]


@pytest.mark.parametrize(
    ("level", "fmt", "message"),
    [("INFO", "xml", "unknown log format 'xml'"), ("LOUD", "json", "unknown log level 'LOUD'")],
)
def test_an_unknown_format_or_level_is_refused_by_name(level: str, fmt: str, message: str) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        configure("distributor", level=level, fmt=fmt, stream=io.StringIO())
