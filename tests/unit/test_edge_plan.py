"""How a simulated fleet is spread over processes (edge_client/plan.py), and that the fleet is
the same fleet however it is spread."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from edge_client.fleet import Fleet, FleetSpec, device_data, profiles
from edge_client.plan import FILES_RESERVE, device_id, plan_fleet, shards
from schemas.mqtt import MqttEndpoint


@pytest.mark.parametrize(("devices", "processes"), [(1, 1), (10, 3), (200, 2), (10_000, 4)])
def test_shards_cover_every_device_once_in_order_and_evenly(devices: int, processes: int) -> None:
    # Execute
    parts = shards(devices, processes)

    # Assert: contiguous, in order, sizes within one of each other
    assert [i for part in parts for i in part] == list(range(devices))
    assert len(parts) == processes
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_more_processes_than_devices_gives_each_device_its_own() -> None:
    assert shards(3, 8) == [range(0, 1), range(1, 2), range(2, 3)]


def test_ten_thousand_devices_on_two_cores_run_in_four_processes_of_one_training_thread() -> None:
    # Execute
    plan = plan_fleet(10_000, cores=2, files_limit=20_000)

    # Assert: 2,500 devices each; four processes share two cores, one training thread each
    assert plan.processes == 4
    assert [len(s) for s in plan.shards] == [2_500] * 4
    assert plan.training_threads == 1
    assert plan.files_per_process == 2_500 + FILES_RESERVE


def test_a_small_fleet_is_one_process_training_on_every_core() -> None:
    plan = plan_fleet(30, cores=2, files_limit=1_024)
    assert (plan.processes, plan.training_threads) == (1, 2)


def test_a_low_open_file_limit_spreads_the_fleet_over_more_processes() -> None:
    # Prepare: 264 files: 200 devices a process
    # Execute
    plan = plan_fleet(1_000, cores=2, files_limit=200 + FILES_RESERVE)

    # Assert
    assert plan.processes == 5
    assert plan.files_per_process <= 200 + FILES_RESERVE


def test_asked_for_too_few_processes_for_the_open_file_limit_it_says_how_many() -> None:
    with pytest.raises(ValueError, match=r"--processes 5 or more"):
        plan_fleet(1_000, cores=2, files_limit=200 + FILES_RESERVE, processes=2)


def test_a_limit_below_the_reserve_asks_for_a_higher_limit() -> None:
    with pytest.raises(ValueError, match=r"ulimit -Hn"):
        plan_fleet(10, cores=2, files_limit=FILES_RESERVE)


def test_explicit_processes_and_threads_are_kept() -> None:
    plan = plan_fleet(200, cores=2, files_limit=20_000, processes=2, training_threads=3)
    assert (plan.processes, plan.training_threads) == (2, 3)
    assert [len(s) for s in plan.shards] == [100, 100]


@pytest.mark.parametrize(
    "bad", [{"devices": 0}, {"processes": 0}, {"training_threads": 0}, {"cores": 0}]
)
def test_nonsense_is_refused(bad: dict[str, int]) -> None:
    args = {"devices": 10, "cores": 2, "files_limit": 1_024} | bad
    devices = args.pop("devices")
    with pytest.raises(ValueError, match=r"."):
        plan_fleet(devices, **args)


def test_device_ids_keep_four_digits_and_grow_past_them() -> None:
    assert [device_id("dev", i) for i in (0, 7, 9_999, 10_000)] == [
        "dev-0000",
        "dev-0007",
        "dev-9999",
        "dev-10000",
    ]


def test_a_shard_holds_the_same_devices_as_the_whole_fleet() -> None:
    # Prepare: a fleet too large for a part of its own per device (parts are shared)
    spec = FleetSpec(devices=500, seed=3)
    whole = device_data(spec)

    # Execute: the same fleet in three processes
    parts = [device_data(spec, shard) for shard in shards(500, 3)]

    # Assert: every device holds exactly what it holds in one process
    joined = [d for part in parts for d in part]
    assert len(joined) == len(whole)
    for (x, y), (wx, wy) in zip(joined, whole, strict=True):
        np.testing.assert_array_equal(x, wx)
        np.testing.assert_array_equal(y, wy)
    # and parts of at least 5 examples, shared by several devices, each in its own order
    assert min(len(y) for _, y in whole) >= 5
    assert len({tuple(np.sort(y)) for _, y in whole}) < 500
    assert len({tuple(y) for _, y in whole}) == 500


def test_a_process_runs_its_shards_devices_as_they_are_in_the_whole_fleet() -> None:
    # Prepare
    spec = FleetSpec(devices=300, seed=2, low_battery_share=0.3)

    # Execute: the second of three processes
    fleet = Fleet(spec, MqttEndpoint(), shard=range(100, 200), training_threads=1)

    # Assert: its ids, profiles and data are those of devices 100-199 of the whole fleet
    try:
        assert [a.device_id for a in fleet.agents] == spec.device_ids()[100:200]
        assert [a.profile for a in fleet.agents] == profiles(spec)[100:200]
        whole = device_data(spec)
        assert all(
            np.array_equal(a._y, whole[i][1])
            for i, a in zip(range(100, 200), fleet.agents, strict=True)
        )
    finally:
        asyncio.run(fleet.__aexit__())  # never entered: only its training pool to end
