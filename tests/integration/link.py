"""A TCP link between two servers that counts the bytes it carries and can be cut.

A regional broker's bridge connects to the core broker through it, so a test measures what
crossed the bridge on the wire and takes the link down and up as a network would, while both
brokers keep running. It forwards bytes as they are; TLS passes through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib

from deploy.servers import free_port


class Link:
    """`async with Link(target_port) as link`: listens on `link.port`, forwards to the target.

    `up_bytes` counts what went towards the target, `down_bytes` what came back. `cut()` drops
    every connection and stops listening, so connecting is refused until `restore()`.

    Refused, not accepted and reset: a bridge whose TLS handshake was cut off by a reset (as a
    load balancer without a backend does) left Debian 12's mosquitto 2.0.11 spinning at 100%
    CPU in `net__socket_close` at the next client's disconnect (docs/scaling.md).
    """

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.target_port = target_port
        self.port = free_port()
        self.up_bytes = 0
        self.down_bytes = 0
        self.connections = 0  # accepted and forwarded, over the link's life
        self.is_up = True
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Link:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    def cut(self) -> None:
        """Drop every connection now (both ends see it reset) and refuse new ones."""
        self.is_up = False
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        """Listen again on the same port (the bridge reconnects on its own schedule)."""
        self.is_up = True
        self._server = await asyncio.start_server(self._accept, self.host, self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.is_up:
            writer.transport.abort()
            return
        try:
            target_reader, target_writer = await asyncio.open_connection(
                self.host, self.target_port
            )
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers |= {writer, target_writer}
        for pipe in (
            self._pipe(reader, target_writer, up=True),
            self._pipe(target_reader, writer, up=False),
        ):
            task = asyncio.create_task(pipe)
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool
    ) -> None:
        """Copy one direction until either side closes, then close both."""
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while chunk := await reader.read(65_536):
                if up:
                    self.up_bytes += len(chunk)
                else:
                    self.down_bytes += len(chunk)
                writer.write(chunk)
                await writer.drain()
        writer.transport.abort()
        self._writers.discard(writer)
