"""Centralized baseline vs FedAvg on the digits data set, for the demo's hyper-parameters.

Run from the repository root: ``.venv/bin/python bench/tune_digits.py [--seeds 0 1 2]``.
For each seed: a stratified 80/20 split, a Dirichlet(alpha) split of the training part over
the clients, the centralized baseline on all training data, and FedAvg (every client every
iteration, int8 payloads both ways) with holdout accuracy after each iteration.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

# Submodule imports work whether or not the package is installed as a regular package.
from federated.data import (
    dirichlet_partition,
    load_digits,
    train_centralized,
    train_holdout_split,
)
from federated.model import predict
from federated.params import Params
from federated.simulation import (
    ClientData,
    FederatedTask,
    float32_downlink,
    float32_uplink,
    payload_downlink,
    payload_uplink,
    simulate,
)

# The demo configuration.
SIZES = (64, 32, 10)
NUM_CLIENTS = 30
ALPHA = 0.5
HOLDOUT = 0.2
ITERATIONS = 25
EPOCHS = 5
BATCH = 16
LR = 0.3
# Centralized baseline: trained to convergence on the same data with the same model.
BASE_EPOCHS = 100
BASE_BATCH = 32
BASE_LR = 0.1


def accuracy(params: Params, x: np.ndarray, y: np.ndarray) -> float:
    """Return the fraction of rows of `x` classified as `y`."""
    return float(np.mean(predict(params, x) == y))


def run_seed(seed: int, args: argparse.Namespace) -> tuple[float, list[float], float]:
    """Return baseline accuracy, FedAvg accuracy per iteration and FedAvg wall time."""
    x, y = load_digits()
    split_rng, base_rng, fed_rng = (np.random.default_rng([seed, k]) for k in range(3))
    x_tr, y_tr, x_ho, y_ho = train_holdout_split(x, y, holdout_fraction=HOLDOUT, rng=split_rng)
    parts = dirichlet_partition(y_tr, num_clients=NUM_CLIENTS, alpha=args.alpha, rng=split_rng)
    baseline = train_centralized(
        x_tr,
        y_tr,
        sizes=SIZES,
        epochs=BASE_EPOCHS,
        batch_size=BASE_BATCH,
        lr=BASE_LR,
        rng=base_rng,
    )
    task = FederatedTask([ClientData(x_tr[i], y_tr[i]) for i in parts], x_ho, y_ho, SIZES)
    plain = args.no_quantize
    start = time.perf_counter()
    result = simulate(
        task,
        iterations=args.iterations,
        clients_per_iteration=NUM_CLIENTS,
        epochs=args.epochs,
        batch_size=args.batch,
        lr=args.lr,
        rng=fed_rng,
        uplink=float32_uplink if plain else payload_uplink(),
        downlink=float32_downlink if plain else payload_downlink(),
    )
    elapsed = time.perf_counter() - start
    return accuracy(baseline, x_ho, y_ho), result.accuracy, elapsed


def main() -> None:
    """Print baseline and per-iteration FedAvg holdout accuracy for each seed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=ITERATIONS)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--alpha", type=float, default=ALPHA)
    parser.add_argument("--no-quantize", action="store_true", help="send float32 in memory")
    args = parser.parse_args()
    print(
        f"sizes={SIZES} clients={NUM_CLIENTS} alpha={args.alpha} holdout={HOLDOUT} "
        f"iterations={args.iterations} epochs={args.epochs} batch={args.batch} lr={args.lr} "
        f"int8={not args.no_quantize}; baseline epochs={BASE_EPOCHS} batch={BASE_BATCH} "
        f"lr={BASE_LR}"
    )
    for seed in args.seeds:
        base, curve, elapsed = run_seed(seed, args)
        outside = [i + 1 for i, acc in enumerate(curve) if acc < base - 0.02]
        first = next((i + 1 for i, acc in enumerate(curve) if acc >= base - 0.02), None)
        stays = (outside[-1] + 1 if outside else 1) if curve[-1] >= base - 0.02 else None
        print(
            f"seed {seed}: baseline {base:.4f}  fedavg final {curve[-1]:.4f}  "
            f"gap {100 * (base - curve[-1]):+.1f} pts  within 2 pts first at {first}, "
            f"from {stays} on  fedavg time {elapsed:.2f}s"
        )
        print("  per iteration: " + " ".join(f"{acc:.3f}" for acc in curve))


if __name__ == "__main__":
    main()
