"""Who may run a service instance: the verdict on an identity's current holder."""

from __future__ import annotations

import os
import socket

import pytest

from services.runtime.identity import pid_alive, refusal, this_process, verdict


@pytest.mark.parametrize(
    ("holder", "alive", "expected"),
    [
        ("h1:100", True, "ours"),  # our own hold, refreshed
        ("h1:99", False, "take_over"),  # killed with kill -9 on this host: no wait
        ("h1:99", True, "refuse"),  # a second live process on this host
        ("h2:100", False, "wait"),  # another host: only its hold lapsing says it is gone
        ("h2:100", True, "wait"),
    ],
)
def test_the_verdict_on_a_holder(holder: str, alive: bool, expected: str) -> None:
    assert verdict(holder, "h1:100", holder_alive=alive) == expected


def test_this_process_is_alive_and_a_finished_one_is_not() -> None:
    # Prepare: a pid that ran and ended
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)

    # Assert: the process that ended is not alive
    assert this_process() == f"{socket.gethostname()}:{os.getpid()}"
    assert not pid_alive(f"{socket.gethostname()}:{pid}")
    assert not pid_alive("h:not-a-pid")


def test_a_refusal_says_how_to_run_another_instance() -> None:
    message = refusal("fedsaga-aggregator-0", "h1:42")
    assert message.startswith("fedsaga-aggregator-0 is already running (h1:42)")
    assert "FEDSAGA_INSTANCE" in message
    assert "FEDSAGA_SHARED=true" in message
