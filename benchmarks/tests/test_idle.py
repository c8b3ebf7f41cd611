"""The idle-connection meter against a small local server: growth per connection, and the
refusals (a server that closes idle connections, one that answers errors)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import cast

import pytest

from benchmarks import idle


class _Answer(asyncio.Protocol):
    def __init__(self, status: bytes, close: bool) -> None:
        self.status, self.close = status, close

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer:
            self.transport.write(b"HTTP/1.1 " + self.status
                                 + b"\r\nContent-Length: 2\r\n\r\nok")
            if self.close:
                self.transport.close()


@contextmanager
def server(status: bytes = b"200 OK", close: bool = False) -> Iterator[int]:
    """An HTTP server on port 0 in its own thread and loop; yields the port."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, asyncio.Server] = {}

    async def serve() -> None:
        holder["server"] = await loop.create_server(lambda: _Answer(status, close),
                                                    "127.0.0.1", 0, backlog=1024)
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop).result(5)
    assert started.wait(5)
    try:
        yield holder["server"].sockets[0].getsockname()[1]
    finally:
        async def shutdown() -> None:
            holder["server"].close()
            await holder["server"].wait_closed()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def readings(*values: int) -> Callable[[], int]:
    """A fake memory meter: the given readings, in order."""
    it = iter(values)
    return lambda: next(it)


def test_growth_is_divided_by_the_connections_held_open() -> None:
    with server() as port:
        result = idle.measure(port, 50, readings(1_000_000, 1_015_000), settle=0.05)
    assert (result.connections, result.still_open) == (50, 50)
    assert result.per_connection == 300


def test_server_that_closes_idle_connections_is_refused() -> None:
    with server(close=True) as port:
        with pytest.raises(idle.IdleError, match="closed 50 of 50"):
            idle.measure(port, 50, readings(1, 2), settle=0.2)


def test_error_answers_are_refused() -> None:
    with server(status=b"502 Bad Gateway") as port:
        with pytest.raises(idle.IdleError, match="502"):
            idle.measure(port, 10, readings(1, 2), settle=0.05)
