"""Every command of the README's "Using it" block, run as written against real servers.

A command in the README that does not work is a bug: this test reads the block itself, so a
command added to the README without being covered here fails it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from deploy.servers import PrivateServers
from deploy.stack import LocalStack
from edge_client.fleet import Fleet
from fedsaga.client import FedSaga

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    """The shell lines of the README's "Using it" block, comments stripped."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Using it", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "the 'Using it' section lost its sh block"
    lines = (line.split("  #", 1)[0].strip() for line in block.group(1).splitlines())
    return [line for line in lines if line]


def run(
    command: str, env: dict[str, str], timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """Run one README line with bash from the repository root, as a user would."""
    return subprocess.run(
        ["bash", "-c", command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def stack_env(stack: LocalStack) -> dict[str, str]:
    """The environment after the README's `export` line, pointed at the test stack."""
    s = stack.settings
    return {
        **os.environ,
        "FEDSAGA_CONFIG": os.devnull,  # whatever profile this machine's user has
        "FEDSAGA_MQTT_HOST": s.mqtt_host,
        "FEDSAGA_MQTT_PORT": str(s.mqtt_port),
        "FEDSAGA_REDIS_URL": s.redis_url,
    }


def verb(command: str) -> str:
    """`.venv/bin/fedsaga round start r1 ...` -> `round start`; other programs by name."""
    words = command.split()
    if not words[0].endswith("/fedsaga"):
        return words[0]
    return " ".join(words[1:3]) if words[1] == "round" else words[1]


def readme(verb_: str, nth: int = 0) -> str:
    """The README's `nth` command for `verb_`."""
    return [c for c in readme_commands() if verb(c) == verb_][nth]


def test_the_readme_block_is_the_one_this_test_covers() -> None:
    # Each verb below is run by a test in this module; a new README line must join them.
    assert [verb(c) for c in readme_commands()] == [
        "up",
        "export",
        "round start",
        "mosquitto_pub",
        "round watch",
        "round list",
        "round status",
        "round report",
        "round start",
        "round stop",
        "models",
        "fleet",
        "logs",
        "service",
    ]


async def test_round_commands_work_as_written(
    stack: LocalStack, saga: FedSaga, fleet: Fleet
) -> None:
    env = stack_env(stack)

    async def run_(command: str) -> subprocess.CompletedProcess[str]:
        # In a thread: the fleet's devices train on this test's event loop meanwhile.
        return await asyncio.to_thread(run, command, env)

    # round start ... --wait: prints the result as JSON, exit 0 when the round succeeded
    done = await run_(readme("round start"))
    assert done.returncode == 0, done.stderr + done.stdout
    result = json.loads(done.stdout)
    assert result["round_id"] == "r1"
    assert result["status"] == "succeeded", result["failure_reason"]
    assert result["metrics"]["accuracy"] >= 0.9

    # mosquitto_pub with plain JSON starts round r2
    pub = await run_(readme("mosquitto_pub"))
    assert pub.returncode == 0, pub.stderr
    deadline = time.monotonic() + 20
    while not (await saga.store.get_round("r2")).exists:
        assert time.monotonic() < deadline, "mosquitto_pub's round never started"
        await asyncio.sleep(0.1)

    watched = await run_(readme("round watch"))
    assert watched.returncode == 0, watched.stderr + watched.stdout
    assert "succeeded: version 1.1.0" in watched.stdout.splitlines()[-1]

    listed = await run_(readme("round list"))
    assert listed.returncode == 0, listed.stderr
    assert "r1" in listed.stdout
    assert "r2" in listed.stdout

    status = await run_(readme("round status"))
    assert status.returncode == 0, status.stderr
    assert "round r1: succeeded" in status.stdout

    report_dir = ROOT / "report-r1"
    try:
        report = await run_(readme("round report"))
        assert report.returncode == 0, report.stderr
        assert "Round r1" in (report_dir / "index.html").read_text()
        assert (report_dir / "accuracy.png").exists()
    finally:
        shutil.rmtree(report_dir, ignore_errors=True)

    started = await run_(readme("round start", 1))
    assert started.returncode == 0, started.stderr
    stopped = await run_(readme("round stop"))
    assert stopped.returncode == 0, stopped.stderr + stopped.stdout
    r3 = await saga.status("r3")
    assert (r3.status, r3.failure_reason) == ("failed", "stopped by the operator")

    models = await run_(readme("models"))
    assert models.returncode == 0, models.stderr
    assert "1.0.0" in models.stdout
    assert "deployed" in models.stdout

    fleet_out = await run_(readme("fleet"))
    assert fleet_out.returncode == 0, fleet_out.stderr
    assert all(a.device_id in fleet_out.stdout for a in fleet.agents)

    env["FEDSAGA_STATE_DIR"] = str(stack.workdir)  # where `up` would keep the logs
    logs = await run_(readme("logs"))
    assert logs.returncode == 0, logs.stderr
    shown = logs.stdout.splitlines()
    assert len(shown) == 20
    assert set(shown) <= set((stack.workdir / "aggregator.log").read_text().splitlines())


def test_round_start_refuses_bad_options_in_one_line(stack: LocalStack) -> None:
    env = stack_env(stack)
    bad = run(".venv/bin/fedsaga round start r9 --learning-rate -1", env)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: --learning-rate: Input should be greater than 0"
    ]
    unreachable = run(".venv/bin/fedsaga round start r9", {**env, "FEDSAGA_MQTT_PORT": "1"})
    assert unreachable.returncode == 2
    assert "cannot reach the MQTT broker at mqtt://127.0.0.1:1" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr


class Up:
    """`fedsaga up` as the README runs it, in its own session so Ctrl-C reaches it all."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            ["bash", "-c", f"exec {readme('up')}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.printed = ""

    def wait_up(self) -> dict[str, str]:
        """Read until `up` serves; the variables its export line sets."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 60
        while "logs: " not in self.printed:  # the last line `up` prints before it serves
            assert time.monotonic() < deadline, self.printed
            line = self.proc.stdout.readline()
            assert line, f"up exited early: {self.printed}"
            self.printed += line
        export = re.search(
            r"export (FEDSAGA_MQTT_HOST=\S+ FEDSAGA_MQTT_PORT=\d+ FEDSAGA_REDIS_URL=redis://\S+)",
            self.printed,
        )
        assert export, self.printed
        return dict(pair.split("=", 1) for pair in export.group(1).split())

    def ctrl_c(self) -> str:
        """SIGINT to the whole foreground group, as a terminal sends it; what `up` printed."""
        os.killpg(self.proc.pid, signal.SIGINT)
        rest, _ = self.proc.communicate(timeout=30)
        assert self.proc.returncode in (0, 130), rest  # 130: the shell's "ended by Ctrl-C"
        return rest


def test_up_keeps_rounds_and_models_across_a_restart(tmp_path: Path) -> None:
    # Prepare: the default state directory, under a private XDG_DATA_HOME
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path), "FEDSAGA_CONFIG": os.devnull}
    first = Up(env)
    try:
        exports = first.wait_up()
        cli = {**env, **exports}
        done = run(
            ".venv/bin/fedsaga round start u1 --create-model --training-rounds 2 "
            "--target-accuracy 0.3 --cohort-size 5 --wait",
            cli,
        )
        assert done.returncode == 0, done.stderr + done.stdout
    finally:
        assert "stopped" in first.ctrl_c()

    # Execute: up again on the same state
    second = Up(env)
    try:
        cli = {**env, **second.wait_up()}
        listed = run(".venv/bin/fedsaga round list --json", cli)
        models = run(".venv/bin/fedsaga models --json", cli)
    finally:
        second.ctrl_c()

    # Assert: the round and its model outlived the restart; the logs are where `up` said
    assert [(r["round_id"], r["status"]) for r in json.loads(listed.stdout)] == [
        ("u1", "succeeded")
    ]
    assert json.loads(models.stdout)["digits-mlp"]["active"] == "1.0.0"
    assert f"logs: {tmp_path / 'fedsaga'}" in first.printed
    assert (tmp_path / "fedsaga" / "aggregator.log").exists()


def test_service_runs_one_service_against_the_configured_servers(tmp_path: Path) -> None:
    service = readme("service")
    with PrivateServers(tmp_path) as servers:
        env = {
            **os.environ,
            "FEDSAGA_CONFIG": os.devnull,
            "FEDSAGA_MQTT_PORT": str(servers.broker.port),
            "FEDSAGA_REDIS_URL": servers.redis_url,
        }
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {service}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert proc.stdout is not None
            deadline = time.monotonic() + 30
            seen = ""
            while "event='serving'" not in seen:
                assert time.monotonic() < deadline, seen
                line = proc.stdout.readline()
                assert line, f"service exited early: {seen}"
                seen += line
            assert "service='aggregator'" in seen
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=15)
    assert proc.returncode == 0


@pytest.fixture(autouse=True)
def _venv_cli() -> None:
    """The README runs the installed console script; `make test` installs it."""
    assert (ROOT / ".venv/bin/fedsaga").exists(), "run through `make test`, which installs it"
