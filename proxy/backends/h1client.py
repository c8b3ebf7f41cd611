"""A small asyncio HTTP/1.1 client for the calls the proxy makes itself.

Owns: outgoing requests with buffered bodies (the cloud API, invoke URLs, health checks), a
bounded keep-alive pool per origin, connect and read timeouts, and the conversion of socket,
TLS and framing failures into the error tree (UpstreamError 502, UpstreamTimeout 504).

Strategy: one ``asyncio.Protocol`` per connection keeps received bytes in a buffer that the
request task consumes; one request at a time per connection, no pipelining. The response head
is cut at the first CRLFCRLF and fed to httptools (llhttp) on its own, so the responses whose
framing llhttp cannot know (a HEAD answer carries a Content-Length but no body, RFC 9110
§9.3.2) end exactly where they should; the body is then fed until llhttp reports the message
complete, or until EOF for a close-delimited body (RFC 9112 §6.3 item 8). A connection goes
back to the pool only when its response ended cleanly: message complete, keep-alive per llhttp
(RFC 9112 §9.3), no stray bytes after it, not closed by the peer. The read timeout is the
longest wait between two reads (nginx's proxy_read_timeout), not a deadline for the whole
response.

Retries: a request is retried once on a fresh connection only when it failed on a *reused*
connection before any byte of the response arrived (the keep-alive race: the server closed an
idle connection as we sent) and its method is idempotent (RFC 9110 §9.2.2: "A proxy MUST NOT
automatically retry non-idempotent requests"). A POST such as an InvokeFunction call is never
retried here: the server may have received it. Idle connections are checked before reuse
(closed or half-closed ones are discarded) and retire after ``idle_timeout``; keeping that
below the server's keep-alive timeout keeps the race rare.

``UpstreamError.retryable`` is set when nothing of the request can have reached the server's
application (connect, TLS, pool exhausted) or when the request is idempotent and the connection
died before the answer ended.

Must not know: what the requests mean (TC3, SCF, health checks), routing, or the client side.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple, cast
from urllib.parse import urlsplit

import httptools

from ..errors import UpstreamError, UpstreamTimeout
from ..messages import Headers
from ..vocabulary import CONTENT_METHODS, FRAMING, HOP_BY_HOP, IDEMPOTENT_METHODS, TOKEN

DEFAULT_PORTS = {"http": 80, "https": 443}
#: framing and connection headers are this client's to decide (RFC 9112 §6, §9.6); a caller's
#: copies are dropped
_MANAGED_HEADERS = HOP_BY_HOP | FRAMING
#: RFC 9110 §5.5 field values carry no CR, LF or NUL
_BAD_VALUE = re.compile(r"[\r\n\x00]")
_HEAD_END = b"\r\n\r\n"
#: stop reading from the socket while this much is buffered and not yet consumed
_HIGH_WATER = 1 << 20


@dataclass(frozen=True, slots=True)
class ClientResponse:
    status: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None


class Origin(NamedTuple):
    scheme: str
    host: str
    port: int


def parse_url(url: str) -> tuple[Origin, str, str]:
    """``url`` -> (origin, request-target, Host header value); ValueError when unusable."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"not an http(s) URL with a host: {url!r}")
    port = parts.port or DEFAULT_PORTS[scheme]
    host = parts.hostname
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    shown = f"[{host}]" if ":" in host else host
    # RFC 9110 §7.2: the port is part of Host unless it is the scheme's default
    host_header = shown if port == DEFAULT_PORTS[scheme] else f"{shown}:{port}"
    return Origin(scheme, host, port), target, host_header


def serialize_request(method: str, target: str, host_header: str,
                      headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
    """The request bytes: request line, Host first unless the caller gave one, caller
    headers without framing ones, Content-Length computed, then the body."""
    lines = [f"{method} {target} HTTP/1.1"]
    has_host = False
    for name, value in headers:
        if not TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            raise ValueError(f"invalid header field {name!r}")
        lname = name.lower()
        if lname in _MANAGED_HEADERS:
            continue
        has_host = has_host or lname == "host"
        lines.append(f"{name}: {value}")
    if not has_host:
        lines.insert(1, f"Host: {host_header}")
    if body or method in CONTENT_METHODS:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Closed(Exception):
    """The peer closed (or reset) the connection before the expected bytes arrived."""


class _HeadTooLarge(Exception):
    pass


class _Channel(asyncio.Protocol):
    """One connection's bytes: a buffer the request task consumes, and the peer's EOF."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._eof = False
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        #: bytes received since the current request was sent
        self.received = 0
        #: set while the connection idles in a pool: called once when the peer sends bytes,
        #: closes or resets, so a dead connection leaves the pool at once
        self.on_idle_event: Callable[[], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self.received += len(data)
        if len(self._buf) > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> None:
        self._eof = True
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._wake()

    def _wake(self) -> None:
        if self.on_idle_event is not None:
            callback, self.on_idle_event = self.on_idle_event, None
            callback()
            return
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait(self, timeout: float) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._waiter
        finally:
            self._waiter = None

    def _take(self, n: int) -> bytes:
        data = bytes(self._buf[:n])
        del self._buf[:n]
        if self._paused and len(self._buf) <= _HIGH_WATER // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    @property
    def reusable(self) -> bool:
        """Open, not half-closed by the peer, and nothing unsolicited waiting in the buffer."""
        t = self.transport
        return t is not None and not t.is_closing() and not self._eof and not self._buf

    async def read_head(self, limit: int, timeout: float) -> bytes:
        """Bytes up to and including the first CRLFCRLF; each wait is at most ``timeout``."""
        start = 0
        while True:
            idx = self._buf.find(_HEAD_END, start)
            if idx >= 0:
                return self._take(idx + len(_HEAD_END))
            if len(self._buf) > limit:
                raise _HeadTooLarge
            if self._eof:
                raise _Closed
            start = max(0, len(self._buf) - len(_HEAD_END) + 1)
            await self._wait(timeout)

    async def read_some(self, timeout: float) -> bytes:
        """Whatever is buffered (waiting at most ``timeout`` for it); b"" at EOF."""
        while not self._buf:
            if self._eof:
                return b""
            await self._wait(timeout)
        return self._take(len(self._buf))

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.received = 0
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Sink:
    """httptools callbacks for one response message."""

    __slots__ = ("headers", "body", "size", "limit", "complete", "messages", "too_large")

    def __init__(self, limit: int) -> None:
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.complete = False
        self.messages = 0
        self.too_large = False

    def on_message_begin(self) -> None:
        self.messages += 1

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.messages == 1:  # a second message is stray bytes, not part of this answer
            self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        self.size += len(body)
        if self.size > self.limit:
            self.too_large = True
            raise _BodyTooLarge
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True

    @property
    def framed(self) -> bool:
        """The body has explicit framing (Content-Length or chunked), so EOF cuts it short."""
        return any(k.lower() in ("content-length", "transfer-encoding") for k, _ in self.headers)


class _BodyTooLarge(Exception):
    pass


class _Connection:
    __slots__ = ("channel", "origin", "idle_handle", "served")

    def __init__(self, channel: _Channel, origin: Origin) -> None:
        self.channel = channel
        self.origin = origin
        self.idle_handle: asyncio.TimerHandle | None = None
        self.served = 0

    def close(self) -> None:
        self.stop_idling()
        self.channel.close()

    def stop_idling(self) -> None:
        self.channel.on_idle_event = None
        if self.idle_handle is not None:
            self.idle_handle.cancel()
            self.idle_handle = None


class _Pool:
    """The connections to one origin: at most ``size`` open, idle ones reused newest first."""

    __slots__ = ("idle", "slots")

    def __init__(self, size: int) -> None:
        self.idle: deque[_Connection] = deque()
        self.slots = asyncio.Semaphore(size)


class HTTPClient:
    """Buffered HTTP/1.1 requests over pooled keep-alive TCP or TLS connections.

    ``pool_size`` bounds the open connections per origin (scheme, host, port); a request that
    finds them all busy waits for one up to ``connect_timeout``. ``ssl_context`` is used for
    https URLs (None: the system's default verifying context).
    """

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None, pool_size: int = 32,
                 connect_timeout: float = 4.0, read_timeout: float = 60.0,
                 idle_timeout: float = 30.0, max_head_size: int = 65536,
                 max_body_size: int = 64 * 1024 * 1024) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self._ssl = ssl_context
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.max_head_size = max_head_size
        self.max_body_size = max_body_size
        self._pools: dict[Origin, _Pool] = {}
        self._closed = False
        #: connections opened so far (for metrics and tests)
        self.connections_opened = 0

    @property
    def idle_connections(self) -> int:
        return sum(len(p.idle) for p in self._pools.values())

    async def request(self, method: str, url: str, headers: Iterable[tuple[str, str]] = (),
                      body: bytes = b"", *, read_timeout: float | None = None,
                      idempotent: bool | None = None) -> ClientResponse:
        """Send one request and read the whole response.

        Raises UpstreamError (connect, TLS, reset, malformed or oversized response, pool
        exhausted) or UpstreamTimeout (no bytes for ``read_timeout``); ValueError for a bad URL
        or header. ``idempotent`` defaults from the method (RFC 9110 §9.2.2).
        """
        if self._closed:
            raise UpstreamError("client closed")
        origin, target, host_header = parse_url(url)
        data = serialize_request(method.upper(), target, host_header, headers, body)
        timeout = self.read_timeout if read_timeout is None else read_timeout
        retry_allowed = method.upper() in IDEMPOTENT_METHODS if idempotent is None else idempotent
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = _Pool(self.pool_size)
        for attempt in (0, 1):
            await self._take_slot(pool, origin)
            conn: _Connection | None = None
            keep = False
            try:
                conn, reused = await self._checkout(pool, origin)
                try:
                    response, keep = await self._exchange(conn, method.upper(), data, timeout)
                except _Closed as exc:
                    if reused and conn.channel.received == 0 and retry_allowed and attempt == 0:
                        continue  # the keep-alive race: try once more on a fresh connection
                    raise UpstreamError(
                        "connection closed before the response ended", retryable=retry_allowed,
                        log_detail=f"{_show(origin)}: closed after {conn.channel.received} "
                                   f"response bytes ({'reused' if reused else 'new'} "
                                   f"connection)") from exc
                return response
            finally:
                self._checkin(pool, conn, keep)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _take_slot(self, pool: _Pool, origin: Origin) -> None:
        try:
            async with asyncio.timeout(self.connect_timeout):
                await pool.slots.acquire()
        except TimeoutError:
            raise UpstreamError("connection pool exhausted", retryable=True,
                                log_detail=f"{_show(origin)}: all {self.pool_size} connections "
                                           f"busy for {self.connect_timeout}s") from None

    async def _checkout(self, pool: _Pool, origin: Origin) -> tuple[_Connection, bool]:
        while pool.idle:
            conn = pool.idle.pop()
            conn.stop_idling()
            if conn.channel.reusable:
                return conn, True
            conn.close()
        return await self._connect(origin), False

    def _checkin(self, pool: _Pool, conn: _Connection | None, keep: bool) -> None:
        pool.slots.release()
        if conn is None:
            return
        if not keep or self._closed or not conn.channel.reusable:
            conn.close()
            return
        conn.served += 1
        pool.idle.append(conn)
        conn.idle_handle = asyncio.get_running_loop().call_later(
            self.idle_timeout, self._retire, pool, conn)
        conn.channel.on_idle_event = lambda: self._retire(pool, conn)

    @staticmethod
    def _retire(pool: _Pool, conn: _Connection) -> None:
        """Drop an idle connection: its idle time is over, or the peer spoke or closed."""
        try:
            pool.idle.remove(conn)
        except ValueError:
            return
        conn.close()

    async def _connect(self, origin: Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        context: ssl.SSLContext | None = None
        if origin.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()  # verifying; built once, on first use
            context = self._ssl
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, channel = await loop.create_connection(
                    _Channel, origin.host, origin.port, ssl=context,
                    server_hostname=origin.host if context is not None else None)
        except TimeoutError:
            raise UpstreamError("connect timed out", retryable=True,
                                log_detail=f"{_show(origin)}: no connection within "
                                           f"{self.connect_timeout}s") from None
        except ssl.SSLCertVerificationError as exc:
            raise UpstreamError("TLS certificate verification failed", retryable=True,
                                log_detail=f"{_show(origin)}: TLS certificate verification "
                                           f"failed: {exc.verify_message}") from exc
        except ssl.SSLError as exc:
            raise UpstreamError("TLS handshake failed", retryable=True,
                                log_detail=f"{_show(origin)}: TLS handshake failed: "
                                           f"{exc.reason or exc}") from exc
        except OSError as exc:
            raise UpstreamError("connect failed", retryable=True,
                                log_detail=f"{_show(origin)}: connect failed: "
                                           f"{exc.strerror or exc!r}") from exc
        self.connections_opened += 1
        return _Connection(channel, origin)

    async def _exchange(self, conn: _Connection, method: str, data: bytes,
                        timeout: float) -> tuple[ClientResponse, bool]:
        """Write the request, read the response: (response, connection reusable)."""
        channel = conn.channel
        where = _show(conn.origin)
        channel.write(data)
        try:
            while True:
                head = await channel.read_head(self.max_head_size, timeout)
                sink = _Sink(self.max_body_size)
                parser = httptools.HttpResponseParser(sink)
                _feed(parser, sink, head, where)
                status = parser.get_status_code()
                # RFC 9110 §15.2: interim 1xx answers come before the final one; 101 would
                # switch protocols, which this client never asks for
                if 100 <= status < 200 and status != 101:
                    continue
                break
            if status == 101:
                raise UpstreamError("unexpected protocol switch",
                                    log_detail=f"{where}: 101 to a request without Upgrade")
            keep = parser.should_keep_alive()
            if method == "HEAD":
                sink.complete = True  # RFC 9110 §9.3.2: no content, whatever the headers say
            while not sink.complete:
                chunk = await channel.read_some(timeout)
                if not chunk:
                    if sink.framed:
                        raise _Closed
                    sink.complete = True  # RFC 9112 §6.3: close-delimited body ends at EOF
                    keep = False
                    break
                try:
                    _feed(parser, sink, chunk, where)
                except UpstreamError:
                    if not sink.complete:
                        raise
                    keep = False  # stray bytes after the message: not a clean end
        except TimeoutError:
            raise UpstreamTimeout("upstream read timed out",
                                  log_detail=f"{where}: nothing read for {timeout}s") from None
        except _HeadTooLarge:
            raise UpstreamError("response head too large",
                                log_detail=f"{where}: head over {self.max_head_size} bytes"
                                ) from None
        except _BodyTooLarge:
            raise UpstreamError("response too large",
                                log_detail=f"{where}: body over {self.max_body_size} bytes"
                                ) from None
        keep = keep and sink.messages == 1 and channel.reusable
        return ClientResponse(status, tuple(sink.headers), b"".join(sink.body)), keep

    async def close(self) -> None:
        """Close idle connections; busy ones close when their request ends."""
        self._closed = True
        for pool in self._pools.values():
            while pool.idle:
                pool.idle.pop().close()
        # let the transports deliver their close before the loop may stop
        await asyncio.sleep(0)


def _feed(parser: httptools.HttpResponseParser, sink: _Sink, data: bytes, where: str) -> None:
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        # llhttp pauses at a 101 (or an Upgrade answer): this client never asks to switch
        raise UpstreamError("unexpected protocol switch",
                            log_detail=f"{where}: upgrade answer to a plain request") from None
    except httptools.HttpParserError as exc:
        if sink.too_large:
            raise _BodyTooLarge from None
        raise UpstreamError("malformed response", log_detail=f"{where}: {exc}") from exc


def _show(origin: Origin) -> str:
    return f"{origin.scheme}://{origin.host}:{origin.port}"
