"""A small numpy MLP (ReLU hidden layers, softmax cross-entropy) with real backprop and SGD."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from federated.errors import NumericsError, ShapeError
from federated.params import Params, check_finite

__all__ = ["TrainStats", "forward_logits", "init_mlp", "loss_and_grads", "predict", "train_local"]


@dataclass(frozen=True)
class TrainStats:
    """Loss and accuracy of a model on the data it was trained on."""

    loss: float
    accuracy: float
    num_examples: int


def init_mlp(sizes: Sequence[int], rng: np.random.Generator) -> Params:
    """He-initialise an MLP with layer widths `sizes` (input first); names w0, b0, w1, b1, ..."""
    if len(sizes) < 2 or any(int(s) <= 0 for s in sizes):
        raise ShapeError(f"need at least two positive layer sizes, got {tuple(sizes)}")
    params: Params = {}
    for i, (fan_in, fan_out) in enumerate(pairwise(sizes)):
        std = np.sqrt(2.0 / fan_in)
        params[f"w{i}"] = (rng.standard_normal((fan_in, fan_out)) * std).astype(np.float32)
        params[f"b{i}"] = np.zeros(fan_out, dtype=np.float32)
    return params


def _num_layers(params: Params) -> int:
    n = len(params) // 2
    if n == 0 or list(params) != [k for i in range(n) for k in (f"w{i}", f"b{i}")]:
        raise ShapeError(f"not an MLP parameter set: {list(params)}")
    return n


def _forward(params: Params, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Return logits and the input of every layer (kept for backprop)."""
    n = _num_layers(params)
    h = np.asarray(x)
    if h.ndim != 2 or h.shape[1] != params["w0"].shape[0]:
        raise ShapeError(f"input of shape {h.shape} does not fit w0 {params['w0'].shape}")
    inputs = []
    for i in range(n):
        inputs.append(h)
        h = h @ params[f"w{i}"] + params[f"b{i}"]
        if i < n - 1:
            h = np.maximum(h, 0)
    return h, inputs


def forward_logits(params: Params, x: np.ndarray) -> np.ndarray:
    """Return the pre-softmax logits for a batch `x` of shape (n, features)."""
    return _forward(params, x)[0]


def predict(params: Params, x: np.ndarray) -> np.ndarray:
    """Return the arg-max class (int64) for every row of `x`."""
    return np.argmax(forward_logits(params, x), axis=1).astype(np.int64)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _check_labels(logits_width: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    labels = np.asarray(y)
    if labels.ndim != 1 or labels.shape[0] != np.asarray(x).shape[0] or labels.shape[0] == 0:
        raise ShapeError(f"labels of shape {labels.shape} do not fit inputs {np.shape(x)}")
    if labels.min() < 0 or labels.max() >= logits_width:
        raise NumericsError(f"labels must lie in [0, {logits_width})")
    return labels.astype(np.int64)


def loss_and_grads(params: Params, x: np.ndarray, y: np.ndarray) -> tuple[float, Params]:
    """Return mean softmax cross-entropy over the batch and its gradient for every tensor."""
    logits, inputs = _forward(params, x)
    labels = _check_labels(logits.shape[1], x, y)
    m = labels.shape[0]
    rows = np.arange(m)
    log_p = _log_softmax(logits)
    loss = float(-log_p[rows, labels].mean())
    d = np.exp(log_p)
    d[rows, labels] -= 1.0
    d /= m
    grads: Params = {}
    for i in reversed(range(len(inputs))):
        grads[f"w{i}"] = inputs[i].T @ d
        grads[f"b{i}"] = d.sum(axis=0)
        if i > 0:
            # inputs[i] is the ReLU output of layer i-1: the mask is where it is positive.
            d = (d @ params[f"w{i}"].T) * (inputs[i] > 0)
    return loss, {k: grads[k] for k in params}


def _evaluate(params: Params, x: np.ndarray, y: np.ndarray) -> TrainStats:
    logits = forward_logits(params, x)
    labels = _check_labels(logits.shape[1], x, y)
    loss = float(-_log_softmax(logits)[np.arange(labels.shape[0]), labels].mean())
    accuracy = float(np.mean(np.argmax(logits, axis=1) == labels))
    return TrainStats(loss=loss, accuracy=accuracy, num_examples=int(labels.shape[0]))


def train_local(
    params: Params,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    rng: np.random.Generator,
    prox_mu: float = 0.0,
    trainable: Params | None = None,
) -> tuple[Params, TrainStats]:
    """Run minibatch SGD from a copy of `params`; `prox_mu` > 0 adds the FedProx term.

    With `trainable` (ones and zeros shaped like `params`, e.g. `SeededMask.params`), only the
    entries under a one move: sparse training, as `federated.mask` describes. Returns the
    trained parameters and their loss/accuracy on (x, y) after training.
    """
    if epochs < 1 or batch_size < 1 or not lr > 0 or not prox_mu >= 0:
        raise NumericsError(
            f"invalid training settings: epochs={epochs} batch={batch_size} lr={lr} mu={prox_mu}"
        )
    xs = np.asarray(x, dtype=np.float32)
    ys = _check_labels(params[f"b{_num_layers(params) - 1}"].shape[0], xs, y)
    start = {k: np.array(v, dtype=np.float32) for k, v in params.items()}
    current = {k: v.copy() for k, v in start.items()}
    n = ys.shape[0]
    for _ in range(epochs):
        order = rng.permutation(n)
        for lo in range(0, n, batch_size):
            batch = order[lo : lo + batch_size]
            _, grads = loss_and_grads(current, xs[batch], ys[batch])
            for k, g in grads.items():
                if prox_mu > 0:
                    g = g + prox_mu * (current[k] - start[k])
                if trainable is not None:
                    g = g * trainable[k]
                current[k] -= np.float32(lr) * g.astype(np.float32)
    check_finite(current)
    return current, _evaluate(current, xs, ys)
