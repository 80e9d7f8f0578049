"""Private mosquitto and redis-server instances on free loopback ports.

Used by `fedsaga up`/`demo` and by the integration-test fixtures, so neither depends on nor
disturbs servers already running on the standard ports.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from deploy.process import ChildProcess

ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO_CONF = ROOT / "mosquitto" / "dev.conf"
REDIS_CONF = ROOT / "deploy" / "redis.conf"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_binary(name: str) -> str:
    """Path of a server binary (Debian puts mosquitto in /usr/sbin)."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if path is None:
        raise FileNotFoundError(f"{name} not found; run `make deps` (apt-get install {name})")
    return path


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    """Block until something accepts connections on the port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


@dataclass
class Server(ChildProcess):
    """A server process we started; `stop()` ends it (see `ChildProcess`)."""

    name: str
    port: int
    workdir: Path
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.workdir / f"{self.name}.log"

    def start(self) -> Server:
        """Start and wait until the port accepts connections."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        try:
            wait_for_port(self.port)
        except TimeoutError as exc:
            self.stop()
            raise RuntimeError(
                f"{self.name} did not start: {self.log.read_text()[-2000:]}"
            ) from exc
        return self

    def restart(self) -> Server:
        """Stop and start again on the same port with the same data."""
        self.stop()
        return self.start()


def mosquitto(workdir: Path, port: int | None = None) -> Server:
    """A mosquitto on a free port with mosquitto/dev.conf (persistence in workdir)."""
    port = port or free_port()
    data = workdir / "mosquitto-data"
    data.mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    conf.write_text(MOSQUITTO_CONF.read_text().format(port=port, data_dir=data) + stay_user())
    return Server("mosquitto", port, workdir, [find_binary("mosquitto"), "-c", str(conf)])


def stay_user() -> str:
    """Config line keeping a private mosquitto started by root as root.

    Started as root, mosquitto drops to the `mosquitto` user, which cannot write its persistence
    file into our private (0700, root-owned) directory: every autosave failed with "Permission
    denied" and a restart lost the sessions. This instance listens on loopback only.
    """
    return "\nuser root\n" if os.geteuid() == 0 else ""


def redis(workdir: Path, port: int | None = None) -> Server:
    """A redis-server on a free port with deploy/redis.conf (AOF in workdir)."""
    port = port or free_port()
    data = workdir / "redis-data"
    data.mkdir(parents=True, exist_ok=True)
    argv = [find_binary("redis-server"), str(REDIS_CONF), "--port", str(port), "--dir", str(data)]
    return Server("redis", port, workdir, argv)


class PrivateServers:
    """Both servers, started together in a temporary directory: `with PrivateServers() as s`."""

    def __init__(self, workdir: Path | None = None) -> None:
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="fedsaga-")
        self.workdir = workdir or Path(self._tmp.name)  # type: ignore[union-attr]
        self.broker = mosquitto(self.workdir)
        self.redis = redis(self.workdir)

    @property
    def redis_url(self) -> str:
        """URL of the private Redis."""
        return f"redis://127.0.0.1:{self.redis.port}/0"

    def __enter__(self) -> PrivateServers:
        self.redis.start()
        try:
            self.broker.start()
        except BaseException:
            self.redis.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.broker.stop()
        self.redis.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
