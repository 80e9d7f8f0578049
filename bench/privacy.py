"""Accuracy vs epsilon for DP-FedAvg on Synthetic(1,1) and Synthetic-IID, 1,000 clients.

Run from the repository root: ``.venv/bin/python bench/privacy.py [--seeds 0 1 2]``.

Each iteration samples 100 of the 1,000 clients (q = 0.1); each trains one local epoch of
multinomial logistic regression and sends its delta. Rows: FedAvg without DP (example-weighted),
DP-FedAvg without noise (clipped, uniform weights: the price of bounding each client's
influence), central DP at several noise multipliers z, distributed DP (each client adds its
share of the noise) and adaptive clipping (Andrew et al. 2021, target median). Epsilon is the
accountant's figure at delta 1e-5 after all iterations for the sampling each row simulates:
Poisson at q = 0.1 (the DP-FedAvg analysis) for central noise, and exactly 100 clients without
replacement for distributed noise, whose shares add up to the central noise only when the
cohort has its expected size; dp_accounting bounds fixed-size sampling for the replace-one
relation only, so its epsilon is larger at the same z. Accuracy is on the pooled
held-out 20% of every client (as FedProx reports it) and, client_acc, the mean over clients of
each one's held-out accuracy; both are medians over the seeds.

Synthetic-IID is there because Synthetic(1,1) gives every client an unrelated labelling rule
(see `federated.synthetic`): a global model scores there by fitting the largest clients, which
client-level DP is built to stop, so only the IID set shows how accuracy falls with epsilon.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np

from federated.accountant import PrivacyAccountant
from federated.adaptive_clipping import AdaptiveClipDP
from federated.model import predict
from federated.params import Params
from federated.privacy import CentralDP, DistributedDP
from federated.simulation import ClientData, FederatedTask, Uplink, float32_uplink, simulate
from federated.strategy import FedAvg, Strategy
from federated.synthetic import split_clients, synthetic_clients

NUM_CLIENTS = 1000
PER_ITERATION = 100
ITERATIONS = 30
DELTA = 1e-5
EPOCHS = 1
BATCH = 64


@dataclass(frozen=True)
class DataSet:
    """A data set, the local learning rate, and the clip norm and server step for DP rows."""

    name: str
    iid: bool
    lr: float
    clip_norm: float
    server_lr: float


DATA_SETS = (
    # Synthetic(1,1)'s feature means are large (v_k ~ N(B_k, 1)), so SGD needs a small step.
    DataSet("Synthetic(1,1)", iid=False, lr=0.05, clip_norm=1.0, server_lr=1.0),
    # DP rows weight clients uniformly, so most of the mean is one-step updates of small
    # clients; a server step of 3 makes up for it (3 beat 1 without noise).
    DataSet("Synthetic-IID", iid=True, lr=1.0, clip_norm=1.0, server_lr=3.0),
)


@dataclass(frozen=True)
class Row:
    """One table row: how the server aggregates, with which noise multiplier."""

    name: str
    kind: str  # fedavg | central | distributed | adaptive
    z: float
    sampling: Literal["poisson", "fixed"] = "poisson"


ROWS = (
    Row("FedAvg, no DP", "fedavg", 0.0),
    Row("DP-FedAvg z=0 (clip only)", "central", 0.0),
    Row("central z=1", "central", 1.0),
    Row("central z=3", "central", 3.0),
    Row("central z=10", "central", 10.0),
    Row("distributed z=3", "distributed", 3.0, sampling="fixed"),
    Row("adaptive clip z=3", "adaptive", 3.0),
)


def build(row: Row, data: DataSet) -> tuple[Strategy, Uplink]:
    """The server strategy and client uplink for one row."""
    if row.kind == "fedavg":
        return FedAvg(), float32_uplink
    server = FedAvg(server_lr=data.server_lr)
    z, c, m = row.z, data.clip_norm, PER_ITERATION
    if row.kind == "central":
        return CentralDP(
            server, noise_multiplier=z, clip_norm=c, expected_clients=m
        ), float32_uplink
    if row.kind == "distributed":
        dist = DistributedDP(server, noise_multiplier=z, clip_norm=c, expected_clients=m)
        return dist, dist.client_uplink
    # Target the median update norm, starting from the fixed rows' C (paper's eta and sigma_b).
    adaptive = AdaptiveClipDP(server, noise_multiplier=z, expected_clients=m, initial_clip_norm=c)
    return adaptive, float32_uplink


def client_accuracy(params: Params, held: list[ClientData]) -> float:
    """Mean over clients of each client's held-out accuracy."""
    return float(np.mean([np.mean(predict(params, c.x) == c.y) for c in held]))


def run(
    task: FederatedTask, held: list[ClientData], row: Row, data: DataSet, seed: int, iters: int
) -> tuple[float, float, float, float]:
    """Pooled accuracy, client accuracy, epsilon and final clip norm for one row and seed."""
    strategy, uplink = build(row, data)
    accountant = PrivacyAccountant(
        noise_multiplier=row.z,
        sampling_rate=PER_ITERATION / NUM_CLIENTS,
        target_delta=DELTA,
        sampling=row.sampling,
        population=NUM_CLIENTS,
    )

    def spend(iteration: int, params: Params) -> None:
        # The accountant reports (epsilon, delta) after every round; a budget would stop here.
        accountant.spend()

    result = simulate(
        task,
        iterations=iters,
        clients_per_iteration=PER_ITERATION,
        epochs=EPOCHS,
        batch_size=BATCH,
        lr=data.lr,
        rng=np.random.default_rng([seed, 1]),
        strategy=strategy,
        uplink=uplink,
        sampling=row.sampling,
        on_iteration=spend,
    )
    assert result.final is not None
    clip = strategy.clip_norm if isinstance(strategy, AdaptiveClipDP) else data.clip_norm
    eps = accountant.epsilon if row.kind != "fedavg" else math.inf
    return result.accuracy[-1], client_accuracy(result.final, held), eps, clip


def make_task(data: DataSet, seed: int) -> tuple[FederatedTask, list[ClientData]]:
    """The data set for one seed, with every client's held-out part kept apart too."""
    rng = np.random.default_rng([seed, 0])
    clients = synthetic_clients(1.0, 1.0, NUM_CLIENTS, rng, iid=data.iid)
    kept, held = split_clients(clients, 0.2, rng)
    x_test = np.concatenate([c.x for c in held])
    y_test = np.concatenate([c.y for c in held])
    return FederatedTask(kept, x_test, y_test, (60, 10)), held


Result = tuple[float, float, float, float]


def run_seed(data_index: int, seed: int, iters: int) -> list[Result]:
    """Every row on one data set and seed (one worker's job)."""
    # dp_accounting logs (via absl) each fractional RDP order it drops at small z; noise here.
    logging.getLogger("absl").setLevel(logging.ERROR)
    data = DATA_SETS[data_index]
    task, held = make_task(data, seed)
    return [run(task, held, row, data, seed, iters) for row in ROWS]


def main() -> None:
    """Run every row on every data set and seed; print one table per data set."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=ITERATIONS)
    parser.add_argument("--workers", type=int, default=2, help="processes (results do not depend)")
    args = parser.parse_args()
    logging.getLogger("absl").setLevel(logging.ERROR)
    start = time.perf_counter()
    q = PER_ITERATION / NUM_CLIENTS
    print(
        f"DP-FedAvg, {NUM_CLIENTS} clients, {PER_ITERATION} per iteration (q={q}), "
        f"{args.iterations} iterations, {EPOCHS} local epoch, batch {BATCH}, delta={DELTA:g}, "
        f"median of seeds {args.seeds}"
    )
    jobs = [(d, seed) for d in range(len(DATA_SETS)) for seed in args.seeds]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = {job: pool.submit(run_seed, *job, args.iterations) for job in jobs}
        done = {job: f.result() for job, f in futures.items()}
    for d, data in enumerate(DATA_SETS):
        print(
            f"\n{data.name}: local lr {data.lr}; DP rows: clip norm {data.clip_norm}, "
            f"server lr {data.server_lr}"
        )
        print(
            f"{'row':27s} {'sampling':>8s} {'z':>4s} {'C':>6s} {'eps':>8s} {'acc':>6s} "
            f"{'client_acc':>10s}"
        )
        for i, row in enumerate(ROWS):
            cols = np.median(np.array([done[(d, seed)][i] for seed in args.seeds]), axis=0)
            acc, cacc, eps, clip = (float(v) for v in cols)
            print(
                f"{row.name:27s} {row.sampling:>8s} {row.z:4.1f} {clip:6.3f} {eps:8.2f} "
                f"{acc:6.3f} {cacc:10.3f}"
            )
    print(f"\nwall {time.perf_counter() - start:.0f} s with {args.workers} worker(s)")


if __name__ == "__main__":
    main()
