"""Multi-Krum (Blanchard et al. 2017; El Mhamdi et al. 2018): average the most central updates.

Each update's score is the sum of squared L2 distances to its n - f - 2 nearest other updates,
where f is the number of Byzantine updates the rule is sized for; the m lowest-scoring updates
are averaged (m = 1 is Krum, m = n - f the default). An update far from the honest cluster gets
a high score because, with n > 2f + 2, at least n - 2f - 1 >= 2 of its neighbours are honest.
"""

from __future__ import annotations

import hashlib

import numpy as np

from federated._robust import DEFAULT_MAX_UPDATES, RobustRule
from federated.errors import NumericsError

__all__ = ["MultiKrum", "krum_scores", "multi_krum_select"]


def krum_scores(deltas: np.ndarray, num_byzantine: int) -> np.ndarray:
    """Krum score of each row of `deltas`: summed squared distance to its n - f - 2 nearest."""
    x = np.asarray(deltas, dtype=np.float64)
    n = x.shape[0]
    nearest = n - num_byzantine - 2
    if num_byzantine < 0 or nearest < 1:
        raise NumericsError(f"Krum needs n > f + 2 updates, got n={n} f={num_byzantine}")
    dist = np.empty((n, n))
    # Row by row keeps the memory O(n * d) and makes dist exactly symmetric.
    for i in range(n):
        dist[i] = np.square(x - x[i]).sum(axis=1)
    np.fill_diagonal(dist, np.inf)
    return np.sort(dist, axis=1)[:, :nearest].sum(axis=1)


def _content_keys(deltas: np.ndarray) -> np.ndarray:
    """A 64-bit digest of each row, so ties break on content rather than arrival order."""
    rows = np.ascontiguousarray(deltas, dtype="<f4")
    return np.array(
        [int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8).digest()) for r in rows],
        dtype=np.uint64,
    )


def multi_krum_select(
    deltas: np.ndarray,
    num_byzantine: int,
    num_selected: int,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Indices of the `num_selected` rows with the lowest Krum scores, best first.

    Equal scores are ordered by weight, then by a digest of the row, so the selected set is a
    function of the multiset of (row, weight) pairs whatever order the updates arrived in.
    """
    n = np.shape(deltas)[0]
    if not 1 <= num_selected <= n:
        raise NumericsError(f"cannot select {num_selected} of {n} updates")
    scores = krum_scores(deltas, num_byzantine)
    w = np.zeros(n) if weights is None else np.asarray(weights, dtype=np.float64)
    return np.lexsort((_content_keys(deltas), w, scores))[:num_selected]


class MultiKrum(RobustRule):
    """Average of the m most central updates; memory O(max_updates * model).

    Selection counts updates, never examples, so a client cannot buy its way in by claiming a
    large `num_examples`. With `weighted` (the default) the selected updates are averaged by
    example count, as FedAvg would; they passed selection, so a lie only reweights
    updates that are already close to the honest ones.

    Args:
        num_byzantine: f, the Byzantine updates per iteration the rule tolerates (n > 2f + 2).
        num_selected: m; None means n - f for the n updates of each iteration.
    """

    def __init__(
        self,
        num_byzantine: int,
        num_selected: int | None = None,
        *,
        weighted: bool = True,
        max_updates: int = DEFAULT_MAX_UPDATES,
        server_lr: float = 1.0,
    ) -> None:
        super().__init__(max_updates=max_updates, server_lr=server_lr)
        if num_byzantine < 0:
            raise NumericsError(f"num_byzantine must be >= 0, got {num_byzantine}")
        self.num_byzantine = num_byzantine
        self.num_selected = num_selected
        self.weighted = weighted

    def combine(self, deltas: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Mean of the selected rows, example-weighted if `weighted`."""
        n = deltas.shape[0]
        m = n - self.num_byzantine if self.num_selected is None else self.num_selected
        chosen = multi_krum_select(deltas, self.num_byzantine, m, weights)
        # Summing in a content order, not arrival order, makes the mean exactly order-free.
        chosen = chosen[np.lexsort((_content_keys(deltas[chosen]), weights[chosen]))]
        w = weights[chosen] if self.weighted else np.ones(chosen.size)
        return (w @ deltas[chosen].astype(np.float64)) / w.sum()
