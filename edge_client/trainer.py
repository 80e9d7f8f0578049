"""The device's local trainer: plain functions over the device's arrays (run in a thread)."""

from __future__ import annotations

import numpy as np

from federated.model import TrainStats, predict, train_local
from federated.params import Params
from federated.payload import make_payload


def train_update(
    params: Params,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    corrupt: bool = False,
) -> tuple[bytes, TrainStats]:
    """Train locally from `params`; return the update payload (delta vs `params`) and stats.

    `corrupt` (simulation only) replaces the trained weights with finite noise, the kind of
    update that makes a candidate fail validation.
    """
    rng = np.random.default_rng(seed)
    trained, stats = train_local(params, x, y, epochs=epochs, batch_size=batch_size, lr=lr, rng=rng)
    if corrupt:
        trained = {k: rng.normal(0.0, 1.0, v.shape).astype(np.float32) for k, v in trained.items()}
    blob, _ = make_payload(trained, params, rng=rng)
    return blob, stats


def evaluate(params: Params, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of `params` on the device's own data (canary health)."""
    return float(np.mean(predict(params, x) == y)) if len(y) else 0.0
