"""The one way we stop, kill, pause and resume a child process (a server or a service)."""

from __future__ import annotations

import contextlib
import signal
import subprocess


class ChildProcess:
    """A process we started (`self.process`), with the signals the stack and the tests send."""

    process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """Whether the process was started and has not exited (a paused one is running)."""
        return self.process is not None and self.process.poll() is None

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        """SIGTERM (or SIGKILL when `kill`) and wait; SIGKILL if it outlives `timeout`."""
        if self.process is None or not self.running:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
            # A paused process would hold SIGTERM pending until resumed: resume it.
            self._signal(signal.SIGCONT)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """kill -9, as a crash would, and wait for it."""
        self.stop(kill=True)

    def pause(self) -> None:
        """SIGSTOP: the process is frozen, its sockets open but silent."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after `pause`."""
        self._signal(signal.SIGCONT)

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.running:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
