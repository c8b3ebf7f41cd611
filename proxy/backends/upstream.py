"""One HTTP/1.1 connection to a CVM upstream, and the keep-alive pool of them per address.

Owns the wire side of an exchange: the response head cut at its CRLFCRLF and parsed alone by
llhttp (httptools), so answers llhttp cannot frame without knowing the request (HEAD, RFC 9110
§9.3.2) end exactly at the head; the body fed to the same parser; chunks queued until the
reader takes them, with reading paused past ``HIGH_WATER`` unread bytes (a 1 GB download in
constant memory); write flow control (``drain``); the read timeout (the longest wait for the
next piece of the response, nginx's proxy_read_timeout); and the verdict on reuse: ``dirty``
when anything arrived that is not part of the one response asked for. In the TUNNEL phase
(after a 101) every transport event is forwarded to the ``Tunnel``.

``Pool`` keeps idle connections per address, LIFO (the warmest first, so the upstream's own
idle timer rarely beats us), at most ``max_idle``, each closed after ``idle_timeout`` idle.
Connections it hands out are *busy* until ``release`` (pooled again or closed) or ``detach``.

Decisions (ours): interim 1xx answers other than 101 are skipped (they are not forwarded); a
head over ``MAX_HEAD`` bytes or one llhttp rejects is an UpstreamError (502, RFC 9112 §6.3:
the connection is discarded); a head still incomplete is checked for errors at every read, so
an upstream speaking something else fails at once, not after the read timeout.

Must not know requests' meaning, routing, health, or the client side.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

import httptools

from ..errors import ProxyError, UpstreamError, UpstreamTimeout

if TYPE_CHECKING:
    from .tunnel import Tunnel

#: statuses without a body whatever their headers say (RFC 9110 §6.4.1)
NO_BODY = frozenset({204, 304})
MAX_HEAD = 64 * 1024
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
MAX_IDLE = 64
IDLE_TIMEOUT = 15.0

# exchange phases of an upstream connection
IDLE, HEAD, BODY, DONE, TUNNEL = range(5)


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class UpstreamConnection(asyncio.Protocol):
    """One HTTP/1.1 connection to an upstream; one exchange at a time, no pipelining."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: Any = None
        self.closed = False
        self.phase = IDLE
        self.idle_timer: asyncio.TimerHandle | None = None
        self.tunnel: Tunnel | None = None
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.begin(False, False)
        self.phase = IDLE  # until the first request

    def begin(self, head_only: bool, upgrade: bool) -> None:
        """Reset the per-exchange state for a new request."""
        self.phase = HEAD
        self.head_only = head_only
        self.upgrade = upgrade
        self.buf = bytearray()
        self.parser: Any = None
        self.messages = 0
        self.raw_headers: list[tuple[str, str]] = []
        self.status = 0
        self.keep_alive = False
        self.close_delimited = False
        self.got_bytes = False
        self.checked = False
        self.complete = False
        self.dirty = False
        self.body_sent = False
        self.error: ProxyError | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.read_paused = False

    # -- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        phase = self.phase
        if phase == BODY:
            self._feed_body(data)
        elif phase == HEAD:
            self.got_bytes = True
            self.buf += data
            self._parse_head()
        elif phase == TUNNEL:
            if self.tunnel is not None:
                self.tunnel.upstream_data(data)
            else:
                self.buf += data  # before the Tunnel exists: the first bytes for the client
        else:  # bytes nobody asked for: this connection cannot be trusted for another request
            self.dirty = True
            self.transport.close()

    def eof_received(self) -> bool | None:
        if self.phase == TUNNEL and self.tunnel is not None:
            return self.tunnel.upstream_eof()
        return None  # the transport closes; connection_lost decides what the end means

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.lost(self)
        phase = self.phase
        if phase == HEAD and self.error is None:
            self.error = UpstreamError("upstream closed the connection before the response",
                                       log_detail=f"{self.pool.address}: {exc or 'EOF'}")
        elif phase == BODY and not self.complete and self.error is None:
            if self.close_delimited and exc is None:
                self.complete = True  # RFC 9112 §6.3 item 8: the close ends this body
            else:
                self.error = UpstreamError("upstream closed mid-body",
                                           log_detail=f"{self.pool.address}: {exc or 'EOF'}")
        elif phase == TUNNEL and self.tunnel is not None:
            self.tunnel.upstream_lost(exc)
        self._wake()
        drain = self.drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.tunnel is not None:
            self.tunnel.upstream_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.tunnel is not None:
            self.tunnel.upstream_resumed()
        drain = self.drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- llhttp callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.messages += 1
        if self.messages > 1:
            # Another message after the one asked for (a miscounting or hostile upstream):
            # none of it may reach the client as part of this response. Raising stops llhttp
            # (it surfaces as HttpParserCallbackError in _feed_body).
            self.dirty = True
            raise _ExtraMessage()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.phase == HEAD:  # after the head they are trailers: dropped
            self.raw_headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    # -- response parsing ---------------------------------------------------------------------

    def _parse_head(self) -> None:
        buf = self.buf
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0 and len(buf) <= MAX_HEAD:
                if not self.checked:
                    self._check_partial(bytes(buf))
                return
            if end < 0 or end + 4 > MAX_HEAD:  # whether it came whole or in pieces
                self._fail(UpstreamError("upstream response head too large"))
                return
            head = bytes(buf[:end + 4])
            del buf[:end + 4]
            self.parser = httptools.HttpResponseParser(self)
            self.raw_headers = []
            self.messages = 0
            self.complete = False
            try:
                self.parser.feed_data(head)
            except httptools.HttpParserUpgrade:
                pass  # a 101: llhttp stops at the end of the head, as we want
            except httptools.HttpParserError as exc:
                self._fail(UpstreamError("invalid upstream response head",
                                         log_detail=f"{self.pool.address}: {exc}"))
                return
            status = self.parser.get_status_code()
            if status >= 200 or status == 101:
                break  # 1xx interim answers are skipped (RFC 9110 §15.2)
        self.status = status
        rest = bytes(buf)
        buf.clear()
        if status == 101:
            if not self.upgrade:
                self._fail(UpstreamError("upstream switched protocols unasked"))
                return
            self.phase = TUNNEL
            buf += rest
        elif self.head_only or status in NO_BODY:
            self.phase = DONE
            self.complete = True
            self.dirty = bool(rest)
        else:
            names = {name.lower() for name, _ in self.raw_headers}
            self.close_delimited = not names & {"content-length", "transfer-encoding"}
            self.phase = BODY
            if rest:
                self._feed_body(rest)
        self._wake()

    def _check_partial(self, data: bytes) -> None:
        """A head still incomplete: fail now if what came so far is already invalid (once per
        exchange, so a head trickling in byte by byte costs no more than one parse)."""
        self.checked = True
        try:
            httptools.HttpResponseParser(_NO_CALLBACKS).feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError("invalid upstream response head",
                                     log_detail=f"{self.pool.address}: {exc}"))

    def _feed_body(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if not self.complete:
                self._fail(UpstreamError("invalid upstream response body framing",
                                         log_detail=f"{self.pool.address}: {exc}"))
                return
            self.dirty = True  # garbage after the end of the response
        if self.messages > 1:
            self.dirty = True  # another message after the end of the response

    def _fail(self, error: ProxyError) -> None:
        self.error = error
        self.dirty = True
        self.transport.close()
        self._wake()

    # -- waiting ------------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float, sender: asyncio.Task[None] | None = None) -> None:
        """Until the protocol has news for the reader; UpstreamTimeout after ``timeout`` s.

        While ``sender`` still sends the request body there is no read timeout (nginx starts
        proxy_read_timeout once the request is sent); its own error, if any, is raised.
        """
        loop = asyncio.get_running_loop()
        waiter = self.waiter = loop.create_future()
        try:
            if sender is not None and not sender.done():
                await asyncio.wait((waiter, sender), return_when=asyncio.FIRST_COMPLETED)
                failed = sender.exception() if sender.done() and not sender.cancelled() else None
                if failed is not None:
                    raise failed
                return
            timer = loop.call_later(timeout, _expire, waiter, self.pool.address)
            try:
                await waiter
            finally:
                timer.cancel()
        finally:
            self.waiter = None

    async def drain(self, timeout: float) -> None:
        if not self.write_paused or self.closed:
            return
        loop = asyncio.get_running_loop()
        waiter = self.drain_waiter = loop.create_future()
        timer = loop.call_later(timeout, _expire, waiter, self.pool.address)
        try:
            await waiter
        finally:
            timer.cancel()
            self.drain_waiter = None

    def take_all(self) -> bytes:
        body = b"".join(self.chunks)
        self.chunks.clear()
        self.buffered = 0
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        return body

    def take_chunk(self) -> bytes:
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        if self.read_paused and self.buffered < LOW_WATER:
            self.read_paused = False
            self.transport.resume_reading()
        return chunk


_NO_CALLBACKS = object()  # a parser protocol without callbacks: llhttp only validates


class _ExtraMessage(Exception):
    """Raised from an llhttp callback to stop at a second message on one exchange."""


def _expire(waiter: asyncio.Future[None], address: str) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamTimeout("upstream read timeout", log_detail=address))


class Pool:
    """Idle keep-alive connections to one upstream address (LIFO: the warmest first)."""

    def __init__(self, address: str, max_idle: int = MAX_IDLE,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.address = address
        self.host, self.port = split_address(address)
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.idle: deque[UpstreamConnection] = deque()
        self.busy = 0
        self.connects = 0
        self.retired = False

    async def connect(self, timeout: float) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        self.connects += 1
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(lambda: UpstreamConnection(self),
                                                       self.host, self.port)
        except (OSError, TimeoutError) as exc:
            what = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            raise UpstreamError("upstream connect failed", retryable=True,
                                log_detail=f"{self.address}: connect {what}") from exc
        self.busy += 1
        return conn

    def take(self) -> UpstreamConnection | None:
        while self.idle:
            conn = self.idle.pop()
            if conn.idle_timer is not None:
                conn.idle_timer.cancel()
                conn.idle_timer = None
            if not conn.closed and not conn.transport.is_closing():
                self.busy += 1
                return conn
        return None

    def release(self, conn: UpstreamConnection, reusable: bool) -> None:
        self.busy -= 1
        if not reusable or self.retired or conn.closed or len(self.idle) >= self.max_idle:
            conn.transport.close()
            return
        conn.phase = IDLE
        conn.idle_timer = asyncio.get_running_loop().call_later(
            self.idle_timeout, conn.transport.close)
        self.idle.append(conn)

    def detach(self) -> None:
        """A connection leaves the pool's accounting for good (a tunnel took it)."""
        self.busy -= 1

    def lost(self, conn: UpstreamConnection) -> None:
        if conn.phase == IDLE and conn in self.idle:
            self.idle.remove(conn)
            if conn.idle_timer is not None:
                conn.idle_timer.cancel()

    def retire(self) -> None:
        """No target uses this address any more: close idle ones, don't keep busy ones."""
        self.retired = True
        while self.idle:
            self.idle.pop().transport.close()

    def state(self) -> dict[str, int]:
        return {"idle": len(self.idle), "busy": self.busy, "connects": self.connects}


