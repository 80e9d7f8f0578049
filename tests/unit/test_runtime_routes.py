"""Routes are written once: model from the handler's annotation, topic from the model."""

from __future__ import annotations

import importlib

import pytest

from schemas import topics
from schemas.device import DeviceReport, DeviceUpdate
from schemas.events import ErrorReport, ModelValidated, RoundFailed, StepCompensated
from schemas.steps import STEP_NAMES, Step
from services.runtime import Context, on
from services.runtime.main import SERVICES


async def on_validated(event: ModelValidated, ctx: Context) -> None:
    """A saga-event handler."""


async def on_update(update: DeviceUpdate, ctx: Context) -> None:
    """A device-message handler."""


async def on_error(report: ErrorReport, ctx: Context) -> None:
    """A handler of a model that travels on no fixed filter."""


async def on_compensated(event: StepCompensated, ctx: Context) -> None:
    """A handler of a per-step event."""


def test_a_route_takes_its_model_from_the_annotation_and_its_topic_from_the_model() -> None:
    route = on(on_validated)
    assert route.model is ModelValidated
    assert route.topic == topics.round_filter(ModelValidated.topic_name)
    assert on(on_update).topic == topics.ALL_UPDATES


def test_a_model_without_a_known_topic_needs_one_given() -> None:
    with pytest.raises(TypeError, match="no topic known for ErrorReport"):
        on(on_error)
    with pytest.raises(TypeError, match="compensated_filter"):
        on(on_compensated)
    assert on(on_error, "fl/errors/+").topic == "fl/errors/+"


@pytest.mark.parametrize("name", SERVICES)
def test_every_saga_step_declares_its_compensation(name: str) -> None:
    service = importlib.import_module(f"services.{name}").service
    step = next(s for s, n in STEP_NAMES.items() if n == name)
    by_model = {(r.model, r.topic) for r in service.routes}
    assert (RoundFailed, topics.round_filter(RoundFailed.topic_name)) in by_model
    if step < Step.DEPLOY:
        assert (StepCompensated, topics.compensated_filter(step + 1)) in by_model


def test_the_device_routes_match_the_topics_devices_publish_on() -> None:
    service = importlib.import_module("services.deployer").service
    topic = topics.device(topics.DEVICE_REPORT, "d1")
    route = service.route(topic)
    assert route is not None
    assert route.model is DeviceReport
