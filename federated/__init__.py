"""Pure numerics for federated learning: models, aggregation, compression and payloads.

No I/O, asyncio or logging here; every random function takes an `np.random.Generator`.
"""

from federated.aggregate import FedAvgAccumulator, fedavg
from federated.compression import dequantize_int8, quantize_int8
from federated.data import (
    dirichlet_partition,
    load_digits,
    simulate_fedavg,
    train_centralized,
    train_holdout_split,
)
from federated.errors import NumericsError, PayloadError, ShapeError
from federated.metrics import ClassificationMetrics, classification_metrics, confusion_matrix
from federated.model import (
    TrainStats,
    forward_logits,
    init_mlp,
    loss_and_grads,
    predict,
    train_local,
)
from federated.params import (
    Params,
    ParamSpec,
    add,
    check_finite,
    digest,
    flatten,
    spec_of,
    sub,
    unflatten,
    zeros_like,
)
from federated.payload import (
    Payload,
    PayloadLimits,
    apply_payload,
    make_payload,
    read_payload,
)

__all__ = [
    "ClassificationMetrics",
    "FedAvgAccumulator",
    "NumericsError",
    "ParamSpec",
    "Params",
    "Payload",
    "PayloadError",
    "PayloadLimits",
    "ShapeError",
    "TrainStats",
    "add",
    "apply_payload",
    "check_finite",
    "classification_metrics",
    "confusion_matrix",
    "dequantize_int8",
    "digest",
    "dirichlet_partition",
    "fedavg",
    "flatten",
    "forward_logits",
    "init_mlp",
    "load_digits",
    "loss_and_grads",
    "make_payload",
    "predict",
    "quantize_int8",
    "read_payload",
    "simulate_fedavg",
    "spec_of",
    "sub",
    "train_centralized",
    "train_holdout_split",
    "train_local",
    "unflatten",
    "zeros_like",
]
