"""The fleet simulator in several processes (`python -m edge_client --processes N`): one MQTT
connection per device, each process a shard of the fleet, one BLAS thread per training
thread; a round over the whole fleet; a worker that dies takes the fleet down with it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from deploy.limits import BROKER_FILES_RESERVE, STACK_CLIENTS, open_files, option_value
from deploy.servers import PrivateServers
from deploy.stack import LocalStack
from edge_client.plan import ONE_BLAS_THREAD
from fedsaga.client import FedSaga
from tests.integration.conftest import assert_each_update_counted_once, eventually, request


def children(pid: int) -> list[int]:
    """The processes `pid` started."""
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def environment(pid: int) -> dict[str, str]:
    """A running process's environment."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().partition("=")[::2] for entry in raw if b"=" in entry)


def sockets(pid: int) -> int:
    """How many sockets a process holds open."""
    fds = Path(f"/proc/{pid}/fd")
    return sum(os.readlink(fds / fd).startswith("socket:") for fd in os.listdir(fds))


def gone(pid: int) -> bool:
    """Whether the process has exited (or is a zombie nobody waits for)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@contextlib.asynccontextmanager
async def fleet_process(
    stack: LocalStack, *args: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, list[int]]]:
    """`python -m edge_client ARGS` against the stack, once it says all devices are
    connected: the process and its workers. Its output is drained (workers' logs pass
    through it); it is stopped with SIGTERM after, if still running."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge_client",
        *args,
        env={**os.environ, **stack.settings.env()},
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    lines: list[bytes] = []
    try:
        async with asyncio.timeout(60):
            while not (lines and lines[-1].startswith(b"connected ")):
                line = await proc.stdout.readline()
                assert line, f"the fleet exited with {await proc.wait()}"
                lines.append(line)
        drain = asyncio.create_task(proc.stdout.read())
        yield proc, children(proc.pid)
        drain.cancel()
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


async def test_two_hundred_devices_in_two_processes_complete_a_round(
    stack: LocalStack, saga: FedSaga
) -> None:
    # Prepare: 200 devices, two processes, every device registered
    args = ("--devices", "200", "--processes", "2", "--prefix", "mp", "--low-battery-share", "0")
    async with fleet_process(stack, *args) as (proc, workers):
        # each worker holds its own hundred connections, and trains with one BLAS thread
        assert len(workers) == 2
        assert all(sockets(w) >= 100 for w in workers)
        assert all(environment(w).items() >= ONE_BLAS_THREAD.items() for w in workers)

        async def registered() -> bool:
            return sum(d.device_id.startswith("mp-") for d in await saga.store.devices()) == 200

        await eventually(registered, timeout=30)
        req = request(
            target_accuracy=0.0,  # two short iterations: the mechanics are what is tested
            cohort_size=200,
            min_participating_nodes=150,
            training_rounds=2,
            iteration_timeout_ms=30_000,
        )

        # Execute
        result = await saga.run(req, timeout=120)

        # Assert: the whole cohort's updates were folded once each, from both processes
        assert result.status == "succeeded", result.failure_reason
        await assert_each_update_counted_once(saga, req, result)
        version = result.versions["deployed"]

        async def all_serve_it() -> bool:
            devices = [d for d in await saga.store.devices() if d.device_id.startswith("mp-")]
            return len(devices) == 200 and all(d.model_version == version for d in devices)

        await eventually(all_serve_it, timeout=30)

    # and SIGTERM stopped the fleet, every worker with it
    assert proc.returncode == 0
    assert all(gone(w) for w in workers)


async def test_a_worker_that_dies_stops_the_fleet(stack: LocalStack) -> None:
    # Prepare
    async with fleet_process(stack, "--devices", "4", "--processes", "2", "--prefix", "mpk") as (
        proc,
        workers,
    ):
        # Execute: one worker crashes
        os.kill(workers[1], signal.SIGKILL)

        # Assert: the fleet exits, non-zero, and takes the other worker with it
        async with asyncio.timeout(20):
            code = await proc.wait()
        assert code != 0
        await eventually(lambda: _async(gone(workers[0])), timeout=15)


async def _async(value: bool) -> bool:
    return value


def test_the_broker_gets_the_open_files_its_connections_need(stack: LocalStack) -> None:
    # Prepare: the soft limit the kernel applies to the running broker
    broker = stack.servers.broker
    assert broker.process is not None
    limits = Path(f"/proc/{broker.process.pid}/limits").read_text().splitlines()
    soft = int(next(line for line in limits if line.startswith("Max open files")).split()[3])
    conf = (stack.workdir / "mosquitto.conf").read_text()

    # Assert: raised as the launcher decided, and max_connections within it
    assert soft == broker.open_files
    max_connections = int(option_value(conf, "max_connections") or 0)
    assert 0 < max_connections <= soft - BROKER_FILES_RESERVE
    _, hard = open_files()
    if hard >= 10_000 + STACK_CLIENTS + BROKER_FILES_RESERVE:  # this machine: 20,000
        assert max_connections >= 10_000 + STACK_CLIENTS


def test_a_stack_refuses_more_devices_than_the_open_file_limit_holds(tmp_path: Path) -> None:
    _, hard = open_files()
    with pytest.raises(RuntimeError, match=r"open files for .* devices.*ulimit -Hn"):
        PrivateServers(tmp_path, devices=hard)
