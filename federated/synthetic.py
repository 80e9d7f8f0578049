"""The Synthetic(alpha, beta) federated data set of FedProx (Li et al. 2020), generated locally.

Follows the paper and its reference generator (litian96/FedProx,
``data/synthetic_1_1/generate_synthetic.py``). For client k:

- u_k ~ N(0, alpha) and W_k ~ N(u_k, 1) (60 x 10), b_k ~ N(u_k, 1) (10): the client's model;
- B_k ~ N(0, beta), v_k ~ N(B_k, 1) (60): the mean of its features;
- x ~ N(v_k, Sigma) with Sigma diagonal, Sigma_jj = j^-1.2; y = argmax softmax(W_k^T x + b_k);
- its size is lognormal(4, 2) rounded down, plus 50 (a power-law spread of client sizes).

As in the reference, the second argument of N(0, alpha) and N(0, beta) is used as the standard
deviation (the paper writes it as a variance; the two agree for the usual 0 and 1).

A property of the construction worth knowing: u_k is added to every entry of W_k and b_k, so it
shifts every class's logit by the same u_k (1 + sum x) and cancels in the arg-max. The labels,
and hence the whole data set, do not depend on alpha; only beta (feature skew) and the
per-client noise in W_k, b_k make clients differ. We keep the published construction and draw
W_k as u_k plus standard normal noise, so for one seed the data are the same for every alpha.
So the clients' labelling rules are unrelated, and what a single global model scores on the
pooled test set comes mostly from the few largest clients. Synthetic-IID (`iid=True`, the
reference's ``generate_iid.py``) shares one W, b and x ~ N(0, Sigma) across clients: there a
global model exists.
"""

from __future__ import annotations

import numpy as np

from federated.errors import NumericsError
from federated.simulation import ClientData, FederatedTask

__all__ = ["split_clients", "synthetic_clients", "synthetic_task"]

DIMENSION = 60
NUM_CLASSES = 10


def _client_sizes(num_clients: int, rng: np.random.Generator) -> np.ndarray:
    """Lognormal(4, 2) examples rounded down plus 50, as the reference draws them."""
    return rng.lognormal(4.0, 2.0, num_clients).astype(np.int64) + 50


def synthetic_clients(
    alpha: float,
    beta: float,
    num_clients: int,
    rng: np.random.Generator,
    *,
    dimension: int = DIMENSION,
    num_classes: int = NUM_CLASSES,
    max_size: int | None = None,
    iid: bool = False,
) -> list[ClientData]:
    """Draw every client's full local data set (before any train/test split).

    Args:
        alpha: spread of the client models' means u_k (see the module docstring).
        beta: spread of the client feature means' centres B_k.
        num_clients: how many clients to generate.
        rng: the only source of randomness; one seed gives one data set.
        dimension: feature width (60 in the paper).
        num_classes: number of labels (10 in the paper).
        max_size: optional cap on a client's example count (the lognormal tail is heavy);
            None keeps the reference's sizes.
        iid: Synthetic-IID instead: one shared W, b and zero feature means (alpha, beta unused).
    """
    if num_clients < 1 or dimension < 1 or num_classes < 2:
        raise NumericsError(
            f"invalid synthetic shape: clients={num_clients} dim={dimension} classes={num_classes}"
        )
    if not (alpha >= 0 and beta >= 0):
        raise NumericsError(f"alpha and beta must be non-negative, got {alpha}, {beta}")
    if max_size is not None and max_size < 1:
        raise NumericsError(f"max_size must be positive, got {max_size}")
    sizes = _client_sizes(num_clients, rng)
    if max_size is not None:
        sizes = np.minimum(sizes, max_size)
    feature_std = np.arange(1, dimension + 1, dtype=np.float64) ** -0.6  # sqrt of j^-1.2
    if iid:
        u = np.zeros(num_clients)
        means = np.zeros((num_clients, dimension))
        shared = (rng.standard_normal((dimension, num_classes)), rng.standard_normal(num_classes))
    else:
        u = rng.normal(0.0, alpha, num_clients)
        centres = rng.normal(0.0, beta, num_clients)
        means = centres[:, None] + rng.standard_normal((num_clients, dimension))
    clients: list[ClientData] = []
    for k in range(num_clients):
        if iid:
            w, b = shared
        else:
            w = u[k] + rng.standard_normal((dimension, num_classes))
            b = u[k] + rng.standard_normal(num_classes)
        x = means[k] + rng.standard_normal((int(sizes[k]), dimension)) * feature_std
        # softmax is monotone, so the arg-max of the logits is the reference's label.
        y = np.argmax(x @ w + b, axis=1).astype(np.int64)
        clients.append(ClientData(x.astype(np.float32), y))
    return clients


def split_clients(
    clients: list[ClientData], holdout_fraction: float, rng: np.random.Generator
) -> tuple[list[ClientData], list[ClientData]]:
    """Hold out a random `holdout_fraction` of every client: (kept, held out), client by client."""
    if not 0.0 < holdout_fraction < 1.0:
        raise NumericsError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    kept: list[ClientData] = []
    held: list[ClientData] = []
    for data in clients:
        order = rng.permutation(data.y.size)
        # Every client keeps at least one example, even under a tiny max_size.
        cut = min(round(holdout_fraction * data.y.size), data.y.size - 1)
        held.append(ClientData(data.x[order[:cut]], data.y[order[:cut]]))
        kept.append(ClientData(data.x[order[cut:]], data.y[order[cut:]]))
    return kept, held


def synthetic_task(
    alpha: float,
    beta: float,
    num_clients: int,
    rng: np.random.Generator,
    *,
    holdout_fraction: float = 0.2,
    max_size: int | None = None,
    iid: bool = False,
) -> FederatedTask:
    """Synthetic(alpha, beta) as a task: each client keeps 80%, the held-out 20%s pooled.

    The model is multinomial logistic regression, sizes (60, 10), as in the FedProx paper.
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise NumericsError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    full = synthetic_clients(alpha, beta, num_clients, rng, max_size=max_size, iid=iid)
    kept, held = split_clients(full, holdout_fraction, rng)
    x_test = np.concatenate([c.x for c in held])
    y_test = np.concatenate([c.y for c in held])
    return FederatedTask(kept, x_test, y_test, (DIMENSION, NUM_CLASSES))
