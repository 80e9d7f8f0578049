"""The conformance device (tests/conformance/device.py) stands alone and agrees with our code.

It must import none of our packages: it is what a device maker writes from the
specification. Where it meets our numerics (digest, payloads, SGD), it must agree bit for bit
or to float32 rounding; the integration test then runs it against the real services.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest

from federated.model import init_mlp, train_local
from federated.params import digest
from federated.payload import apply_payload, make_payload, read_payload
from tests.conformance import device

OURS = {"schemas", "services", "federated", "edge_client", "fedsaga", "deploy", "tests"}
ALLOWED = {"paho", "msgpack", "zstandard", "numpy"}


def _model(seed: int) -> dict[str, np.ndarray]:
    return init_mlp((64, 32, 10), np.random.default_rng(seed))


def test_the_device_imports_nothing_of_ours() -> None:
    # Prepare
    tree = ast.parse(Path(device.__file__).read_text(encoding="utf-8"))

    # Execute
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            roots.add((node.module or "").split(".")[0])

    # Assert: only the standard library and the four libraries the specification names
    assert not roots & OURS
    assert roots - ALLOWED <= set(sys.stdlib_module_names) | {"__future__"}


def test_its_digest_is_ours() -> None:
    # Prepare
    model = _model(0)
    model["scalar"] = np.array(1.5, dtype=np.float32)

    # Execute / Assert
    assert device.digest(model) == digest(model)


def test_it_rebuilds_what_the_services_send() -> None:
    # Prepare: a full model, then a delta against it, as the distributor encodes them
    first, second = _model(1), _model(2)
    full, held = make_payload(first, None, rng=np.random.default_rng(0))
    delta, expected = make_payload(second, held, rng=np.random.default_rng(1))

    # Execute
    rebuilt_full = device.rebuild(device.read_payload(full), None)
    rebuilt = device.rebuild(device.read_payload(delta), rebuilt_full)

    # Assert: bit for bit, so the digests agree
    assert device.digest(rebuilt) == digest(expected)
    for name, values in expected.items():
        np.testing.assert_array_equal(rebuilt[name], values)


def test_the_services_read_and_verify_what_it_sends() -> None:
    # Prepare
    base = _model(3)
    trained = {k: v + np.float32(0.01) * np.sign(v) for k, v in base.items()}

    # Execute
    blob = device.write_update(trained, base, digest(base))
    rebuilt = apply_payload(read_payload(blob), base)  # checks base and digest

    # Assert: int8 quantization error only
    for name, values in trained.items():
        np.testing.assert_allclose(rebuilt[name], values, atol=0.02 / 127 * 2 + 1e-6)


def test_it_refuses_a_payload_whose_digest_is_wrong() -> None:
    # Prepare
    model = _model(4)
    blob, _ = make_payload(model, None, rng=np.random.default_rng(0))
    payload = device.read_payload(blob)
    forged = device.Payload(payload.base_digest, "0" * 64, payload.delta)

    # Execute / Assert
    with pytest.raises(device.PayloadError, match="digest"):
        device.rebuild(forged, None)


def test_its_sgd_is_the_reference_sgd() -> None:
    # Prepare
    rng = np.random.default_rng(5)
    x = rng.random((40, 64), dtype=np.float32)
    y = rng.integers(0, 10, 40)
    model = _model(6)

    # Execute
    ours, _ = train_local(
        model, x, y, epochs=2, batch_size=16, lr=0.1, rng=np.random.default_rng(7)
    )
    theirs = device.sgd(model, x, y, epochs=2, batch_size=16, lr=0.1, rng=np.random.default_rng(7))

    # Assert
    for name, values in ours.items():
        np.testing.assert_allclose(theirs[name], values, rtol=1e-4, atol=1e-5)
