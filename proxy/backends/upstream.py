"""One HTTP/1.1 connection to an upstream (its pool is backends/pool.py).

The one outgoing HTTP/1.1 layer: everything the proxy sends out over HTTP/1.1 goes through
this class and ``pool.Pool``, streamed (CVM targets, backends/cvm.py) or buffered (the cloud
API, invoke URLs and health checks, backends/h1client.py on top of them).

Owns the wire side of an exchange: the response head found at its CRLFCRLF and parsed by llhttp
(httptools) on its own, so answers llhttp cannot frame without knowing the request (HEAD,
RFC 9110 §9.3.2) end exactly at the head; the body fed to the same parser; chunks queued until
the reader takes them, with reading paused past ``HIGH_WATER`` unread bytes (a 1 GB download in
constant memory); write flow control (``drain``); the read timeout (the longest wait for the
next piece of the response, nginx's proxy_read_timeout); and the verdict on reuse: ``dirty``
when anything arrived that is not part of the one response asked for. In the TUNNEL phase
(after a 101) every transport event is forwarded to the ``Tunnel``.

Strategy (the hot path): callbacks, no future and no timer per exchange. Whoever waits for
news sets ``notify`` (the CVM exchange while it waits for the head, the buffered client for
the whole response) or awaits ``wait()`` (a streamed body's reader); both are told once per
``data_received``, after llhttp has returned, never from inside a parser callback, so a
listener may release and reuse this connection on the spot. Timeouts are deadlines: an armed
connection's ``deadline`` is checked by its pool's sweep (``pool.SWEEP_INTERVAL``), and an idle
pooled connection retires after ``idle_timeout`` by the same sweep, so neither a read nor a
release makes a timer handle.

Decisions (ours): interim 1xx answers other than 101 are skipped (they are not forwarded); a
head over ``max_head`` bytes or one llhttp rejects is an UpstreamError (502, RFC 9112 §6.3:
the connection is discarded); a head still incomplete is checked for errors at every read, so
an upstream speaking something else fails at once, not after the read timeout.

Must not know requests' meaning, routing, health, or the client side.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httptools

from ..deadlines import clock
from ..errors import ProxyError, UpstreamError, UpstreamTimeout
from ..vocabulary import FRAMING, NO_BODY_STATUSES

if TYPE_CHECKING:
    from .pool import Pool
    from .tunnel import Tunnel

MAX_HEAD = 64 * 1024
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024

# exchange phases of an upstream connection
IDLE, HEAD, BODY, DONE, TUNNEL = range(5)


class UpstreamConnection(asyncio.Protocol):
    """One HTTP/1.1 connection to an upstream; one exchange at a time, no pipelining."""

    __slots__ = (
        "pool", "transport", "closed", "phase", "tunnel", "write_paused", "drain_waiter",
        "waiter", "notify", "deadline", "read_timeout", "idle_since", "head_only", "upgrade",
        "buf", "parser", "messages", "raw_headers", "status", "keep_alive",
        "got_bytes", "checked", "complete", "dirty", "body_sent", "error", "chunks",
        "buffered", "read_paused", "news", "max_head",
    )

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: Any = None
        self.closed = False
        self.phase = IDLE
        self.tunnel: Tunnel | None = None
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        #: the streamed body's reader waits on this
        self.waiter: asyncio.Future[None] | None = None
        #: called (once per read, after parsing) while someone waits for the head
        self.notify: Callable[[], None] | None = None
        #: clock() by which the next piece of the response must come (0.0: not armed)
        self.deadline = 0.0
        self.read_timeout = 0.0
        #: clock() at which it went back to the pool
        self.idle_since = 0.0
        self.max_head = pool.max_head
        self.chunks: deque[bytes] = deque()
        self.begin(False, False)
        self.phase = IDLE  # until the first request

    def begin(self, head_only: bool, upgrade: bool) -> None:
        """Reset the per-exchange state for a new request."""
        self.phase = HEAD
        self.head_only = head_only
        self.upgrade = upgrade
        self.buf = b""
        self.parser: Any = None
        self.messages = 0
        self.raw_headers: list[tuple[str, str]] = []
        self.status = 0
        self.keep_alive = False
        self.got_bytes = False
        self.checked = False
        self.complete = False
        self.dirty = False
        self.body_sent = False
        self.error: ProxyError | None = None
        self.buffered = 0
        self.read_paused = False
        self.news = False
        if self.chunks:
            self.chunks.clear()

    def arm(self, timeout: float) -> None:
        """Start the read timeout: the response must make progress every ``timeout`` s."""
        self.read_timeout = timeout
        self.pool.deadlines.arm(self, timeout)

    def disarm(self) -> None:
        self.pool.deadlines.disarm(self)

    def expire(self) -> None:
        """The read deadline passed (called by the pool's sweep)."""
        if self.error is None and not self.complete:
            self._fail(UpstreamTimeout("upstream read timeout",
                                       log_detail=f"{self.pool.address}: nothing read for "
                                                  f"{self.read_timeout}s"))
            self._wake()

    # -- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        phase = self.phase
        if phase == BODY:
            if self.deadline:
                self.deadline = clock() + self.read_timeout
            self._feed_body(data)
        elif phase == HEAD:
            if self.deadline:
                self.deadline = clock() + self.read_timeout
            self.got_bytes = True
            self._parse_head(self.buf + data if self.buf else data)
        elif phase == TUNNEL:
            if self.tunnel is not None:
                self.tunnel.upstream_data(data)
            else:
                self.buf += data  # before the Tunnel exists: the first bytes for the client
            return
        else:  # bytes nobody asked for: this connection cannot be trusted for another request
            self.dirty = True
            self.transport.close()
            return
        if self.news:
            self._wake()

    def eof_received(self) -> bool | None:
        if self.phase == TUNNEL and self.tunnel is not None:
            return self.tunnel.upstream_eof()
        return None  # the transport closes; connection_lost decides what the end means

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.lost(self)
        phase = self.phase
        if phase == HEAD and self.error is None:
            where = "after part of the head" if self.got_bytes else "before any response byte"
            self.error = UpstreamClosed("upstream closed the connection before the response",
                                        log_detail=f"{self.pool.address}: closed {where}: "
                                                   f"{exc or 'EOF'}")
        elif phase == BODY and not self.complete and self.error is None:
            if exc is None and self._close_delimited():
                self.complete = True  # RFC 9112 §6.3 item 8: the close ends this body
            else:
                self.error = UpstreamClosed("upstream closed mid-body",
                                            log_detail=f"{self.pool.address}: closed after the "
                                                       f"head, mid-body: {exc or 'EOF'}")
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

    # -- llhttp callbacks (they only record: listeners are told after feed_data returns) ---

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
        self.news = True
        if self.buffered > HIGH_WATER and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()
            if self.deadline:
                self.disarm()  # we stopped reading: silence is ours, not the upstream's

    def on_message_complete(self) -> None:
        self.complete = True
        self.news = True

    # -- response parsing ---------------------------------------------------------------------

    def _parse_head(self, buf: bytes) -> None:
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0 and len(buf) <= self.max_head:
                self.buf = buf
                if not self.checked:
                    self._check_partial(buf)
                return
            if end < 0 or end + 4 > self.max_head:  # whether it came whole or in pieces
                self._fail(UpstreamError("upstream response head too large",
                                         log_detail=f"{self.pool.address}: head over "
                                                    f"{self.max_head} bytes"))
                return
            self.parser = parser = httptools.HttpResponseParser(self)
            self.raw_headers = []
            self.messages = 0
            self.complete = False
            try:
                parser.feed_data(buf[:end + 4] if end + 4 < len(buf) else buf)
            except httptools.HttpParserUpgrade:
                pass  # a 101: llhttp stops at the end of the head, as we want
            except httptools.HttpParserError as exc:
                self._fail(UpstreamError("malformed upstream response head",
                                         log_detail=f"{self.pool.address}: {exc}"))
                return
            buf = buf[end + 4:]
            status = parser.get_status_code()
            if status >= 200 or status == 101:
                break  # 1xx interim answers are skipped (RFC 9110 §15.2)
            if status < 100:  # RFC 9110 §15: a status code is 100-599 (llhttp takes 0xx)
                self._fail(UpstreamError("malformed upstream response head",
                                         log_detail=f"{self.pool.address}: status {status}"))
                return
        self.status = status
        self.buf = b""
        self.news = True
        if status == 101:
            if not self.upgrade:
                self._fail(UpstreamError("upstream switched protocols unasked"))
                return
            self.phase = TUNNEL
            self.buf = buf
        elif self.head_only or status in NO_BODY_STATUSES:
            self.phase = DONE
            self.complete = True
            self.dirty = bool(buf)
        else:
            self.phase = BODY
            if buf:
                self._feed_body(buf)

    def _close_delimited(self) -> bool:
        """The body has no framing of its own: the close ends it (RFC 9112 §6.3 item 8)."""
        return not any(name.lower() in FRAMING for name, _ in self.raw_headers)

    def _check_partial(self, data: bytes) -> None:
        """A head still incomplete: fail now if what came so far is already invalid (once per
        exchange, so a head trickling in byte by byte costs no more than one parse)."""
        self.checked = True
        try:
            httptools.HttpResponseParser(_NO_CALLBACKS).feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError("malformed upstream response head",
                                     log_detail=f"{self.pool.address}: {exc}"))

    def _feed_body(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if not self.complete:
                self._fail(UpstreamError("malformed upstream response body framing",
                                         log_detail=f"{self.pool.address}: {exc}"))
                return
            self.dirty = True  # garbage after the end of the response
        if self.messages > 1:
            self.dirty = True  # another message after the end of the response

    def _fail(self, error: ProxyError) -> None:
        self.error = error
        self.dirty = True
        self.news = True
        self.transport.close()

    # -- telling whoever waits ------------------------------------------------------------------

    def _wake(self) -> None:
        self.news = False
        if self.complete or self.error is not None:
            self.disarm()
        notify = self.notify
        if notify is not None:
            notify()
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until the protocol has news for the reader; the read deadline runs meanwhile and
        turns a silent upstream into an UpstreamTimeout in ``error``."""
        if not self.deadline and self.read_timeout:
            self.arm(self.read_timeout)
        waiter = self.waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
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
        chunks = self.chunks
        body = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        if self.read_paused:
            self._resume()
        return body

    def take_chunk(self) -> bytes:
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        if self.read_paused and self.buffered < LOW_WATER:
            self._resume()
        return chunk

    def _resume(self) -> None:
        self.read_paused = False
        self.transport.resume_reading()
        if self.read_timeout and not self.complete:
            self.arm(self.read_timeout)


_NO_CALLBACKS = object()  # a parser protocol without callbacks: llhttp only validates


class _ExtraMessage(Exception):
    """Raised from an llhttp callback to stop at a second message on one exchange."""


class UpstreamClosed(UpstreamError):
    """The upstream closed (or reset) the connection before the response ended; with
    ``got_bytes`` false on the connection, before any byte of it (the keep-alive race)."""


def _expire(waiter: asyncio.Future[None], address: str) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamTimeout("upstream send timeout", log_detail=address))
