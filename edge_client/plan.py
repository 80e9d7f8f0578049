"""How a simulated fleet is spread over processes: pure arithmetic, no I/O.

A device holds one MQTT connection (one socket, one file descriptor) and a few asyncio tasks,
so one Python process carries a few thousand of them before its event loop, not the broker,
becomes the limit; past that the fleet runs several processes, each with a contiguous share
of the device ids. Each process trains on a small thread pool of its own, one BLAS thread per
training thread, so that the whole fleet does not put more training threads on the machine
than it has cores (the wide model trained 2.4 times faster with one BLAS thread than with
OpenBLAS's one per core, each of a dozen concurrent trainings spawning its own).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# What one fleet process carries at most by default (bench/stack.py --cohorts 10000).
DEVICES_PER_PROCESS = 2_500
# File descriptors a fleet process needs beside its devices' sockets (the interpreter, its
# libraries, the executor's threads' pipes): a safe margin.
FILES_RESERVE = 64
# Environment for every fleet process, set before numpy loads: BLAS uses one thread per
# training thread instead of one per core.
ONE_BLAS_THREAD = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def device_id(prefix: str, index: int) -> str:
    """A simulated device's id: `dev-0000`, ..., `dev-9999`, `dev-10000`."""
    return f"{prefix}-{index:04d}"


def shards(devices: int, processes: int) -> list[range]:
    """Device indices per process: contiguous, in order, sizes differing by at most one, none
    empty (no more shards than devices)."""
    if devices < 1 or processes < 1:
        raise ValueError(f"{devices} devices over {processes} processes")
    count = min(devices, processes)
    base, extra = divmod(devices, count)
    out, start = [], 0
    for i in range(count):
        size = base + (i < extra)
        out.append(range(start, start + size))
        start += size
    return out


@dataclass(frozen=True)
class FleetPlan:
    """Processes, the devices each runs, and its training threads."""

    processes: int
    training_threads: int  # per process
    shards: tuple[range, ...]

    @property
    def files_per_process(self) -> int:
        """Open files the largest process needs (its sockets and a reserve)."""
        return max(len(s) for s in self.shards) + FILES_RESERVE


def plan_fleet(
    devices: int,
    *,
    cores: int,
    files_limit: int,
    processes: int | None = None,
    training_threads: int | None = None,
) -> FleetPlan:
    """The plan for `devices` on a machine with `cores` and a per-process open-file hard limit.

    By default, enough processes that none carries more than `DEVICES_PER_PROCESS` devices or
    more sockets than `files_limit` allows, and training threads that share the cores between
    the processes (at least one each). Asking for more processes than devices gives one each.
    Raises ValueError when a process would need more files than the limit: more processes,
    or a higher `ulimit -Hn`, are the way out, and the message says so.
    """
    if devices < 1:
        raise ValueError(f"a fleet needs at least one device, got {devices}")
    if cores < 1 or files_limit < 1:
        raise ValueError(f"cores={cores}, files_limit={files_limit}")
    if processes is None:
        per_process = min(DEVICES_PER_PROCESS, max(1, files_limit - FILES_RESERVE))
        processes = math.ceil(devices / per_process)
    if processes < 1:
        raise ValueError(f"--processes must be at least 1, got {processes}")
    parts = tuple(shards(devices, processes))
    if training_threads is None:
        training_threads = max(1, cores // len(parts))
    if training_threads < 1:
        raise ValueError(f"--training-threads must be at least 1, got {training_threads}")
    plan = FleetPlan(len(parts), training_threads, parts)
    if plan.files_per_process > files_limit:
        largest = max(len(s) for s in parts)
        way_out = "raise the limit (`ulimit -Hn`, LimitNOFILE= in systemd)"
        if files_limit > FILES_RESERVE:
            enough = math.ceil(devices / (files_limit - FILES_RESERVE))
            way_out = f"run more processes (--processes {enough} or more) or {way_out}"
        raise ValueError(
            f"a process of {largest} devices needs {plan.files_per_process} open files, above "
            f"the hard limit of {files_limit}: {way_out}"
        )
    return plan
