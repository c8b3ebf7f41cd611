"""One HTTP/1.1 connection to an upstream, and the keep-alive pool of them per origin.

The one outgoing HTTP/1.1 layer: everything the proxy sends out over HTTP/1.1 goes through
these two classes, streamed (CVM targets, backends/cvm.py) or buffered (the cloud API, invoke
URLs and health checks, backends/h1client.py on top of them).

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
connection's ``deadline`` is checked by its pool's sweep (``SWEEP_INTERVAL``), and an idle
pooled connection retires after ``idle_timeout`` by the same sweep, so neither a read nor a
release makes a timer handle.

``Pool`` keeps idle connections per origin, LIFO (the warmest first, so the upstream's own
idle timer rarely beats us), at most ``max_idle``. Connections it hands out are *busy* until
``release`` (pooled again or closed) or ``detach``. It connects over TCP, or TLS with
``ssl_context`` (verifying ``server_hostname``, also sent as SNI, RFC 6066 §3); with
``max_open`` it bounds the open connections, and ``acquire`` waits for one to come free.
Connect and TLS failures are ``UpstreamError`` with ``retryable`` (nothing was sent); a silent
upstream is ``UpstreamTimeout``.

Decisions (ours): interim 1xx answers other than 101 are skipped (they are not forwarded); a
head over ``max_head`` bytes or one llhttp rejects is an UpstreamError (502, RFC 9112 §6.3:
the connection is discarded); a head still incomplete is checked for errors at every read, so
an upstream speaking something else fails at once, not after the read timeout.

Must not know requests' meaning, routing, health, or the client side.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httptools

from ..deadlines import Deadlines, clock
from ..errors import ProxyError, UpstreamError, UpstreamTimeout
from ..vocabulary import FRAMING, NO_BODY_STATUSES

if TYPE_CHECKING:
    from .tunnel import Tunnel

MAX_HEAD = 64 * 1024
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
MAX_IDLE = 64
IDLE_TIMEOUT = 15.0
#: how often a pool checks its deadlines (read timeouts, idle retirement): a timeout fires up
#: to this much late
SWEEP_INTERVAL = 0.1

# exchange phases of an upstream connection
IDLE, HEAD, BODY, DONE, TUNNEL = range(5)


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


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


class Pool:
    """Idle keep-alive connections to one upstream origin (LIFO: the warmest first)."""

    def __init__(self, address: str, max_idle: int = MAX_IDLE,
                 idle_timeout: float = IDLE_TIMEOUT, *, ssl_context: ssl.SSLContext | None = None,
                 server_hostname: str | None = None, max_open: int = 0,
                 max_head: int = MAX_HEAD) -> None:
        self.address = address
        self.host, self.port = split_address(address)
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        #: TLS to the origin when set; ``server_hostname`` is verified and sent as SNI
        self.ssl_context = ssl_context
        self.server_hostname = (server_hostname or self.host) if ssl_context else None
        #: at most this many connections open (busy, connecting or idle); 0: no bound
        self.max_open = max_open
        self.max_head = max_head
        self.idle: deque[UpstreamConnection] = deque()
        #: the read deadlines of busy connections; each pass also retires idle ones
        self.deadlines = Deadlines(SWEEP_INTERVAL, self._retire_idle)
        self.busy = 0
        self.opening = 0
        self.connects = 0
        self.retired = False
        #: ``acquire`` calls waiting for a connection to come free (only with ``max_open``)
        self.waiting: deque[asyncio.Future[None]] = deque()

    async def connect(self, timeout: float) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        self.connects += 1
        self.opening += 1
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self), self.host, self.port,
                    ssl=self.ssl_context, server_hostname=self.server_hostname)
        except BaseException as exc:
            self.opening -= 1
            self._freed()
            if isinstance(exc, (OSError, TimeoutError)):
                raise _connect_error(exc, self.address, timeout) from exc
            raise
        self.opening -= 1
        if conn.closed:  # gone (or it spoke unasked) before we could send: nothing was sent
            self._freed()
            raise UpstreamError("upstream connect failed", retryable=True,
                                log_detail=f"{self.address}: closed right after the connect")
        self.busy += 1
        return conn

    async def acquire(self, timeout: float) -> tuple[UpstreamConnection, bool]:
        """A busy connection and whether it was reused: an idle one, else a new one; with
        ``max_open`` reached, the first to come free within ``timeout``."""
        conn = self.take()
        if conn is not None:
            return conn, True
        if self.max_open and self._full():
            try:
                async with asyncio.timeout(timeout):
                    while self._full():
                        await self._turn()
                        conn = self.take()
                        if conn is not None:
                            return conn, True
            except TimeoutError:
                raise UpstreamError("connection pool exhausted", retryable=True,
                                    log_detail=f"{self.address}: all {self.max_open} "
                                               f"connections busy for {timeout}s") from None
        return await self.connect(timeout), False

    def _full(self) -> bool:
        return self.busy + self.opening + len(self.idle) >= self.max_open

    async def _turn(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self.waiting.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self.waiting:  # cancelled (the timeout) before its turn came
                self.waiting.remove(waiter)

    def _freed(self) -> None:
        """A connection (or a slot for one) came free: every ``acquire`` waiting looks again."""
        waiting = self.waiting
        while waiting:
            waiter = waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def take(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed and not conn.transport.is_closing():
                self.busy += 1
                return conn
        return None

    def release(self, conn: UpstreamConnection, reusable: bool) -> None:
        self.busy -= 1
        conn.notify = None
        if conn.deadline:
            conn.disarm()
        if self.waiting:
            self._freed()
        if not reusable or self.retired or conn.closed or len(self.idle) >= self.max_idle:
            conn.transport.close()
            return
        conn.phase = IDLE
        conn.idle_since = clock()
        self.idle.append(conn)
        self.deadlines.watch()

    def detach(self) -> None:
        """A connection leaves the pool's accounting for good (a tunnel took it)."""
        self.busy -= 1
        self._freed()

    def lost(self, conn: UpstreamConnection) -> None:
        if conn.phase == IDLE and conn in self.idle:
            self.idle.remove(conn)
            self._freed()

    def retire(self) -> None:
        """No target uses this address any more: close idle ones, don't keep busy ones."""
        self.retired = True
        while self.idle:
            self.idle.pop().transport.close()

    def state(self) -> dict[str, int]:
        return {"idle": len(self.idle), "busy": self.busy, "connects": self.connects}

    def _retire_idle(self, now: float) -> bool:
        """Close the connections idle for ``idle_timeout`` (the oldest are at the left);
        whether any is left to retire later."""
        idle = self.idle
        cutoff = now - self.idle_timeout
        while idle and idle[0].idle_since <= cutoff:
            idle.popleft().transport.close()
        return bool(idle)


def _connect_error(exc: OSError | TimeoutError, address: str, timeout: float) -> UpstreamError:
    """A failed connect or TLS handshake: nothing was sent, so another target may serve it."""
    if isinstance(exc, TimeoutError):
        message, detail = "upstream connect timed out", f"connect timed out after {timeout}s"
    elif isinstance(exc, ssl.SSLCertVerificationError):
        message = "upstream TLS certificate verification failed"
        detail = f"TLS certificate verification failed: {exc.verify_message}"
    elif isinstance(exc, ssl.SSLError):
        message = "upstream TLS handshake failed"
        detail = f"TLS handshake failed: {exc.reason or exc}"
    else:
        message, detail = "upstream connect failed", f"connect failed: {exc.strerror or exc!r}"
    return UpstreamError(message, retryable=True, log_detail=f"{address}: {detail}")
