"""`python -m edge_client`: run a simulated fleet against the broker the FEDSAGA_* settings name.

The broker comes from the same settings as every fedsaga process (FEDSAGA_MQTT_URL or
FEDSAGA_MQTT_HOST/PORT, FEDSAGA_MQTT_CA_FILE, a config file: services/runtime/settings.py).
On a broker with passwords (mosquitto/prod.conf), `--passwords FILE` gives each device its
own: lines `device-id:password`, and each device logs in as its id.

The devices run in `--processes` worker processes (by default one per 2,500 devices: see
edge_client/plan.py), each this same command with `--worker I`, one MQTT connection per
device, training on `--training-threads` threads (by default the cores shared between the
processes) with one BLAS thread each. This process starts them, prints `connected N` on
stdout once all N devices are connected, and stops them all when it is stopped or when one
of them exits (with that worker's exit status).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from edge_client.plan import ONE_BLAS_THREAD, FleetPlan, device_id, plan_fleet


def read_passwords(path: Path) -> dict[str, str]:
    """`device-id:password` lines (blank lines and # comments skipped)."""
    out: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        device_id, sep, password = line.partition(":")
        if not sep or not device_id or not password:
            raise SystemExit(f"{path}:{number}: expected device-id:password")
        out[device_id] = password
    return out


def parser() -> argparse.ArgumentParser:
    """The fleet's size, skew, seed and how it is spread over processes."""
    p = argparse.ArgumentParser(
        prog="python -m edge_client", description=__doc__.split("\n\n", 1)[0]
    )
    p.add_argument("--devices", type=int, default=30)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prefix", default="dev", help="device ids are PREFIX-0000, ...")
    p.add_argument("--slowdown", type=float, default=0.0, help="extra seconds per training")
    p.add_argument(
        "--low-battery-share", type=float, default=0.1, help="devices that start nearly empty"
    )
    p.add_argument("--passwords", type=Path, help="device-id:password lines")
    p.add_argument("--processes", type=int, help="worker processes (default: by devices)")
    p.add_argument(
        "--training-threads", type=int, help="training threads per process (default: by cores)"
    )
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # set for the workers
    return p


def files_hard_limit() -> int:
    """This process's hard limit on open files (the workers inherit it)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 1 << 20 if hard == resource.RLIM_INFINITY else hard


def main(argv: list[str] | None = None) -> None:
    """Start the workers, or be one."""
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    try:
        plan = plan_fleet(
            args.devices,
            cores=os.cpu_count() or 1,
            files_limit=files_hard_limit(),
            processes=args.processes,
            training_threads=args.training_threads,
        )
    except ValueError as exc:
        raise SystemExit(f"python -m edge_client: {exc}") from None
    if args.worker is None:
        raise SystemExit(supervise(argv, plan))
    if not 0 <= args.worker < plan.processes:
        raise SystemExit(f"--worker {args.worker}: there are {plan.processes} workers")
    work(args, plan)


class _Stop(Exception):
    """SIGTERM or SIGINT reached the supervising process."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signum)


def supervise(argv: list[str], plan: FleetPlan) -> int:
    """Run the plan's workers until stopped (0) or until one exits (its status)."""
    devices = sum(len(s) for s in plan.shards)
    print(
        f"fleet: {devices} devices in {plan.processes} processes, "
        f"{plan.training_threads} training threads each",
        file=sys.stderr,
        flush=True,
    )
    # Last one wins in argparse: the workers see the plan, not a default computed again.
    fixed = ["--processes", str(plan.processes), "--training-threads", str(plan.training_threads)]
    env = os.environ | ONE_BLAS_THREAD  # before numpy loads in the worker
    workers: list[subprocess.Popen[bytes]] = []
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    code = 0
    try:
        for i in range(plan.processes):
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "edge_client", *argv, *fixed, "--worker", str(i)],
                    env=env,
                    stdout=subprocess.PIPE,
                )
            )
        code = _watch(workers, devices)
    except _Stop:
        code = 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _end(workers)
    return code


def _watch(workers: list[subprocess.Popen[bytes]], devices: int) -> int:
    """Relay the workers' output, their `connected N` lines as one; return when one exits."""
    connected = 0
    partial = {w.stdout.fileno(): b"" for w in workers if w.stdout is not None}
    while True:
        for worker in workers:
            if worker.poll() is not None:
                print(
                    f"fleet: worker {workers.index(worker)} exited with {worker.returncode}; "
                    "stopping the others",
                    file=sys.stderr,
                    flush=True,
                )
                return worker.returncode or 1
        ready, _, _ = select.select(list(partial), [], [], 0.5)
        for fd in ready:
            *lines, partial[fd] = (partial[fd] + os.read(fd, 65536)).split(b"\n")
            for line in lines:
                text = line.decode(errors="replace")
                if not text.startswith("connected "):
                    print(text, flush=True)  # a worker's log line
                    continue
                connected += int(text.split()[1])
                if connected == devices:
                    print(f"connected {devices}", flush=True)


def _end(workers: list[subprocess.Popen[bytes]], grace_s: float = 10.0) -> None:
    """SIGTERM every worker still running; SIGKILL those that outlive `grace_s`."""
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
    deadline = time.monotonic() + grace_s
    for worker in workers:
        try:
            worker.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def work(args: argparse.Namespace, plan: FleetPlan) -> None:
    """One worker: its shard of the fleet, until the supervisor goes away or stops it."""
    from edge_client.fleet import Fleet, FleetSpec  # numpy loads here, after the BLAS settings
    from services.runtime.settings import Settings

    shard = plan.shards[args.worker]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < plan.files_per_process:
        resource.setrlimit(resource.RLIMIT_NOFILE, (plan.files_per_process, hard))
    settings = Settings()
    spec = FleetSpec(
        devices=args.devices,
        alpha=args.alpha,
        seed=args.seed,
        prefix=args.prefix,
        slowdown_s=args.slowdown,
        low_battery_share=args.low_battery_share,
        data_seed=settings.data_seed,
        holdout_fraction=settings.holdout_fraction,
    )
    passwords = read_passwords(args.passwords) if args.passwords else None
    ids = [device_id(args.prefix, i) for i in shard]
    missing = [d for d in ids if passwords is not None and d not in passwords]
    if missing:  # it would log in with no password, or another device's
        raise SystemExit(f"{args.passwords}: no password for {', '.join(missing[:5])}")

    async def run() -> None:
        parent = os.getppid()
        async with Fleet(
            spec,
            settings.mqtt_endpoint(),
            passwords=passwords,
            shard=shard,
            training_threads=plan.training_threads,
        ):
            print(f"connected {len(shard)}", flush=True)
            while os.getppid() == parent:  # the supervisor died without stopping us
                await asyncio.sleep(1.0)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
