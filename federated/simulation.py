"""In-memory federated simulation on the numerics alone: the harness benchmarks run on.

Each iteration samples clients, sends them the global model through `downlink` (what the device
rebuilds, and the bytes it cost), trains locally, passes the delta through `uplink` (device-side
compression, clipping, noise: what the server decodes, and the bytes), optionally lets Byzantine
clients replace theirs, and hands the updates to the strategy. With a `mask` the model is
trained sparse: the initial model is masked (a fresh one also rescaled, `SeededMask.rescaled`),
devices move only the entries under it, and the server masks each new global model. No I/O, no
asyncio.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from federated.data import dirichlet_partition, load_digits, train_holdout_split
from federated.errors import NumericsError
from federated.mask import SeededMask
from federated.metrics import classification_metrics
from federated.model import init_mlp, predict, train_local
from federated.params import Params, flatten, spec_of, sub
from federated.payload import apply_payload, make_payload, read_payload
from federated.strategy import FedAvg, Strategy, Update

#: device side, per update: (delta, rng) -> (delta the server decodes, bytes sent)
Uplink = Callable[[Params, np.random.Generator], tuple[Params, int]]
#: server -> device: (new global, what the device held or None, rng) -> (what it now holds, bytes)
Downlink = Callable[[Params, Params | None, np.random.Generator], tuple[Params, int]]
#: a Byzantine client's replacement for its honest delta
Attack = Callable[[Params, np.random.Generator], Params]


def float32_uplink(delta: Params, rng: np.random.Generator) -> tuple[Params, int]:
    """No compression: 4 bytes a parameter."""
    return delta, int(flatten(delta).size * 4)


def float32_downlink(
    target: Params, held: Params | None, rng: np.random.Generator
) -> tuple[Params, int]:
    """No compression: the device gets the exact global model."""
    return target, int(flatten(target).size * 4)


def payload_downlink(**codec: Any) -> Downlink:
    """Send the global model as a real payload (a delta against what the device holds)."""

    def downlink(
        target: Params, held: Params | None, rng: np.random.Generator
    ) -> tuple[Params, int]:
        blob, _ = make_payload(target, held, rng=rng, **codec)
        # The device side: decode, rebuild and verify, exactly as on the wire.
        return apply_payload(read_payload(blob), held), len(blob)

    return downlink


def payload_uplink(**codec: Any) -> Uplink:
    """Send each update as a real payload; the server gets what it decodes."""

    def uplink(delta: Params, rng: np.random.Generator) -> tuple[Params, int]:
        blob, _ = make_payload(delta, None, rng=rng, **codec)
        return read_payload(blob).delta, len(blob)

    return uplink


@dataclass(frozen=True)
class ClientData:
    """One client's local examples (they never leave it in the real system)."""

    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class FederatedTask:
    """Clients' data, a held-out test set and the model architecture."""

    clients: list[ClientData]
    x_test: np.ndarray
    y_test: np.ndarray
    sizes: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        """Width of the output layer."""
        return self.sizes[-1]


def digits_task(
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    *,
    sizes: tuple[int, ...] = (64, 32, 10),
    holdout_fraction: float = 0.2,
    min_size: int = 5,
) -> FederatedTask:
    """sklearn's digits, 20% held out, the rest split non-IID with Dirichlet(alpha)."""
    x, y = load_digits()
    x_tr, y_tr, x_te, y_te = train_holdout_split(x, y, holdout_fraction=holdout_fraction, rng=rng)
    parts = dirichlet_partition(
        y_tr, num_clients=num_clients, alpha=alpha, rng=rng, min_size=min_size
    )
    return FederatedTask([ClientData(x_tr[i], y_tr[i]) for i in parts], x_te, y_te, sizes)


@dataclass
class SimulationResult:
    """Accuracy after each iteration, and bytes per client per iteration each way."""

    accuracy: list[float] = field(default_factory=list)
    bytes_up: list[float] = field(default_factory=list)
    bytes_down: list[float] = field(default_factory=list)
    final: Params | None = None

    def accuracy_at(self, iteration: int) -> float:
        """Accuracy after `iteration` iterations (1-based)."""
        return self.accuracy[iteration - 1]

    def mean_bytes(self) -> tuple[float, float]:
        """Mean (down, up) bytes per client per iteration."""
        return float(np.mean(self.bytes_down)), float(np.mean(self.bytes_up))


def evaluate(params: Params, task: FederatedTask) -> float:
    """Test accuracy."""
    pred = predict(params, task.x_test)
    return classification_metrics(task.y_test, pred, task.num_classes).accuracy


def simulate(
    task: FederatedTask,
    *,
    iterations: int,
    clients_per_iteration: int,
    epochs: int,
    batch_size: int,
    lr: float,
    rng: np.random.Generator,
    strategy: Strategy | None = None,
    uplink: Uplink = float32_uplink,
    downlink: Downlink = float32_downlink,
    byzantine: Sequence[int] = (),
    attack: Attack | None = None,
    prox_mu: float = 0.0,
    initial: Params | None = None,
    mask: SeededMask | None = None,
    sampling: Literal["fixed", "poisson"] = "fixed",
    on_iteration: Callable[[int, Params], None] | None = None,
) -> SimulationResult:
    """Run `iterations` federated iterations; see the module docstring.

    `sampling` "fixed" takes exactly `clients_per_iteration` clients without replacement;
    "poisson" takes each client independently with probability clients_per_iteration / N,
    the sampling DP-FedAvg's privacy analysis assumes. A Poisson cohort can be empty: the
    strategy then gets no updates (the DP wrappers still add their noise).
    """
    if sampling not in ("fixed", "poisson"):
        raise NumericsError(f"sampling must be 'fixed' or 'poisson', got {sampling!r}")
    population = len(task.clients)
    if not 1 <= clients_per_iteration <= population:
        raise NumericsError(f"clients_per_iteration must be in [1, {population}]")
    rate = clients_per_iteration / population
    strategy = strategy or FedAvg()
    global_params = initial if initial is not None else init_mlp(task.sizes, rng)
    ones = None
    if mask is not None:
        # A fresh init is rescaled for its sparsity; a given model is only masked.
        fresh = initial is None
        global_params = mask.rescaled(global_params) if fresh else mask.apply(global_params)
        ones = mask.params(spec_of(global_params))
    held: dict[int, Params] = {}
    bad = set(byzantine)
    result = SimulationResult()
    for it in range(iterations):
        if sampling == "fixed":
            chosen = rng.choice(population, size=clients_per_iteration, replace=False)
        else:
            chosen = np.flatnonzero(rng.random(population) < rate)
        updates: list[Update] = []
        down = up = 0
        for client in (int(c) for c in chosen):
            start, nbytes = downlink(global_params, held.get(client), rng)
            held[client] = start
            down += nbytes
            data = task.clients[client]
            trained, _ = train_local(
                start,
                data.x,
                data.y,
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                rng=rng,
                prox_mu=prox_mu,
                trainable=ones,
            )
            delta = sub(trained, start)
            if client in bad and attack is not None:
                delta = attack(delta, rng)
            sent, nbytes = uplink(delta, rng)
            up += nbytes
            updates.append(Update(sent, len(data.y), client))
        global_params = strategy.aggregate(global_params, updates, rng)
        if ones is not None:
            # Noise, attacks or a dense uplink can reach outside the mask; the model may not.
            global_params = {k: v * ones[k] for k, v in global_params.items()}
        result.accuracy.append(evaluate(global_params, task))
        result.bytes_down.append(down / max(len(chosen), 1))
        result.bytes_up.append(up / max(len(chosen), 1))
        if on_iteration is not None:
            on_iteration(it, global_params)
    result.final = global_params
    return result
