"""Accuracy per robust rule with 20% Byzantine clients, beside the clean FedAvg run.

Run from the repository root: ``.venv/bin/python bench/byzantine.py [--seeds 0 1 2]``.
Setup as in ``bench/strategies.py``: digits, 100 clients with Dirichlet(0.5) label skew, 10
sampled per iteration, the MLP (64, 32, 10), local SGD of 5 epochs, batch 16, lr 0.3, 50
iterations. A fixed 20% of the population (20 clients, drawn per seed) is Byzantine, so an
iteration holds about 2 of them (hypergeometric: 3 or more in about a third of iterations).
Attacks replace a Byzantine client's honest delta by its sign flip, or by 10 times itself.

Rule settings are fixed in advance, not tuned on the attacks: the trimmed mean drops 20% per
end and multi-Krum assumes f = 2 of 10 (averaging the n - f = 8 best), both sized for the
expected Byzantine count; the norm bound is the 75th percentile of honest update norms in
clean FedAvg runs on separate seeds. Tables show medians over seeds.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

import numpy as np

from federated.params import Params, l2_norm
from federated.robust import CoordinateMedian, MultiKrum, NormBounded, TrimmedMean
from federated.simulation import Attack, FederatedTask, digits_task, simulate
from federated.strategy import FedAvg, Strategy, Update

NUM_CLIENTS = 100
PER_ITERATION = 10
ALPHA = 0.5
SIZES = (64, 32, 10)
EPOCHS, BATCH, LR = 5, 16, 0.3
ITERATIONS = 50
BYZANTINE_FRACTION = 0.2
SCALE = 10.0
TUNING_SEEDS = (100, 101, 102)
TARGET_GAP = 0.02


def sign_flip(delta: Params, rng: np.random.Generator) -> Params:
    """Send the honest delta with its sign flipped."""
    return {k: -v for k, v in delta.items()}


def scaled(delta: Params, rng: np.random.Generator) -> Params:
    """Send the honest delta scaled by 10."""
    return {k: np.float32(SCALE) * v for k, v in delta.items()}


ATTACKS: dict[str, Attack | None] = {"none": None, "sign-flip": sign_flip, "x10-scaled": scaled}


class _NormRecorder(FedAvg):
    """FedAvg that records the L2 norm of every update it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.norms: list[float] = []

    def aggregate(
        self, global_params: Params, updates: Sequence[Update], rng: np.random.Generator
    ) -> Params:
        """Record the norms, then average."""
        self.norms.extend(l2_norm(u.delta) for u in updates)
        return super().aggregate(global_params, updates, rng)


def make_task(seed: int) -> FederatedTask:
    """The federated digits task of one seed."""
    return digits_task(NUM_CLIENTS, ALPHA, np.random.default_rng([seed, 0]), sizes=SIZES)


def run(task: FederatedTask, seed: int, strategy: Strategy, attack: Attack | None) -> float:
    """Held-out accuracy after the last iteration of one run."""
    bad = np.random.default_rng([seed, 3]).choice(
        NUM_CLIENTS, size=round(BYZANTINE_FRACTION * NUM_CLIENTS), replace=False
    )
    result = simulate(
        task,
        iterations=ITERATIONS,
        clients_per_iteration=PER_ITERATION,
        epochs=EPOCHS,
        batch_size=BATCH,
        lr=LR,
        rng=np.random.default_rng([seed, 1]),
        strategy=strategy,
        byzantine=[int(c) for c in bad] if attack is not None else (),
        attack=attack,
    )
    return result.accuracy_at(ITERATIONS)


def honest_norm_bound(seeds: Sequence[int]) -> float:
    """75th percentile of honest update norms in clean FedAvg runs on `seeds`, 2 digits."""
    norms: list[float] = []
    for seed in seeds:
        recorder = _NormRecorder()
        run(make_task(seed), seed, recorder, None)
        norms.extend(recorder.norms)
    return round(float(np.quantile(norms, 0.75)), 2)


def rules(max_norm: float) -> dict[str, Callable[[], Strategy]]:
    """Fresh instances of FedAvg (the victim) and each robust rule."""
    return {
        "FedAvg (victim)": FedAvg,
        f"NormBounded(FedAvg, {max_norm})": lambda: NormBounded(FedAvg(), max_norm),
        "CoordinateMedian": CoordinateMedian,
        "TrimmedMean(beta=0.2)": lambda: TrimmedMean(0.2),
        "MultiKrum(f=2, m=n-f)": lambda: MultiKrum(2),
    }


def main() -> None:
    """Print accuracy after 50 iterations per rule and attack."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    start = time.perf_counter()
    max_norm = honest_norm_bound(TUNING_SEEDS)
    print(
        f"digits: {NUM_CLIENTS} clients, Dirichlet {ALPHA}, {PER_ITERATION} per iteration, "
        f"{BYZANTINE_FRACTION:.0%} Byzantine, MLP {SIZES}, local {EPOCHS} epochs batch {BATCH} "
        f"lr {LR}\nnorm bound {max_norm} = 75th percentile of honest update norms "
        f"(clean FedAvg, seeds {' '.join(map(str, TUNING_SEEDS))})\n"
    )
    tasks = {s: make_task(s) for s in args.seeds}
    print(
        f"Accuracy after {ITERATIONS} iterations, seeds {' '.join(map(str, args.seeds))} "
        f"(median, %; in brackets: points against clean FedAvg):"
    )
    print(f"  {'rule':<30}" + "".join(f"{name:>20}" for name in ATTACKS))
    clean = np.nan
    best = dict.fromkeys(ATTACKS, -np.inf)
    for label, make in rules(max_norm).items():
        cells = []
        for name, attack in ATTACKS.items():
            acc = float(np.median([run(tasks[s], s, make(), attack) for s in args.seeds]))
            if np.isnan(clean):
                clean = acc  # the first cell: FedAvg without attack
            if not label.startswith("FedAvg"):
                best[name] = max(best[name], acc - clean)
            cells.append(f"{100 * acc:6.2f} ({100 * (acc - clean):+6.2f})")
        print(f"  {label:<30}" + "".join(f"{c:>20}" for c in cells))
    print(f"\n  Target, a robust rule within {100 * TARGET_GAP:.0f} points of clean FedAvg:")
    for name in ATTACKS:
        if name != "none":
            met = best[name] >= -TARGET_GAP
            verdict = "MET" if met else "NOT MET"
            print(f"    {name:<11} {verdict:<8} (best robust rule {100 * best[name]:+.2f} points)")
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
