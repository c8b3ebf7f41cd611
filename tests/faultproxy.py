"""A fault-injecting TCP proxy for tests, to put between the proxy under test and an upstream.

The habit is asyncpg's TCPFuzzingProxy; the faults are toxiproxy's catalogue (which is not
installable here): ``reset`` (RST as the request arrives), ``close`` (FIN, no answer),
``stall`` (the request is swallowed, nothing comes back), ``garbage`` (bytes that are not HTTP
come back instead of the upstream's answer), ``limit`` / ``reset_after`` / ``stall_after`` (the
answer is passed on for ``after`` bytes, then FIN / RST / silence), and ``slice`` (both
directions in ``size``-byte segments, ``delay`` seconds apart).

It runs in a thread of the test process with its own event loop and listens on a port of its
own (0). A fault set with ``set_fault`` applies to every connection ("link") that sends request
bytes after it was set (with ``once``: only to the first); a link keeps the fault it got. Each
link records what went through it, so a test can tell whether the proxy under test closed a
connection that failed and never sent another request on it.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from tests.threaded import ThreadedServer

#: a request line at the start of the data or of a line (what the proxy sends upstream)
_REQUEST_LINE = re.compile(rb"(?:^|\n)[A-Z]+ \S+ HTTP/1\.1\r\n")

KINDS = frozenset({"reset", "close", "stall", "garbage", "limit", "reset_after", "stall_after",
                   "slice"})


@dataclass(frozen=True)
class Fault:
    kind: str
    #: limit / reset_after / stall_after: bytes of the answer passed on before the fault
    after: int = 0
    #: slice: segment size and the pause between segments
    size: int = 1
    delay: float = 0.0
    #: garbage: what is sent back
    garbage: bytes = b"\x16\x03\x01 this is not HTTP at all\r\n\r\n"
    #: apply to the first link that sends request bytes only
    once: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault {self.kind!r}")


@dataclass
class Link:
    """One connection from the proxy under test, and what happened on it."""

    index: int
    fault: Fault | None = None
    #: bytes from the proxy under test (requests) and back to it (answers)
    sent: bytearray = field(default_factory=bytearray)
    answered: int = 0
    #: where in ``sent`` the fault was applied
    fault_at: int = 0
    #: the proxy under test closed (or reset) its side
    proxy_closed: bool = False
    #: we ended the link (a fault that closes or resets)
    we_closed: bool = False

    @property
    def requests(self) -> int:
        return len(_REQUEST_LINE.findall(bytes(self.sent)))

    @property
    def requests_since_fault(self) -> int:
        """Requests sent on the link since its fault (the one that met it included)."""
        return len(_REQUEST_LINE.findall(bytes(self.sent[self.fault_at:])))

    @property
    def done(self) -> bool:
        return self.proxy_closed or self.we_closed


def _set_nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Abort with RST (SO_LINGER 0), as toxiproxy's reset_peer."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


class _LinkRunner:
    """Moves the bytes of one link in both directions, applying its fault."""

    def __init__(self, owner: FaultProxy, link: Link, down_r: asyncio.StreamReader,
                 down_w: asyncio.StreamWriter, up_r: asyncio.StreamReader,
                 up_w: asyncio.StreamWriter) -> None:
        self.owner = owner
        self.link = link
        self.down_r, self.down_w, self.up_r, self.up_w = down_r, down_w, up_r, up_w
        self.answered_after = 0  # answer bytes since the fault applied
        self.swallowing = False  # stall_after reached: nothing more goes back

    def _end(self, reset: bool) -> None:
        with self.owner.lock:
            self.link.we_closed = True
        if reset:
            _reset(self.down_w)
        else:
            self.down_w.close()
        self.up_w.transport.abort()

    async def _write(self, writer: asyncio.StreamWriter, data: bytes, fault: Fault | None
                     ) -> None:
        if fault is not None and fault.kind == "slice":
            for i in range(0, len(data), fault.size):
                writer.write(data[i:i + fault.size])
                await writer.drain()
                await asyncio.sleep(fault.delay)
        else:
            writer.write(data)
            await writer.drain()

    async def requests(self) -> None:
        link = self.link
        while True:
            try:
                data = await self.down_r.read(65536)
            except ConnectionError:
                data = b""
            if not data:
                with self.owner.lock:
                    link.proxy_closed = True
                if not self.up_w.is_closing():
                    self.up_w.close()
                return
            with self.owner.lock:
                fresh = False
                if link.fault is None:
                    link.fault = self.owner.take_fault()
                    fresh = link.fault is not None
                    link.fault_at = len(link.sent)
                link.sent += data
            fault = link.fault
            if fault is None:
                await self._write(self.up_w, data, None)
                continue
            if fresh and fault.kind in ("reset", "close"):
                self._end(reset=fault.kind == "reset")
                return
            if fault.kind in ("stall", "garbage"):  # the request is swallowed
                if fresh and fault.kind == "garbage":
                    self.down_w.write(fault.garbage)
                continue
            await self._write(self.up_w, data, fault)

    async def answers(self) -> None:
        link = self.link
        while True:
            try:
                data = await self.up_r.read(65536)
            except ConnectionError:
                data = b""
            if not data:
                if not self.down_w.is_closing() and self.down_w.can_write_eof():
                    self.down_w.write_eof()  # the upstream's FIN, passed on
                return
            fault = link.fault
            kind = fault.kind if fault is not None else ""
            if kind in ("stall", "garbage") or self.swallowing:
                continue
            if fault is not None and kind in ("limit", "reset_after", "stall_after"):
                room = fault.after - self.answered_after
                data = data[:max(room, 0)]
                self.answered_after += len(data)
                if data:
                    self.down_w.write(data)
                    await self.down_w.drain()
                if self.answered_after >= fault.after:
                    if kind == "stall_after":
                        self.swallowing = True
                        continue
                    self._end(reset=kind == "reset_after")
                    return
                continue
            with self.owner.lock:
                link.answered += len(data)
            await self._write(self.down_w, data, fault)


class FaultProxy(ThreadedServer):
    """``with FaultProxy(upstream_port) as fp: fp.address``; ``fp.set_fault(Fault("reset"))``."""

    thread_name = "fault-proxy"

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.target = (upstream_host, upstream_port)
        self.lock = threading.Lock()
        self.links: list[Link] = []
        self._runners: list[_LinkRunner] = []
        self.port = 0
        self._fault: Fault | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- faults ---------------------------------------------------------------------------------

    def set_fault(self, fault: Fault | None) -> None:
        with self.lock:
            self._fault = fault

    def take_fault(self) -> Fault | None:
        """The fault for a link that starts sending now (called with the lock held)."""
        fault = self._fault
        if fault is not None and fault.once:
            self._fault = None
        return fault

    # -- what happened --------------------------------------------------------------------------

    def snapshot(self) -> list[Link]:
        with self.lock:
            return [Link(l.index, l.fault, bytearray(l.sent), l.answered, l.fault_at,
                         l.proxy_closed, l.we_closed) for l in self.links]

    def faulted(self) -> list[Link]:
        return [l for l in self.snapshot() if l.fault is not None]

    def wait_done(self, links: list[Link], timeout: float = 5.0) -> list[Link]:
        """The links (by index) once each is closed by one side or the other."""
        wanted = {l.index for l in links}
        deadline = time.monotonic() + timeout
        while True:
            now = [l for l in self.snapshot() if l.index in wanted]
            if all(l.done for l in now) or time.monotonic() > deadline:
                return now
            time.sleep(0.01)

    def close_all(self, timeout: float = 5.0) -> None:
        """End every open link with a FIN, as an upstream closing its idle keep-alive
        connections does, and wait until the proxy closed its side of each."""
        loop = self._loop
        assert loop is not None
        open_links = [r.link for r in self._runners if not r.link.done]

        def close() -> None:
            for runner in self._runners:
                if not runner.link.done and not runner.down_w.is_closing():
                    runner.down_w.write_eof()

        loop.call_soon_threadsafe(close)
        self.wait_done(open_links, timeout)

    # -- lifecycle ------------------------------------------------------------------------------

    async def _serve(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        with self.lock:
            link = Link(len(self.links))
            self.links.append(link)
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            with self.lock:
                link.we_closed = True
            down_w.close()
            return
        _set_nodelay(down_w)
        _set_nodelay(up_w)
        runner = _LinkRunner(self, link, down_r, down_w, up_r, up_w)
        self._runners.append(runner)
        tasks = [asyncio.ensure_future(runner.requests()), asyncio.ensure_future(runner.answers())]
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for writer in (down_w, up_w):
                if not writer.is_closing():
                    writer.close()

    async def _open(self) -> asyncio.AbstractServer:
        return await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=1024)
