"""Pure numerics for federated learning: models, aggregation, compression and payloads,
server strategies and robust rules, differential privacy and secure aggregation.

No I/O, asyncio or logging here; every random function takes an `np.random.Generator`.
"""

import importlib

from federated.adaptive_clipping import AdaptiveClip, AdaptiveClipDP
from federated.aggregate import FedAvgAccumulator
from federated.compression import dequantize, dequantize_int8, quantize, quantize_int8
from federated.data import (
    dirichlet_partition,
    fleet_partition,
    load_digits,
    train_centralized,
    train_holdout_split,
)
from federated.errors import BudgetExceeded, NumericsError, PayloadError, ShapeError
from federated.krum import MultiKrum
from federated.mask import SeededMask, erk_densities
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
    clip_update,
    digest,
    flatten,
    l2_norm,
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
from federated.privacy import CentralDP, DistributedDP
from federated.robust import CoordinateMedian, NormBounded, TrimmedMean
from federated.secagg import SecAggError, ThresholdError, simulate_secagg
from federated.simulation import FederatedTask, digits_task, simulate
from federated.sparsify import ErrorFeedback, prune_magnitude, top_k
from federated.strategies import FedAdam, FedAvgM, FedYogi
from federated.strategy import FedAvg, Strategy, Update
from federated.synthetic import synthetic_task

# dp-accounting pulls in scipy (about 1 s): every service and device imports this package, so
# the accountant loads only when asked for.
_LAZY = {"PrivacyAccountant": "federated.accountant", "PrivacySpent": "federated.accountant"}


def __getattr__(name: str) -> object:
    """Load the lazily exported names on first use (PEP 562)."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'federated' has no attribute {name!r}")


__all__ = [
    "AdaptiveClip",
    "AdaptiveClipDP",
    "BudgetExceeded",
    "CentralDP",
    "ClassificationMetrics",
    "CoordinateMedian",
    "DistributedDP",
    "ErrorFeedback",
    "FedAdam",
    "FedAvg",
    "FedAvgAccumulator",
    "FedAvgM",
    "FedYogi",
    "FederatedTask",
    "MultiKrum",
    "NormBounded",
    "NumericsError",
    "ParamSpec",
    "Params",
    "Payload",
    "PayloadError",
    "PayloadLimits",
    "PrivacyAccountant",
    "PrivacySpent",
    "SecAggError",
    "SeededMask",
    "ShapeError",
    "Strategy",
    "ThresholdError",
    "TrainStats",
    "TrimmedMean",
    "Update",
    "add",
    "apply_payload",
    "check_finite",
    "classification_metrics",
    "clip_update",
    "confusion_matrix",
    "dequantize",
    "dequantize_int8",
    "digest",
    "digits_task",
    "dirichlet_partition",
    "erk_densities",
    "flatten",
    "fleet_partition",
    "forward_logits",
    "init_mlp",
    "l2_norm",
    "load_digits",
    "loss_and_grads",
    "make_payload",
    "predict",
    "prune_magnitude",
    "quantize",
    "quantize_int8",
    "read_payload",
    "simulate",
    "simulate_secagg",
    "spec_of",
    "sub",
    "synthetic_task",
    "top_k",
    "train_centralized",
    "train_holdout_split",
    "train_local",
    "unflatten",
    "zeros_like",
]
