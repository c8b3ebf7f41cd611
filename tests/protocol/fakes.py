"""In-process fakes for driving one ``HttpConnection`` through its protocol callbacks.

A ``FakeClock`` the deadlines read, a ``FakeTransport`` that records what the connection does to
the socket, a ``FakeRouter`` whose answers each test controls, a ``FakeTunnel`` for 101
hand-overs, ``parse_replies`` to read back what the client would have received, and ``Client``,
which wires one connection to all of them. Nothing here touches a socket or sleeps.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from proxy import writer
from proxy.config import Listener
from proxy.connection import HttpConnection, ListenerContext, ServerState
from proxy.errors import ProxyError
from proxy.logs import AccessLog
from proxy.messages import Outcome, Request, Response

#: a whole test body may take this long in real time before it counts as hung
TEST_TIMEOUT = 5.0


def async_test(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an ``async def`` test in a fresh event loop (the connection needs a running one:
    dispatch happens on a task and the deadline sweep arms a loop timer)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), TEST_TIMEOUT))

    return run


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeTransport:
    """What connection.py uses of an ``asyncio.Transport``, recording every call.

    ``close()`` behaves like the selector transport: with nothing buffered the protocol's
    ``connection_lost`` follows on the next loop iteration; with ``buffer_size`` bytes still
    buffered it waits until ``drain()`` (the client took them) or ``abort()``.
    """

    def __init__(self, peername: tuple[str, int] = ("203.0.113.7", 50123)) -> None:
        self.protocol: asyncio.Protocol | None = None
        #: every byte written, in order (what the client would read)
        self.data = bytearray()
        #: bytes written after close() or abort(): the client never gets them
        self.late = bytearray()
        self.reading = True
        self.pause_calls = 0
        self.resume_calls = 0
        self.close_called = False
        self.aborted = False
        self.eof_written = False
        #: connection_lost has been delivered to the protocol
        self.lost = False
        #: what get_write_buffer_size() answers (a slow reader leaves bytes here)
        self.buffer_size = 0
        #: a slow reader: when set, what is written stays buffered (until ``take``/``drain``)
        #: and passing this many buffered bytes calls the protocol's pause_writing, as the
        #: selector transport does; resume_writing follows at a quarter of it
        self.high_water: int | None = None
        self.writing_paused = False
        self._closing = False
        self._lose_scheduled = False
        self.extra: dict[str, Any] = {
            "peername": peername, "sockname": ("127.0.0.1", 8080), "sslcontext": None,
            "ssl_object": None, "socket": None,
        }

    # -- the transport API ------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.eof_written:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._closing:
            self.late += data
            return
        self.data += data
        if self.high_water is not None:
            self.buffer_size += len(data)
            if not self.writing_paused and self.buffer_size > self.high_water:
                self.writing_paused = True
                assert self.protocol is not None
                self.protocol.pause_writing()

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def pause_reading(self) -> None:
        self.pause_calls += 1
        self.reading = False

    def resume_reading(self) -> None:
        self.resume_calls += 1
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading and not self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self.close_called = True
        if not self.buffer_size:
            self._lose_soon()

    def abort(self) -> None:
        self._closing = True
        self.aborted = True
        self._lose_soon()

    def is_closing(self) -> bool:
        return self._closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def get_write_buffer_size(self) -> int:
        return self.buffer_size

    def set_protocol(self, protocol: asyncio.Protocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.Protocol | None:
        return self.protocol

    # -- what the client side does ------------------------------------------------------------

    def client_eof(self) -> bool:
        """The client sent its FIN: the protocol's answer decides whether we close (as the
        selector transport does when ``eof_received`` returns a false value)."""
        assert self.protocol is not None
        keep_open = bool(self.protocol.eof_received())
        if not keep_open:
            self.close()
        return keep_open

    def take(self, nbytes: int) -> None:
        """The client read ``nbytes`` of what is buffered."""
        self.buffer_size = max(0, self.buffer_size - nbytes)
        low_water = (self.high_water or 0) // 4
        if self.writing_paused and self.buffer_size <= low_water:
            self.writing_paused = False
            assert self.protocol is not None
            self.protocol.resume_writing()
        if self._closing and not self.buffer_size:
            self._lose_soon()

    def drain(self) -> None:
        """The client took everything buffered."""
        self.take(self.buffer_size)

    def lose(self) -> None:
        """The connection is gone now (a reset): deliver connection_lost at once."""
        self._closing = True
        self._deliver_lost()

    @property
    def closed(self) -> bool:
        """Closed for the client: close() or abort() was called."""
        return self._closing

    def _lose_soon(self) -> None:
        if not self._lose_scheduled:
            self._lose_scheduled = True
            asyncio.get_running_loop().call_soon(self._deliver_lost)

    def _deliver_lost(self) -> None:
        if not self.lost:
            self.lost = True
            assert self.protocol is not None
            self.protocol.connection_lost(None)


class FakeTunnel:
    """The object a 101 response hands the connection to (WebSocket relay)."""

    def __init__(self) -> None:
        self.attached: Any = None
        self.from_client_data = bytearray()
        self.eof = False
        self.closed = False

    def attach(self, transport: Any) -> None:
        self.attached = transport

    def from_client(self, data: bytes) -> None:
        self.from_client_data += data

    def client_eof(self) -> None:
        self.eof = True

    def client_closed(self) -> None:
        self.closed = True


Handler = Callable[[Request], Awaitable[Response]]


class FakeRouter:
    """``async handle(Request) -> Outcome`` with per-test answers.

    By default every request gets ``200`` with the body ``METHOD PATH``; ``hold(path)`` makes
    requests for ``path`` wait on an event first; ``handler`` replaces the default entirely. A
    ProxyError from the handler becomes its error page, as the real router does.
    """

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.handler: Handler = self._default
        self.active = 0
        self.max_active = 0
        self.cancelled: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}

    def hold(self, *paths: str) -> None:
        for path in paths:
            self.gates[path] = asyncio.Event()

    def release(self, path: str) -> None:
        self.gates[path].set()

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    async def _default(self, request: Request) -> Response:
        gate = self.gates.get(request.path)
        if gate is not None:
            await gate.wait()
        return Response(200, (("Content-Type", "text/plain"),),
                        f"{request.method} {request.path}".encode())

    async def handle(self, request: Request) -> Outcome:
        self.requests.append(request)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            return Outcome(await self.handler(request))
        except ProxyError as exc:
            return Outcome(writer.error_response(exc), error=type(exc).__name__)
        except asyncio.CancelledError:
            self.cancelled.append(request.path)
            raise
        finally:
            self.active -= 1


async def chunks(*parts: bytes, fail: Exception | None = None,
                 gate: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    """A streamed response body: ``parts``, then ``fail`` raised if given; waits on ``gate``
    (if given) after the first part."""
    for i, part in enumerate(parts):
        yield part
        if i == 0 and gate is not None:
            await gate.wait()
    if fail is not None:
        raise fail


@dataclass
class Reply:
    """One response as the client reads it."""

    status: int
    reason: str
    #: (lower-cased name, value), in order
    headers: list[tuple[str, str]]
    body: bytes = b""
    #: the body's framing: "length", "chunked", "close" or "none"
    framing: str = "none"
    #: the whole body arrived (by its framing)
    complete: bool = True
    raw_head: bytes = b""

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    def all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]


def parse_replies(data: bytes, head_only: frozenset[int] | set[int] = frozenset()
                  ) -> list[Reply]:
    """Split what the connection wrote into responses (interim 1xx ones included). The
    final responses whose index (counting final responses only, from 0) is in ``head_only``
    answer HEAD requests: no body whatever their headers say."""
    replies: list[Reply] = []
    pos = 0
    final = 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            raise AssertionError(f"incomplete response head: {bytes(data[pos:])!r}")
        raw_head = bytes(data[pos:end + 4])
        lines = raw_head[:-4].decode("latin-1").split("\r\n")
        version, status_text, reason = (lines[0].split(" ", 2) + [""])[:3]
        assert version == "HTTP/1.1", lines[0]
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            assert colon and name == name.strip(), f"bad header line {line!r}"
            headers.append((name.lower(), value.strip()))
        reply = Reply(int(status_text), reason, headers, raw_head=raw_head)
        pos = end + 4
        replies.append(reply)
        if 100 <= reply.status < 200 and reply.status != 101:
            continue  # interim: no body, the final response follows
        index = final
        final += 1
        if reply.status == 101:
            # everything after it belongs to the tunnel
            reply.body, reply.framing = bytes(data[pos:]), "none"
            return replies
        if index in head_only or reply.status in (204, 304):
            continue
        te = reply.header("transfer-encoding")
        length = reply.header("content-length")
        if te is not None:
            assert te == "chunked" and length is None, reply.headers
            reply.framing = "chunked"
            body = bytearray()
            while True:
                lf = data.find(b"\r\n", pos)
                if lf < 0:
                    reply.complete = False
                    pos = len(data)
                    break
                size = int(bytes(data[pos:lf]), 16)
                if size == 0:
                    if data[lf + 2:lf + 4] != b"\r\n":
                        reply.complete = False
                        pos = len(data)
                    else:
                        pos = lf + 4
                    break
                start = lf + 2
                if len(data) < start + size + 2:
                    body += data[start:]
                    reply.complete = False
                    pos = len(data)
                    break
                assert data[start + size:start + size + 2] == b"\r\n"
                body += data[start:start + size]
                pos = start + size + 2
            reply.body = bytes(body)
        elif length is not None:
            reply.framing = "length"
            n = int(length)
            reply.body = bytes(data[pos:pos + n])
            reply.complete = len(reply.body) == n
            pos += n
        else:
            reply.framing = "close"
            reply.body = bytes(data[pos:])
            pos = len(data)
    return replies


@dataclass
class Client:
    """One HttpConnection on a FakeTransport, with a fake clock and a fake router.

    The listener's client timeouts are set to distinct values so that a test can tell which
    one fired: header 10 s, body 20 s, keep-alive 30 s (override with ``settings``).
    """

    kind: str
    settings: dict[str, Any] = field(default_factory=dict)
    peername: tuple[str, int] = ("203.0.113.7", 50123)

    def __post_init__(self) -> None:
        self.clock = FakeClock()
        self.router = FakeRouter()
        values: dict[str, Any] = {"client_header_timeout": 10.0, "client_body_timeout": 20.0,
                                  "keepalive_timeout": 30.0}
        values.update(self.settings)
        self.listener = Listener(name="web", protocol="HTTP", port=0, **values)
        self.state = ServerState(self.router, AccessLog(enabled=False), None, clock=self.clock)
        self.ctx = ListenerContext(self.listener, self.kind, self.state)
        self.conn = HttpConnection(self.ctx)
        self.transport = FakeTransport(self.peername)
        self.transport.protocol = self.conn
        self.conn.connection_made(self.transport)

    # -- the client's side --------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.conn.data_received(data)

    def eof(self) -> bool:
        return self.transport.client_eof()

    def advance(self, seconds: float) -> None:
        """Time passes; whatever deadline is due fires (the periodic sweep's job)."""
        self.clock.advance(seconds)
        self.state.sweep()

    # -- the loop ---------------------------------------------------------------------------

    @staticmethod
    async def settle(rounds: int = 20) -> None:
        """Let the dispatch task and whatever it woke run."""
        for _ in range(rounds):
            await asyncio.sleep(0)

    @staticmethod
    async def until(condition: Callable[[], object], rounds: int = 500) -> None:
        for _ in range(rounds):
            if condition():
                return
            await asyncio.sleep(0)
        raise AssertionError("condition not reached")

    # -- what the client read ---------------------------------------------------------------

    def replies(self, head_only: frozenset[int] | set[int] = frozenset()) -> list[Reply]:
        return parse_replies(bytes(self.transport.data), head_only)

    def finals(self, head_only: frozenset[int] | set[int] = frozenset()) -> list[Reply]:
        """The final (non-1xx, or 101) responses."""
        return [r for r in self.replies(head_only)
                if not (100 <= r.status < 200) or r.status == 101]

    def statuses(self) -> list[int]:
        return [r.status for r in self.replies()]


def get(path: str = "/", *headers: str, version: str = "1.1", method: str = "GET") -> bytes:
    """A request head without a body (Host added for HTTP/1.1)."""
    lines = [f"{method} {path} HTTP/{version}"]
    if version == "1.1":
        lines.append("Host: example.com")
    lines.extend(headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def post(path: str, body: bytes = b"", *headers: str, length: int | None = None,
         version: str = "1.1") -> bytes:
    """A request with a Content-Length body (``length`` may claim more than ``body``)."""
    declared = len(body) if length is None else length
    return get(path, f"Content-Length: {declared}", *headers, version=version,
               method="POST") + body
