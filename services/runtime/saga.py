"""Compensation chaining: after a failure at step k, steps k, k-1, ..., 1 undo their work.

The service of the failed step compensates on `RoundFailed(step=k)`; every other step
compensates when the step after it announced `StepCompensated`. Each compensation runs once
per round (its StepCompensated is recorded and re-announced on a replay). A service declares
its part with `compensation(step, undo)`, which returns the two routes in plain sight.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from schemas import topics
from schemas.events import RoundFailed, StepCompensated
from schemas.steps import Step
from services.runtime.context import Context
from services.runtime.errors import Rejected
from services.runtime.routes import Route

Undo = Callable[[str, Context], Awaitable[str]]
FAILING = ("compensating", "failed")


def triggered_by_failure(step: int, failed_step: int) -> bool:
    """Does a RoundFailed at `failed_step` start this step's compensation?"""
    return step == failed_step


def refusal(step: int, status: str | None, failed_step: int | None) -> str | None:
    """Why this step must not compensate a round now, or None when it should."""
    if status not in FAILING or failed_step is None:
        return f"round is {status or 'unknown'}, not failing"
    if step > failed_step:
        return f"round failed at step {failed_step}, before step {step}"
    return None


def compensation(step: Step, undo: Undo) -> list[Route[RoundFailed] | Route[StepCompensated]]:
    """The routes that run `undo` as step `step`'s compensation."""

    async def run(round_id: str, ctx: Context) -> None:
        state = await ctx.store.get_round(round_id)
        why_not = refusal(step, state.status, state.failed_step)
        if why_not is not None:
            raise Rejected(f"round {round_id}: {why_not}")
        key = f"compensated_{step}"
        if await ctx.republish(round_id, key, StepCompensated) is not None:
            return  # a redelivery: this step's compensation already ran
        detail = await undo(round_id, ctx)  # idempotent actions
        done = StepCompensated(round_id=round_id, step=step, service=ctx.service, detail=detail)
        await ctx.emit_once(key, done)

    async def on_failed(event: RoundFailed, ctx: Context) -> None:
        if triggered_by_failure(step, event.step):
            await run(event.round_id, ctx)

    async def on_next_compensated(event: StepCompensated, ctx: Context) -> None:
        await run(event.round_id, ctx)

    routes: list[Route[RoundFailed] | Route[StepCompensated]] = [
        Route(topics.round_filter(RoundFailed.topic_name), RoundFailed, on_failed)
    ]
    if step < max(Step):
        after = topics.compensated_filter(step + 1)
        routes.append(Route(after, StepCompensated, on_next_compensated))
    return routes
