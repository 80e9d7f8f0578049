"""The local stack: private mosquitto and Redis, the six services as separate OS processes,
and optionally a simulated fleet in this process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from deploy.process import ChildProcess
from deploy.servers import PrivateServers, ProdBroker, free_port
from services.runtime.main import SERVICES
from services.runtime.settings import Settings


class ServiceProcess(ChildProcess):
    """One service running as `python -m services.NAME`, logging to a file, serving its
    Prometheus metrics on a port of its own (`metrics_url`)."""

    def __init__(
        self, name: str, settings: Settings, workdir: Path, label: str | None = None
    ) -> None:
        self.name = name
        self.settings = settings
        self.label = label or name  # `aggregator`, or `aggregator-b` for a shared instance
        self.log = workdir / f"{self.label}.log"
        self.metrics_port = free_port()  # kept across restarts
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def metrics_url(self) -> str:
        """Where Prometheus scrapes this service."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> None:
        """Spawn the process (log appended, so a restart keeps history)."""
        env = {
            **os.environ,
            **self.settings.env(),
            "FEDSAGA_METRICS_PORT": str(self.metrics_port),
        }
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.name}"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def serving_count(self) -> int:
        """How many times the log says the service is subscribed and serving."""
        return (
            self.log.read_text(errors="replace").count("event='serving'")
            if self.log.exists()
            else 0
        )

    def wait_serving(self, times: int = 1, timeout: float = 30.0) -> None:
        """Block until the service has subscribed (its `times`-th start)."""
        deadline = time.monotonic() + timeout
        while self.serving_count() < times:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not serving after {timeout}s")
            time.sleep(0.05)

    def restart(self, *, kill: bool = True) -> None:
        """Kill and start again; returns once it serves again."""
        before = self.serving_count()
        self.stop(kill=kill)
        self.start()
        self.wait_serving(before + 1)


class LocalStack:
    """`with LocalStack() as stack`: servers up, six services serving; all stopped after.

    With `broker`, mosquitto runs mosquitto/prod.conf with its files (TLS, passwords, the ACL)
    and the services connect over TLS, logging in with the `mqtt_password` setting. With
    `redis_masters`, Redis is a Redis Cluster of that many masters (`PrivateCluster`).
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        broker: ProdBroker | None = None,
        shared: Mapping[str, int] | None = None,
        redis_masters: int = 0,
        devices: int = 0,
        **settings: object,
    ) -> None:
        """`shared`: services to run as several instances sharing their subscriptions
        (`{"aggregator": 2}` runs aggregator-a and aggregator-b with FEDSAGA_SHARED).
        `devices`: how many devices the broker must hold at once; the stack refuses to
        start, saying how to raise the open-file limit, when this machine cannot."""
        self.servers = PrivateServers(
            workdir, prod=broker, redis_masters=redis_masters, devices=devices
        )
        self.workdir = self.servers.workdir
        # The private servers; nothing else from the environment or a profile either (an
        # operator's FEDSAGA_LOG_FORMAT or FEDSAGA_CANARY_STAGES must not change the stack).
        private = {
            "mqtt_host": "127.0.0.1",
            "mqtt_port": self.servers.broker.port,
            "mqtt_tls": broker is not None,
            "mqtt_ca_file": None if broker is None else str(broker.ca_file),
            "redis_url": self.servers.redis_url,
        }
        # Settings passed in (credentials, say) win over these.
        self.settings = Settings.isolated(**(private | settings))
        self.services: dict[str, ServiceProcess] = {}
        for name in SERVICES:
            count = (shared or {}).get(name, 1)
            if count == 1:
                self.services[name] = ServiceProcess(name, self.settings, self.workdir)
                continue
            for instance in "abcdefgh"[:count]:
                own = self.settings.model_copy(update={"shared": True, "instance": instance})
                label = f"{name}-{instance}"
                self.services[label] = ServiceProcess(name, own, self.workdir, label)

    def __enter__(self) -> LocalStack:
        self.servers.__enter__()
        try:
            for proc in self.services.values():
                proc.start()
            for proc in self.services.values():
                proc.wait_serving()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.services.values():
            proc.stop()
        self.servers.__exit__()
