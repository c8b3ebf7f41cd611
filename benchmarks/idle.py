"""Memory per idle keep-alive connection: open many, one request each, and weigh the server.

Strategy: warm the server up (so lazily built state is not counted), read its resident memory
(VmRSS from /proc, the process and its children), open ``count`` connections that each send one
keep-alive request and read the whole answer — what a browser's idle connection looks like —
let the server settle, read the memory again, check the connections are still open, and divide
the growth by their number. Kernel socket buffers are not in RSS, for either server.
Knows nothing of which server it measures beyond its port and a way to read its memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

#: connections being opened at once (the rest wait): keeps the accept backlog from overflowing
OPENING = 200
SETTLE_S = 1.0  # let the server finish its bookkeeping before it is weighed


class IdleError(Exception):
    """The connections could not be opened, or the server closed too many of them."""


@dataclass(frozen=True)
class IdleResult:
    connections: int
    still_open: int
    rss_before: int
    rss_after: int

    @property
    def per_connection(self) -> float:
        return (self.rss_after - self.rss_before) / self.connections


def _request(host: str) -> bytes:
    return f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: idle-bench\r\n\r\n".encode()


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    request: bytes) -> None:
    """One request and its whole answer (Content-Length framed, as both servers send)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = head.split(b" ", 2)[1]
    if not status.startswith(b"2"):
        raise IdleError(f"got status {status.decode()} instead of 2xx")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)


async def _open(port: int, request: bytes, gate: asyncio.Semaphore,
                timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with gate:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), timeout)
        await asyncio.wait_for(_exchange(reader, writer, request), timeout)
        return reader, writer


async def _measure(port: int, count: int, rss: Callable[[], int], host: str,
                   timeout: float, settle: float) -> IdleResult:
    request = _request(host)
    # warm-up: a few short-lived connections, so first-use allocations are in the baseline
    warm = await asyncio.gather(*(_open(port, request, asyncio.Semaphore(50), timeout)
                                  for _ in range(100)))
    for _, writer in warm:
        writer.close()
    await asyncio.sleep(settle)
    before = rss()
    gate = asyncio.Semaphore(OPENING)
    opened = await asyncio.gather(*(_open(port, request, gate, timeout) for _ in range(count)),
                                  return_exceptions=True)
    streams = [item for item in opened if not isinstance(item, BaseException)]
    failures = [item for item in opened if isinstance(item, BaseException)]
    try:
        if failures:
            raise IdleError(f"{len(failures)} of {count} connections failed, first: "
                            f"{failures[0]!r}")
        await asyncio.sleep(settle)
        after = rss()
        # a server that closed idle connections must not look small: count the open ones
        still_open = sum(1 for reader, _ in streams if not reader.at_eof())
        return IdleResult(count, still_open, before, after)
    finally:
        for _, writer in streams:
            writer.close()
        await asyncio.sleep(0)


def measure(port: int, count: int, rss: Callable[[], int], *, host: str = "bench.local",
            timeout: float = 30.0, settle: float = SETTLE_S) -> IdleResult:
    """Open ``count`` idle keep-alive connections to 127.0.0.1:``port``; weigh the server."""
    result = asyncio.run(_measure(port, count, rss, host, timeout, settle))
    if result.still_open < 0.99 * count:
        raise IdleError(f"the server closed {count - result.still_open} of {count} idle "
                        "connections before they were weighed")
    return result
