"""Step 5, the validator: holdout metrics of the candidate against its target and its parent.

A candidate that meets `target_accuracy` and does not regress more than `max_regression` below
its parent gets the next semantic version (after its parent) in the model registry. Otherwise
the round fails here. Compensation records the failure with its metrics.

Off the saga's path, it also scores each iteration's aggregate as the aggregator announces it
(`IterationCompleted`, which the distributor acts on without waiting for this), for the
round's learning curve; the final iteration's point is the candidate's own score.

What it decides is in `decisions.py`, free of I/O; these handlers read, call it and write.
"""

from __future__ import annotations

import asyncio
import functools
import json

import numpy as np

from federated.data import load_digits, train_holdout_split
from federated.metrics import classification_metrics
from federated.model import predict
from federated.params import Params
from schemas.events import IterationCompleted, ModelAggregated, ModelValidated
from schemas.steps import Step
from services.runtime import Context, Rejected, Service, compensation, on
from services.runtime.metrics import HOLDOUT_ACCURACY, compensated, step_done
from services.runtime.state import Field, RoundState
from services.validator.decisions import (
    curve_point,
    first_candidate,
    score_iteration,
    validation_failure,
)


@functools.cache
def holdout(seed: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The validator's holdout set; devices' data is drawn from the rest."""
    x, y = load_digits()
    _, _, x_ho, y_ho = train_holdout_split(
        x, y, holdout_fraction=fraction, rng=np.random.default_rng(seed)
    )
    return x_ho, y_ho


def evaluate(params: Params, seed: int, fraction: float) -> dict[str, float]:
    """Accuracy and macro precision/recall/F1 on the holdout set."""
    x, y = holdout(seed, fraction)
    return classification_metrics(y, predict(params, x), num_classes=10).as_dict()


async def on_model_aggregated(event: ModelAggregated, ctx: Context) -> None:
    """Score the candidate; register and announce it, or fail the round."""
    round_id = event.round_id
    if await ctx.republish(round_id, "validated", ModelValidated) is not None:
        return
    state = await ctx.store.get_round(round_id)
    if not state.running:
        return
    if event.digest != state.candidate_digest:
        raise Rejected(f"{event.digest} is not round {round_id}'s candidate")
    params = await ctx.store.get_params(event.digest)
    if params is None:
        await ctx.fail(round_id, Step.VALIDATE, f"candidate {event.digest} is missing")
        return
    metrics = await score(params, state, ctx)
    await ctx.store.record_accuracy(round_id, event.iterations - 1, curve_point(metrics))
    failure = validation_failure(
        metrics["accuracy"],
        state.request.target_accuracy,
        parent=state.parent_version,
        parent_accuracy=metrics.get("parent_accuracy", 0.0),
        max_regression=ctx.settings.max_regression,
    )
    if failure is not None:
        await ctx.fail(round_id, Step.VALIDATE, failure)
        return
    version = await register(event.digest, metrics, state, ctx)
    await ctx.store.set_fields(round_id, {Field.STEP: Step.DEPLOY})
    validated = ModelValidated(
        round_id=round_id,
        digest=event.digest,
        version=version,
        parent_version=state.parent_version,
        metrics=metrics,
    )
    await ctx.emit_once("validated", validated)
    step_done(Step.VALIDATE)


async def score(params: Params, state: RoundState, ctx: Context) -> dict[str, float]:
    """The candidate's holdout metrics, with its parent's accuracy; recorded on the round."""
    metrics = evaluate(params, ctx.settings.data_seed, ctx.settings.holdout_fraction)
    HOLDOUT_ACCURACY.labels(model="candidate").set(metrics["accuracy"])
    if state.parent_version:
        record = await ctx.store.get_version(state.model_name, state.parent_version)
        metrics["parent_accuracy"] = json.loads(record.get("metrics", "{}")).get("accuracy", 0.0)
    await ctx.store.set_fields(state.round_id, {Field.METRICS: json.dumps(metrics)})
    return metrics


async def on_iteration_completed(event: IterationCompleted, ctx: Context) -> None:
    """Score an iteration's aggregate on the holdout (once) for the round's learning curve."""
    round_id, it = event.round_id, event.iteration
    state = await ctx.store.get_round(round_id)
    if not score_iteration(state.status, await ctx.store.scored(round_id, it)):
        return
    params = await ctx.store.get_params(event.global_digest)
    if params is None:
        ctx.log.warning("iteration model gone before it was scored", digest=event.global_digest)
        return
    # In a thread: the probe and the retry loop keep running while numpy works.
    s = ctx.settings
    metrics = await asyncio.to_thread(evaluate, params, s.data_seed, s.holdout_fraction)
    await ctx.store.record_accuracy(round_id, it, curve_point(metrics))
    HOLDOUT_ACCURACY.labels(model="iteration").set(metrics["accuracy"])


async def register(digest: str, metrics: dict[str, float], state: RoundState, ctx: Context) -> str:
    """Give the candidate its version in the registry and keep its weights for good."""
    record = {
        "parent": state.parent_version or "",
        "round_id": state.round_id,
        "digest": digest,
        "metrics": json.dumps(metrics),
        "status": "validated",
    }
    version = await claim_version(
        state.model_name, state.parent_version, state.round_id, record, ctx
    )
    await ctx.store.persist_params(digest)
    return version


async def claim_version(
    model: str, parent: str | None, round_id: str, record: dict[str, str], ctx: Context
) -> str:
    """The round's version: the first free number after its parent's, claimed once.

    A replay walks the same numbers and stops at the one this round already owns, then
    completes the record, so a validator killed mid-claim neither skips a number nor leaves
    a half-written version behind.
    """
    candidate = first_candidate(parent)
    while await ctx.store.claim_version(model, str(candidate), round_id) != round_id:
        candidate = candidate.next_minor()  # a concurrent round took it
    version = str(candidate)
    await ctx.store.register_version(model, version, record)
    await ctx.store.set_once(round_id, Field.CANDIDATE_VERSION, version)
    return version


async def record_failure(round_id: str, ctx: Context) -> str:
    """Compensation: record why validation (or a later step) rejected the candidate."""
    compensated(Step.VALIDATE)
    state = await ctx.store.get_round(round_id)
    record = json.dumps(
        {"reason": state.failure_reason, "step": state.failed_step, "metrics": state.metrics}
    )
    await ctx.store.set_fields(round_id, {Field.VALIDATION_FAILURE: record})
    version = state.candidate_version
    if version:
        # A rollout that failed is recorded by the deployer as rolled_back; keep that.
        current = (await ctx.store.get_version(state.model_name, version)).get("status")
        status = "rejected" if current == "validated" else current or "rejected"
        await ctx.store.update_version(state.model_name, version, status=status, rejection=record)
    return f"recorded validation failure (metrics {json.dumps(state.metrics)})"


async def warm_up(ctx: Context) -> None:
    """Load the holdout set before the first candidate arrives."""
    await asyncio.to_thread(holdout, ctx.settings.data_seed, ctx.settings.holdout_fraction)


service = Service(
    name="validator",
    on_connect=warm_up,
    routes=[
        on(on_model_aggregated),
        on(on_iteration_completed),
        *compensation(Step.VALIDATE, record_failure),
    ],
)
