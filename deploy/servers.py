"""Private mosquitto and redis-server instances on free loopback ports.

Used by `fedsaga up`/`demo` and by the integration-test fixtures, so neither depends on nor
disturbs servers already running on the standard ports. The broker runs mosquitto/dev.conf
(anonymous, plain TCP), or mosquitto/prod.conf itself with only its port and file paths
changed (`ProdBroker`: TLS, passwords, the ACL), so tests exercise the file we deploy, with
`max_connections` and the open-file limit fitted to this machine (deploy/limits.py).
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from deploy.limits import broker_files, open_files, option_value, raise_soft_limit
from deploy.process import ChildProcess

ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO_CONF = ROOT / "mosquitto" / "dev.conf"
PROD_CONF = ROOT / "mosquitto" / "prod.conf"
ACL_FILE = ROOT / "mosquitto" / "fedsaga.acl"
REDIS_CONF = ROOT / "deploy" / "redis.conf"


def _port_range() -> range:
    """Ports to hand out: just below the kernel's ephemeral range, from which outgoing
    connections (every client's, a Redis Cluster's bus links) take theirs at any moment."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(max(1024, low - 12_000), low)


_PORTS = _port_range()
_next_port = itertools.count(random.randrange(len(_PORTS)))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, and that this process did
    not hand out before.

    Not one the kernel picks (bind to port 0): that comes from the ephemeral range, so an
    outgoing connection could take it before our server binds it. A service's metrics port
    was taken so, by a Redis Cluster's bus links, in one of six cluster stacks started.
    """
    for _ in range(len(_PORTS)):
        port = _PORTS[next(_next_port) % len(_PORTS)]
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {_PORTS}")


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
    open_files: int | None = None  # its open-file soft limit, when it needs it raised
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.workdir / f"{self.name}.log"

    def start(self) -> Server:
        """Start and wait until the port accepts connections."""
        with self.log.open("ab") as out:
            limit = self.open_files
            self.process = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                preexec_fn=None if limit is None else lambda: raise_soft_limit(limit),
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


def mosquitto(workdir: Path, port: int | None = None, *, devices: int = 0) -> Server:
    """A mosquitto on a free port with mosquitto/dev.conf (persistence in workdir), with the
    open files for `devices` devices (RuntimeError, saying how, when the limit is too low)."""
    port = port or free_port()
    data = workdir / "mosquitto-data"
    data.mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    text, files = fit_files(MOSQUITTO_CONF.read_text().format(port=port, data_dir=data), devices)
    conf.write_text(text + stay_user())
    argv = [find_binary("mosquitto"), "-c", str(conf)]
    return Server("mosquitto", port, workdir, argv, open_files=files)


def fit_files(text: str, devices: int) -> tuple[str, int]:
    """A config with the `max_connections` this machine holds, and the broker's soft limit
    for open files (deploy/limits.py)."""
    configured = option_value(text, "max_connections")
    soft, hard = open_files()
    files = broker_files(
        configured=int(configured or -1), devices=devices, soft=soft, hard=hard
    )
    fitted = f"max_connections {files.max_connections}"  # on every listener that sets it
    lines = [fitted if line.startswith("max_connections ") else line for line in text.splitlines()]
    return "\n".join(lines) + "\n", files.soft


@dataclass(frozen=True)
class ProdBroker:
    """This machine's files for a broker run from mosquitto/prod.conf: its TLS material, its
    password file (`mosquitto_passwd`) and its ACL (the project's own unless given)."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    password_file: Path
    acl_file: Path = ACL_FILE
    # Also open a copy of prod.conf's listener here with `require_certificate true`, where only
    # clients with a certificate signed by `ca_file` get in.
    client_cert_port: int | None = None


def set_options(text: str, values: Mapping[str, str]) -> str:
    """A mosquitto config with the value of each option in `values` replaced where the config
    first sets it. An option the config does not set is an error: a renamed or dropped option
    in the file is noticed, not silently left at the value meant for another machine."""
    lines = text.splitlines()
    for option, value in values.items():
        at = next((i for i, line in enumerate(lines) if line.split(" ", 1)[0] == option), None)
        if at is None:
            raise ValueError(f"the config does not set {option}")
        lines[at] = f"{option} {value}"
    return "\n".join(lines) + "\n"


def listener_block(text: str) -> str:
    """The config's first `listener` line and the listener options below it, up to the first
    blank line (prod.conf keeps them together)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("listener "))
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return "\n".join(lines[start:end]) + "\n"


def prod_config(files: ProdBroker, port: int, data_dir: Path) -> str:
    """mosquitto/prod.conf listening on 127.0.0.1:`port`, with `files` and persistence in
    `data_dir`; every other line as deployed."""
    text = PROD_CONF.read_text()
    tls = {
        "certfile": str(files.cert_file),
        "keyfile": str(files.key_file),
        "cafile": str(files.ca_file),
    }
    conf = set_options(
        text,
        {
            "password_file": str(files.password_file),
            "acl_file": str(files.acl_file),
            "listener": f"{port} 127.0.0.1",
            **tls,
            "persistence_location": f"{data_dir}/",
        },
    )
    if files.client_cert_port is not None:
        extra = {"listener": f"{files.client_cert_port} 127.0.0.1", **tls}
        conf += "\n" + set_options(listener_block(text), extra | {"require_certificate": "true"})
    return conf


def prod_mosquitto(
    workdir: Path, files: ProdBroker, port: int | None = None, *, devices: int = 0
) -> Server:
    """A mosquitto on a free port with mosquitto/prod.conf (see `prod_config`), with the open
    files for `devices` devices (as `mosquitto`)."""
    port = port or free_port()
    data = workdir / "mosquitto-data"
    data.mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    text, open_files_ = fit_files(prod_config(files, port, data), devices)
    conf.write_text(text + stay_user())
    argv = [find_binary("mosquitto"), "-c", str(conf)]
    return Server("mosquitto", port, workdir, argv, open_files=open_files_)


def stay_user() -> str:
    """Config line keeping a private mosquitto started by root as root.

    Started as root, mosquitto drops to the `mosquitto` user, which cannot write its persistence
    file into our private (0700, root-owned) directory: every autosave failed with "Permission
    denied" and a restart lost the sessions. This instance listens on loopback only.
    """
    return "\nuser root\n" if os.geteuid() == 0 else ""


def redis(workdir: Path, port: int | None = None, *, cluster: bool = False) -> Server:
    """A redis-server on a free port with deploy/redis.conf (AOF in workdir); with `cluster`,
    a node of a Redis Cluster (its node table in workdir too; see `PrivateCluster`)."""
    port = port or free_port()
    data = workdir / "redis-data"
    data.mkdir(parents=True, exist_ok=True)
    argv = [find_binary("redis-server"), str(REDIS_CONF), "--port", str(port), "--dir", str(data)]
    if cluster:
        # The cluster bus defaults to port + 10000, which may be taken (or past 65535): name
        # a free one.
        bus = str(free_port())
        argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        argv += ["--cluster-port", bus]
    return Server("redis", port, workdir, argv)


class PrivateCluster:
    """A Redis Cluster of `masters` redis-servers (no replicas) on free loopback ports, each
    in a directory of its own under `workdir`; `url` is how fedsaga names it.

    `start()` starts the nodes, joins them the first time (`redis-cli --cluster create`,
    which spreads the 16384 slots evenly) and returns once every node says
    `cluster_state:ok`. A restart keeps each node's AOF and node table, so the same cluster
    comes back. `stop()` ends every node.
    """

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self.nodes = [redis(workdir / f"redis-{i}", cluster=True) for i in range(masters)]
        self.created = False

    @property
    def port(self) -> int:
        """The first node's port (any node answers for the whole cluster)."""
        return self.nodes[0].port

    @property
    def url(self) -> str:
        """The cluster as fedsaga's settings name it: every node, so any one may be down."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    @property
    def running(self) -> bool:
        """Whether every node is running."""
        return all(n.running for n in self.nodes)

    def start(self) -> PrivateCluster:
        """Start every node; create the cluster the first time; wait until it serves."""
        try:
            for node in self.nodes:
                node.start()
            if not self.created:
                nodes = [f"127.0.0.1:{n.port}" for n in self.nodes]
                self.cli("--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes")
                self.created = True
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, *, kill: bool = False) -> None:
        """End every node (SIGTERM: each writes its AOF out; SIGKILL with `kill`)."""
        for node in self.nodes:
            node.stop(kill=kill)

    def restart(self) -> PrivateCluster:
        """Stop and start again on the same ports with the same data."""
        self.stop()
        return self.start()

    def cli(self, *args: str, port: int | None = None) -> str:
        """`redis-cli -p PORT ARGS` (the first node's port unless given): its output."""
        argv = [find_binary("redis-cli"), "-p", str(port or self.port), *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        return done.stdout

    def wait_ok(self, timeout: float = 20.0) -> None:
        """Block until every node reports `cluster_state:ok` (all slots served)."""
        deadline = time.monotonic() + timeout
        waiting = list(self.nodes)
        while waiting:
            if "cluster_state:ok" in self.cli("cluster", "info", port=waiting[0].port):
                waiting.pop(0)
            elif time.monotonic() > deadline:
                raise TimeoutError(f"Redis Cluster not ok after {timeout}s")
            else:
                time.sleep(0.05)


class PrivateServers:
    """Both servers, started together in a temporary directory: `with PrivateServers() as s`.

    The broker runs mosquitto/dev.conf, or prod.conf with `prod`'s files. Redis is one
    server, or with `redis_masters` a Redis Cluster of that many masters (`PrivateCluster`).
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        prod: ProdBroker | None = None,
        redis_masters: int = 0,
        devices: int = 0,
    ) -> None:
        """`devices`: how many devices the broker must hold (deploy/limits.py)."""
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="fedsaga-")
        self.workdir = workdir or Path(self._tmp.name)  # type: ignore[union-attr]
        self.prod = prod
        if prod is None:
            self.broker = mosquitto(self.workdir, devices=devices)
        else:
            self.broker = prod_mosquitto(self.workdir, prod, devices=devices)
        self.redis: Server | PrivateCluster = (
            PrivateCluster(self.workdir, redis_masters) if redis_masters else redis(self.workdir)
        )

    @property
    def redis_url(self) -> str:
        """URL of the private Redis (`redis+cluster://...` for a cluster)."""
        if isinstance(self.redis, PrivateCluster):
            return self.redis.url
        return f"redis://127.0.0.1:{self.redis.port}/0"

    def __enter__(self) -> PrivateServers:
        self.redis.start()
        try:
            self.broker.start()
            if self.prod is not None and self.prod.client_cert_port is not None:
                wait_for_port(self.prod.client_cert_port)
        except BaseException:
            self.broker.stop()
            self.redis.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.broker.stop()
        self.redis.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
