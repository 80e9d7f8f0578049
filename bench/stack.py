"""The saga over the real stack: seconds per iteration and what each device-iteration costs.

    .venv/bin/python bench/stack.py                      # cohorts of 10 and 100, small model
    .venv/bin/python bench/stack.py --cohorts 10 --model wide --iterations 3

One private stack (mosquitto, Redis, the six services as processes); per configuration a
simulated fleet in its own processes (`python -m edge_client`), one round of `--iterations`
iterations with every device in the cohort and a target any model reaches, then per
iteration: the split of its time (distribute: the iteration opens until the weights are out;
train: until the last update arrives; close: until the next iteration opens or the candidate
is aggregated), and per device-iteration: Redis commands and bytes (INFO commandstats and
net counters), bytes the broker carried ($SYS), plus resident memory and CPU seconds of every
process. A benchmark, not a test: the machine is shared, so compare rows of one run, and
quote medians (`--repeat`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from deploy.stack import LocalStack
from fedsaga.client import FedSaga
from schemas.mqtt import connect
from schemas.ops import RoundRequested
from services.runtime import keys

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"small": (64, 128, 10), "wide": (64, 1024, 1024, 10)}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def redis_commands(client: redis.Redis) -> dict[str, int]:
    """Calls so far by command (INFO commandstats)."""
    stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def redis_counters(client: redis.Redis) -> tuple[int, int, int]:
    """Commands run, bytes in and bytes out of the Redis server so far."""
    stats: dict[str, Any] = client.info("stats")  # type: ignore[assignment]
    commands: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    calls = sum(int(v["calls"]) for v in commands.values())
    return calls, int(stats["total_net_input_bytes"]), int(stats["total_net_output_bytes"])


class Attribution:
    """Redis calls and commands by the client that sent them (MONITOR; `--by-service`).

    Services name their connections (`fedsaga-aggregator`, ...). A script's own commands
    follow its EVALSHA in MONITOR's output, so they count for the client that ran it: `calls`
    are round trips' worth of commands sent, `commands` add what scripts ran. MONITOR slows
    Redis, so the run's timings are not comparable with a run without it.
    """

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.calls: Counter[str] = Counter()
        self.commands: Counter[str] = Counter()
        self.by_command: Counter[tuple[str, str]] = Counter()
        self._monitor = self.client.monitor()
        self._monitor.__enter__()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        last = ""
        with contextlib.suppress(Exception):  # the connection closed under it: stopped
            while True:
                cmd = self._monitor.next_command()
                if cmd.get("client_type") == "lua":
                    who = last
                else:
                    who = last = f"{cmd['client_address']}:{cmd['client_port']}"
                    self.calls[who] += 1
                self.commands[who] += 1
                self.by_command[who, cmd["command"].split(" ", 1)[0].strip('"').lower()] += 1

    def stop(self) -> dict[str, dict[str, Any]]:
        """Figures by client name (unnamed clients: the bench's own, the fleet's none)."""
        names = {c["addr"]: c["name"] or "other" for c in self.client.client_list()}
        self._monitor.connection.disconnect()
        self._thread.join(5)
        out: dict[str, dict[str, Any]] = {}
        for addr, n in self.commands.items():
            name = names.get(addr, "gone").removeprefix("fedsaga-")
            entry = out.setdefault(name, {"calls": 0, "commands": 0, "by_command": Counter()})
            entry["calls"] += self.calls[addr]
            entry["commands"] += n
        for (addr, command), n in self.by_command.items():
            out[names.get(addr, "gone").removeprefix("fedsaga-")]["by_command"][command] += n
        return out


async def broker_bytes(stack: LocalStack) -> tuple[int, int]:
    """Bytes the broker received and sent so far, from its $SYS topics (dev.conf: 1 s)."""
    values: dict[str, int] = {}
    async with connect(stack.settings.mqtt_endpoint(), f"bench-sys-{os.getpid()}") as client:
        await client.subscribe("$SYS/broker/bytes/+")
        async with asyncio.timeout(5):
            async for message in client.messages:
                values[message.topic.value.rsplit("/", 1)[1]] = int(message.payload)  # type: ignore[arg-type]
                if len(values) == 2:
                    break
    return values["received"], values["sent"]


async def registered(saga: FedSaga, prefix: str) -> int:
    """How many of this configuration's devices the registry holds (their ids only: the
    statuses of 10,000 devices are not read and parsed on every poll)."""
    ids = await saga.store.redis.hkeys(keys.devices())
    return sum(os.fsdecode(i).startswith(prefix) for i in ids)  # bytes from this client


def fleet_pids(pid: int) -> list[int]:
    """The fleet's processes: `python -m edge_client` and the workers it started."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [pid, *map(int, children.read_text().split())] if children.exists() else [pid]


@dataclass
class Row:
    """One configuration's figures."""

    cohort: int
    model: str
    iterations: list[dict[str, float]] = field(default_factory=list)
    per_device_iteration: dict[str, float] = field(default_factory=dict)
    rss_mb: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    redis_by_command: dict[str, float] = field(default_factory=dict)
    redis_by_service: dict[str, dict[str, Any]] = field(default_factory=dict)


def _quantile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


def split(events: list[dict[str, Any]], iterations: int) -> list[dict[str, float]]:
    """Per iteration, seconds to distribute, to train, to close, and in all."""
    opened: dict[int, int] = {}
    sent: dict[int, int] = {}
    last_update: dict[int, int] = {}
    arrivals: dict[int, list[int]] = {}
    closed: dict[int, int] = {}
    for e in events:
        kind, ts = e["kind"], e["ts_ms"]
        if kind == "weights.distributed":
            sent[e["iteration"]] = ts
        elif kind == "update.received":
            last_update[e["iteration"]] = max(ts, last_update.get(e["iteration"], 0))
            arrivals.setdefault(e["iteration"], []).append(ts)
        elif kind == "iteration.completed":
            closed[e["iteration"]] = ts
        elif kind == "nodes.selected":
            opened[0] = ts
    for it in range(1, iterations):
        if it - 1 in closed:
            opened[it] = closed[it - 1]
    out = []
    for it in range(iterations):
        if not {it} <= opened.keys() & sent.keys() & last_update.keys() & closed.keys():
            continue
        out.append(
            {
                "distribute": (sent[it] - opened[it]) / 1000,
                "train": (last_update[it] - sent[it]) / 1000,
                "close": (closed[it] - last_update[it]) / 1000,
                "total": (closed[it] - opened[it]) / 1000,
                # when the first, median and last updates were folded, after the weights
                **{
                    f"update_{name}": (_quantile(arrivals[it], q) - sent[it]) / 1000
                    for name, q in (("first", 0.0), ("median", 0.5), ("last", 1.0))
                },
            }
        )
    return out


async def run_config(
    stack: LocalStack, cohort: int, model: str, iterations: int, *, by_service: bool = False
) -> Row:
    """One round over a fresh fleet of `cohort` devices."""
    r = redis.Redis.from_url(stack.settings.redis_url)
    r.flushdb()
    prefix = f"b{cohort}{model[0]}{int(time.time()) % 10_000}"
    env = {**os.environ, **stack.settings.env()}
    fleet = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge_client",
        "--devices",
        str(cohort),
        "--prefix",
        prefix,
        "--low-battery-share",
        "0",
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    row = Row(cohort, model)
    try:
        async with FedSaga(stack.settings) as saga:
            # 10,000 devices connect in about 20 s (several processes: edge_client/plan.py)
            async with asyncio.timeout(120 + cohort / 50):
                while await registered(saga, prefix) < cohort:
                    if fleet.returncode is not None:
                        raise RuntimeError(f"the fleet exited with {fleet.returncode}")
                    await asyncio.sleep(0.5)
            request = RoundRequested(
                round_id=f"bench-{prefix}",
                create_model=True,
                target_accuracy=0.0,
                min_participating_nodes=max(1, cohort // 2),
                training_rounds=iterations,
                cohort_size=cohort,
                local_epochs=3,
                batch_size=32,
                learning_rate=0.1,
                iteration_timeout_ms=120_000,
                layer_sizes=MODELS[model],
            )
            pids = {name: p.process.pid for name, p in stack.services.items() if p.process}
            pids |= {"redis": stack.servers.redis.process.pid}  # type: ignore[union-attr]
            pids["mosquitto"] = stack.servers.broker.process.pid  # type: ignore[union-attr]
            fleet_ = fleet_pids(fleet.pid)  # its workers' figures are summed as "fleet"
            r.config_resetstat()
            cpu0 = {n: cpu_s(p) for n, p in pids.items()}
            fleet_cpu0 = sum(map(cpu_s, fleet_))
            calls0, rin0, rout0 = redis_counters(r)
            bin0, bout0 = await broker_bytes(stack)
            watch = Attribution(stack.settings.redis_url) if by_service else None
            # the canary's stages wait 20 ms per device they deploy to (the selector's budget)
            result = await saga.run(request, timeout=60 + iterations * 120 + cohort * 0.05)
            attributed = watch.stop() if watch else {}
            calls1, rin1, rout1 = redis_counters(r)
            by_command = redis_commands(r)
            await asyncio.sleep(1.1)  # the broker's $SYS counters, a second behind
            bin1, bout1 = await broker_bytes(stack)
            row.cpu_s = {n: round(cpu_s(p) - cpu0[n], 2) for n, p in pids.items()}
            row.rss_mb = {n: round(rss_mb(p), 1) for n, p in pids.items()}
            row.cpu_s["fleet"] = round(sum(map(cpu_s, fleet_)) - fleet_cpu0, 2)
            row.rss_mb["fleet"] = round(sum(map(rss_mb, fleet_)), 1)
            if result.status != "succeeded":
                raise RuntimeError(f"round {request.round_id}: {result.failure_reason}")
            events = await saga.store.events(request.round_id)
            row.iterations = split(events, iterations)
            n = cohort * iterations
            row.redis_by_command = {
                k: round(v / n, 2) for k, v in sorted(by_command.items(), key=lambda kv: -kv[1])
            }
            row.redis_by_service = {
                name: {
                    "calls": round(v["calls"] / n, 1),
                    "commands": round(v["commands"] / n, 1),
                    "top": {c: round(k / n, 2) for c, k in v["by_command"].most_common(6)},
                }
                for name, v in sorted(attributed.items(), key=lambda kv: -kv[1]["commands"])
            }
            row.per_device_iteration = {
                "redis_commands": round((calls1 - calls0) / n, 1),
                "redis_kb": round((rin1 - rin0 + rout1 - rout0) / n / 1024, 1),
                "broker_kb": round((bin1 - bin0 + bout1 - bout0) / n / 1024, 1),
                "update_kb": round(result.bytes["up_per_device_iteration"] / 1024, 1),
            }
    finally:
        fleet.terminate()
        await fleet.wait()
    return row


def show(rows: list[Row]) -> None:
    """The table the README quotes (medians over iterations; the first one excluded)."""
    head = (
        "| cohort | model | s/iteration | distribute | train | close | Redis cmds | Redis kB "
        "| broker kB | update kB | services RSS MB | CPU s (top 3) |"
    )
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for row in rows:
        later = row.iterations[1:] or row.iterations

        def med(key: str, its: list[dict[str, float]] = later) -> str:
            return f"{statistics.median(i[key] for i in its):.2f}"

        services = sum(v for k, v in row.rss_mb.items() if k not in ("fleet", "redis", "mosquitto"))
        top = sorted(row.cpu_s.items(), key=lambda kv: -kv[1])[:3]
        d = row.per_device_iteration
        print(
            f"| {row.cohort} | {row.model} | {med('total')} | {med('distribute')} | {med('train')} "
            f"| {med('close')} | {d['redis_commands']} | {d['redis_kb']} | {d['broker_kb']} "
            f"| {d['update_kb']} | {services:.0f} | "
            + ", ".join(f"{k} {v}" for k, v in top)
            + " |"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohorts", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--model", choices=sorted(MODELS), default="small")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument(
        "--by-service",
        action="store_true",
        help="attribute Redis calls to the services that made them (MONITOR: slows Redis)",
    )
    args = parser.parse_args()
    rows = []
    with LocalStack(devices=max(args.cohorts)) as stack:  # the broker holds them all
        for cohort in args.cohorts:
            rows.append(
                await run_config(
                    stack, cohort, args.model, args.iterations, by_service=args.by_service
                )
            )
            print(f"cohort {cohort}: done", file=sys.stderr, flush=True)
    show(rows)
    for row in rows:
        top = list(row.redis_by_command.items())[:12]
        print(f"Redis commands per device-iteration, cohort {row.cohort}: " + ", ".join(
            f"{k} {v}" for k, v in top
        ))
        for name, v in row.redis_by_service.items():
            top_ = ", ".join(f"{k} {c}" for k, c in v["top"].items())
            print(f"  {name}: {v['calls']} calls, {v['commands']} commands ({top_})")
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=2))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
