"""Who may run a service instance: the verdict on an identity's current holder."""

from __future__ import annotations

import os
import socket

import pytest

from services.runtime.identity import pid_alive, refusal, this_process, verdict


@pytest.mark.parametrize(
    ("holder", "alive", "expected"),
    [
        ("h1:100:7", True, "ours"),  # our own hold, refreshed
        ("h1:99:5", False, "take_over"),  # killed with kill -9 on this host: no wait
        ("h1:99:5", True, "refuse"),  # a second live process on this host
        ("h2:100:7", False, "wait"),  # another host: only its hold lapsing says it is gone
        ("h2:100:7", True, "wait"),
    ],
)
def test_the_verdict_on_a_holder(holder: str, alive: bool, expected: str) -> None:
    assert verdict(holder, "h1:100:7", holder_alive=alive) == expected


def test_a_running_process_is_alive_and_a_finished_or_reborn_one_is_not() -> None:
    # Prepare: a process that ran and ended
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    me = this_process()
    host, mine, start = me.split(":")

    # Assert: we are alive; the finished pid is not; our pid with another start time (a pid
    # reused after a kill -9) is not either
    assert (host, mine) == (socket.gethostname(), str(os.getpid()))
    assert pid_alive(me)
    assert not pid_alive(f"{host}:{pid}:{start}")
    assert not pid_alive(f"{host}:{mine}:{int(start) + 1}")
    assert not pid_alive(f"{host}:not-a-pid:1")


def test_a_refusal_says_how_to_run_another_instance() -> None:
    message = refusal("fedsaga-aggregator-0", "h1:42:9")
    assert message.startswith("fedsaga-aggregator-0 is already running (pid 42 on h1)")
    assert "FEDSAGA_INSTANCE" in message
    assert "FEDSAGA_SHARED=true" in message
