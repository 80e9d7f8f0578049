"""Tests for the federated.secagg protocol: exact sums under dropouts, refusals, and privacy."""

from collections.abc import Collection
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from scipy import stats

from federated.secagg import (
    PRIME,
    SecAggClient,
    SecAggConfig,
    SecAggError,
    SecAggServer,
    Share,
    ThresholdError,
    UnmaskRequest,
    deterministic_bytes,
    make_config,
    simulate_secagg,
)
from federated.secagg.config import EncryptedShares

M = 64  # the crypto cost barely depends on the vector length; keep tests fast


def _inputs(n: int, m: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.2, 1.2, size=(n, m))  # some values get clipped


def _split_dropouts(n: int, rate: float, seed: int) -> tuple[list[int], list[int]]:
    dropped = np.random.default_rng(seed).permutation(n)[: round(rate * n)].tolist()
    half = len(dropped) // 2
    return dropped[:half], dropped[half:]


@pytest.mark.parametrize(
    ("rate", "design_dropout", "degree"),
    [
        (0.0, 0.1, None),  # SecAgg+: k = 46, t = 24
        (0.1, 0.1, None),
        (0.3, 0.3, None),  # no sparse graph fits 30% of 100: choose_params gives the full one
        (0.1, 0.1, 99),  # full-graph SecAgg
    ],
)
def test_unmasked_sum_equals_plain_sum_of_100_clients(
    rate: float, design_dropout: float, degree: int | None
) -> None:
    # Prepare: half the dropouts leave before sending a masked input, half after.
    n = 100
    config = make_config(
        n, M, clip=1.0, rng=np.random.default_rng(1), dropout=design_dropout, degree=degree
    )
    x = _inputs(n, M, seed=2)
    before, after = _split_dropouts(n, rate, seed=3)
    # Execute
    result = simulate_secagg(
        x,
        config,
        drop_before_input=before,
        drop_after_input=after,
        random_bytes=deterministic_bytes(b"sum"),
    )
    # Assert: the survivors (U3) include the clients that left after sending.
    assert result.survivors == frozenset(range(n)) - set(before)
    expected = np.clip(x[sorted(result.survivors)], -1.0, 1.0).sum(axis=0)
    tolerance = len(result.survivors) * 0.5 * config.encoding.resolution
    assert np.max(np.abs(result.total - expected)) <= tolerance
    # And the ring total is exactly the sum of the survivors' codes.
    codes = [config.encoding.encode(x[i]) for i in sorted(result.survivors)]
    np.testing.assert_array_equal(result.encoded_total, np.sum(codes, axis=0, dtype=np.uint32))


def test_fewer_than_t_survivors_cannot_unmask() -> None:
    # Prepare: full graph of 10 (10 holders each) with t = 6; 5 leave before sending input.
    config = make_config(10, M, clip=1.0, rng=np.random.default_rng(0), degree=9)
    assert config.threshold == 6
    # Execute / Assert
    with pytest.raises(ThresholdError) as info:
        simulate_secagg(_inputs(10, M, 0), config, drop_before_input=[0, 1, 2, 3, 4])
    assert (info.value.needed, info.value.available, info.value.client_id) == (6, 5, None)
    # One more survivor is enough.
    result = simulate_secagg(_inputs(10, M, 0), config, drop_before_input=[0, 1, 2, 3])
    assert result.survivors == frozenset(range(4, 10))


def test_too_few_shares_of_one_secret_cannot_unmask() -> None:
    # Prepare: sparse graph (k = 4, t = 3); 3 of client 0's 4 neighbours leave after sending.
    config = make_config(20, M, clip=1.0, rng=np.random.default_rng(5), degree=4)
    gone = sorted(config.neighbours[0])[:3]
    # Execute / Assert: enough survivors overall, but not enough holders of b_0.
    with pytest.raises(ThresholdError) as info:
        simulate_secagg(_inputs(20, M, 0), config, drop_after_input=gone)
    assert info.value.client_id is not None
    assert info.value.available < info.value.needed == 3


def _prediction(
    config: SecAggConfig, before_sharing: set[int], before_input: set[int], after: set[int]
) -> bool:
    """Return whether the protocol should succeed: every needed secret keeps t holders."""
    t = config.threshold
    holders = [nbrs | {i} for i, nbrs in enumerate(config.neighbours)]
    shared = set(range(config.num_clients)) - before_sharing
    sent = shared - before_input
    answering = sent - after
    if any(len(holders[i] & shared) < t for i in sent) or len(sent) < t or len(answering) < t:
        return False
    needed = set(sent) | {d for d in shared - sent if config.neighbours[d] & sent}
    return all(len(holders[i] & answering) >= t for i in needed)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(4, 14),
    data=st.data(),
    seed=st.integers(0, 2**16),
)
def test_protocol_succeeds_exactly_when_every_needed_secret_has_t_shares(
    n: int, data: st.DataObject, seed: int
) -> None:
    # Prepare
    degree = data.draw(st.sampled_from([k for k in range(2, n) if k * n % 2 == 0]), label="k")
    config = make_config(n, 8, clip=2.0, rng=np.random.default_rng(seed), degree=degree)
    fate = data.draw(st.lists(st.sampled_from("kkkkksba"), min_size=n, max_size=n), label="fate")
    groups = [{i for i, f in enumerate(fate) if f == c} for c in "sba"]
    x = _inputs(n, 8, seed)
    # Execute
    try:
        result = simulate_secagg(
            x,
            config,
            drop_before_sharing=groups[0],
            drop_before_input=groups[1],
            drop_after_input=groups[2],
            random_bytes=deterministic_bytes(seed.to_bytes(4, "big")),
        )
    except ThresholdError:
        succeeded = False
    else:
        succeeded = True
        expected = np.clip(x[sorted(result.survivors)], -2.0, 2.0).sum(axis=0)
        assert np.allclose(result.total, expected, atol=n * config.encoding.resolution)
    # Assert
    event(f"succeeded={succeeded}")
    assert succeeded == _prediction(config, *groups)


def _masked_vector(x0: np.ndarray, seed: bytes) -> np.ndarray:
    """Return client 0's masked input in a 5-client full-graph round."""
    n, m = 5, x0.size
    config = make_config(n, m, clip=1.0, rng=np.random.default_rng(0), degree=n - 1)
    draw = deterministic_bytes(seed)
    clients = [SecAggClient(i, config, draw) for i in range(n)]
    server = SecAggServer(config)
    server.collect_keys([c.advertise_keys() for c in clients])
    server.collect_shares([s for c in clients for s in c.share_keys(server.keys_for(c.client_id))])
    return clients[0].masked_input(x0, server.shares_for(0)).vector


def test_a_masked_vector_shows_no_structure_of_its_input() -> None:
    # Prepare: all zeros, and a strongly structured input (saw-tooth at full scale).
    m = 20_000
    structured = np.tile(np.linspace(-1.0, 1.0, 100), m // 100)
    zeros_masked = _masked_vector(np.zeros(m), b"a")
    structured_masked = _masked_vector(structured, b"b")
    for masked in (zeros_masked, structured_masked):
        # Assert: uniform over the ring, by value (KS) and by top byte (chi-square) ...
        u = masked.astype(np.float64) / 2**32
        assert stats.kstest(u, "uniform").pvalue > 1e-4
        counts = np.bincount(masked >> 24, minlength=256)
        assert stats.chisquare(counts).pvalue > 1e-4
        # ... and uncorrelated with the input (|r| ~ 1 / sqrt(m) = 0.007 by chance).
        assert abs(np.corrcoef(u, structured)[0, 1]) < 0.04
    # The two masked vectors are indistinguishable from each other.
    assert stats.ks_2samp(zeros_masked, structured_masked).pvalue > 1e-4


def test_tampered_or_misrouted_shares_are_refused() -> None:
    # Prepare
    config = make_config(5, M, clip=1.0, rng=np.random.default_rng(0), degree=4)
    draw = deterministic_bytes(b"t")
    clients = [SecAggClient(i, config, draw) for i in range(5)]
    server = SecAggServer(config)
    server.collect_keys([c.advertise_keys() for c in clients])
    server.collect_shares([s for c in clients for s in c.share_keys(server.keys_for(c.client_id))])
    mail = server.shares_for(0)
    bad = EncryptedShares(mail[0].sender, 0, mail[0].sealed[:-1] + b"\x00")
    misrouted = EncryptedShares(mail[0].sender, 1, mail[0].sealed)
    # Execute / Assert
    with pytest.raises(SecAggError):
        clients[0].masked_input(np.zeros(M), [bad, *mail[1:]])
    with pytest.raises(SecAggError):
        clients[1].masked_input(np.zeros(M), [misrouted, *server.shares_for(1)])


def test_a_client_never_reveals_both_shares_of_one_peer() -> None:
    # Prepare
    config = make_config(5, M, clip=1.0, rng=np.random.default_rng(0), degree=4)
    draw = deterministic_bytes(b"r")
    clients = [SecAggClient(i, config, draw) for i in range(5)]
    server = SecAggServer(config)
    server.collect_keys([c.advertise_keys() for c in clients])
    server.collect_shares([s for c in clients for s in c.share_keys(server.keys_for(c.client_id))])
    clients[0].masked_input(np.zeros(M), server.shares_for(0))
    # Execute / Assert: a request naming client 1 both ways, or too few survivors, is refused.
    with pytest.raises(SecAggError):
        clients[0].unmask(UnmaskRequest(frozenset({0, 1, 2}), frozenset({1, 3})))
    with pytest.raises(ThresholdError):
        clients[0].unmask(UnmaskRequest(frozenset({0, 1}), frozenset({2, 3, 4})))
    response = clients[0].unmask(UnmaskRequest(frozenset({0, 1, 2}), frozenset({3, 4})))
    assert set(response.seed_shares) == {0, 1, 2}  # its own share of b_0 too
    assert set(response.key_shares) == {3, 4}


def test_a_corrupted_key_share_is_caught_by_the_public_key() -> None:
    # Prepare: 6 clients, full graph (t = 4); client 5 drops before sending its input.
    config = make_config(6, M, clip=1.0, rng=np.random.default_rng(0), degree=5)
    draw = deterministic_bytes(b"k")
    clients = [SecAggClient(i, config, draw) for i in range(6)]
    server = SecAggServer(config)
    server.collect_keys([c.advertise_keys() for c in clients])
    server.collect_shares([s for c in clients for s in c.share_keys(server.keys_for(c.client_id))])
    request = server.collect_masked_inputs(
        [c.masked_input(np.zeros(M), server.shares_for(c.client_id)) for c in clients[:5]]
    )
    responses = [c.unmask(request) for c in clients[:5]]
    good = responses[0].key_shares[5]
    responses[0] = replace(responses[0], key_shares={5: Share(good.x, (good.y + 1) % PRIME)})
    # Execute / Assert
    with pytest.raises(SecAggError):
        server.unmask(responses)


def test_server_refuses_shares_under_a_foreign_x() -> None:
    # Prepare
    config = make_config(5, M, clip=1.0, rng=np.random.default_rng(0), degree=4)
    draw = deterministic_bytes(b"x")
    clients = [SecAggClient(i, config, draw) for i in range(5)]
    server = SecAggServer(config)
    server.collect_keys([c.advertise_keys() for c in clients])
    server.collect_shares([s for c in clients for s in c.share_keys(server.keys_for(c.client_id))])
    request = server.collect_masked_inputs(
        [c.masked_input(np.zeros(M), server.shares_for(c.client_id)) for c in clients]
    )
    responses = [c.unmask(request) for c in clients]
    forged = {o: Share(s.x + 1, s.y) for o, s in responses[0].seed_shares.items()}
    responses[0] = replace(responses[0], seed_shares=forged)
    # Execute / Assert
    with pytest.raises(SecAggError):
        server.unmask(responses)


def _sent(config: SecAggConfig, dropped: Collection[int] = ()) -> dict[int, int]:
    result = simulate_secagg(_inputs(config.num_clients, M, 0), config, drop_after_input=dropped)
    return {i: c.bytes_sent for i, c in result.costs.items()}


def test_bytes_sent_follow_the_message_sizes() -> None:
    # Prepare: k = 4 neighbours, no dropouts.
    config = make_config(12, M, clip=1.0, rng=np.random.default_rng(0), degree=4)
    k = 4
    keys, shares, masked = 4 + 2 * 32, k * (8 + 12 + 8 + 2 * 33 + 16), 4 + 4 * M
    unmask = 4 + (k + 1) * (4 + 4 + 33)  # a seed share of each neighbour and its own
    # Execute / Assert
    assert set(_sent(config).values()) == {keys + shares + masked + unmask}
