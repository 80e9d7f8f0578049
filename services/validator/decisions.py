"""What the validator decides, as functions of plain values.

A candidate passes validation when its holdout accuracy is at least the round's
`target_accuracy` and, when it has a parent version, no more than `max_regression` below the
parent's recorded accuracy. Equal to the target passes; a candidate without a parent is judged
against the target alone. A candidate that passes gets its parent's next minor version (1.0.0
when it has no parent, skipping numbers already taken); one that fails ends the round at
step 5 with the reason below, and the previous version stays active.

As the round goes, the validator also scores each iteration's aggregate on the holdout, once,
for the round's learning curve (the round report draws it); the verdict is only ever on the
final candidate.
"""

from __future__ import annotations

from collections.abc import Mapping

from schemas.semver import Version

FIRST_VERSION = Version(1, 0, 0)


def validation_failure(
    accuracy: float,
    target: float,
    *,
    parent: str | None,
    parent_accuracy: float,
    max_regression: float,
) -> str | None:
    """Why the candidate is rejected, or None when it passes."""
    if accuracy < target:
        return f"holdout accuracy {accuracy:.4f} below target {target:.4f}"
    if parent and accuracy < parent_accuracy - max_regression:
        return (
            f"holdout accuracy {accuracy:.4f} regresses from parent "
            f"{parent} ({parent_accuracy:.4f})"
        )
    return None


def first_candidate(parent: str | None) -> Version:
    """The version a candidate asks for first: its parent's next minor, or 1.0.0."""
    return Version.parse(parent).next_minor() if parent else FIRST_VERSION


def score_iteration(round_status: str, scored: bool) -> bool:
    """Score an iteration's aggregate now? Once per iteration, for a round that exists.

    A failing round still gets its curve (it shows how far training got); a round nobody
    knows gets no keys written for it.
    """
    return round_status != "unknown" and not scored


def curve_point(metrics: Mapping[str, float]) -> dict[str, float]:
    """An iteration's point on the learning curve: its holdout metrics, not its parent's."""
    return {k: v for k, v in metrics.items() if k != "parent_accuracy"}
