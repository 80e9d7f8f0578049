"""Each service's Prometheus endpoint, scraped around real rounds: the counts match the round.

The stack's services serve their metrics on ports of their own (deploy/stack.py). They live
for the whole test session, so every assertion is on the change across one round.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from deploy.stack import LocalStack
from edge_client.fleet import Fleet
from fedsaga.client import FedSaga
from schemas.codec import encode
from schemas.device import DeviceUpdate
from schemas.ops import Chaos
from services.aggregator.decisions import REFUSAL_CODES
from services.runtime.state import Field
from tests.integration.conftest import Probe, request

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=3) as reply:
        body: bytes = reply.read()
    return body.decode()


async def scrape(stack: LocalStack) -> dict[str, Samples]:
    """Every service's samples, by service, keyed by (sample name, sorted labels)."""
    out: dict[str, Samples] = {}
    for name, proc in stack.services.items():
        text = await asyncio.wait_for(asyncio.to_thread(_get, proc.metrics_url), timeout=5)
        out[name] = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
    return out


class Change:
    """What changed between two scrapes."""

    def __init__(self, before: dict[str, Samples], after: dict[str, Samples]) -> None:
        self.before, self.after = before, after

    def __call__(self, service: str, name: str, /, **labels: str) -> float:
        """The change of one sample (absent counts as 0)."""
        key = (name, tuple(sorted(labels.items())))
        return self.after[service].get(key, 0.0) - self.before[service].get(key, 0.0)

    def total(self, service: str, name: str, /, **labels: str) -> float:
        """The change summed over every sample of `name` that has `labels`."""
        wanted = set(labels.items())
        return sum(
            v - self.before[service].get(k, 0.0)
            for k, v in self.after[service].items()
            if k[0] == name and wanted <= set(k[1])
        )


async def settled(
    stack: LocalStack,
    before: dict[str, Samples],
    ready: Callable[[Change], bool],
    timeout: float = 10.0,
) -> Change:
    """Scrape until `ready` holds: a service records a round's end as it handles the event."""
    async with asyncio.timeout(timeout):
        while True:
            change = Change(before, await scrape(stack))
            if ready(change):
                return change
            await asyncio.sleep(0.1)


async def test_a_successful_round_is_counted_as_it_happened(
    stack: LocalStack, saga: FedSaga, fleet: Fleet, probe: Probe
) -> None:
    # Prepare
    req = request()
    before = await scrape(stack)

    # Execute: the round, then an update for it that comes too late
    result = await saga.run(req, timeout=60)
    assert result.status == "succeeded", result.failure_reason
    late = DeviceUpdate(
        round_id=req.round_id,
        iteration=0,
        device_id=fleet.agents[0].device_id,
        base_digest="0" * 64,
        num_examples=10,
        train_loss=0.1,
        train_accuracy=0.5,
        blob=b"late",
    )
    await probe.client.publish(f"fl/device/{late.device_id}/update", encode(late), qos=1)
    await probe.wait_for("fl/errors/aggregator")
    change = await settled(
        stack,
        before,
        lambda c: (
            c("selector", "fedsaga_rounds_total", outcome="succeeded") >= 1
            and c.total("aggregator", "fedsaga_updates_rejected_total") >= 1
        ),
    )

    # Assert: updates accepted == participants x iterations, and their bytes are the round's
    state = await saga.store.get_round(req.round_id)
    participants = result.participation["participants_per_iteration"]
    assert participants == [10, 10, 10]
    accepted = sum(participants)
    assert change("aggregator", "fedsaga_updates_accepted_total") == accepted
    assert change("aggregator", "fedsaga_payloads_total", direction="uplink", purpose="update") == (
        accepted
    )
    assert change(
        "aggregator", "fedsaga_payload_bytes_total", direction="uplink", purpose="update"
    ) == state.counter(Field.BYTES_UP)
    # the late update, refused because its round is over, under its code, not its text
    rejected = change("aggregator", "fedsaga_updates_rejected_total", reason="round_not_running")
    assert rejected == 1
    assert change.total("aggregator", "fedsaga_updates_rejected_total") == 1
    assert (
        change(
            "aggregator",
            "fedsaga_messages_total",
            service="aggregator",
            message="DeviceUpdate",
            result="rejected",
        )
        == 1
    )
    # downlink: the models sent to train, and the canary rollout
    assert change(
        "distributor", "fedsaga_payload_bytes_total", direction="downlink", purpose="train"
    ) == state.counter(Field.BYTES_DOWN)
    assert change(
        "distributor", "fedsaga_payloads_total", direction="downlink", purpose="train"
    ) == state.counter(Field.PAYLOADS_DOWN)
    assert change(
        "deployer", "fedsaga_payload_bytes_total", direction="downlink", purpose="deploy"
    ) == state.counter(Field.BYTES_DEPLOY)
    # steps: 1, 5 and 6 once; 2, 3 and 4 once per iteration; nothing failed or compensated
    for service, step, times in (
        ("selector", "select", 1),
        ("distributor", "distribute", 3),
        ("trainer_coordinator", "train", 3),
        ("aggregator", "aggregate", 3),
        ("validator", "validate", 1),
        ("deployer", "deploy", 1),
    ):
        assert change(service, "fedsaga_steps_total", step=step, outcome="done") == times, step
        assert change.total(service, "fedsaga_compensations_total") == 0
    assert change.total("selector", "fedsaga_steps_total", outcome="failed") == 0
    assert change("selector", "fedsaga_rounds_total", outcome="succeeded") == 1
    assert change("selector", "fedsaga_round_seconds_count", outcome="succeeded") == 1
    # every device of every iteration finished; each iteration timed once
    assert change("trainer_coordinator", "fedsaga_iteration_devices_total", outcome="done") == (
        accepted
    )
    assert change("trainer_coordinator", "fedsaga_training_seconds_count") == 3
    assert change("aggregator", "fedsaga_iteration_seconds_count") == 3
    assert change("aggregator", "fedsaga_iteration_seconds_sum") > 0
    gauge = ("fedsaga_holdout_accuracy", (("model", "candidate"),))
    assert change.after["validator"][gauge] == result.metrics["accuracy"]
    # no label names a device or a round
    devices = {a.device_id for a in fleet.agents}
    for service, samples in change.after.items():
        for _, labels in samples:
            names = {k for k, _ in labels}
            values = {v for _, v in labels}
            assert not names & {"device", "device_id", "round", "round_id"}, (service, names)
            assert not values & (devices | {req.round_id}), (service, labels)


async def test_a_failed_round_counts_its_failed_step_and_each_compensation(
    stack: LocalStack, saga: FedSaga, fleet: Fleet
) -> None:
    # Prepare
    before = await scrape(stack)

    # Execute: most devices fail in iteration 0
    result = await saga.run(request(simulate_failure=Chaos.PARTICIPATION), timeout=60)
    assert result.status == "failed"
    assert result.failed_step == 3
    change = await settled(
        stack, before, lambda c: c("selector", "fedsaga_rounds_total", outcome="failed") >= 1
    )

    # Assert
    assert change("selector", "fedsaga_rounds_total", outcome="failed") == 1
    assert change.total("selector", "fedsaga_rounds_total") == 1
    assert change("selector", "fedsaga_steps_total", step="train", outcome="failed") == 1
    for service, step in (
        ("trainer_coordinator", "train"),
        ("distributor", "distribute"),
        ("selector", "select"),
    ):
        assert change(service, "fedsaga_compensations_total", step=step) == 1, step
    for service in ("aggregator", "validator", "deployer"):
        assert change.total(service, "fedsaga_compensations_total") == 0
    # the iteration's devices, by outcome: the failure reasons the round recorded
    failures = result.participation["failure_reasons"]
    assert failures
    for reason, count in failures.items():
        devices = change("trainer_coordinator", "fedsaga_iteration_devices_total", outcome=reason)
        assert devices == count, reason
    done = change("trainer_coordinator", "fedsaga_iteration_devices_total", outcome="done")
    assert done + sum(failures.values()) == result.participation["cohort"]
    assert set(REFUSAL_CODES) >= {
        dict(labels)["reason"]
        for name, labels in change.after["aggregator"]
        if name == "fedsaga_updates_rejected_total"
    }
