"""The digits data set, stratified and Dirichlet non-IID splits, and in-memory baselines."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from federated.aggregate import FedAvgAccumulator
from federated.errors import NumericsError, ShapeError
from federated.model import init_mlp, train_local
from federated.params import Params, flatten, spec_of, sub, unflatten
from federated.payload import apply_payload, make_payload, read_payload

__all__ = [
    "dirichlet_partition",
    "load_digits",
    "simulate_fedavg",
    "train_centralized",
    "train_holdout_split",
]

_MAX_PARTITION_ATTEMPTS = 1000


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Return sklearn's bundled 8x8 digits: x float32 (1797, 64) in [0, 1], y int64."""
    from sklearn.datasets import load_digits as _sk_load_digits  # heavy import, only here

    x, y = _sk_load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y.astype(np.int64)


def train_holdout_split(
    x: np.ndarray, y: np.ndarray, *, holdout_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split stratified by label; return (x_train, y_train, x_holdout, y_holdout), shuffled."""
    if not 0.0 < holdout_fraction < 1.0:
        raise NumericsError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    if len(x) != len(y):
        raise ShapeError(f"x has {len(x)} rows but y has {len(y)}")
    train_idx: list[np.ndarray] = []
    hold_idx: list[np.ndarray] = []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        cut = round(holdout_fraction * idx.size)
        hold_idx.append(idx[:cut])
        train_idx.append(idx[cut:])
    tr = rng.permutation(np.concatenate(train_idx))
    ho = rng.permutation(np.concatenate(hold_idx))
    return x[tr], y[tr], x[ho], y[ho]


def dirichlet_partition(
    y: np.ndarray,
    *,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 10,
) -> list[np.ndarray]:
    """Split example indices over clients with Dirichlet(alpha) label skew per class.

    Resamples until every client holds at least `min_size` examples; the result depends only
    on the inputs and the state of `rng`.
    """
    labels = np.asarray(y)
    if num_clients < 1 or not alpha > 0 or min_size < 0:
        raise NumericsError(f"invalid partition: clients={num_clients} alpha={alpha}")
    if num_clients * min_size > labels.size:
        raise NumericsError(f"{labels.size} examples cannot give {num_clients} x {min_size}")
    for _ in range(_MAX_PARTITION_ATTEMPTS):
        shares: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for label in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == label))
            proportions = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(proportions)[:-1] * idx.size).astype(np.int64)
            for client, part in enumerate(np.split(idx, cuts)):
                shares[client].append(part)
        parts = [np.sort(np.concatenate(s)).astype(np.int64) for s in shares]
        if min(p.size for p in parts) >= min_size:
            return parts
    raise NumericsError(f"no partition with min_size={min_size} in {_MAX_PARTITION_ATTEMPTS} tries")


def train_centralized(
    x: np.ndarray,
    y: np.ndarray,
    *,
    sizes: Sequence[int],
    epochs: int,
    batch_size: int,
    lr: float,
    rng: np.random.Generator,
) -> Params:
    """Train the centralized baseline: the same MLP on all data with minibatch SGD."""
    params = init_mlp(sizes, rng)
    trained, _ = train_local(params, x, y, epochs=epochs, batch_size=batch_size, lr=lr, rng=rng)
    return trained


def simulate_fedavg(
    x: np.ndarray,
    y: np.ndarray,
    partitions: Sequence[np.ndarray],
    *,
    sizes: Sequence[int],
    iterations: int,
    clients_per_iteration: int,
    epochs: int,
    batch_size: int,
    lr: float,
    rng: np.random.Generator,
    quantize: bool = True,
) -> list[Params]:
    """Run FedAvg in memory and return the global model after each iteration.

    With `quantize`, models travel as int8 payloads both ways, exactly as on the wire: the
    server sends the global model as a delta against what the device holds (the full model
    the first time) and the device returns its update as a delta against its start model.
    """
    if not 1 <= clients_per_iteration <= len(partitions):
        raise NumericsError(f"cannot pick {clients_per_iteration} of {len(partitions)} clients")
    global_model = init_mlp(sizes, rng)
    spec = spec_of(global_model)
    held: dict[int, Params] = {}  # what each device holds, as the server knows it
    history: list[Params] = []
    for _ in range(iterations):
        acc = FedAvgAccumulator()
        chosen = rng.choice(len(partitions), size=clients_per_iteration, replace=False)
        for client in (int(c) for c in chosen):
            idx = partitions[client]
            if quantize:
                blob, start = make_payload(global_model, held.get(client), rng=rng)
                # The device side: decode and rebuild; must equal `start` bit for bit.
                start = apply_payload(read_payload(blob), held.get(client), expected_spec=spec)
                held[client] = start
            else:
                start = global_model
            trained, _ = train_local(
                start, x[idx], y[idx], epochs=epochs, batch_size=batch_size, lr=lr, rng=rng
            )
            if quantize:
                update = read_payload(make_payload(trained, start, rng=rng)[0])
                apply_payload(update, start, expected_spec=spec)  # the server's checks
                delta = update.delta
            else:
                delta = sub(trained, start)
            acc.add(flatten(delta), int(idx.size))
        global_model = unflatten(flatten(global_model) + acc.mean(), spec)
        history.append(global_model)
    return history
