"""Robust server rules: norm bounding, coordinate-wise median, trimmed mean, multi-Krum.

`NormBounded` wraps any strategy and streams (memory O(model) when the inner rule does). The
others need every update at once (`needs_all_updates`): memory O(max_updates * model), and more
than `max_updates` updates raise NumericsError.

Weights: the median and the trimmed mean count updates by default, because their robustness is
a statement about how many inputs an adversary controls, and `num_examples` is self-reported; a
client claiming a huge count would otherwise move the median alone. `weighted=True` gives the
example-weighted versions, robust while the adversaries' share of the examples (rather than of
the updates) stays below one half, resp. beta. Multi-Krum lives in `federated.krum`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

import numpy as np

from federated._robust import DEFAULT_MAX_UPDATES, RobustRule, stack_updates
from federated.errors import NumericsError
from federated.krum import MultiKrum, krum_scores, multi_krum_select
from federated.params import Params, clip_update
from federated.strategy import Strategy, Update

__all__ = [
    "CoordinateMedian",
    "MultiKrum",
    "NormBounded",
    "RobustRule",
    "TrimmedMean",
    "krum_scores",
    "multi_krum_select",
    "stack_updates",
    "trimmed_mean",
    "weighted_median",
]


class _Clipped(Sequence[Update]):
    """A lazy view that clips each update as it is read, so nothing is copied up front."""

    def __init__(self, updates: Sequence[Update], max_norm: float) -> None:
        self._updates = updates
        self._max_norm = max_norm

    def __len__(self) -> int:
        return len(self._updates)

    def _clip(self, u: Update) -> Update:
        clipped, _ = clip_update(u.delta, self._max_norm)
        return Update(clipped, u.num_examples, u.client_id)

    @overload
    def __getitem__(self, index: int) -> Update: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Update]: ...

    def __getitem__(self, index: int | slice) -> Update | Sequence[Update]:
        if isinstance(index, slice):
            return _Clipped(self._updates[index], self._max_norm)
        return self._clip(self._updates[index])

    def __iter__(self) -> Iterator[Update]:
        return (self._clip(u) for u in self._updates)


class NormBounded(Strategy):
    """Clip every update to L2 norm `max_norm`, then delegate (Sun et al. 2019, norm bounding).

    Bounds what any one client can move the model by; it does not stop many small malicious
    updates (sign flips of honest size pass unchanged). Streaming: updates are clipped as the
    inner strategy reads them, so memory is whatever the inner strategy needs.
    """

    def __init__(self, strategy: Strategy, max_norm: float) -> None:
        if not max_norm > 0:
            raise NumericsError(f"max_norm must be positive, got {max_norm}")
        self.strategy = strategy
        self.max_norm = max_norm
        self.needs_all_updates = strategy.needs_all_updates
        self.max_updates: int | None = getattr(strategy, "max_updates", None)

    def aggregate(
        self, global_params: Params, updates: Sequence[Update], rng: np.random.Generator
    ) -> Params:
        """The inner strategy's step on the clipped updates."""
        return self.strategy.aggregate(global_params, _Clipped(updates, self.max_norm), rng)


def _check_rows(deltas: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(deltas)
    w = np.asarray(weights, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or w.shape != (x.shape[0],):
        raise NumericsError(f"need (n, d) deltas with n weights, got {x.shape} and {w.shape}")
    if not np.all(w > 0):
        raise NumericsError("weights must be positive")
    return x, w


def weighted_median(deltas: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Coordinate-wise weighted median of the rows (float64); equal weights give np.median.

    Where the cumulative weight hits exactly half, the median is the midpoint of the two
    neighbouring values, as `np.median` does for an even count.
    """
    x, w = _check_rows(deltas, weights)
    order = np.argsort(x, axis=0, kind="stable")
    xs = np.take_along_axis(x, order, axis=0).astype(np.float64)
    cum = np.cumsum(w[order], axis=0)
    total = cum[-1]
    lo = np.argmax(2.0 * cum >= total, axis=0)
    hi = np.argmax(2.0 * cum > total, axis=0)
    cols = np.arange(x.shape[1])
    return 0.5 * (xs[lo, cols] + xs[hi, cols])


def trimmed_mean(deltas: np.ndarray, weights: np.ndarray | None, beta: float) -> np.ndarray:
    """Coordinate-wise mean after dropping a `beta` fraction from each end (float64).

    Unweighted (`weights` None): drop floor(beta * n) rows per end in every coordinate.
    Weighted: drop beta of the total weight from each end, splitting a straddling row's weight.
    """
    if not 0.0 <= beta < 0.5:
        raise NumericsError(f"beta must be in [0, 0.5), got {beta}")
    n = np.shape(deltas)[0]
    x, w = _check_rows(deltas, np.ones(n) if weights is None else weights)
    if weights is None:
        cut = int(np.floor(beta * n + 1e-9))  # 1e-9 absorbs products like 0.29 * 100
        if n - 2 * cut < 1:
            raise NumericsError(f"trimming {cut} of {n} from each end leaves nothing")
        xs = np.sort(x, axis=0)
        return xs[cut : n - cut].astype(np.float64).mean(axis=0)
    order = np.argsort(x, axis=0, kind="stable")
    xs = np.take_along_axis(x, order, axis=0).astype(np.float64)
    ws = w[order]
    upper = np.cumsum(ws, axis=0)
    total = upper[-1]
    kept = np.minimum(upper, (1.0 - beta) * total) - np.maximum(upper - ws, beta * total)
    kept = np.clip(kept, 0.0, None)
    return (kept * xs).sum(axis=0) / kept.sum(axis=0)


class CoordinateMedian(RobustRule):
    """Coordinate-wise median of the deltas (Yin et al. 2018); memory O(max_updates * model)."""

    def __init__(
        self,
        *,
        weighted: bool = False,
        max_updates: int = DEFAULT_MAX_UPDATES,
        server_lr: float = 1.0,
    ) -> None:
        super().__init__(max_updates=max_updates, server_lr=server_lr)
        self.weighted = weighted

    def combine(self, deltas: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Median per coordinate, example-weighted if `weighted`."""
        if self.weighted:
            return weighted_median(deltas, weights)
        return np.median(deltas.astype(np.float64), axis=0)


class TrimmedMean(RobustRule):
    """Coordinate-wise beta-trimmed mean (Yin et al. 2018); memory O(max_updates * model)."""

    def __init__(
        self,
        beta: float = 0.1,
        *,
        weighted: bool = False,
        max_updates: int = DEFAULT_MAX_UPDATES,
        server_lr: float = 1.0,
    ) -> None:
        super().__init__(max_updates=max_updates, server_lr=server_lr)
        if not 0.0 <= beta < 0.5:
            raise NumericsError(f"beta must be in [0, 0.5), got {beta}")
        self.beta = beta
        self.weighted = weighted

    def combine(self, deltas: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Trimmed mean per coordinate, example-weighted if `weighted`."""
        return trimmed_mean(deltas, weights if self.weighted else None, self.beta)
