"""The `fedsaga` command line: an operator's terminal onto a fedsaga deployment.

Every verb that reads prints a table, or JSON with `--json`. Exit codes: 0 success, 1 the
round failed, 2 a usage or connection error, always as one line on stderr naming what was
tried (never a traceback). Where the broker and Redis are comes from `--mqtt-url`,
`--redis-url`, `--ca-file`, else FEDSAGA_* variables, else the config file
(services/runtime/settings.py); each verb that connects says which on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.util
import json
import os
import shlex
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import aiomqtt
import typer
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rich.console import Console
from rich.table import Table

from fedsaga.client import APPEAR_S, FedSaga, RoundExists, RoundNotRunning
from fedsaga.status import RoundResult, UnknownRound, describe
from schemas.errors import first_error
from schemas.mqtt import redact
from schemas.ops import Chaos, RoundRequested
from services.runtime.settings import Settings

app = typer.Typer(
    help="Federated learning rounds for edge fleets, as an MQTT saga.", no_args_is_help=True
)
round_app = typer.Typer(help="Start, follow, stop and report rounds.", no_args_is_help=True)
app.add_typer(round_app, name="round")
console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")

# Connection flags given on the command line (`fedsaga --mqtt-url ... round list`).
_flags: dict[str, str] = {}

JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


def default_state_dir() -> Path:
    """Where `up` keeps Redis data, broker persistence and logs between runs."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "fedsaga"


StateDirOption = Annotated[
    Path,
    typer.Option(
        envvar="FEDSAGA_STATE_DIR",
        help="state of `up`: Redis data, broker persistence, logs "
        "[default: $XDG_DATA_HOME/fedsaga or ~/.local/share/fedsaga]",
        show_default=False,
    ),
]


@app.callback()
def main(
    mqtt_url: Annotated[
        str | None,
        typer.Option(help="broker, e.g. mqtts://fedsaga-ops:PASSWORD@host:8883 [FEDSAGA_MQTT_URL]"),
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(
            help="Redis, e.g. redis://host:6379/0, or a cluster: redis+cluster://host:7000"
            " [FEDSAGA_REDIS_URL]"
        ),
    ] = None,
    ca_file: Annotated[
        Path | None, typer.Option(help="CA to verify the broker's TLS certificate with")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="TOML profile [FEDSAGA_CONFIG, default ~/.config/fedsaga/config.toml]"),
    ] = None,
) -> None:
    """Federated learning rounds for edge fleets, as an MQTT saga."""
    if config is not None:
        if not config.exists():
            _die(f"--config: no file {config}")
        os.environ["FEDSAGA_CONFIG"] = str(config)
    given = {"mqtt_url": mqtt_url, "redis_url": redis_url, "mqtt_ca_file": ca_file}
    _flags.update({k: str(v) for k, v in given.items() if v is not None})


def _die(message: str, code: int = 2) -> NoReturn:
    """One clear line on stderr and an exit code: 1 the round failed, 2 usage or connection."""
    err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _settings() -> Settings:
    try:
        return Settings(**_flags)  # type: ignore[arg-type]
    except ValidationError as exc:
        _die(first_error(exc, whole="settings"))
    except (ValueError, OSError) as exc:  # an unreadable or malformed config file
        _die(f"settings: {exc}")


def _run(
    settings: Settings, work: Callable[[], Coroutine[Any, Any, T]], *, uses_mqtt: bool = True
) -> T:
    """Run `work` with the servers `settings` name; connection failures as one line."""
    broker = settings.mqtt_endpoint("fedsaga-ops").url
    redis_url = redact(settings.redis_url)
    where = f"broker {broker}, Redis {redis_url}" if uses_mqtt else f"Redis {redis_url}"
    err_console.print(f"[dim]{where}[/dim]", highlight=False)
    try:
        return asyncio.run(work())
    except aiomqtt.MqttError as exc:
        _die(f"cannot reach the MQTT broker at {broker}: {exc}")
    except (RedisConnectionError, RedisTimeoutError) as exc:
        _die(f"cannot reach Redis at {redis_url}: {exc}")
    except (UnknownRound, RoundExists, RoundNotRunning) as exc:
        _die(str(exc))
    except ValidationError as exc:  # an option the message refuses (a --reason too long)
        _die(first_error(exc, options=True, whole="input"))
    except TimeoutError as exc:
        _die(str(exc) or f"timed out ({where})")
    except KeyboardInterrupt:  # Ctrl-C: not "the round failed" (1)
        err_console.print("interrupted")
        raise typer.Exit(130) from None


@contextlib.asynccontextmanager
async def _store(settings: Settings) -> AsyncIterator[Any]:
    from services.runtime.store import SagaStore

    store = SagaStore.from_url(settings.redis_url)
    try:
        await store.redis.ping()
        yield store
    finally:
        await store.aclose()


def _print_json(value: object) -> None:
    console.print_json(json.dumps(value, default=str))


def _printed_as_json_or_empty(rows: list[dict[str, Any]], as_json: bool, empty: str) -> bool:
    """Print the rows as JSON, or say there are none; False when a table is still to come."""
    if as_json:
        _print_json(rows)
    elif not rows:
        console.print(empty, markup=False, highlight=False)
    return as_json or not rows


def _age(ms: int) -> str:
    seconds = max(0, time.time() - ms / 1000)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172_800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


# --- the local stack ------------------------------------------------------------------------


@app.command()
def demo(
    devices: int = 30,
    alpha: float = 0.5,
    seed: int = 0,
    iterations: Annotated[int, typer.Option(help="FedAvg iterations per round")] = 25,
) -> None:
    """Run the seed's two scenarios end to end on a private local stack."""
    from fedsaga.demo import DemoConfig, run_demo

    raise typer.Exit(
        run_demo(DemoConfig(devices=devices, alpha=alpha, seed=seed, iterations=iterations))
    )


@contextlib.contextmanager
def _exclusive(state_dir: Path) -> Iterator[None]:
    """Hold `state_dir` for this `up`; a second `up` on it is refused, not interleaved."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / "up.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _die(f"another `fedsaga up` is using {state_dir}; give this one --state-dir")
        yield


@app.command()
def up(
    devices: int = 30,
    alpha: float = 0.5,
    seed: int = 0,
    state_dir: StateDirOption = default_state_dir(),  # noqa: B008 - typer reads it
) -> None:
    """Start broker, Redis, the six services and a simulated fleet until Ctrl-C.

    Rounds, models and devices outlive a restart: Redis data, broker persistence and logs stay
    in the state directory (`fedsaga logs SERVICE` reads the logs there).
    """
    from deploy.stack import LocalStack
    from edge_client.fleet import Fleet, FleetSpec

    try:
        stack_up = LocalStack(state_dir)
    except FileNotFoundError as exc:  # mosquitto or redis-server not installed
        _die(str(exc))
    try:
        with _exclusive(state_dir), stack_up as stack:
            s = stack.settings

            async def serve() -> None:
                spec = FleetSpec(
                    devices=devices,
                    alpha=alpha,
                    seed=seed,
                    data_seed=s.data_seed,
                    holdout_fraction=s.holdout_fraction,
                )
                async with Fleet(spec, s.mqtt_endpoint()) as fleet:
                    await _registered(s, {a.device_id for a in fleet.agents})
                    _print_up(s, state_dir, stack.services)
                    await asyncio.Event().wait()

            asyncio.run(serve())
    except KeyboardInterrupt:  # Ctrl-C, whenever it comes: the stack is torn down by now
        console.print("stopped")
    except (RuntimeError, TimeoutError) as exc:  # a server or service did not start
        _die(f"the stack did not come up: {str(exc).splitlines()[0]} (logs in {state_dir})")


async def _registered(settings: Settings, device_ids: set[str], timeout: float = 30.0) -> None:
    """Wait until the selector has every device in its registry (so a round can start)."""
    async with _store(settings) as store, asyncio.timeout(timeout):
        while not device_ids <= {d.device_id for d in await store.devices()}:
            await asyncio.sleep(0.1)


def _print_up(settings: Settings, state_dir: Path, services: dict[str, Any]) -> None:
    """What `up` says once it serves: exports to paste, the profile, metrics, logs."""
    s = settings
    profile = state_dir / "profile.toml"
    profile.write_text(
        f'mqtt_host = "{s.mqtt_host}"\nmqtt_port = {s.mqtt_port}\nredis_url = "{s.redis_url}"\n'
    )
    console.print(f"stack is up; state in {state_dir}; in another shell:", soft_wrap=True)
    console.print(
        f"  export FEDSAGA_MQTT_HOST={s.mqtt_host} FEDSAGA_MQTT_PORT={s.mqtt_port} "
        f"FEDSAGA_REDIS_URL={s.redis_url}",
        soft_wrap=True,
    )
    console.print(f"  (or: export FEDSAGA_CONFIG={shlex.quote(str(profile))})", soft_wrap=True)
    console.print("  fedsaga round start demo-1 --create-model --wait")
    for name, proc in services.items():
        console.print(f"metrics of {name}: {proc.metrics_url}", soft_wrap=True)
    console.print(f"logs: {state_dir}", soft_wrap=True)


@app.command()
def service(name: str) -> None:
    """Run one service in this process (as `python -m services.NAME`)."""
    from services.runtime.main import main

    main(name, **_flags)


@app.command()
def logs(
    name: Annotated[str, typer.Argument(help="a service: selector, aggregator, ...")],
    lines: Annotated[int, typer.Option("--lines", "-n", help="how many recent lines")] = 50,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing")] = False,
    state_dir: StateDirOption = default_state_dir(),  # noqa: B008 - typer reads it
) -> None:
    """Print a service's log from the stack `fedsaga up` runs."""
    from services.runtime.main import SERVICES

    if name not in SERVICES:
        _die(f"unknown service {name!r}; one of {', '.join(SERVICES)}")
    path = state_dir / f"{name}.log"
    if not path.exists():
        _die(f"no log at {path}: is `fedsaga up` using {state_dir}? (--state-dir)")
    with path.open(errors="replace") as log:
        for line in log.readlines()[-lines:] if lines > 0 else []:
            console.out(line.rstrip("\n"), highlight=False)
        while follow:
            line = log.readline()
            if line:
                console.out(line.rstrip("\n"), highlight=False)
            else:
                time.sleep(0.2)


# --- rounds ---------------------------------------------------------------------------------

_REQUEST = RoundRequested.model_fields


def _default(name: str) -> Any:
    """RoundRequested's default for a field, so `--help` shows what an omitted option means."""
    return _REQUEST[name].default


def _help(name: str) -> str | None:
    return _REQUEST[name].description


_NO_CHAOS: Chaos = _default("simulate_failure")


def build_request(round_id: str, fields: dict[str, Any]) -> RoundRequested:
    """The round request from CLI options; a bad value is one line naming the option."""
    try:
        return RoundRequested.model_validate({"round_id": round_id, **fields})
    except ValidationError as exc:
        _die(first_error(exc, options=True, whole="request"))


@round_app.command("start")
def round_start(
    round_id: Annotated[str, typer.Argument(help="id of the new round (never reused)")],
    model_name: Annotated[str, typer.Option(help="model lineage to train")] = _default(
        "model_name"
    ),
    create_model: Annotated[bool, typer.Option(help=_help("create_model"))] = False,
    model_version: Annotated[str | None, typer.Option(help=_help("model_version"))] = None,
    target_accuracy: Annotated[
        float, typer.Option(help="holdout accuracy the candidate must reach")
    ] = _default("target_accuracy"),
    min_participating_nodes: Annotated[
        int, typer.Option(help="devices that must report in every iteration")
    ] = _default("min_participating_nodes"),
    training_rounds: Annotated[int, typer.Option(help="FedAvg iterations in the round")] = _default(
        "training_rounds"
    ),
    simulate_failure: Annotated[
        Chaos, typer.Option(help="a failure simulated devices act out")
    ] = _NO_CHAOS,
    cohort_size: Annotated[int, typer.Option(help="devices to lease")] = _default("cohort_size"),
    local_epochs: Annotated[int, typer.Option(help="epochs on each device")] = _default(
        "local_epochs"
    ),
    batch_size: Annotated[int, typer.Option(help="device batch size")] = _default("batch_size"),
    learning_rate: Annotated[float, typer.Option(help="device learning rate")] = _default(
        "learning_rate"
    ),
    iteration_timeout_ms: Annotated[
        int, typer.Option(help="how long devices have to report, per iteration")
    ] = _default("iteration_timeout_ms"),
    layer_sizes: Annotated[str, typer.Option(help=_help("layer_sizes"))] = ",".join(
        map(str, _default("layer_sizes"))
    ),
    seed: Annotated[int, typer.Option(help="seed of selection, sampling and init")] = _default(
        "seed"
    ),
    wait: Annotated[bool, typer.Option(help="wait for the result and print it")] = False,
    timeout: Annotated[float, typer.Option(help="with --wait: give up after seconds")] = 600.0,
) -> None:
    """Publish a round request (and optionally wait for its result, as JSON)."""
    try:
        sizes = tuple(int(x) for x in layer_sizes.split(","))
    except ValueError:
        _die(f"--layer-sizes: expected comma-separated integers, got {layer_sizes!r}")
    request = build_request(
        round_id,
        {
            "model_name": model_name,
            "create_model": create_model,
            "model_version": model_version,
            "target_accuracy": target_accuracy,
            "min_participating_nodes": min_participating_nodes,
            "training_rounds": training_rounds,
            "simulate_failure": simulate_failure,
            "cohort_size": cohort_size,
            "local_epochs": local_epochs,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "iteration_timeout_ms": iteration_timeout_ms,
            "layer_sizes": sizes,
            "seed": seed,
        },
    )
    settings = _settings()

    async def go() -> int:
        async with FedSaga(settings) as saga:
            if not wait:
                await saga.start(request)
                console.print(f"requested round {round_id}")
                return 0
            result = await saga.run(request, timeout=timeout)
            console.print_json(result.model_dump_json(exclude={"timeline"}))
            return 0 if result.succeeded else 1

    raise typer.Exit(_run(settings, go))


@round_app.command("list")
def round_list(
    limit: Annotated[int, typer.Option(help="how many of the newest rounds")] = 20,
    as_json: JsonOption = False,
) -> None:
    """Recent rounds, newest first: status, step, iteration, version, age."""
    from schemas.steps import STEP_NAMES

    settings = _settings()

    async def go() -> list[dict[str, Any]]:
        async with _store(settings) as store:
            rows = []
            for round_id, created_ms in await store.recent_rounds(limit):
                state = await store.get_round(round_id)
                rows.append(
                    {
                        "round_id": round_id,
                        "status": state.status,
                        "step": int(state.step),
                        "step_name": STEP_NAMES[state.step],
                        "iteration": state.iteration,
                        "model": state.model_name,
                        "version": state.deployed_version or state.candidate_version,
                        "parent": state.parent_version,
                        "failure_reason": state.failure_reason,
                        "created_ms": created_ms,
                    }
                )
            return rows

    rows = _run(settings, go, uses_mqtt=False)
    if _printed_as_json_or_empty(rows, as_json, "no rounds yet"):
        return
    table = Table(title="rounds")
    for col in ("round", "status", "step", "iteration", "model", "version", "age", "reason"):
        table.add_column(col, no_wrap=col in ("round", "model", "version"))
    for r in rows:
        table.add_row(
            r["round_id"],
            r["status"],
            f"{r['step']} {r['step_name']}",
            str(r["iteration"]),
            r["model"],
            r["version"] or "-",
            _age(r["created_ms"]),
            r["failure_reason"] or "",
        )
    console.print(table)


async def _result(settings: Settings, round_id: str) -> RoundResult:
    from fedsaga.status import round_result

    async with _store(settings) as store:
        return await round_result(store, round_id)


def _print_summary(result: RoundResult) -> None:
    """The result's essentials as lines, for people (the JSON has everything)."""
    p = result.participation
    lines = [f"round {result.round_id}: {result.status}"]
    if result.failure_reason:
        lines.append(f"  failed at step {result.failed_step}: {result.failure_reason}")
    versions = result.versions
    lines.append(
        f"  versions: parent {versions['parent'] or '-'}, candidate "
        f"{versions['candidate'] or '-'}, active {versions['active'] or '-'}"
    )
    per_it = p.get("participants_per_iteration", [])
    if per_it:
        shown = " ".join(str(n) for n in per_it)
        lines.append(f"  participants per iteration (cohort {p['cohort']}): {shown}")
    if p.get("failure_reasons"):
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(p["failure_reasons"].items()))
        lines.append(f"  device failures: {reasons}")
    if "accuracy" in result.metrics:
        lines.append(f"  holdout accuracy: {result.metrics['accuracy']:.4f}")
    if result.compensations:
        lines.append("  compensations: " + "; ".join(result.compensations))
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _print_event(after_ms: int, service: str, detail: str) -> None:
    """One timeline line: time since the round began, the service, what happened."""
    console.print(
        f"+{after_ms / 1000:7.2f}s  {service:<20} {detail}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


@round_app.command("status")
def round_status(round_id: str, as_json: JsonOption = False) -> None:
    """A round's saga timeline and outcome, from Redis."""
    settings = _settings()
    result = _run(settings, lambda: _result(settings, round_id), uses_mqtt=False)
    if as_json:
        console.print_json(result.model_dump_json())
        raise typer.Exit(0)
    t0 = result.timeline[0]["ts_ms"] if result.timeline else 0
    for e in result.timeline:
        if e["kind"] != "update.received":
            _print_event(e["ts_ms"] - t0, e["service"], e["detail"])
    _print_summary(result)


@round_app.command("watch")
def round_watch(
    round_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per event")] = False,
    timeout: Annotated[float, typer.Option(help="give up after seconds")] = 3600.0,
) -> None:
    """Follow a round live, event by event, until it ends; exit 1 if it failed."""
    settings = _settings()

    async def go() -> int:
        async with _store(settings) as store, asyncio.timeout(timeout):
            # A round requested a moment ago (mosquitto_pub ... && fedsaga round watch) may
            # not be recorded yet.
            deadline = time.monotonic() + APPEAR_S
            while not (await store.get_round(round_id)).exists:
                if time.monotonic() > deadline:
                    raise UnknownRound(f"no round {round_id}")
                await asyncio.sleep(0.1)
            return await _follow(store, round_id, as_json)

    raise typer.Exit(_run(settings, go, uses_mqtt=False))


async def _follow(store: Any, round_id: str, as_json: bool) -> int:
    """Print the round's log from its start, then as it grows, until round.completed."""
    after: str | None = None
    t0: int | None = None
    cohort = 0
    updates: Counter[int] = Counter()
    progress = (
        console.status("waiting for events")
        if console.is_terminal and not as_json
        else contextlib.nullcontext()
    )
    with progress as spinner:
        while True:
            for event in await store.events(round_id, after=after):
                after = event["id"]
                kind = event["kind"]
                t0 = event["ts_ms"] if t0 is None else t0
                if kind == "nodes.selected":
                    cohort = len(event["cohort"])
                if as_json:
                    console.out(json.dumps(event, default=str), highlight=False)
                elif kind == "update.received":
                    updates[event["iteration"]] += 1
                    if spinner is not None:
                        it = event["iteration"]
                        spinner.update(f"iteration {it}: {updates[it]} of {cohort} updates")
                else:
                    _print_event(event["ts_ms"] - t0, event["service"], describe(event, cohort))
                if kind == "round.completed":
                    return 0 if event["outcome"] == "succeeded" else 1
            await asyncio.sleep(0.25)


@round_app.command("stop")
def round_stop(
    round_id: str,
    reason: Annotated[str, typer.Option(help="why, recorded with the failure")] = "",
    wait: Annotated[bool, typer.Option(help="wait until the compensations ran")] = False,
    timeout: Annotated[float, typer.Option(help="with --wait: give up after seconds")] = 120.0,
) -> None:
    """Cancel a running round: the steps done compensate in reverse order, as on a failure.

    With --wait: exit 0 once the round has failed as asked (its compensations done), 1 if it
    ended otherwise (it succeeded first).
    """
    settings = _settings()

    async def go() -> int:
        async with FedSaga(settings) as saga:
            await saga.stop(round_id, reason)
            if not wait:
                console.print(f"asked round {round_id} to stop")
                return 0
            result = await saga.wait(round_id, timeout=timeout)
            _print_summary(result)
            return 0 if result.status == "failed" else 1

    raise typer.Exit(_run(settings, go))


@round_app.command("report")
def round_report(
    round_id: str,
    out: Annotated[
        Path | None, typer.Option(help="directory for index.html and its PNGs [./report-ID]")
    ] = None,
) -> None:
    """Write a round's report: accuracy, participation and bytes per iteration, as HTML."""
    from fedsaga.report import write_report

    if importlib.util.find_spec("matplotlib") is None:  # the `report` extra
        _die("the report draws with matplotlib: pip install 'fedsaga[report]'")
    settings = _settings()
    target = out or Path(f"report-{round_id}")

    async def go() -> Path:
        async with _store(settings) as store:
            return await write_report(store, round_id, target)

    page = _run(settings, go, uses_mqtt=False)
    console.print(f"wrote {page}", markup=False, highlight=False, soft_wrap=True)


# --- models and devices ---------------------------------------------------------------------


@app.command()
def models(
    model: Annotated[str | None, typer.Option(help="one model (default: every model)")] = None,
    as_json: JsonOption = False,
) -> None:
    """Every model's versions, lineage and metrics, and which version is active."""
    settings = _settings()

    async def go() -> dict[str, dict[str, Any]]:
        async with _store(settings) as store:
            names = [model] if model else await store.model_names()
            out: dict[str, dict[str, Any]] = {}
            for name in names:
                versions = []
                for ver in await store.versions(name):
                    rec = await store.get_version(name, ver)
                    versions.append(
                        {
                            "version": ver,
                            "parent": rec.get("parent") or None,
                            "status": rec.get("status", ""),
                            "metrics": json.loads(rec.get("metrics", "{}")),
                            "round_id": rec.get("round_id", ""),
                            "created_ms": int(rec.get("created_ms", 0)),
                            "digest": rec.get("digest", ""),
                        }
                    )
                out[name] = {"active": await store.active_version(name), "versions": versions}
            return out

    found = _run(settings, go, uses_mqtt=False)
    if model and not found[model]["versions"]:
        _die(f"no model {model}")
    if as_json:
        _print_json(found)
        return
    if not found:
        console.print("no models yet: the first round of a model creates it (--create-model)")
        return
    for name, entry in found.items():
        table = Table(title=f"{name} (active: {entry['active'] or '-'})")
        for col in ("version", "parent", "status", "accuracy", "round", "created"):
            table.add_column(col, no_wrap=True)
        for v in entry["versions"]:
            acc = v["metrics"].get("accuracy")
            table.add_row(
                v["version"],
                v["parent"] or "-",
                v["status"],
                f"{acc:.4f}" if acc is not None else "-",
                v["round_id"],
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v["created_ms"] / 1000)),
            )
        console.print(table)


@app.command()
def fleet(as_json: JsonOption = False) -> None:
    """Registered devices: state, battery, network, the model they run, their lease."""
    settings = _settings()

    async def go() -> list[dict[str, Any]]:
        async with _store(settings) as store:
            # A device reports the version it runs, not the model's name: the models that
            # have that version (devices hold the int8-rebuilt weights, so digests differ).
            having: dict[str, list[str]] = {}
            for name in await store.model_names():
                for ver in await store.versions(name):
                    having.setdefault(ver, []).append(name)
            rows = []
            for d in sorted(await store.devices(), key=lambda d: d.device_id):
                rows.append(
                    {
                        **d.model_dump(mode="json", exclude={"msg_id", "schema_version", "kind"}),
                        "model_name": "|".join(having.get(d.model_version or "", [])) or None,
                        "lease": await store.lease_owner(d.device_id),
                    }
                )
            return rows

    rows = _run(settings, go, uses_mqtt=False)
    empty = f"no devices have registered in Redis at {redact(settings.redis_url)}"
    if _printed_as_json_or_empty(rows, as_json, empty):
        return
    table = Table(title=f"fleet ({len(rows)} devices)")
    for col in ("device", "state", "battery", "charging", "network", "examples", "model", "lease"):
        table.add_column(col, no_wrap=col in ("device", "model", "lease"))
    for r in rows:
        running = " ".join(x for x in (r["model_name"], r["model_version"]) if x)
        table.add_row(
            r["device_id"],
            r["state"],
            f"{r['battery']:.2f}",
            "yes" if r["charging"] else "no",
            r["network"],
            str(r["num_examples"]),
            running or "-",
            r["lease"] or "-",
        )
    console.print(table)


if __name__ == "__main__":
    app()
