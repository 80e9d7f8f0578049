"""A round's outcome, read back from Redis: what `round status`, `run()` and the demo show."""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import BaseModel

from federated.params import flatten
from schemas.steps import STEP_NAMES
from services.runtime import keys
from services.runtime.state import Field, RoundState
from services.runtime.store import SagaStore


class UnknownRound(LookupError):
    """No round has this id."""


class RoundResult(BaseModel):
    """Everything an operator asks about a round, like the seed's step returns."""

    round_id: str
    status: str
    steps_done: list[str]
    compensations: list[str]
    failed_step: int | None = None
    failure_reason: str | None = None
    versions: dict[str, str | None]
    participation: dict[str, Any]
    metrics: dict[str, float]
    bytes: dict[str, float]
    timeline: list[dict[str, Any]]

    @property
    def succeeded(self) -> bool:
        """Did the round deploy its model?"""
        return self.status == "succeeded"


_STEP_EVENTS = {
    "nodes.selected": STEP_NAMES[1],
    "weights.distributed": STEP_NAMES[2],
    "training.completed": STEP_NAMES[3],
    "model.aggregated": STEP_NAMES[4],
    "model.validated": STEP_NAMES[5],
    "model.deployed": STEP_NAMES[6],
}


async def round_result(store: SagaStore, round_id: str) -> RoundResult:
    """Assemble a round's result from its hash, its sets and its event log."""
    state = await store.get_round(round_id)
    if not state.exists:
        raise UnknownRound(f"no round {round_id}")
    events = await store.events(round_id)
    steps = list(
        dict.fromkeys(_STEP_EVENTS[e["kind"]] for e in events if e["kind"] in _STEP_EVENTS)
    )
    comps = [
        f"{e['step']}:{e['service']}: {e['detail']}"
        for e in events
        if e["kind"] == "step.compensated"
    ]
    cohort = await store.smembers(keys.cohort(round_id))
    failures = await store.hgetall(keys.failures(round_id))
    per_iteration = [len(e["participants"]) for e in events if e["kind"] == "training.completed"]
    bytes_ = await _bytes(store, state)
    model = state.model_name
    return RoundResult(
        round_id=round_id,
        status=state.status,
        steps_done=steps,
        compensations=comps,
        failed_step=state.failed_step,
        failure_reason=state.failure_reason,
        versions={
            "parent": state.parent_version,
            "candidate": state.candidate_version,
            "deployed": state.deployed_version,
            "active": await store.active_version(model) if model else None,
        },
        participation={
            "cohort": len(cohort),
            "min_nodes": state.request.min_participating_nodes,
            "participants_per_iteration": per_iteration,
            "failure_reasons": dict(Counter(r.split(" (")[0] for r in failures.values())),
            "failures": failures,
        },
        metrics=state.metrics,
        bytes=bytes_,
        timeline=[
            {
                "kind": e["kind"],
                "service": e["service"],
                "ts_ms": e["ts_ms"],
                **({"step": e["step"]} if "step" in e else {}),
                "detail": describe(e, len(cohort)),
            }
            for e in events
        ],
    )


async def _bytes(store: SagaStore, state: RoundState) -> dict[str, float]:
    """Bytes per device per iteration, each way, beside the float32 model size."""
    start = state.start_digest
    params = await store.get_params(start) if start else None
    f32 = float(flatten(params).size * 4) if params else 0.0
    down_n, up_n = state.counter(Field.PAYLOADS_DOWN), state.counter(Field.PAYLOADS_UP)
    down = state.counter(Field.BYTES_DOWN) / down_n if down_n else 0.0
    up = state.counter(Field.BYTES_UP) / up_n if up_n else 0.0
    return {
        "float32_model": f32,
        "down_per_device_iteration": round(down, 1),
        "up_per_device_iteration": round(up, 1),
        "down_vs_float32": round(down / f32, 4) if f32 else 0.0,
        "up_vs_float32": round(up / f32, 4) if f32 else 0.0,
        "deploy_total": float(state.counter(Field.BYTES_DEPLOY)),
    }


def _percent(value: float | None) -> str:
    return f"{value:.1%}" if value is not None else "-"


def describe(event: dict[str, Any], cohort: int = 0) -> str:
    """One line for an event of a round's log, as `round watch` and `round status` print it."""
    kind = event["kind"]
    if kind == "nodes.selected":
        return f"selected {len(event['cohort'])} devices of {event['eligible']} eligible"
    if kind == "weights.distributed":
        return f"iteration {event['iteration']}: weights to {len(event['recipients'])} devices"
    if kind == "update.received":
        return f"iteration {event['iteration']}: update from {event['device_id']}"
    if kind == "training.completed":
        joined = len(event["participants"])
        line = f"iteration {event['iteration']}: {joined}"
        line += f" of {cohort} devices reported" if cohort else " devices reported"
        reasons = Counter(r.split(" (")[0] for r in event.get("failures", {}).values())
        if reasons:
            line += " (failed: " + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())) + ")"
        return line
    if kind == "iteration.completed":
        return f"iteration {event['iteration']}: aggregated {event['num_examples']} examples"
    if kind == "model.aggregated":
        return f"candidate after {event['iterations']} iterations"
    if kind == "model.validated":
        return (
            f"version {event['version']}: holdout accuracy "
            f"{_percent(event['metrics'].get('accuracy'))}"
        )
    if kind == "canary.stage_passed":
        return (
            f"canary {event['percent']}%: {event['healthy']} of {event['devices']} devices healthy"
        )
    if kind == "model.deployed":
        return f"version {event['version']} active on {event['devices']} devices"
    if kind == "round.failed":
        return f"failed at step {event['step']} ({STEP_NAMES[event['step']]}): {event['reason']}"
    if kind == "step.compensated":
        return f"compensated step {event['step']}: {event.get('detail', '')}".rstrip(": ")
    if kind == "round.completed":
        outcome = event["outcome"]
        if outcome == "succeeded":
            return f"succeeded: version {event.get('version')}"
        return f"failed: {event.get('reason') or 'unknown reason'}"
    return str(kind)
