"""Routes: which messages go to which handler, each written once.

`on(handler)` reads the message model from the handler's first parameter's annotation and
the topic filter from the model (a saga event's `topic_name`, or the device or ops topic its
model travels on), so topic, model and handler cannot disagree; mypy checks a `Route`
built by hand, since its model and its handler share one type variable.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

from schemas import topics
from schemas.device import DeviceReport, DeviceStatus, DeviceUpdate
from schemas.events import Event, StepCompensated
from schemas.ops import RoundRequested, RoundStopRequested

if TYPE_CHECKING:
    from services.runtime.context import Context

M = TypeVar("M", bound=BaseModel)

# Models that arrive on one fixed filter rather than on a round's event topics.
_FILTERS: dict[type[BaseModel], str] = {
    RoundRequested: topics.ROUND_START,
    RoundStopRequested: topics.ROUND_STOP,
    DeviceStatus: topics.ALL_STATUS,
    DeviceUpdate: topics.ALL_UPDATES,
    DeviceReport: topics.ALL_REPORTS,
}


@dataclass(frozen=True)
class Route(Generic[M]):
    """Messages on `topic` (a filter) decode as `model` and go to `handler`.

    The runtime drops a message whose `msg_id` its service handled before, which costs two
    Redis calls per message. A handler that is `idempotent` makes a repeat change nothing
    by itself (an update already buffered, a device already settled: checked in the same
    script that writes), so the runtime skips those calls for it: the per-device messages of
    every iteration go through such handlers.
    """

    topic: str
    model: type[M]
    handler: Callable[[M, Context], Awaitable[None]]
    idempotent: bool = False


def filter_for(model: type[BaseModel]) -> str:
    """The topic filter a message model arrives on."""
    if model in _FILTERS:
        return _FILTERS[model]
    if issubclass(model, StepCompensated):
        raise TypeError("StepCompensated is per step: give the topic (topics.compensated_filter)")
    if issubclass(model, Event):
        return topics.round_filter(model.topic_name)
    raise TypeError(f"no topic known for {model.__name__}")


def on(
    handler: Callable[[M, Context], Awaitable[None]],
    topic: str | None = None,
    *,
    idempotent: bool = False,
) -> Route[M]:
    """The route to `handler`, its model taken from its first parameter's annotation."""
    first = next(iter(inspect.signature(handler).parameters))
    model: Any = typing.get_type_hints(handler)[first]
    return Route(topic or filter_for(model), model, handler, idempotent)
