"""Every command of the README's "Using it" block, run as written against real servers.

A command in the README that does not work is a bug: this test reads the block itself, so a
command added to the README without being covered here fails it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
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


def readme(verb_: str) -> str:
    """The README's command for `verb_`."""
    (command,) = [c for c in readme_commands() if verb(c) == verb_]
    return command


def test_the_readme_block_is_the_one_this_test_covers() -> None:
    # Each verb below is run by a test in this module; a new README line must join them.
    assert [verb(c) for c in readme_commands()] == [
        "up",
        "export",
        "round start",
        "mosquitto_pub",
        "round status",
        "models",
        "fleet",
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

    status = await run_(readme("round status"))
    assert status.returncode == 0, status.stderr
    assert "round r1: succeeded" in status.stdout

    models = await run_(readme("models"))
    assert models.returncode == 0, models.stderr
    assert "1.0.0" in models.stdout
    assert "deployed" in models.stdout

    fleet_out = await run_(readme("fleet"))
    assert fleet_out.returncode == 0, fleet_out.stderr
    assert all(a.device_id in fleet_out.stdout for a in fleet.agents)


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


def test_up_prints_the_exports_and_stops_on_ctrl_c() -> None:
    up = readme("up")
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {up}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        seen = ""
        while "logs: " not in seen:  # the last line `up` prints before it serves
            assert time.monotonic() < deadline, seen
            line = proc.stdout.readline()
            assert line, f"up exited early: {seen}"
            seen += line
        assert re.search(r"export FEDSAGA_MQTT_PORT=\d+ FEDSAGA_REDIS_URL=redis://\S+", seen)
    finally:
        # Ctrl-C in a terminal: SIGINT to the whole foreground group, children included.
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    assert "stopped" in rest, (proc.returncode, seen, rest)
    assert proc.returncode in (0, 130)  # 130: the shell's code for "ended by Ctrl-C"


def test_service_runs_one_service_against_the_configured_servers(tmp_path: Path) -> None:
    service = readme("service")
    with PrivateServers(tmp_path) as servers:
        env = {
            **os.environ,
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
