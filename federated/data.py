"""The digits data set, stratified and Dirichlet non-IID splits, and the centralized baseline."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from federated.errors import NumericsError, ShapeError
from federated.model import init_mlp, train_local
from federated.params import Params

__all__ = [
    "dirichlet_partition",
    "fleet_partition",
    "load_digits",
    "train_centralized",
    "train_holdout_split",
]

_MAX_PARTITION_ATTEMPTS = 1000


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Return sklearn's bundled 8x8 digits: x float32 (1797, 64) in [0, 1], y int64.

    Read from the CSV that scikit-learn ships, without importing scikit-learn: that import
    (scipy with it) costs a process about 60 MB, and the validator and every fleet process
    only need the 1797 rows.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the digits data comes with scikit-learn: pip install 'fedsaga[sim]'")
    package = Path(next(iter(spec.submodule_search_locations)))
    data = np.loadtxt(package / "datasets" / "data" / "digits.csv.gz", delimiter=",")
    x, y = data[:, :-1], data[:, -1]
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


def fleet_partition(
    y: np.ndarray,
    *,
    devices: int,
    alpha: float,
    rng: np.random.Generator,
    examples_per_part: int = 36,
    min_size: int = 5,
) -> list[np.ndarray]:
    """Each of `devices` devices' example indices, for a fleet of any size.

    While the data allows `examples_per_part` examples per device, every device gets its own
    Dirichlet(alpha) part (at least 10 examples, as `dirichlet_partition`). A larger fleet (or
    one too skewed for that) shares `len(y) // examples_per_part` parts (fewer if alpha is too
    small for them) of at least `min_size` examples: device i
    holds part i mod that count, in its own shuffled order, so neighbours differ in what they
    see first in each epoch while the fleet's label skew is that of the parts.
    """
    labels = np.asarray(y)
    if devices < 1:
        raise NumericsError(f"a fleet needs at least one device, got {devices}")
    if devices * examples_per_part <= labels.size:
        with contextlib.suppress(NumericsError):  # too skewed for 10 each: share parts
            return dirichlet_partition(labels, num_clients=devices, alpha=alpha, rng=rng)
    count = min(devices, max(1, labels.size // examples_per_part))
    while True:
        try:
            parts = dirichlet_partition(
                labels, num_clients=count, alpha=alpha, rng=rng, min_size=min(min_size, labels.size)
            )
            break
        except NumericsError:
            if count == 1:
                raise
            count = max(1, count // 2)  # a very small alpha: fewer, larger parts
    return [rng.permutation(parts[i % count]) for i in range(devices)]


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
