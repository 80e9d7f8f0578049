"""Tests for the parts of federated.secagg: encoding, PRG, keys, Shamir sharing, graphs."""

import contextlib
import itertools
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from federated.errors import NumericsError
from federated.secagg import (
    PRIME,
    FixedPoint,
    SecAggError,
    Share,
    ThresholdError,
    choose_params,
    combine,
    complete_graph,
    deterministic_bytes,
    expand_mask,
    generate_keypair,
    harary_graph,
    interpolate_at_zero,
    split_secret,
)
from federated.secagg.keys import open_sealed, seal

# --- fixed-point encoding ---------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    x=hnp.arrays(np.float64, st.integers(1, 64), elements=st.floats(-5, 5)),
    clip=st.floats(0.01, 4.0),
    n=st.integers(1, 10_000),
)
def test_encode_decode_round_trip(x: np.ndarray, clip: float, n: int) -> None:
    # Prepare
    fp = FixedPoint(clip=clip, max_clients=n)
    # Execute
    back = fp.decode_sum(fp.encode(x))
    # Assert: the clipped value, to half a code step.
    expected = np.clip(x, -clip, clip)
    assert np.all(np.abs(back - expected) <= 0.5 * fp.resolution * (1 + 1e-9))


@pytest.mark.parametrize("n", [1, 2, 100, 1000, 65_537])
def test_sum_of_n_extremes_cannot_overflow(n: int) -> None:
    # Prepare: the documented bound scale * clip * n < 2^31.
    fp = FixedPoint(clip=0.5, max_clients=n)
    assert fp.scale * fp.clip * n < 2**31
    top, bottom = fp.encode(np.array([0.5, 7.0])), fp.encode(np.array([-0.5, -7.0]))
    # Execute: n clients at +clip (and beyond, clipped), then n at -clip, summed in the ring.
    high = np.zeros(2, dtype=np.uint32)
    low = np.zeros(2, dtype=np.uint32)
    for _ in range(min(n, 1000)):
        high += top
        low += bottom
    if n > 1000:  # same ring sum, without the loop
        high = (top.astype(np.uint64) * n % 2**32).astype(np.uint32)
        low = (bottom.astype(np.uint64) * n % 2**32).astype(np.uint32)
    # Assert
    np.testing.assert_allclose(fp.decode_sum(high), [0.5 * n, 0.5 * n], rtol=1e-9)
    np.testing.assert_allclose(fp.decode_sum(low), [-0.5 * n, -0.5 * n], rtol=1e-9)


def test_one_client_more_than_planned_wraps() -> None:
    # Prepare: the bound is what protects the sum; exceed it and the int32 reading wraps.
    fp = FixedPoint(clip=1.0, max_clients=2)
    code = fp.encode(np.array([1.0]))
    # Execute
    total = code + code + code
    # Assert
    assert fp.decode_sum(total)[0] < 0


def test_encoding_rejects_bad_input() -> None:
    fp = FixedPoint(clip=1.0, max_clients=10)
    with pytest.raises(NumericsError):
        fp.encode(np.array([1.0, np.nan]))
    with pytest.raises(NumericsError):
        fp.encode(np.zeros((2, 2)))
    with pytest.raises(NumericsError):
        fp.decode_sum(np.zeros(3, dtype=np.int64))
    with pytest.raises(NumericsError):
        FixedPoint(clip=0.0, max_clients=10)
    with pytest.raises(NumericsError):
        FixedPoint(clip=1.0, max_clients=0)


# --- PRG and keys -----------------------------------------------------------------------


def test_prg_is_deterministic_and_seed_dependent() -> None:
    seed_a, seed_b = bytes(32), bytes(31) + b"\x01"
    a1, a2, b = expand_mask(seed_a, 1000), expand_mask(seed_a, 1000), expand_mask(seed_b, 1000)
    assert a1.dtype == np.uint32
    assert a1.shape == (1000,)
    np.testing.assert_array_equal(a1, a2)
    assert np.mean(a1 == b) < 0.01
    # A prefix of a longer expansion is the shorter expansion.
    np.testing.assert_array_equal(expand_mask(seed_a, 10), a1[:10])
    with pytest.raises(NumericsError):
        expand_mask(bytes(16), 10)


def test_key_agreement_is_symmetric_and_bound_to_info() -> None:
    draw = deterministic_bytes(b"keys")
    alice, bob, carol = (generate_keypair(draw) for _ in range(3))
    k_ab = alice.agree(bob.public, b"round 1")
    assert k_ab == bob.agree(alice.public, b"round 1")
    assert len(k_ab) == 32
    assert k_ab != alice.agree(bob.public, b"round 2")
    assert k_ab != alice.agree(carol.public, b"round 1")
    assert "secret" not in repr(alice).replace("secret=<hidden>", "")


def test_low_order_public_key_is_refused() -> None:
    alice = generate_keypair(deterministic_bytes(b"low"))
    with pytest.raises(SecAggError):
        alice.agree(bytes(32), b"")  # the identity point gives an all-zero secret


def test_sealed_shares_detect_tampering() -> None:
    draw = deterministic_bytes(b"seal")
    key = draw(32)
    sealed = seal(key, b"share bytes", b"round 7", draw)
    assert open_sealed(key, sealed, b"round 7") == b"share bytes"
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    for blob, aad in ((flipped, b"round 7"), (sealed, b"round 8")):
        with pytest.raises(SecAggError):
            open_sealed(key, blob, aad)


def test_deterministic_bytes_is_reproducible() -> None:
    a, b = deterministic_bytes(b"s"), deterministic_bytes(b"s")
    assert [a(5), a(40)] == [b(5), b(40)]
    assert a(32) != a(32)


# --- Shamir sharing ---------------------------------------------------------------------


def _is_probable_prime(p: int, rounds: int = 40) -> bool:
    d, s = p - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    rng = random.Random(0)
    for _ in range(rounds):
        x = pow(rng.randrange(2, p - 1), d, p)
        if x in (1, p - 1):
            continue
        for _ in range(s - 1):
            x = x * x % p
            if x == p - 1:
                break
        else:
            return False
    return True


def test_field_prime_fits_32_byte_secrets() -> None:
    assert PRIME > 2**256
    assert _is_probable_prime(PRIME)


@settings(max_examples=50, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    n=st.integers(1, 30),
    data=st.data(),
)
def test_any_t_shares_recover_and_t_minus_1_do_not(
    secret: bytes, n: int, data: st.DataObject
) -> None:
    # Prepare
    t = data.draw(st.integers(1, n), label="t")
    xs = data.draw(st.permutations(range(1, 200)), label="xs")[:n]
    shares = split_secret(secret, t, xs, deterministic_bytes(secret + bytes([n, t])))
    chosen = data.draw(st.permutations(shares), label="order")
    # Execute / Assert: any t of them give the secret back.
    assert combine(chosen[:t], t) == secret
    assert interpolate_at_zero(chosen) == int.from_bytes(secret, "big")
    # t - 1 of them do not: combine refuses, and interpolation gives another value.
    if t > 1:
        with pytest.raises(ThresholdError) as info:
            combine(chosen[: t - 1], t, owner=3)
        assert (info.value.needed, info.value.available, info.value.client_id) == (t, t - 1, 3)
        assert interpolate_at_zero(chosen[: t - 1]) != int.from_bytes(secret, "big")


def test_share_bytes_round_trip_and_validation() -> None:
    shares = split_secret(bytes(range(32)), 3, [1, 2, 5], deterministic_bytes(b"x"))
    assert [Share.from_bytes(s.to_bytes()) for s in shares] == shares
    assert len(shares[0].to_bytes()) == 37
    with pytest.raises(SecAggError):
        Share.from_bytes(bytes(36))
    with pytest.raises(SecAggError):
        Share.from_bytes(bytes(4) + bytes(33))  # x = 0
    with pytest.raises(SecAggError):
        split_secret(bytes(32), 2, [1, 1, 2], deterministic_bytes(b"x"))
    with pytest.raises(SecAggError):
        split_secret(bytes(32), 4, [1, 2, 3], deterministic_bytes(b"x"))
    with pytest.raises(SecAggError):
        combine([shares[0], shares[0], shares[1]], 2)


def test_corrupted_share_is_noticed_or_changes_the_secret() -> None:
    secret = bytes(range(32))
    shares = split_secret(secret, 3, [1, 2, 3], deterministic_bytes(b"c"))
    bad = [shares[0], shares[1], Share(shares[2].x, (shares[2].y + 1) % PRIME)]
    with contextlib.suppress(SecAggError):  # raised if the value does not fit in 32 bytes
        assert combine(bad, 3) != secret


# --- neighbour graphs -------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 80), data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_harary_graph_is_symmetric_with_requested_degree(
    n: int, data: st.DataObject, seed: int
) -> None:
    # Prepare
    k = data.draw(st.integers(1, n - 1).filter(lambda k: k * n % 2 == 0), label="k")
    # Execute
    graph = harary_graph(n, k, np.random.default_rng(seed))
    # Assert
    assert len(graph) == n
    for i, nbrs in enumerate(graph):
        assert len(nbrs) == k
        assert i not in nbrs
        assert all(i in graph[j] for j in nbrs)


def test_graph_rejects_impossible_degrees() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(NumericsError):
        harary_graph(7, 3, rng)  # 7 * 3 is odd
    with pytest.raises(NumericsError):
        harary_graph(7, 7, rng)
    assert harary_graph(7, 6, rng) == complete_graph(7)


def test_choose_params_grows_like_log_n_and_keeps_a_majority_threshold() -> None:
    # Execute
    chosen = {n: choose_params(n, dropout=0.1) for n in (100, 1000, 10_000, 100_000)}
    # Assert: t > k / 2, k even and far below n, and k grows by a few per factor of 10.
    for n, (k, t) in chosen.items():
        assert k % 2 == 0
        assert (k + 1) // 2 < t <= k
        assert k < n // 2
    ks = [chosen[n][0] for n in sorted(chosen)]
    assert all(0 <= b - a <= 8 for a, b in itertools.pairwise(ks))
    # No sparse graph tolerates 30% dropouts among only 100 clients: use the complete graph.
    assert choose_params(100, dropout=0.3) == (99, 51)
    with pytest.raises(NumericsError):
        choose_params(100, dropout=1.0)
