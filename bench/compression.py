"""Accuracy vs bytes per client per iteration, both ways, for each compression of the payloads.

Run from the repository root: ``.venv/bin/python bench/compression.py [--models small wide]``.

Digits, 100 clients, 10 per iteration, non-IID Dirichlet(0.5), 30 iterations of FedAvg, with
the small MLP (64, 32, 10) and a wide one (64, 1024, 960, 10: 1,060,170 parameters). Every byte
counted is a real payload (`federated.payload`): the device decodes what the server sent and
the server decodes what the device sent, digests checked. Downlinks are deltas against what the
device holds (the full model when it holds none), as the live system sends them. The table
gives the median over the seeds of final accuracy and of mean bytes per client per iteration,
and the bytes as a share of raw float32 (4 bytes a parameter).

`simulate` gives the links no client id, so per-device state (what the device holds, and its
error-feedback residual) is keyed here by the identity of the model the device holds: the
harness hands the downlink back exactly the object it returned for that device last time.
Compression draws from its own generator, so every configuration of a seed samples the same
clients and shuffles the same batches as the uncompressed run (a paired comparison).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from federated.model import init_mlp
from federated.params import Params, add, flatten
from federated.payload import apply_payload, make_payload, read_payload
from federated.simulation import (
    FederatedTask,
    digits_task,
    float32_downlink,
    float32_uplink,
    simulate,
)
from federated.sparsify import ErrorFeedback, prune_magnitude
from federated.strategy import FedAvg, Strategy, Update

CLIENTS = 100
PER_ITERATION = 10
ALPHA = 0.5
ITERATIONS = 30


@dataclass(frozen=True)
class Model:
    """An architecture and the local training that suits it."""

    name: str
    sizes: tuple[int, ...]
    epochs: int
    batch: int
    lr: float


MODELS = {
    "small": Model("small MLP", (64, 32, 10), epochs=5, batch=16, lr=0.3),
    "wide": Model("wide MLP", (64, 1024, 960, 10), epochs=2, batch=16, lr=0.1),
}


@dataclass(frozen=True)
class Codec:
    """`make_payload` arguments for one direction ({}: raw float32, no payload); `first` when
    the device holds no model."""

    kwargs: dict[str, Any]
    first: dict[str, Any] | None = None
    feedback: bool = False


@dataclass(frozen=True)
class Config:
    """One row of the table: how models go down and updates come up.

    With `sparsity`, the server keeps the global model magnitude-pruned (from the start and
    after every aggregation), so what it sends down is sparse.
    """

    name: str
    down: Codec
    up: Codec
    sparsity: float | None = None


class PrunedFedAvg(Strategy):
    """FedAvg whose global model is magnitude-pruned after every aggregation."""

    def __init__(self, sparsity: float) -> None:
        self.inner = FedAvg()
        self.sparsity = sparsity

    def aggregate(
        self, global_params: Params, updates: Sequence[Update], rng: np.random.Generator
    ) -> Params:
        """FedAvg, then zero the smallest weights."""
        return prune_magnitude(self.inner.aggregate(global_params, updates, rng), self.sparsity)


def _topk(down: float, up: float, bits: int, prune: float, prune_bits: int) -> Config:
    first = {"method": "prune", "sparsity": prune, "bits": prune_bits}
    return Config(
        f"top-k {100 * down:g}%/{100 * up:g}% +EF int{bits}, prune {100 * prune:g}%",
        Codec({"method": "topk", "density": down, "bits": bits}, first=first),
        Codec({"method": "topk", "density": up, "bits": bits}, feedback=True),
    )


CONFIGS = {
    "float32": Config("float32 (no compression)", Codec({}), Codec({})),
    "int8": Config("int8", Codec({"method": "int8"}), Codec({"method": "int8"})),
    "int4": Config(
        "int4", Codec({"method": "quant", "bits": 4}), Codec({"method": "quant", "bits": 4})
    ),
    "topk": _topk(down=0.02, up=0.01, bits=4, prune=0.9, prune_bits=2),
}


@dataclass
class Device:
    """What one device holds and the residual its encoder has not yet sent."""

    start: Params
    feedback: ErrorFeedback = field(default_factory=ErrorFeedback)


class Links:
    """Downlink and uplink of `simulate` for one configuration, over real payloads."""

    def __init__(self, config: Config, rng: np.random.Generator) -> None:
        self.config = config
        self.rng = rng
        self.devices: dict[int, tuple[Params, Device]] = {}
        self.current: Device | None = None

    def downlink(
        self, target: Params, held: Params | None, _rng: np.random.Generator
    ) -> tuple[Params, int]:
        """Send `target` as a delta against what the device holds; return what it rebuilds."""
        codec = self.config.down
        if codec.kwargs:
            kwargs = codec.first if held is None and codec.first is not None else codec.kwargs
            blob, _ = make_payload(target, held, rng=self.rng, **kwargs)
            start, nbytes = apply_payload(read_payload(blob), held), len(blob)
        else:
            held_now, nbytes = float32_downlink(target, held, _rng)
            start = dict(held_now)  # a distinct object per device: its identity is the key
        device = self.devices.pop(id(held))[1] if held is not None else None
        if device is None:
            device = Device(start)
        device.start = start
        # Keeping `start` referenced keeps its id unique while it is a key.
        self.devices[id(start)] = (start, device)
        self.current = device
        return start, nbytes

    def uplink(self, delta: Params, _rng: np.random.Generator) -> tuple[Params, int]:
        """Send the device's update (plus its residual); return what the server decodes."""
        codec = self.config.up
        if not codec.kwargs:
            return float32_uplink(delta, _rng)
        device = self.current
        assert device is not None, "uplink before downlink"
        wanted = device.feedback.compensate(delta) if codec.feedback else delta
        blob, _ = make_payload(
            add(device.start, wanted), device.start, rng=self.rng, **codec.kwargs
        )
        payload = read_payload(blob)
        apply_payload(payload, device.start)  # the server's checks
        if codec.feedback:
            device.feedback.record(wanted, payload.delta)
        return payload.delta, len(blob)


def run(model: Model, config: Config, seed: int) -> tuple[float, float, float]:
    """Return final accuracy and mean (down, up) bytes per client per iteration."""
    task_rng, sim_rng, codec_rng, init_rng = (np.random.default_rng([seed, k]) for k in range(4))
    task: FederatedTask = digits_task(CLIENTS, ALPHA, task_rng, sizes=model.sizes)
    links = Links(config, codec_rng)
    initial = init_mlp(model.sizes, init_rng)
    strategy: Strategy = FedAvg()
    if config.sparsity is not None:
        initial = prune_magnitude(initial, config.sparsity)
        strategy = PrunedFedAvg(config.sparsity)
    result = simulate(
        task,
        iterations=ITERATIONS,
        clients_per_iteration=PER_ITERATION,
        epochs=model.epochs,
        batch_size=model.batch,
        lr=model.lr,
        rng=sim_rng,
        strategy=strategy,
        initial=initial,
        uplink=links.uplink,
        downlink=links.downlink,
    )
    down, up = result.mean_bytes()
    return result.accuracy[-1], down, up


def table(model: Model, configs: list[Config], seeds: list[int]) -> None:
    """Print one table: a row per configuration, medians over `seeds`."""
    n = flatten(init_mlp(model.sizes, np.random.default_rng(0))).size
    raw = 4 * n
    print(
        f"\n{model.name} {model.sizes}: {n:,} parameters, float32 {raw:,} B; "
        f"epochs {model.epochs}, batch {model.batch}, lr {model.lr}; seeds {seeds}"
    )
    header = f"{'method':<44} {'accuracy':>8} {'down B':>10} {'down %':>7} {'up B':>10} {'up %':>7}"
    print(header)
    print("-" * len(header))
    reference = None
    for config in configs:
        started = time.perf_counter()
        runs = np.array([run(model, config, seed) for seed in seeds])
        acc, down, up = np.median(runs, axis=0)
        reference = acc if reference is None else reference
        print(
            f"{config.name:<44} {100 * acc:8.2f} {down:10,.0f} {100 * down / raw:6.2f}% "
            f"{up:10,.0f} {100 * up / raw:6.2f}%   ({time.perf_counter() - started:.0f}s, "
            f"per seed {' '.join(f'{100 * a:.1f}' for a in runs[:, 0])})",
            flush=True,
        )


def main() -> None:
    """Print the accuracy-vs-bytes table for each model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["small", "wide"])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    print(
        f"digits: {CLIENTS} clients, {PER_ITERATION} per iteration, Dirichlet({ALPHA}), "
        f"{ITERATIONS} iterations of FedAvg; median over seeds"
    )
    for name in args.models:
        table(MODELS[name], [CONFIGS[c] for c in args.configs], args.seeds)


if __name__ == "__main__":
    main()
