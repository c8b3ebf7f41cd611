"""The 101 tunnel on real loopback sockets: both directions, early bytes, half-close, close,
backpressure and the idle timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from proxy.backends.tunnel import Tunnel


class UpSide(asyncio.Protocol):
    """Stands in for the upstream connection: forwards its transport's events to the tunnel."""

    def __init__(self) -> None:
        self.tunnel: Tunnel | None = None
        self.transport: Any = None
        self.early = b""  # what came before the tunnel existed, as the real one keeps it
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.tunnel is None:
            # the real upstream connection creates the tunnel as soon as the 101 head is
            # parsed, so what it keeps early is bounded; bound it here too (a flood would
            # otherwise pile up megabytes before the tunnel exists)
            self.early += data
            if len(self.early) >= 256 * 1024:
                self.transport.pause_reading()
        else:
            self.tunnel.upstream_data(data)

    def eof_received(self) -> bool | None:
        if self.tunnel is None:
            return None  # closes; the tunnel is told when it exists, as cvm.py does
        return self.tunnel.upstream_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.tunnel is not None:
            self.tunnel.upstream_lost(exc)

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.upstream_paused()

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.upstream_resumed()


class Front(asyncio.Protocol):
    """Stands in for the client connection: hands its transport to the tunnel."""

    def __init__(self, made: asyncio.Future[Front]) -> None:
        self.made = made
        self.transport: Any = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.made.set_result(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(True)


class Pipe:
    def __init__(self, tunnel: Tunnel, front: Front, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, up: UpSide, up_seen: list[bytes],
                 up_eof: asyncio.Event) -> None:
        self.tunnel = tunnel
        self.front = front
        self.reader = reader
        self.writer = writer
        self.up = up
        self.up_seen = up_seen
        self.up_eof = up_eof


Upstream = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"hello\n")
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.write(b"bye\n")
    writer.write_eof()
    await writer.drain()


def run(test: Callable[[Pipe], Awaitable[Any]], upstream: Upstream = _echo,
        idle_timeout: float = 5.0, early: bytes = b"") -> Any:
    async def main() -> Any:
        loop = asyncio.get_running_loop()
        up_seen: list[bytes] = []
        up_eof = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            async def recording_read(n: int = -1) -> bytes:
                data = await original(n)
                if data:
                    up_seen.append(data)
                else:
                    up_eof.set()
                return data
            original = reader.read
            reader.read = recording_read  # type: ignore[method-assign]
            try:
                await upstream(reader, writer)
            except ConnectionError:
                pass

        up_server = await asyncio.start_server(handle, "127.0.0.1", 0)
        _, up = await loop.create_connection(UpSide, "127.0.0.1",
                                             up_server.sockets[0].getsockname()[1])
        made: asyncio.Future[Front] = loop.create_future()
        front_server = await loop.create_server(lambda: Front(made), "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", front_server.sockets[0].getsockname()[1])
        front = await made
        await asyncio.sleep(0.05)
        tunnel = Tunnel(up.transport, early + up.early, idle_timeout)
        up.tunnel = tunnel
        if up.closed:
            tunnel.upstream_lost(None)
        await asyncio.sleep(0.05)  # upstream bytes arrive before attach: they must wait
        tunnel.attach(front.transport)
        try:
            return await asyncio.wait_for(
                test(Pipe(tunnel, front, reader, writer, up, up_seen, up_eof)), 10)
        finally:
            tunnel.close()
            writer.close()
            up_server.close()
            front_server.close()

    return uvloop.run(main())


def test_bytes_flow_both_ways_and_early_bytes_come_first() -> None:
    async def test(pipe: Pipe) -> None:
        assert await pipe.reader.readexactly(len(b"EARLYhello\n")) == b"EARLYhello\n"
        pipe.writer.write(b"ping")
        assert await pipe.reader.readexactly(4) == b"ping"
        assert pipe.tunnel.sent == 4 and pipe.tunnel.received >= 15
    run(test, early=b"EARLY")


def test_client_half_close_reaches_the_upstream_and_its_answer_still_comes_back() -> None:
    async def test(pipe: Pipe) -> None:
        await pipe.reader.readexactly(6)
        pipe.writer.write(b"last")
        pipe.writer.write_eof()
        assert await pipe.reader.read() == b"lastbye\n"  # then EOF
        await asyncio.wait_for(pipe.up_eof.wait(), 5)
        await asyncio.wait_for(pipe.front.lost, 5)
        assert pipe.tunnel.closed
    run(test)


def test_client_close_closes_the_upstream_and_tells_the_connection() -> None:
    async def test(pipe: Pipe) -> None:
        await pipe.reader.readexactly(6)
        pipe.writer.transport.abort()
        assert await asyncio.wait_for(pipe.front.lost, 5)
        await asyncio.wait_for(pipe.up_eof.wait(), 5)
        assert pipe.tunnel.closed
    run(test)


def test_upstream_close_ends_the_client_side() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"going")
        await writer.drain()
        writer.transport.abort()

    async def test(pipe: Pipe) -> None:
        assert await pipe.reader.read() == b"going"
        await asyncio.wait_for(pipe.front.lost, 5)
    run(test, upstream=hang_up)


def test_a_client_that_does_not_read_pauses_the_upstream() -> None:
    sent: list[int] = []

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        block = b"x" * 65536
        total = 0
        try:
            while total < 200 * 1024 * 1024:
                writer.write(block)
                total += len(block)
                sent.append(total)
                await writer.drain()
        except ConnectionError:
            pass

    async def test(pipe: Pipe) -> None:
        await asyncio.sleep(0.5)  # flood could push 200 MB by now if nothing pushed back
        client_buffer = pipe.front.transport.get_write_buffer_size()
        assert sent[-1] < 40 * 1024 * 1024 and client_buffer < 8 * 1024 * 1024
        got = 0
        while got < 10 * 1024 * 1024:  # reading resumes the flow
            got += len(await pipe.reader.read(1 << 20))
        assert pipe.tunnel.received >= got
    run(test, upstream=flood)


def test_an_idle_tunnel_is_closed() -> None:
    async def test(pipe: Pipe) -> None:
        assert await pipe.reader.readexactly(6) == b"hello\n"
        await asyncio.wait_for(pipe.front.lost, 3)
        assert pipe.tunnel.closed
    run(test, idle_timeout=0.3)
