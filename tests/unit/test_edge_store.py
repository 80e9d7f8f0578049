"""The device's LocalModelStore: deploy keeps one previous model, rollback, revoke, lookup."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_client.store import Held, LocalModelStore
from federated.params import Params, digest

PROPERTY = settings(database=None, deadline=None)


def _held(value: float, version: str | None = None) -> Held:
    params: Params = {
        "w": np.full((2, 3), value, dtype=np.float32),
        "b": np.full(3, value, dtype=np.float32),
    }
    return Held(digest(params), params, version)


# --- deploy --------------------------------------------------------------------------------------


def test_first_deploy_serves_with_nothing_to_roll_back_to() -> None:
    # Prepare
    store = LocalModelStore()
    v1 = _held(1.0, "1.0.0")

    # Execute
    store.deploy(v1)

    # Assert
    assert store.current is v1
    assert store.previous is None


def test_deploy_keeps_the_previous_model() -> None:
    # Prepare
    store = LocalModelStore()
    v1, v2 = _held(1.0, "1.0.0"), _held(2.0, "1.1.0")
    store.deploy(v1)

    # Execute
    store.deploy(v2)

    # Assert
    assert store.current is v2
    assert store.previous is v1


def test_deploy_keeps_only_one_previous_model() -> None:
    # Prepare
    store = LocalModelStore()
    v1, v2, v3 = _held(1.0, "1.0.0"), _held(2.0, "1.1.0"), _held(3.0, "1.2.0")
    store.deploy(v1)
    store.deploy(v2)

    # Execute
    store.deploy(v3)

    # Assert
    assert store.current is v3
    assert store.previous is v2
    assert store.lookup(v1.digest) is None


def test_deploying_the_same_digest_twice_is_a_no_op() -> None:
    # Prepare: a redelivered deploy command
    store = LocalModelStore()
    v1, v2 = _held(1.0, "1.0.0"), _held(2.0, "1.1.0")
    store.deploy(v1)
    store.deploy(v2)

    # Execute
    store.deploy(_held(2.0, "1.1.0"))

    # Assert: the rollback target survives the duplicate
    assert store.current is v2
    assert store.previous is v1


@PROPERTY
@given(values=st.lists(st.integers(0, 5), min_size=1, max_size=12))
def test_deploy_sequences_serve_the_last_and_keep_the_one_before(values: list[int]) -> None:
    # Prepare
    store = LocalModelStore()
    helds = {v: _held(float(v), f"1.{v}.0") for v in set(values)}
    distinct: list[int] = []  # what a store must have served, duplicates in a row collapsed
    for v in values:
        if not distinct or distinct[-1] != v:
            distinct.append(v)

    # Execute
    for v in values:
        store.deploy(helds[v])

    # Assert
    assert store.current is helds[distinct[-1]]
    if len(distinct) > 1:
        assert store.previous is helds[distinct[-2]]
    else:
        assert store.previous is None


# --- rollback ------------------------------------------------------------------------------------


def test_rollback_of_the_serving_version_restores_the_previous_one() -> None:
    # Prepare
    store = LocalModelStore()
    v1, v2 = _held(1.0, "1.0.0"), _held(2.0, "1.1.0")
    store.deploy(v1)
    store.deploy(v2)

    # Execute
    done = store.rollback("1.1.0")

    # Assert
    assert done is True
    assert store.current is v1
    assert store.previous is None


def test_rollback_of_another_version_changes_nothing() -> None:
    # Prepare
    store = LocalModelStore()
    v1, v2 = _held(1.0, "1.0.0"), _held(2.0, "1.1.0")
    store.deploy(v1)
    store.deploy(v2)

    # Execute
    done = store.rollback("1.0.0")

    # Assert
    assert done is False
    assert store.current is v2
    assert store.previous is v1


def test_rollback_twice_only_rolls_back_once() -> None:
    # Prepare: a redelivered rollback command
    store = LocalModelStore()
    v1, v2 = _held(1.0, "1.0.0"), _held(2.0, "1.1.0")
    store.deploy(v1)
    store.deploy(v2)
    store.rollback("1.1.0")

    # Execute
    again = store.rollback("1.1.0")

    # Assert
    assert again is False
    assert store.current is v1


def test_rollback_on_an_empty_store_does_nothing() -> None:
    # Prepare
    store = LocalModelStore()

    # Execute
    done = store.rollback("1.0.0")

    # Assert
    assert done is False
    assert store.current is None
    assert store.previous is None


def test_rollback_of_the_first_deploy_leaves_nothing_serving() -> None:
    # Prepare
    store = LocalModelStore()
    store.deploy(_held(1.0, "1.0.0"))

    # Execute
    done = store.rollback("1.0.0")

    # Assert
    assert done is True
    assert store.current is None


# --- revoke ---------------------------------------------------------------------------------------


def test_revoke_deletes_only_that_rounds_weights() -> None:
    # Prepare
    store = LocalModelStore()
    served, r1, r2, pending = _held(1.0, "1.0.0"), _held(2.0), _held(3.0), _held(4.0, "1.1.0")
    store.deploy(served)
    store.rounds.update({"r1": r1, "r2": r2})
    store.pending_deploy[pending.digest] = pending

    # Execute
    done = store.revoke("r1")

    # Assert
    assert done is True
    assert "r1" not in store.rounds
    assert store.lookup(r1.digest) is None
    assert store.rounds == {"r2": r2}
    assert store.current is served
    assert store.pending_deploy == {pending.digest: pending}


def test_revoke_of_an_unknown_round_reports_false() -> None:
    # Prepare
    store = LocalModelStore()
    store.rounds["r1"] = _held(1.0)

    # Execute
    done = store.revoke("r9")

    # Assert
    assert done is False
    assert set(store.rounds) == {"r1"}


def test_revoke_twice_is_harmless() -> None:
    # Prepare: a redelivered revoke command
    store = LocalModelStore()
    store.rounds["r1"] = _held(1.0)
    store.revoke("r1")

    # Execute
    again = store.revoke("r1")

    # Assert
    assert again is False
    assert store.rounds == {}


# --- lookup --------------------------------------------------------------------------------------


def test_lookup_finds_any_held_digest() -> None:
    # Prepare
    store = LocalModelStore()
    v1, v2, train, pending = _held(1.0, "1.0.0"), _held(2.0, "1.1.0"), _held(3.0), _held(4.0)
    store.deploy(v1)
    store.deploy(v2)
    store.rounds["r1"] = train
    store.pending_deploy[pending.digest] = pending

    # Execute
    found = {
        name: store.lookup(h.digest)
        for name, h in {"current": v2, "previous": v1, "round": train, "pending": pending}.items()
    }

    # Assert
    assert found["current"] is v2.params
    assert found["previous"] is v1.params
    assert found["round"] is train.params
    assert found["pending"] is pending.params


def test_lookup_of_an_unknown_digest_is_none() -> None:
    # Prepare
    store = LocalModelStore()
    store.deploy(_held(1.0, "1.0.0"))

    # Execute
    found = store.lookup(_held(9.0).digest)

    # Assert
    assert found is None


def test_lookup_on_an_empty_store_is_none() -> None:
    # Prepare
    store = LocalModelStore()

    # Execute
    found = store.lookup("0" * 64)

    # Assert
    assert found is None


def test_stores_do_not_share_state() -> None:
    # Prepare
    first, second = LocalModelStore(), LocalModelStore()

    # Execute
    first.rounds["r1"] = _held(1.0)
    first.pending_deploy["x"] = _held(2.0)

    # Assert
    assert second.rounds == {}
    assert second.pending_deploy == {}
