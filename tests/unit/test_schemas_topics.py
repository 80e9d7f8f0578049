"""The topic map: helpers build the documented topics, filters match them, device_of parses."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from schemas import topics
from schemas.events import (
    IterationCompleted,
    ModelAggregated,
    ModelDeployed,
    ModelValidated,
    NodesSelected,
    RoundCompleted,
    RoundFailed,
    StepCompensated,
    TrainingCompleted,
    UpdateReceived,
    WeightsDistributed,
)
from schemas.steps import STEP_NAMES, Step

PROPERTY = settings(database=None, deadline=None)
EVENTS = [
    NodesSelected,
    WeightsDistributed,
    UpdateReceived,
    TrainingCompleted,
    IterationCompleted,
    ModelAggregated,
    ModelValidated,
    ModelDeployed,
    RoundCompleted,
    RoundFailed,
    StepCompensated,
]
DEVICE_TEMPLATES = [
    topics.DEVICE_CMD,
    topics.DEVICE_MODEL,
    topics.DEVICE_STATUS,
    topics.DEVICE_UPDATE,
    topics.DEVICE_REPORT,
]
ids = st.from_regex(r"\A[A-Za-z0-9_.-]{1,64}\Z")


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        (topics.round_event("r1", "nodes_selected"), "fl/round/r1/nodes_selected"),
        (topics.round_filter("failed"), "fl/round/+/failed"),
        (topics.compensated("r1", 3), "fl/round/r1/compensated/3"),
        (topics.compensated("r1", Step.TRAIN), "fl/round/r1/compensated/3"),
        (topics.compensated_filter(Step.SELECT), "fl/round/+/compensated/1"),
        (topics.device(topics.DEVICE_CMD, "dev-1"), "fl/device/dev-1/cmd"),
        (topics.device(topics.DEVICE_MODEL, "dev-1"), "fl/device/dev-1/model"),
        (topics.device(topics.DEVICE_STATUS, "dev-1"), "fl/device/dev-1/status"),
        (topics.device(topics.DEVICE_UPDATE, "dev-1"), "fl/device/dev-1/update"),
        (topics.device(topics.DEVICE_REPORT, "dev-1"), "fl/device/dev-1/report"),
        (topics.errors("selector"), "fl/errors/selector"),
        (topics.ROUND_START, "fl/ops/round/start"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_helpers_build_the_documented_topics(built: str, expected: str) -> None:
    # Prepare / Execute: done by the parameters

    # Assert
    assert built == expected


@pytest.mark.parametrize(
    ("subscription", "topic"),
    [
        (topics.ROUND_ALL, topics.round_event("r1", "model_aggregated")),
        (topics.ALL_STATUS, topics.device(topics.DEVICE_STATUS, "d1")),
        (topics.ALL_UPDATES, topics.device(topics.DEVICE_UPDATE, "d1")),
        (topics.ALL_REPORTS, topics.device(topics.DEVICE_REPORT, "d1")),
        (topics.ALL_ERRORS, topics.errors("validator")),
        (topics.COMPENSATED_ALL, topics.compensated("r1", 6)),
        (topics.compensated_filter(2), topics.compensated("r1", 2)),
    ],
)
def test_filters_match_their_topics(subscription: str, topic: str) -> None:
    # Prepare / Execute
    matched = topic_matches_sub(subscription, topic)

    # Assert
    assert matched


@pytest.mark.parametrize(
    ("subscription", "topic"),
    [
        (topics.ROUND_ALL, topics.compensated("r1", 1)),  # compensations are a level deeper
        (topics.ALL_STATUS, topics.device(topics.DEVICE_REPORT, "d1")),
        (topics.compensated_filter(2), topics.compensated("r1", 3)),
        (topics.round_filter("failed"), topics.round_event("r1", "round_completed")),
    ],
)
def test_filters_do_not_match_other_topics(subscription: str, topic: str) -> None:
    # Prepare / Execute
    matched = topic_matches_sub(subscription, topic)

    # Assert
    assert not matched


def test_event_topic_names_are_unique_single_levels() -> None:
    # Prepare / Execute
    names = [cls.topic_name for cls in EVENTS]

    # Assert
    assert len(set(names)) == len(names)
    for name in names:
        assert name
        assert not set(name) & set("/+#$ ")


@pytest.mark.parametrize("cls", EVENTS, ids=lambda c: c.__name__)
def test_each_event_topic_is_matched_only_by_its_own_filter(cls: type) -> None:
    # Prepare
    topic = topics.round_event("r1", cls.topic_name)

    # Execute
    matching = [
        other for other in EVENTS if topic_matches_sub(topics.round_filter(other.topic_name), topic)
    ]

    # Assert
    assert matching == [cls]


def test_every_step_has_a_service_name() -> None:
    # Prepare / Execute
    numbers = sorted(int(s) for s in STEP_NAMES)

    # Assert
    assert numbers == [1, 2, 3, 4, 5, 6]
    assert [STEP_NAMES[s] for s in Step] == [
        "selector",
        "distributor",
        "trainer_coordinator",
        "aggregator",
        "validator",
        "deployer",
    ]


@PROPERTY
@given(device_id=ids, template=st.sampled_from(DEVICE_TEMPLATES))
def test_device_of_inverts_device(device_id: str, template: str) -> None:
    # Prepare
    topic = topics.device(template, device_id)

    # Execute
    parsed = topics.device_of(topic)

    # Assert
    assert parsed == device_id


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "fl",
        "fl/device",
        "fl/device/d1",
        "fl/round/r1/failed",
        "xx/device/d1/status",
        "/fl/device/d1/status",
        "fl/errors/selector",
        "FL/device/d1/status",
        "fl/ops/round/start",
    ],
    ids=repr,
)
def test_device_of_rejects_non_device_topics(topic: str) -> None:
    # Prepare: nothing beyond the topic

    # Execute / Assert
    with pytest.raises(ValueError, match="not a device topic"):
        topics.device_of(topic)


@pytest.mark.parametrize("topic", ["fl/device//status", "fl/device/+/status"], ids=repr)
def test_device_of_rejects_an_empty_or_wildcard_id(topic: str) -> None:
    # Prepare: nothing beyond the topic

    # Execute / Assert
    with pytest.raises(ValueError, match="not a device topic"):
        topics.device_of(topic)
