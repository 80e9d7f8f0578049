"""Structured log lines (structlog): key=value for a terminal, or JSON for a log pipeline.

`FEDSAGA_LOG_FORMAT` (`console`, the default, or `json`) and `FEDSAGA_LOG_LEVEL` (`INFO` by
default) choose; every line carries the service name, and the runtime binds the round id,
iteration and device id of the message being handled (structlog's contextvars), so a JSON
line can be filtered by round or device without parsing its text.
"""

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import Processor

FORMATS = ("console", "json")


def _drop_none(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Leave out context that is not there (`round_id=None` for a device's status)."""
    return {k: v for k, v in event.items() if v is not None}


def level_number(level: str) -> int:
    """A level name (any case) as its number; ValueError for an unknown name."""
    number = logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        raise ValueError(f"unknown log level {level!r}; one of DEBUG, INFO, WARNING, ERROR")
    return number


def renderer(fmt: str) -> Processor:
    """The last processor: one JSON object, or key=value pairs, per line."""
    if fmt == "json":
        return structlog.processors.JSONRenderer()
    if fmt == "console":
        # key=value, not structlog's colored ConsoleRenderer: the stack and tests read
        # `event='serving'` from these lines, and they stay one line each in a file.
        return structlog.processors.KeyValueRenderer(
            key_order=["timestamp", "level", "service", "event", "round_id"], drop_missing=True
        )
    raise ValueError(f"unknown log format {fmt!r}; one of {', '.join(FORMATS)}")


def configure(
    service: str, level: str = "INFO", fmt: str = "console", stream: TextIO | None = None
) -> None:
    """Log lines at `level` and above on `stream` (stderr), each carrying the service name."""
    number, render = level_number(level), renderer(fmt)
    out = stream if stream is not None else sys.stderr
    logging.basicConfig(stream=out, level=number, format="%(message)s")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _drop_none,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # JSON keeps a traceback as structured frames; key=value as one text field.
            structlog.processors.dict_tracebacks
            if fmt == "json"
            else structlog.processors.format_exc_info,
            render,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
