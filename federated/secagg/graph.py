"""The SecAgg+ neighbour graph (Bell et al. 2020) and the choice of its degree k and threshold t.

Each client pairs masks with only its k neighbours in a Harary graph H(k, n) laid over a random
permutation of the clients: a ring where each client links to the k/2 nearest positions on
either side (plus the opposite position when k is odd and n even). It shares its secrets to its
neighbours and keeps one share itself: k + 1 holders, as Bonawitz et al. 2017 share to all of
U1 including the owner. k = n - 1 is the complete graph of that original protocol.

`choose_params` picks the smallest k = O(log n) and a threshold t > (k + 1)/2 for a tolerated
dropout rate d and corrupt fraction c, by union bounds with independent per-client events (a
simpler stand-in for Bell et al.'s analysis, not a reproduction of it); the owner's own share is
ignored, as a dropped client cannot use it:

* correctness, failure <= 2^-eta: n * P[Bin(k, 1 - d) < t] (someone keeps fewer than t
  surviving neighbours, so a needed secret cannot be rebuilt);
* privacy, failure <= 2^-sigma: n * P[Bin(k, c) >= t] (corrupt neighbours alone hold t shares),
  and n^2 * (d + c)^k / 2 (two runs of k/2 dropped or corrupt positions cut the ring, and the
  server would learn the sum of a part);
* t > (k + 1)/2, so a server lying about who dropped cannot collect both the self-mask seed and
  the mask key of one client from its honest holders.
"""

from __future__ import annotations

import math

import numpy as np

from federated.errors import NumericsError

__all__ = ["Neighbours", "choose_params", "complete_graph", "harary_graph"]

#: neighbours[i] is the set of clients that client i pairs masks with and shares to
Neighbours = tuple[frozenset[int], ...]


def complete_graph(num_clients: int) -> Neighbours:
    """Return the graph where every client neighbours every other (full-graph SecAgg)."""
    everyone = frozenset(range(num_clients))
    return tuple(everyone - {i} for i in range(num_clients))


def harary_graph(num_clients: int, degree: int, rng: np.random.Generator) -> Neighbours:
    """Return a random Harary graph: k-regular and symmetric, over a permutation from `rng`."""
    n, k = num_clients, degree
    if n < 2:
        raise NumericsError(f"need at least 2 clients, got {n}")
    if not 1 <= k <= n - 1:
        raise NumericsError(f"degree must be in [1, {n - 1}], got {k}")
    if k == n - 1:
        return complete_graph(n)
    if k % 2 == 1 and n % 2 == 1:
        raise NumericsError(f"no {k}-regular graph on {n} clients: k * n must be even")
    order = rng.permutation(n)
    links: list[set[int]] = [set() for _ in range(n)]
    offsets = list(range(1, k // 2 + 1)) + ([n // 2] if k % 2 else [])
    for pos in range(n):
        for off in offsets:
            a, b = int(order[pos]), int(order[(pos + off) % n])
            links[a].add(b)
            links[b].add(a)
    return tuple(frozenset(s) for s in links)


def _log_binom_pmf(k: int, i: int, p: float) -> float:
    if p <= 0.0:
        return 0.0 if i == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if i == k else -math.inf
    log_comb = math.lgamma(k + 1) - math.lgamma(i + 1) - math.lgamma(k - i + 1)
    return log_comb + i * math.log(p) + (k - i) * math.log1p(-p)


def _pmf(k: int, p: float) -> list[float]:
    return [math.exp(_log_binom_pmf(k, i, p)) for i in range(k + 1)]


def choose_params(
    num_clients: int,
    *,
    dropout: float,
    corrupt: float = 0.0,
    sigma: int = 40,
    eta: int = 30,
) -> tuple[int, int]:
    """Return (degree k, threshold t) for SecAgg+; the complete graph if no smaller k will do.

    Args:
        dropout: fraction of clients expected to drop after sharing keys.
        corrupt: fraction of clients assumed to collude with the server.
        sigma: privacy failure at most 2^-sigma.
        eta: correctness failure at most 2^-eta.
    """
    n = num_clients
    if n < 3:
        raise NumericsError(f"need at least 3 clients, got {n}")
    if not (0.0 <= dropout < 1.0 and 0.0 <= corrupt < 1.0 and dropout + corrupt < 1.0):
        raise NumericsError(f"need 0 <= dropout, corrupt and their sum < 1: {dropout}, {corrupt}")
    privacy_budget, correct_budget = 2.0**-sigma / n, 2.0**-eta / n
    bad = dropout + corrupt
    for k in range(4, n - 1, 2):
        if bad > 0 and 2 * math.log(n) + k * math.log(bad) - math.log(2) > -sigma * math.log(2):
            continue
        alive, corrupted = _pmf(k, 1.0 - dropout), _pmf(k, corrupt)
        for t in range((k + 1) // 2 + 1, k + 1):
            if sum(corrupted[t:]) > privacy_budget:
                continue
            if sum(alive[:t]) <= correct_budget:
                return k, t
            break  # a larger t only makes correctness worse
    return n - 1, n // 2 + 1
