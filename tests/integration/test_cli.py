"""Every verb of the `fedsaga` command line, run as a process against the real stack.

What an operator relies on: the output (tables, or JSON with --json), the exit codes (0
success, 1 the round failed, 2 usage or connection error) and one-line errors that name what
was tried. The README's own lines are run by test_readme.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from deploy.stack import LocalStack
from edge_client.fleet import Fleet
from fedsaga.client import FedSaga, RoundExists
from schemas.steps import Step
from tests.integration.conftest import cli_env, eventually, fedsaga, request


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single error line a failed command must print (and no traceback)."""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


async def test_read_verbs_show_a_finished_round_as_tables_and_as_json(
    stack: LocalStack, saga: FedSaga, fleet: Fleet
) -> None:
    # Prepare: one round that succeeded
    env = cli_env(stack)
    req = request(training_rounds=2)
    done = await saga.run(req, timeout=60)
    assert done.succeeded, done.failure_reason

    # Execute
    listed = await fedsaga("round", "list", "--json", env=env)
    status = await fedsaga("round", "status", req.round_id, env=env)
    watched = await fedsaga("round", "watch", req.round_id, env=env)
    models = await fedsaga("models", "--json", env=env)
    devices = await fedsaga("fleet", "--json", env=env)
    table = await fedsaga("fleet", env={**env, "COLUMNS": "60"})

    # Assert: each exits 0 and says what happened
    for proc in (listed, status, watched, models, devices, table):
        assert proc.returncode == 0, proc.stderr
        assert f"Redis {stack.settings.redis_url}" in proc.stderr  # says which servers
    (row,) = json.loads(listed.stdout)
    assert (row["round_id"], row["status"], row["version"]) == (req.round_id, "succeeded", "1.0.0")
    assert "iteration 1: 10 of 10 devices reported" in status.stdout
    assert "participants per iteration (cohort 10): 10 10" in status.stdout
    assert "succeeded: version 1.0.0" in watched.stdout.splitlines()[-1]
    model = json.loads(models.stdout)["digits-mlp"]
    assert model["active"] == "1.0.0"
    assert [v["version"] for v in model["versions"]] == ["1.0.0"]
    ours = {a.device_id for a in fleet.agents}  # (an earlier test's fleet may say goodbye late)
    rows = [r for r in json.loads(devices.stdout) if r["device_id"] in ours]
    assert {r["device_id"] for r in rows} == ours
    assert {r["model_name"] for r in rows} == {"digits-mlp"}
    assert all(a.device_id in table.stdout for a in fleet.agents)  # ids never truncated


async def test_watch_follows_a_running_round_to_its_end(
    stack: LocalStack, saga: FedSaga, fleet: Fleet
) -> None:
    # Prepare
    req = request(training_rounds=3)
    await saga.start(req)

    # Execute: watch from the start, as JSON lines
    watched = await fedsaga("round", "watch", req.round_id, "--json", env=cli_env(stack))

    # Assert: every event once, in order, ending with the result
    assert watched.returncode == 0, watched.stderr
    events = [json.loads(line) for line in watched.stdout.splitlines()]
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "nodes.selected"
    assert kinds[-1] == "round.completed"
    assert kinds.count("training.completed") == 3
    assert len({e["msg_id"] for e in events}) == len(events)


async def test_stop_compensates_the_steps_done_in_reverse_order(
    stack: LocalStack, saga: FedSaga, fleet: Fleet
) -> None:
    # Prepare: a long round, stopped once its second iteration is training
    env = cli_env(stack)
    req = request(training_rounds=50)
    await saga.start(req)

    async def second_iteration() -> bool:
        return (await saga.store.get_round(req.round_id)).iteration >= 1

    await eventually(second_iteration, timeout=30)

    # Execute
    stopped = await fedsaga(
        "round", "stop", req.round_id, "--reason", "wrong data", "--wait", env=env
    )

    # Assert: failed as asked, compensated 4, 3, 2, 1, leases back
    assert stopped.returncode == 0, stopped.stderr + stopped.stdout
    result = await saga.status(req.round_id)
    assert result.status == "failed"
    assert result.failure_reason == "stopped by the operator: wrong data"
    assert result.failed_step == Step.AGGREGATE
    order = [e["step"] for e in result.timeline if e["kind"] == "step.compensated"]
    assert order == [4, 3, 2, 1]
    assert all([await saga.store.lease_owner(a.device_id) is None for a in fleet.agents])

    # and a round that has ended cannot be stopped
    again = await fedsaga("round", "stop", req.round_id, env=env)
    assert again.returncode == 2
    assert one_error_line(again) == f"error: round {req.round_id} is failed, not running"


async def test_an_unknown_model_is_refused_before_any_device_trains(
    saga: FedSaga, fleet: Fleet
) -> None:
    # Execute: a typo of the model's name, without create_model
    result = await saga.run(request(model_name="digts-mlp", create_model=False), timeout=30)

    # Assert
    assert result.status == "failed"
    assert result.failed_step == Step.SELECT
    assert result.failure_reason == (
        "model digts-mlp does not exist; set create_model to start a new lineage"
    )
    assert result.participation["participants_per_iteration"] == []


async def test_a_second_round_says_which_round_holds_the_devices(
    saga: FedSaga, fleet: Fleet
) -> None:
    # Prepare: a round holding all twelve devices
    first = request(training_rounds=50, cohort_size=12)
    await saga.start(first)

    async def leased() -> bool:
        return (await saga.store.get_round(first.round_id)).iteration >= 0 and all(
            [await saga.store.lease_owner(a.device_id) == first.round_id for a in fleet.agents]
        )

    await eventually(leased, timeout=15)

    # Execute
    second = await saga.run(request(), timeout=30)
    await saga.stop(first.round_id)

    # Assert
    assert second.status == "failed"
    reason = second.failure_reason or ""
    assert reason.startswith("only 0 eligible devices of "), reason
    assert reason.endswith(f"; need 3 (eligible devices leased: 12 to round {first.round_id})")
    await saga.wait(first.round_id, timeout=30)


async def test_a_round_id_is_never_reused(stack: LocalStack, saga: FedSaga, fleet: Fleet) -> None:
    # Prepare
    req = request(training_rounds=1)
    first = await saga.run(req, timeout=60)

    # Execute / Assert: the Python API and the CLI both refuse it
    with pytest.raises(RoundExists, match="already exists"):
        await saga.run(req.model_copy(update={"msg_id": "another"}), timeout=10)
    again = await fedsaga("round", "start", req.round_id, env=cli_env(stack))
    assert again.returncode == 2
    assert f"already exists ({first.status})" in one_error_line(again)


async def test_errors_are_one_line_naming_what_was_tried(stack: LocalStack, saga: FedSaga) -> None:
    env = cli_env(stack)

    unknown = await fedsaga("round", "status", "nope", env=env)
    assert unknown.returncode == 2
    assert one_error_line(unknown) == "error: no round nope"

    dead_redis = "redis://127.0.0.1:1/0"
    no_redis = await fedsaga("round", "list", env={**env, "FEDSAGA_REDIS_URL": dead_redis})
    assert no_redis.returncode == 2
    assert f"cannot reach Redis at {dead_redis}" in one_error_line(no_redis)

    bad_url = await fedsaga("--mqtt-url", "http://x", "round", "list", env=env)
    assert bad_url.returncode == 2
    assert "http://x" in one_error_line(bad_url)

    small = await fedsaga(
        "round", "start", "r9", "--cohort-size", "2", "--min-participating-nodes", "3", env=env
    )
    assert small.returncode == 2
    assert "below min_participating_nodes 3" in one_error_line(small)

    no_log = await fedsaga("logs", "nonesuch", env=env)
    assert no_log.returncode == 2
    assert "unknown service 'nonesuch'" in one_error_line(no_log)


async def test_connection_flags_and_a_profile_file_point_the_cli(
    stack: LocalStack, saga: FedSaga, fleet: Fleet, tmp_path: Path
) -> None:
    # Prepare: an environment that points nowhere, and a profile that points at the stack
    s = stack.settings
    nowhere = cli_env(stack, FEDSAGA_MQTT_PORT="1", FEDSAGA_REDIS_URL="redis://127.0.0.1:1/0")
    profile = tmp_path / "fedsaga.toml"
    profile.write_text(
        f'mqtt_url = "mqtt://127.0.0.1:{s.mqtt_port}"\nredis_url = "{s.redis_url}"\n'
    )
    pointing = ("FEDSAGA_MQTT_PORT", "FEDSAGA_REDIS_URL")
    unset = {k: v for k, v in nowhere.items() if k not in pointing}

    # Execute: flags beat the environment; a profile is read where the environment is silent
    flags = await fedsaga(
        "--mqtt-url",
        f"mqtt://127.0.0.1:{s.mqtt_port}",
        "--redis-url",
        s.redis_url,
        "round",
        "start",
        "flagged",
        "--create-model",
        "--training-rounds",
        "1",
        "--target-accuracy",
        "0.3",
        "--cohort-size",
        "10",
        "--wait",
        env=nowhere,
    )
    from_profile = await fedsaga("--config", str(profile), "round", "list", "--json", env=unset)
    env_beats_profile = await fedsaga("--config", str(profile), "round", "list", env=nowhere)

    # Assert
    assert flags.returncode == 0, flags.stderr
    assert json.loads(flags.stdout)["status"] == "succeeded"
    assert from_profile.returncode == 0, from_profile.stderr
    assert [r["round_id"] for r in json.loads(from_profile.stdout)] == ["flagged"]
    assert env_beats_profile.returncode == 2
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in one_error_line(env_beats_profile)


async def test_logs_prints_a_services_log_from_the_state_directory(stack: LocalStack) -> None:
    # Execute
    out = await fedsaga(
        "logs", "aggregator", "-n", "3", env=cli_env(stack, FEDSAGA_STATE_DIR=str(stack.workdir))
    )

    # Assert: the last three lines of the aggregator's own log
    assert out.returncode == 0, out.stderr
    tail = (stack.workdir / "aggregator.log").read_text().splitlines()[-3:]
    assert out.stdout.splitlines() == tail


async def test_a_second_process_for_a_running_service_instance_is_refused(
    stack: LocalStack,
) -> None:
    # Prepare: the stack runs fedsaga-aggregator-0
    aggregator = stack.services["aggregator"]
    before = aggregator.serving_count()

    # Execute: the README's `fedsaga service aggregator` beside it
    second = await fedsaga("service", "aggregator", env=cli_env(stack), timeout=30)

    # Assert: refused at once, saying how to run another instance; the first keeps serving
    assert second.returncode == 2
    out = second.stdout + second.stderr
    assert "fedsaga-aggregator-0 is already running" in out, out
    assert "FEDSAGA_INSTANCE" in out
    assert aggregator.running
    assert aggregator.serving_count() == before


async def test_service_takes_the_clis_connection_flags(stack: LocalStack) -> None:
    # Execute: the environment points nowhere; the flags point at the stack's servers, where
    # instance 0 of the aggregator runs already
    s = stack.settings
    nowhere = cli_env(stack, FEDSAGA_MQTT_PORT="1", FEDSAGA_REDIS_URL="redis://127.0.0.1:1/0")
    second = await fedsaga(
        "--mqtt-url",
        f"mqtt://127.0.0.1:{s.mqtt_port}",
        "--redis-url",
        s.redis_url,
        "service",
        "aggregator",
        env=nowhere,
        timeout=30,
    )

    # Assert: it reached the stack's Redis (and was refused there), not port 1
    assert second.returncode == 2
    assert "fedsaga-aggregator-0 is already running" in second.stderr, second.stderr
