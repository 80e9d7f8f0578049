"""The Prometheus metrics every service exports, each named once here (prometheus-client).

A service serves them over HTTP on `FEDSAGA_METRICS_PORT` (`serve`; 0 serves nothing). The
runtime records what it sees of every message (`app.py`); each step's handlers record what
only they know. No label names a device or a round: label values come from short, fixed
vocabularies (service, message kind, step, outcome, reason code, direction), so the number of
series stays the same however large the fleet or however many rounds run. Per-device and
per-round detail lives in Redis and in the round report (`fedsaga/report.py`).

What each metric counts, by whom (`_total` is added to counters on the wire):

- `fedsaga_messages{service, message, result}`, `fedsaga_handler_seconds{service, message}`:
  the runtime, for every message a service takes and every handler call.
- `fedsaga_rounds{outcome}`, `fedsaga_round_seconds{outcome}`: the selector, as a round ends.
- `fedsaga_steps{step, outcome}`: each step when done (distribute, train and aggregate once
  per iteration); the selector counts the step that failed a round as it ends.
- `fedsaga_compensations{step}`: each step's compensation.
- `fedsaga_updates_accepted`, `fedsaga_updates_rejected{reason}`: the aggregator.
- `fedsaga_payload_bytes{direction, purpose}`, `fedsaga_payloads{direction, purpose}`: the
  aggregator (uplink updates), the distributor and the deployer (downlink models).
- `fedsaga_iteration_devices{outcome}`, `fedsaga_training_seconds`: the trainer coordinator,
  per closed iteration (train commands out to quorum decided).
- `fedsaga_iteration_seconds`: the aggregator (train commands out to the aggregate applied).
- `fedsaga_holdout_accuracy{model}`: the validator (an iteration's aggregate, a candidate).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

import prometheus_client
from prometheus_client import Counter, Gauge, Histogram

from schemas.device import FailureReason
from schemas.steps import Step

OTHER = "other"  # the label value of anything outside a label's vocabulary

# Seconds: an iteration of the demo takes ~0.5 s, one with a straggler its timeout (~5-30 s).
_SLOW_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_ROUND_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

MESSAGES = Counter(
    "fedsaga_messages",
    "Messages a service took from the broker, by what became of them: handled, duplicate "
    "(already handled), invalid (undecodable), rejected, retry (a try failed), dead_letter.",
    ["service", "message", "result"],
)
HANDLER_SECONDS = Histogram(
    "fedsaga_handler_seconds",
    "Time a handler took for one message (including its Redis and broker round trips).",
    ["service", "message"],
)
ROUNDS = Counter("fedsaga_rounds", "Rounds that ended, by outcome.", ["outcome"])
ROUND_SECONDS = Histogram(
    "fedsaga_round_seconds",
    "From a round's creation to its end, by outcome.",
    ["outcome"],
    buckets=_ROUND_BUCKETS,
)
STEPS = Counter(
    "fedsaga_steps",
    "Saga steps done (distribute, train and aggregate once per iteration) or failed.",
    ["step", "outcome"],
)
COMPENSATIONS = Counter("fedsaga_compensations", "Compensations run, by step.", ["step"])
UPDATES_ACCEPTED = Counter(
    "fedsaga_updates_accepted", "Device updates folded into an iteration's FedAvg."
)
UPDATES_REJECTED = Counter(
    "fedsaga_updates_rejected",
    "Device updates the aggregator refused, by reason (undecodable ones count as "
    'fedsaga_messages_total{result="invalid"}).',
    ["reason"],
)
PAYLOAD_BYTES = Counter(
    "fedsaga_payload_bytes",
    "Weight payload bytes: uplink (device updates) and downlink (models to train or deploy).",
    ["direction", "purpose"],
)
PAYLOADS = Counter(
    "fedsaga_payloads",
    "Weight payloads, as counted in fedsaga_payload_bytes_total.",
    ["direction", "purpose"],
)
ITERATION_DEVICES = Counter(
    "fedsaga_iteration_devices",
    "Devices of closed iterations, by outcome: done, or the failure reason.",
    ["outcome"],
)
TRAINING_SECONDS = Histogram(
    "fedsaga_training_seconds",
    "From an iteration's train commands to its quorum decision.",
    buckets=_SLOW_BUCKETS,
)
ITERATION_SECONDS = Histogram(
    "fedsaga_iteration_seconds",
    "From an iteration's train commands to its aggregate applied to the global model.",
    buckets=_SLOW_BUCKETS,
)
HOLDOUT_ACCURACY = Gauge(
    "fedsaga_holdout_accuracy",
    "Holdout accuracy of the latest model the validator scored: an iteration's aggregate, "
    "or a round's candidate.",
    ["model"],
)

Direction = Literal["uplink", "downlink"]
_FAILURE_REASONS = frozenset(r.value for r in FailureReason)
_STEP_LABELS = {s.value: s.name.lower() for s in Step}


def serve(port: int) -> None:
    """Serve the metrics over HTTP on `port` (every address), in a daemon thread; 0: don't."""
    if port:
        prometheus_client.start_http_server(port)


def bounded(value: str, vocabulary: Collection[str]) -> str:
    """`value` as a label: itself when in `vocabulary`, else `other` (a device sent it)."""
    return value if value in vocabulary else OTHER


def step_label(step: int) -> str:
    """A step's label: its name (`select` .. `deploy`)."""
    return _STEP_LABELS.get(step, OTHER)


def step_done(step: Step) -> None:
    """Count a step done (once per iteration for steps 2-4)."""
    STEPS.labels(step=step_label(step), outcome="done").inc()


def step_failed(step: int) -> None:
    """Count a step that failed its round."""
    STEPS.labels(step=step_label(step), outcome="failed").inc()


def compensated(step: Step) -> None:
    """Count a compensation run."""
    COMPENSATIONS.labels(step=step_label(step)).inc()


def payloads(direction: Direction, purpose: str, sizes: Collection[int]) -> None:
    """Count weight payloads of these sizes (bytes) going `direction`."""
    PAYLOAD_BYTES.labels(direction=direction, purpose=purpose).inc(sum(sizes))
    PAYLOADS.labels(direction=direction, purpose=purpose).inc(len(sizes))


def device_outcome(outcome: str) -> None:
    """Count one device of a closed iteration: `done`, or its failure reason."""
    label = outcome if outcome == "done" else bounded(outcome, _FAILURE_REASONS)
    ITERATION_DEVICES.labels(outcome=label).inc()
