"""The `fedsaga` command line."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Any, NoReturn

import aiomqtt
import typer
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from rich.console import Console
from rich.table import Table

from schemas.ops import Chaos, RoundRequested
from services.runtime.settings import Settings

app = typer.Typer(
    help="Federated learning rounds for edge fleets, as an MQTT saga.", no_args_is_help=True
)
round_app = typer.Typer(help="Start rounds and read their saga timeline.", no_args_is_help=True)
app.add_typer(round_app, name="round")
console = Console()
err_console = Console(stderr=True)


def _settings() -> Settings:
    return Settings()


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


@app.command()
def up(devices: int = 30, alpha: float = 0.5, seed: int = 0) -> None:
    """Start broker, Redis, the six services and a simulated fleet until Ctrl-C."""
    from deploy.stack import LocalStack
    from edge_client.fleet import Fleet, FleetSpec

    try:
        with LocalStack() as stack:
            s = stack.settings
            console.print("stack is up; in another shell:")
            console.print(
                f"  export FEDSAGA_MQTT_PORT={s.mqtt_port} FEDSAGA_REDIS_URL={s.redis_url}"
            )
            console.print("  fedsaga round start demo-1 --wait")
            console.print(
                f"  mosquitto_pub -p {s.mqtt_port} -t fl/ops/round/start "
                """-m '{"round_id": "r2"}'"""
            )
            console.print(f"logs: {stack.workdir}")

            async def serve() -> None:
                spec = FleetSpec(
                    devices=devices,
                    alpha=alpha,
                    seed=seed,
                    data_seed=s.data_seed,
                    holdout_fraction=s.holdout_fraction,
                )
                async with Fleet(spec, s.mqtt_endpoint()):
                    await asyncio.Event().wait()

            asyncio.run(serve())
    except KeyboardInterrupt:  # Ctrl-C, whenever it comes: the stack is torn down by now
        console.print("stopped")


@app.command()
def service(name: str) -> None:
    """Run one service in this process (as `python -m services.NAME`)."""
    from services.runtime.main import main

    main(name)


_REQUEST = RoundRequested.model_fields


def _default(name: str) -> Any:
    """RoundRequested's default for a field, so `--help` shows what an omitted option means."""
    return _REQUEST[name].default


_NO_CHAOS: Chaos = _default("simulate_failure")


def _help(name: str) -> str | None:
    return _REQUEST[name].description


def _die(message: str, code: int = 2) -> NoReturn:
    """One clear line on stderr and an exit code: 1 the round failed, 2 usage or connection."""
    err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def build_request(round_id: str, fields: dict[str, Any]) -> RoundRequested:
    """The round request from CLI options; a bad value is one line naming the option."""
    try:
        return RoundRequested.model_validate({"round_id": round_id, **fields})
    except ValidationError as exc:
        first = exc.errors()[0]
        option = "--" + str(first["loc"][0]).replace("_", "-") if first["loc"] else "request"
        _die(f"{option}: {first['msg']}")


@round_app.command("start")
def round_start(
    round_id: Annotated[str, typer.Argument(help="id of the new round")],
    model_name: Annotated[str, typer.Option(help="model lineage to train")] = _default(
        "model_name"
    ),
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
) -> None:
    """Publish a round request (and optionally wait for its result)."""
    from fedsaga.client import FedSaga

    try:
        sizes = tuple(int(x) for x in layer_sizes.split(","))
    except ValueError:
        _die(f"--layer-sizes: expected comma-separated integers, got {layer_sizes!r}")
    request = build_request(
        round_id,
        {
            "model_name": model_name,
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
            result = await saga.run(request)
            console.print_json(result.model_dump_json(exclude={"timeline"}))
            return 0 if result.succeeded else 1

    try:
        code = asyncio.run(go())
    except aiomqtt.MqttError as exc:
        _die(f"cannot reach the MQTT broker at {settings.mqtt_endpoint().url}: {exc}")
    except RedisConnectionError as exc:
        _die(f"cannot reach Redis at {settings.redis_url}: {exc}")
    raise typer.Exit(code)


@round_app.command("status")
def round_status(
    round_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Show a round's saga timeline and outcome from Redis."""
    from fedsaga.status import round_result
    from services.runtime.store import SagaStore

    async def go() -> None:
        store = SagaStore.from_url(_settings().redis_url)
        try:
            result = await round_result(store, round_id)
        finally:
            await store.aclose()
        if as_json:
            console.print_json(result.model_dump_json())
            return
        table = Table(title=f"round {round_id}: {result.status}")
        table.add_column("time")
        table.add_column("service")
        table.add_column("event")
        t0 = result.timeline[0]["ts_ms"] if result.timeline else 0
        shown = [e for e in result.timeline if e["kind"] != "update.received"]
        for e in shown:
            table.add_row(
                f"+{(e['ts_ms'] - t0) / 1000:.2f}s",
                e["service"],
                e["kind"] + (f" (step {e['step']})" if "step" in e else ""),
            )
        console.print(table)
        console.print_json(json.dumps(result.model_dump(exclude={"timeline"})))

    asyncio.run(go())


@app.command()
def models(model: str = "digits-mlp") -> None:
    """List a model's versions, lineage and metrics."""
    from services.runtime.store import SagaStore

    async def go() -> None:
        store = SagaStore.from_url(_settings().redis_url)
        try:
            active = await store.active_version(model)
            table = Table(title=f"{model} (active: {active})")
            for col in ("version", "parent", "status", "accuracy", "round", "created"):
                table.add_column(col)
            for ver in await store.versions(model):
                rec = await store.get_version(model, ver)
                acc = json.loads(rec.get("metrics", "{}")).get("accuracy")
                created = time.strftime("%H:%M:%S", time.localtime(int(rec["created_ms"]) / 1000))
                table.add_row(
                    ver,
                    rec.get("parent") or "-",
                    rec.get("status", ""),
                    f"{acc:.4f}" if acc is not None else "-",
                    rec.get("round_id", ""),
                    created,
                )
            console.print(table)
        finally:
            await store.aclose()

    asyncio.run(go())


@app.command()
def fleet() -> None:
    """List registered devices and their last status."""
    from services.runtime.store import SagaStore

    async def go() -> None:
        store = SagaStore.from_url(_settings().redis_url)
        try:
            table = Table(title="fleet")
            for col in (
                "device",
                "state",
                "battery",
                "charging",
                "network",
                "examples",
                "model",
                "lease",
            ):
                table.add_column(col)
            for d in sorted(await store.devices(), key=lambda d: d.device_id):
                table.add_row(
                    d.device_id,
                    d.state,
                    f"{d.battery:.2f}",
                    str(d.charging),
                    d.network,
                    str(d.num_examples),
                    d.model_version or "-",
                    await store.lease_owner(d.device_id) or "-",
                )
            console.print(table)
        finally:
            await store.aclose()

    asyncio.run(go())


if __name__ == "__main__":
    app()
