"""Accuracy per server strategy on non-IID digits, beside a centralized baseline.

Run from the repository root: ``.venv/bin/python bench/strategies.py [--seeds 0 1 2]``.
Setup: digits, 100 clients with Dirichlet(0.5) label skew, 10 sampled per iteration, the MLP
(64, 32, 10), local SGD of 5 epochs, batch 16, lr 0.3 (tuned for FedAvg), float32 both ways.
Each strategy's server settings are first picked from a small grid on separate tuning seeds
(median accuracy after 50 iterations), then every strategy runs on the reporting seeds. The
centralized baseline trains the same MLP on all clients' data pooled (100 epochs, batch 32,
lr 0.1) and is evaluated on the same held-out set. Tables show medians over seeds.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from federated.data import train_centralized
from federated.simulation import FederatedTask, digits_task, evaluate, simulate
from federated.strategies import FedAdam, FedAvgM, FedYogi
from federated.strategy import FedAvg, Strategy

NUM_CLIENTS = 100
PER_ITERATION = 10
ALPHA = 0.5
SIZES = (64, 32, 10)
EPOCHS, BATCH, LR = 5, 16, 0.3
ITERATIONS = 50
CHECKPOINTS = (30, 50)
BASE_EPOCHS, BASE_BATCH, BASE_LR = 100, 32, 0.1
TUNING_SEEDS = (100, 101, 102)
TARGET_GAP = 0.01


@dataclass(frozen=True)
class Candidate:
    """One strategy with one setting: a fresh server rule per run, and the clients' prox_mu."""

    family: str
    setting: str
    make: Callable[[], Strategy]
    prox_mu: float = 0.0


def _grid() -> list[Candidate]:
    """A few server settings per strategy; FedAvg is the untuned reference."""
    out = [Candidate("FedAvg", "server_lr=1", FedAvg)]
    for lr in (0.5, 1.0):
        for mom in (0.7, 0.9):
            setting = f"server_lr={lr} momentum={mom}"
            out.append(Candidate("FedAvgM", setting, partial(FedAvgM, lr, mom)))
    for name, cls in (("FedAdam", FedAdam), ("FedYogi", FedYogi)):
        for lr in (0.01, 0.03, 0.1):
            out.append(Candidate(name, f"server_lr={lr} tau=1e-3", partial(cls, lr)))
    for mu in (0.01, 0.1, 0.3):
        out.append(Candidate("FedProx", f"server_lr=1 mu={mu}", FedAvg, prox_mu=mu))
    return out


def make_task(seed: int) -> FederatedTask:
    """The federated digits task of one seed."""
    return digits_task(NUM_CLIENTS, ALPHA, np.random.default_rng([seed, 0]), sizes=SIZES)


def centralized(task: FederatedTask, seed: int) -> float:
    """Held-out accuracy of the MLP trained on all clients' data pooled."""
    x = np.concatenate([c.x for c in task.clients])
    y = np.concatenate([c.y for c in task.clients])
    params = train_centralized(
        x,
        y,
        sizes=SIZES,
        epochs=BASE_EPOCHS,
        batch_size=BASE_BATCH,
        lr=BASE_LR,
        rng=np.random.default_rng([seed, 2]),
    )
    return evaluate(params, task)


def curve(candidate: Candidate, task: FederatedTask, seed: int) -> list[float]:
    """Held-out accuracy after each iteration of one federated run."""
    result = simulate(
        task,
        iterations=ITERATIONS,
        clients_per_iteration=PER_ITERATION,
        epochs=EPOCHS,
        batch_size=BATCH,
        lr=LR,
        rng=np.random.default_rng([seed, 1]),
        strategy=candidate.make(),
        prox_mu=candidate.prox_mu,
    )
    return result.accuracy


def _median_at(curves: Sequence[list[float]], iteration: int) -> float:
    return float(np.median([c[iteration - 1] for c in curves]))


def tune(grid: list[Candidate], seeds: Sequence[int]) -> dict[str, Candidate]:
    """Print the grid on the tuning seeds; return each family's best setting at 50."""
    tasks = {s: make_task(s) for s in seeds}
    best: dict[str, tuple[tuple[float, float], Candidate]] = {}
    print(f"Tuning on seeds {' '.join(map(str, seeds))} (median held-out accuracy, %):")
    print(f"  {'strategy':<9} {'setting':<30} {'@30':>6} {'@50':>6}")
    for cand in grid:
        curves = [curve(cand, tasks[s], s) for s in seeds]
        at30, at50 = (_median_at(curves, it) for it in CHECKPOINTS)
        print(f"  {cand.family:<9} {cand.setting:<30} {100 * at30:6.2f} {100 * at50:6.2f}")
        if cand.family not in best or (at50, at30) > best[cand.family][0]:
            best[cand.family] = ((at50, at30), cand)
    return {family: cand for family, (_, cand) in best.items()}


def _first_within(acc: list[float], base: float) -> int | None:
    return next((i + 1 for i, a in enumerate(acc) if a >= base - TARGET_GAP), None)


def report(chosen: dict[str, Candidate], seeds: Sequence[int]) -> bool:
    """Print the results table on the reporting seeds; return whether the target is met."""
    tasks = {s: make_task(s) for s in seeds}
    bases = [centralized(tasks[s], s) for s in seeds]
    base = float(np.median(bases))
    print(f"\nResults on seeds {' '.join(map(str, seeds))} (median held-out accuracy, %):")
    head = f"  {'strategy':<11} {'setting':<30} {'@30':>6} {'@50':>6} {'gap@50':>7}  within 1 pt"
    print(head)
    print(f"  {'centralized':<11} {'100 epochs, batch 32, lr 0.1':<30} {'':>6} {100 * base:6.2f}")
    best_gap = -np.inf
    for cand in chosen.values():
        curves = [curve(cand, tasks[s], s) for s in seeds]
        at30, at50 = (_median_at(curves, it) for it in CHECKPOINTS)
        gap = at50 - base
        best_gap = max(best_gap, gap)
        firsts = [_first_within(c, b) for c, b in zip(curves, bases, strict=True)]
        reached = ", ".join("-" if f is None else str(f) for f in firsts)
        print(
            f"  {cand.family:<11} {cand.setting:<30} {100 * at30:6.2f} {100 * at50:6.2f} "
            f"{100 * gap:+7.2f}  first at {reached}"
        )
    met = best_gap >= -TARGET_GAP
    print(
        f"\n  gap@50 = median accuracy at 50 minus the median centralized accuracy; 'within 1 pt'"
        f" is\n  the first iteration (per seed) at which a run came within 1 point of its seed's"
        f" baseline.\n  Target, some strategy within 1 point of centralized after 50 iterations:"
        f" {'MET' if met else 'NOT MET'}\n  (best gap {100 * best_gap:+.2f} points)."
    )
    return met


def main() -> None:
    """Tune each strategy's server settings, then print accuracy per strategy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    start = time.perf_counter()
    print(
        f"digits: {NUM_CLIENTS} clients, Dirichlet {ALPHA}, {PER_ITERATION} per iteration, "
        f"MLP {SIZES}, local {EPOCHS} epochs batch {BATCH} lr {LR}, {ITERATIONS} iterations\n"
    )
    chosen = tune(_grid(), TUNING_SEEDS)
    report(chosen, args.seeds)
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
