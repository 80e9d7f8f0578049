"""Hostile payloads cost no more than the document they came in and the model they declare.

A decoder sizes everything from the declared model (at most `PayloadLimits.max_elements`) and
checks the wire bytes against those sizes before it allocates. The fuzz run mutates valid
payloads of every method in a child process whose address space is capped, and checks the
traced peak of every decode against that bound.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zstandard

from federated.compression import packed_size
from federated.errors import PayloadError
from federated.mask import SeededMask
from federated.params import spec_of
from federated.payload import ALL_METHODS, DEFAULT_LIMITS, make_payload, read_payload
from tests.unit.payload_helpers import model, nudged, unpack

_N = 4_000_000  # the default limit on a model's elements
_MB = 1 << 20
_REPO = Path(__file__).resolve().parents[2]


def _topk_gaps_document(index_raw: bytes, *, n: int = _N) -> dict[str, Any]:
    """A top-k document declaring all n entries sent, 2-bit values, positions as varints."""
    return {
        "v": 2,
        "method": "topk",
        "bits": 2,
        "block": n,
        "keep": 1.0,
        "base": None,
        "digest": bytes(32),
        "spec": [["w", [n]]],
        "index": ["gaps", n, index_raw],
        "values": b"\x55" * packed_size(n, 2),
        "scales": bytes(4),
    }


def _compress(document: dict[str, Any]) -> bytes:
    return zstandard.ZstdCompressor().compress(msgpack.packb(document, use_bin_type=True))


def _traced_peak(blob: bytes) -> tuple[int, str]:
    """Peak traced bytes of `read_payload(blob)`, which must raise PayloadError, and its reason."""
    tracemalloc.start()
    try:
        with pytest.raises(PayloadError) as caught:
            read_payload(blob)
        return tracemalloc.get_traced_memory()[1], caught.value.reason
    finally:
        tracemalloc.stop()


def test_four_million_four_byte_varints_are_refused_before_decoding() -> None:
    # Prepare: the case of issue 7; 1.7 kB on the wire, once 529 MB traced before the error.
    blob = _compress(_topk_gaps_document(b"\xff\xff\xff\x7f" * _N))
    document_bytes = zstandard.frame_content_size(blob)
    assert len(blob) < 2048
    # Execute
    peak, reason = _traced_peak(blob)
    # Assert: the decoded document (its bytes, then its fields) and nothing of the model's size.
    assert "bytes of varints" in reason
    assert peak < 2 * document_bytes + 2 * _MB


@pytest.mark.parametrize(
    "index_raw",
    [
        pytest.param(b"\x7f" * _N, id="gaps-that-run-past-n"),
        pytest.param(bytes(_N - 1) + b"\x01", id="last-index-equals-n"),
        pytest.param(b"\x80" * (_N + _N // 128), id="no-varint-ends"),
        pytest.param(b"\x81\x00" * (_N // 2), id="overlong-varints"),
    ],
)
def test_hostile_varints_cost_at_most_a_decode_of_the_declared_model(index_raw: bytes) -> None:
    # Prepare
    blob = _compress(_topk_gaps_document(index_raw))
    document_bytes = zstandard.frame_content_size(blob)
    # Execute
    peak, _ = _traced_peak(blob)
    # Assert: the document, plus one int64 position per declared element at most.
    assert peak < 2 * document_bytes + 8 * _N + 2 * _MB


def test_a_huge_block_over_a_few_values_costs_nothing() -> None:
    # Prepare: one scale for a 3-element tensor, block as large as the limits allow.
    blob, _ = make_payload(model(), None, rng=np.random.default_rng(0), block=_N)
    # Execute
    tracemalloc.start()
    try:
        read_payload(blob)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Assert
    assert peak < _MB


# --- fuzz: mutated valid payloads of every method, in a child with a memory ceiling --------

_FUZZ_EXAMPLES = 300
_CEILING = 512 * _MB  # address space a decode may add to what the child holds
_PER_ELEMENT = 20  # traced bytes a decode may use per element of the largest model allowed


def test_fuzzed_payloads_raise_only_payload_error_within_a_memory_ceiling() -> None:
    resource = pytest.importorskip("resource")
    if not hasattr(resource, "RLIMIT_AS") or not Path("/proc/self/status").exists():
        pytest.skip("needs Linux's RLIMIT_AS")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    child = subprocess.run(
        [sys.executable, "-m", "tests.unit.test_federated_payload_hostile", str(_FUZZ_EXAMPLES)],
        cwd=_REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert child.returncode == 0, child.stdout[-4000:] + child.stderr[-4000:]
    assert "fuzzed" in child.stdout


def _repeat(pattern: bytes, size: int) -> bytes:
    """`pattern` repeated to exactly `size` bytes (none when size <= 0)."""
    return (pattern * -(-max(size, 0) // len(pattern)))[: max(size, 0)]


def _valid_documents() -> list[dict[str, Any]]:
    """One valid payload document of every method, small model, with and without a base."""
    base, target = model(), nudged(model(), seed=3)
    mask = SeededMask.erk(spec_of(target), 0.5, seed=7)
    extra: dict[str, dict[str, Any]] = {
        "quant": {"bits": 4},
        "topk": {"density": 0.3, "bits": 2},
        "prune": {"sparsity": 0.5, "bits": 8},
        "mask": {"mask": mask, "bits": 32},
    }
    rng = np.random.default_rng(0)
    return [
        unpack(make_payload(target, start, rng=rng, method=m, block=4, **extra.get(m, {}))[0])
        for m in ALL_METHODS
        for start in (base, None)
    ]


def _fuzz(examples: int) -> None:  # pragma: no cover - runs in the child process
    import copy
    import resource

    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st

    documents = _valid_documents()
    limits = DEFAULT_LIMITS
    sizes = [0, 1, 7, 8, 1000, 1 << 16, 1_000_000, _N, _N + 1]
    fills = st.one_of(
        st.sampled_from(
            [b"\x00", b"\x55", b"\x7f", b"\x80", b"\xff", b"\x81\x00", b"\xff" * 3 + b"\x7f"]
        ),
        st.binary(min_size=1, max_size=4),
    )
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),  # what msgpack can carry
        st.sampled_from(sizes),
        st.floats(allow_nan=True),
        st.text(max_size=8),
        st.binary(max_size=64),
        st.builds(_repeat, fills, st.sampled_from(sizes)),
        st.lists(st.sampled_from(sizes), max_size=9),
    )

    def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        found = [prefix] if prefix else []
        if isinstance(node, dict | list):
            children = node.items() if isinstance(node, dict) else enumerate(node)
            for key, child in children:
                found += paths(child, (*prefix, key))
        return found

    def replace(document: Any, path: tuple[Any, ...], value: Any) -> Any:
        out = copy.deepcopy(document)
        node = out
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return out

    def inflate(
        document: dict[str, Any], n: int, coding: str, fills: tuple[bytes, bytes], stretch: int
    ) -> dict[str, Any]:
        """Declare an n-element model and size every field to match it.

        The index (or a version 1 tensor's values) is filled with `fills[0]` and made
        `stretch` bytes per entry longer or, for stretch <= 0, off by that many bytes.
        """
        index_fill, value_fill = fills
        out = copy.deepcopy(document)
        if out["v"] == 1:
            tensor = out["tensors"][0]
            out["tensors"] = [tensor]
            tensor["shape"] = [n]
            width = 1 if out["method"] == "int8" else 4
            size = width * n + (stretch * n if stretch > 0 else stretch)
            tensor["q"] = _repeat(index_fill, size)
            tensor["scales"] = bytes(4 * -(-n // out["block"])) if width == 1 else b""
            return out
        out["spec"] = [[out["spec"][0][0], [n]]]
        if out["method"] == "topk" and stretch % 2:
            out["keep"] = 1.0
        count = min(n, math.ceil(out["keep"] * n))  # as many as top-k may send
        if out["index"] is not None:
            coding = "seeded" if out["method"] == "mask" else coding
            size = {"gaps": count, "bitmap": -(-n // 8), "seeded": 16}[coding]
            size += stretch * count if stretch > 0 else stretch
            out["index"] = [coding, count, _repeat(index_fill, size)]
        bits = out["bits"]
        out["values"] = _repeat(value_fill, 4 * count if bits == 32 else packed_size(count, bits))
        out["scales"] = b"" if bits == 32 else bytes(4 * -(-count // out["block"]))
        return out

    @st.composite
    def hostile(draw: st.DrawFn) -> bytes:
        document = draw(st.sampled_from(documents))
        kind = draw(st.sampled_from(["field", "inflate", "inflate", "inflate", "bytes"]))
        if kind == "field":
            for _ in range(draw(st.integers(1, 3))):
                path = draw(st.sampled_from(paths(document)))
                document = replace(document, path, draw(leaves))
        elif kind == "inflate":
            n = draw(st.sampled_from([1, 1000, 1_000_000, _N, _N, _N + 1]))
            coding = draw(st.sampled_from(["gaps", "bitmap"]))
            value_fill = draw(st.sampled_from([b"\x55", b"\x00", b"\xff"]))  # valid, mostly
            stretch = draw(st.sampled_from([0, -1, 1, 3, 7]))
            document = inflate(document, n, coding, (draw(fills), value_fill), stretch)
        packed = bytearray(msgpack.packb(document, use_bin_type=True))
        if kind == "bytes":
            for _ in range(draw(st.integers(1, 8))):
                packed[draw(st.integers(0, len(packed) - 1))] = draw(st.integers(0, 255))
        return zstandard.ZstdCompressor(level=1).compress(bytes(packed))

    def address_space() -> int:
        status = Path("/proc/self/status").read_text()
        return 1024 * int(next(ln.split()[1] for ln in status.splitlines() if ln[:7] == "VmSize:"))

    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    worst = 0

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(hostile())
    @example(_compress(_topk_gaps_document(b"\xff\xff\xff\x7f" * _N)))  # issue 7: once 529 MB
    @example(_compress(_topk_gaps_document(b"\x7f" * _N)))  # once 229 MB
    def run(blob: bytes) -> None:
        nonlocal worst
        document_bytes = max(0, zstandard.frame_content_size(blob))
        # The ceiling holds only while decoding: building the hostile blob may take more.
        resource.setrlimit(resource.RLIMIT_AS, (address_space() + _CEILING, hard))
        tracemalloc.start()
        try:
            read_payload(blob, limits=limits)
        except PayloadError:
            pass
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
        bound = 2 * document_bytes + _PER_ELEMENT * limits.max_elements + 4 * _MB
        assert peak <= bound, f"decode traced {peak} bytes, bound {bound}"
        worst = max(worst, peak)

    run()
    print(f"fuzzed {examples} payloads; worst traced peak {worst / _MB:.1f} MB")


if __name__ == "__main__":  # pragma: no cover - the fuzz test's child process
    _fuzz(int(sys.argv[1]))
