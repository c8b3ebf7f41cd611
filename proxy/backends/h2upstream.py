"""HTTP/2 to backends (a rule's ``forward_type`` GRPC or GRPCS): connections, streams, a pool.

Owns the client side of RFC 9113 towards one origin, with the h2 library (python-hyper) as the
sans-I/O protocol engine: the connection preface and settings, one ``H2Stream`` per request
(headers, a streamed request body, the response head, DATA and trailers), flow control both
ways, RST_STREAM and GOAWAY, and ``H2Pool``: one connection carrying many streams, up to the
peer's SETTINGS_MAX_CONCURRENT_STREAMS, a further connection (up to ``max_connections``) only
when every open one is full, idle connections closed after ``idle_timeout``.

Interface (what an HTTP/2 frontend stream, or backends/grpc.py for the router, calls)::

    pool = H2Pool("10.0.0.7:50051", ssl_context=None)     # TLS (ALPN h2) when given
    stream = await pool.open("POST", "/pkg.Svc/Method", "api.example.com", "http",
                             fields, end_stream=False, timeout=4.0)
        # fields: the end-to-end request fields (names in any case, no pseudo-headers, no
        # connection-specific fields, RFC 9113 §8.2.2; "te: trailers" is allowed and gRPC
        # needs it). UpstreamError (502) when no connection can be had.
    await stream.send(chunk, timeout=60.0)     # waits for window and for the socket to drain
    await stream.end()                         # END_STREAM after the last chunk
    status, fields = await stream.response(timeout=60.0)   # the head; 1xx skipped
    chunk = await stream.read(timeout=60.0)    # next DATA, b"" once the stream ended
    stream.trailers                            # the response trailers (after read() gave b"")
    stream.headers_only                        # the head came with END_STREAM (gRPC's
                                               # Trailers-Only: grpc-status is in ``fields``)
    stream.reset()                             # the client went away: RST_STREAM(CANCEL)
    await pool.close()

A reset, a GOAWAY that leaves the stream out or a lost connection makes the waiting call raise
``UpstreamError`` (502; ``retryable`` when the peer says the request was not processed:
REFUSED_STREAM, or a stream above GOAWAY's last stream id, RFC 9113 §8.7); the timeouts raise
``UpstreamTimeout`` (504). A frontend that relays a stream end to end maps a reset to its own
RST_STREAM (or, before its head went out, to the error page).

Flow control and memory (RFC 9113 §5.2): each stream may have at most ``STREAM_WINDOW`` bytes
unread (its window is reopened only as ``read`` hands bytes on, so a slow reader slows its own
stream and nothing else); the connection window is reopened as DATA arrives, since the stream
windows already bound what is held. Outbound, ``send`` writes no more than the peer's windows
allow and waits on the transport's ``pause_writing``.

Strategy: one ``asyncio.Protocol`` per connection; events from ``receive_data`` are handed to
their stream, which wakes its waiters (one for the answer, one for window to send in: a
streamed upload and the answer are awaited at once; futures made only while someone waits).
No task per stream: the caller's own task awaits. A new connection takes streams only once the
peer's SETTINGS arrived, so its SETTINGS_MAX_CONCURRENT_STREAMS is kept from the first stream.

Decisions (ours): no server push (SETTINGS_ENABLE_PUSH 0); a response header list over 64 KiB
is refused (SETTINGS_MAX_HEADER_LIST_SIZE); over TLS the peer must agree on ``h2`` by ALPN or
the connect fails (RFC 9113 §3.3); h2's own header validation stays on, both ways.

Must not know gRPC, routing, the client side or the config.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

from ..errors import UpstreamError, UpstreamTimeout
from .pool import _connect_error, split_address

#: unread bytes a stream may hold (its receive window)
STREAM_WINDOW = 256 * 1024
#: the connection's receive window (reopened as data arrives)
CONNECTION_WINDOW = 4 * 1024 * 1024
MAX_HEADER_LIST = 64 * 1024
IDLE_TIMEOUT = 15.0
MAX_CONNECTIONS = 4
#: RST_STREAM / GOAWAY codes that say the request was not processed (RFC 9113 §8.7)
_UNPROCESSED = frozenset({ErrorCodes.REFUSED_STREAM})

Fields = list[tuple[str, str]]


def _code_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"0x{code:x}"


class H2Stream:
    """One request/response exchange on an HTTP/2 connection."""

    __slots__ = ("conn", "id", "status", "fields", "trailers", "chunks", "ended", "error",
                 "local_closed", "headers_only", "_waiter", "_send_waiter", "_unacked")

    def __init__(self, conn: H2UpstreamConnection, stream_id: int) -> None:
        self.conn = conn
        self.id = stream_id
        self.status = 0
        self.fields: Fields = []
        self.trailers: Fields = []
        #: (data, flow-controlled length) not yet read
        self.chunks: deque[tuple[bytes, int]] = deque()
        self.ended = False  # the peer ended its side (END_STREAM)
        #: the response was its head alone, END_STREAM on it (gRPC's "Trailers-Only" error
        #: answer: grpc-status is then among ``fields``; relay it as one HEADERS frame)
        self.headers_only = False
        self.local_closed = False  # we ended our side (or reset)
        self.error: UpstreamError | None = None
        #: one waiter for the answer (response, read) and one for window (send): a streamed
        #: upload's sender and the reader of the answer wait at the same time
        self._waiter: asyncio.Future[None] | None = None
        self._send_waiter: asyncio.Future[None] | None = None
        self._unacked = 0

    # -- the caller's side ----------------------------------------------------------------

    async def send(self, data: bytes, end_stream: bool = False, timeout: float = 60.0) -> None:
        """Send request body bytes, as the peer's flow-control windows allow."""
        conn = self.conn
        view = memoryview(data)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._check()
                    if not view:
                        if end_stream:
                            await self.end()
                        return
                    try:
                        window = min(conn.h2.local_flow_control_window(self.id),
                                     conn.h2.max_outbound_frame_size)
                    except h2.exceptions.StreamClosedError:
                        self._check()
                        raise UpstreamError("upstream closed the stream",
                                            log_detail=f"{conn.pool.address}: stream {self.id} "
                                                       "closed while sending") from None
                    if window <= 0:
                        await self._wait_window()
                        continue
                    chunk, view = view[:window], view[window:]
                    last = end_stream and not view
                    conn.h2.send_data(self.id, chunk.tobytes(), end_stream=last)
                    if last:
                        self.local_closed = True
                    conn.flush()
                    if conn.write_paused:
                        await conn.drain()
                    if last:
                        return
        except TimeoutError:
            raise UpstreamTimeout("upstream send timed out",
                                  log_detail=f"{conn.pool.address}: no window to send in "
                                             f"{timeout}s") from None

    async def end(self) -> None:
        """END_STREAM: the request is complete."""
        self._check()
        if not self.local_closed:
            self.local_closed = True
            self.conn.h2.end_stream(self.id)
            self.conn.flush()

    async def response(self, timeout: float = 60.0) -> tuple[int, Fields]:
        """The response head: (status, fields without pseudo-headers)."""
        try:
            async with asyncio.timeout(timeout):
                while not self.status:
                    self._check()
                    await self._wait()
        except TimeoutError:
            raise UpstreamTimeout("upstream timed out",
                                  log_detail=f"{self.conn.pool.address}: no response head in "
                                             f"{timeout}s") from None
        return self.status, self.fields

    async def read(self, timeout: float = 60.0) -> bytes:
        """The next DATA bytes; b"" once the stream ended cleanly (``trailers`` then set)."""
        try:
            async with asyncio.timeout(timeout):
                while not self.chunks:
                    if self.ended:
                        return b""
                    self._check()
                    await self._wait()
        except TimeoutError:
            raise UpstreamTimeout("upstream timed out",
                                  log_detail=f"{self.conn.pool.address}: nothing read in "
                                             f"{timeout}s") from None
        data, length = self.chunks.popleft()
        self._consumed(length)
        return data

    def reset(self, code: int = ErrorCodes.CANCEL) -> None:
        """Cancel the stream (RST_STREAM), unless both sides ended already."""
        if self.error is None and not (self.ended and self.local_closed):
            self.conn.reset(self, code)

    # -- flow control ---------------------------------------------------------------------

    def _consumed(self, length: int) -> None:
        """Bytes handed on: reopen the stream's window once half of it was read."""
        self._unacked += length
        if self._unacked >= STREAM_WINDOW // 2 and not self.ended and self.error is None:
            self.conn.open_window(self, self._unacked)
            self._unacked = 0

    # -- the connection's side --------------------------------------------------------------

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    async def _wait(self) -> None:
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    async def _wait_window(self) -> None:
        waiter = self._send_waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._send_waiter = None

    def wake(self) -> None:
        """Something changed for this stream: both waiters look again."""
        for waiter in (self._waiter, self._send_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def fail(self, error: UpstreamError) -> None:
        if self.error is None and not self.ended:
            self.error = error
        self.wake()


def _request_fields(method: str, path: str, authority: str, scheme: str,
                    fields: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    # RFC 9113 §8.3.1: the pseudo-header fields first; §8.2: names in lower case
    out = [(":method", method), (":scheme", scheme), (":authority", authority),
           (":path", path)]
    out += [(name.lower(), value) for name, value in fields]
    return out


class H2UpstreamConnection(asyncio.Protocol):
    """One HTTP/2 connection to an upstream (client side)."""

    def __init__(self, pool: H2Pool) -> None:
        self.pool = pool
        config = h2.config.H2Configuration(client_side=True, header_encoding="latin-1")
        self.h2 = h2.connection.H2Connection(config)
        self.h2.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
        })
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, H2Stream] = {}
        self.closed = False
        self.goaway = False
        self.write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._unacked = 0
        #: done once the peer's first SETTINGS frame (its preface, RFC 9113 §3.4) arrived, or
        #: the connection was lost: its limits are known only then
        self.settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a cast, not an isinstance check: uvloop's transports are not asyncio.Transport's
        self.transport = cast(asyncio.Transport, transport)
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._lost(f"protocol error from upstream: {exc}")
            self.flush()  # h2 queued a GOAWAY
            self._close()
            return
        for event in events:
            handler = _HANDLERS.get(type(event))
            if handler is not None:
                handler(self, event)
        if self._unacked >= CONNECTION_WINDOW // 2:
            self.h2.increment_flow_control_window(self._unacked)
            self._unacked = 0
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.settled.done():
            self.settled.set_result(None)
        self._lost(f"connection lost: {exc!r}" if exc else "connection closed by upstream")
        self.pool.forget(self)
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # -- h2 events ----------------------------------------------------------------------------

    def _on_response(self, event: h2.events.ResponseReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        fields = [(str(k), str(v)) for k, v in event.headers or ()]
        stream.status = int(next(v for k, v in fields if k == ":status"))
        stream.fields = [(k, v) for k, v in fields if not k.startswith(":")]
        stream.headers_only = event.stream_ended is not None
        stream.wake()

    def _on_trailers(self, event: h2.events.TrailersReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.trailers = [(str(k), str(v)) for k, v in event.headers or ()]

    def _on_data(self, event: h2.events.DataReceived) -> None:
        length = event.flow_controlled_length or 0
        self._unacked += length
        stream = self.streams.get(event.stream_id)
        if stream is None or stream.error is not None:
            return  # a reset stream's bytes: counted for the connection window above, dropped
        if event.data:
            stream.chunks.append((event.data, length))
        elif length:  # padding alone: nothing to read, reopen its window now
            stream._consumed(length)
        stream.wake()

    def _on_ended(self, event: h2.events.StreamEnded) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        stream.ended = True
        stream.wake()
        if stream.local_closed:
            self._done(stream)

    def _on_reset(self, event: h2.events.StreamReset) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        code = event.error_code or 0
        stream.fail(UpstreamError(
            "upstream reset the stream", retryable=code in _UNPROCESSED and not stream.status,
            log_detail=f"{self.pool.address}: stream {stream.id} reset by the upstream "
                       f"({_code_name(code)})"))
        self._done(stream)

    def _on_window(self, event: h2.events.WindowUpdated) -> None:
        if event.stream_id:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.wake()
        else:
            for stream in list(self.streams.values()):
                stream.wake()

    def _on_settings(self, event: h2.events.RemoteSettingsChanged) -> None:
        if not self.settled.done():
            self.settled.set_result(None)
        for stream in list(self.streams.values()):
            stream.wake()  # a larger initial window may let a sender go on
        self.pool.capacity_changed()

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        self.goaway = True
        last = event.last_stream_id or 0
        code = event.error_code or 0
        for stream in [s for s in self.streams.values() if s.id > last]:
            stream.fail(UpstreamError(  # not processed: another connection may take it
                "upstream refused the stream (GOAWAY)", retryable=True,
                log_detail=f"{self.pool.address}: GOAWAY ({_code_name(code)}) before stream "
                           f"{stream.id}"))
            self._done(stream)
        if code:
            self._lost(f"GOAWAY ({_code_name(code)}) from upstream")
        self.pool.forget(self)
        if not self.streams:
            self._close()

    # -- used by streams and the pool ----------------------------------------------------------

    def capacity(self) -> int:
        """How many more streams this connection may open now."""
        if self.closed or self.goaway:
            return 0
        return self.h2.remote_settings.max_concurrent_streams - self.h2.open_outbound_streams

    def open_stream(self, method: str, path: str, authority: str, scheme: str,
                    fields: Iterable[tuple[str, str]], end_stream: bool) -> H2Stream:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        stream_id = self.h2.get_next_available_stream_id()
        stream = H2Stream(self, stream_id)
        self.streams[stream_id] = stream
        try:
            self.h2.send_headers(stream_id, _request_fields(method, path, authority, scheme,
                                                            fields), end_stream=end_stream)
        except h2.exceptions.ProtocolError as exc:  # a field h2 refuses (RFC 9113 §8.2.2)
            del self.streams[stream_id]
            self._check_idle()
            raise UpstreamError("request cannot be sent over HTTP/2",
                                log_detail=f"{self.pool.address}: {exc}") from exc
        stream.local_closed = end_stream
        self.flush()
        return stream

    def open_window(self, stream: H2Stream, increment: int) -> None:
        try:
            self.h2.increment_flow_control_window(increment, stream.id)
        except (h2.exceptions.StreamClosedError, KeyError):
            return
        self.flush()

    def reset(self, stream: H2Stream, code: int) -> None:
        try:
            self.h2.reset_stream(stream.id, code)
        except (h2.exceptions.StreamClosedError, KeyError):
            pass
        stream.local_closed = True
        stream.chunks.clear()  # nobody will read them
        stream.error = UpstreamError("stream cancelled", log_detail=f"{self.pool.address}: "
                                     f"stream {stream.id} reset by us ({_code_name(code)})")
        stream.wake()
        self._done(stream)
        self.flush()

    async def drain(self) -> None:
        if not self.write_paused or self.closed:
            return
        if self._drained is None or self._drained.done():
            self._drained = asyncio.get_running_loop().create_future()
        await self._drained

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def _done(self, stream: H2Stream) -> None:
        """The stream is over for this connection (both ends, or reset)."""
        if self.streams.pop(stream.id, None) is not None:
            self.pool.capacity_changed()
        self._check_idle()

    def _check_idle(self) -> None:
        if self.streams or self.closed:
            return
        if self.goaway:
            self._close()
            return
        if self._idle is None:
            self._idle = asyncio.get_running_loop().call_later(self.pool.idle_timeout,
                                                               self._close)

    def _lost(self, why: str) -> None:
        for stream in list(self.streams.values()):
            # not retryable: the upstream may have processed the request (RFC 9113 §8.7)
            stream.fail(UpstreamError("upstream connection lost",
                                      log_detail=f"{self.pool.address}: {why}"))
        self.streams.clear()

    def _close(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self.closed:
            return
        self.closed = True
        self.pool.forget(self)
        if self.transport is not None:
            try:
                self.h2.close_connection()
                self.flush_now()
            finally:
                self.transport.close()

    def flush_now(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)


_HANDLERS: dict[type[h2.events.Event], Callable[[H2UpstreamConnection, Any], None]] = {
    h2.events.ResponseReceived: H2UpstreamConnection._on_response,
    h2.events.TrailersReceived: H2UpstreamConnection._on_trailers,
    h2.events.DataReceived: H2UpstreamConnection._on_data,
    h2.events.StreamEnded: H2UpstreamConnection._on_ended,
    h2.events.StreamReset: H2UpstreamConnection._on_reset,
    h2.events.WindowUpdated: H2UpstreamConnection._on_window,
    h2.events.RemoteSettingsChanged: H2UpstreamConnection._on_settings,
    h2.events.ConnectionTerminated: H2UpstreamConnection._on_goaway,
}


class H2Pool:
    """HTTP/2 connections to one origin: streams go on the first connection with room."""

    def __init__(self, address: str, *, ssl_context: ssl.SSLContext | None = None,
                 server_hostname: str | None = None, max_connections: int = MAX_CONNECTIONS,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.address = address
        self.host, self.port = split_address(address)
        self.ssl_context = ssl_context
        self.server_hostname = (server_hostname or self.host) if ssl_context else None
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.connections: list[H2UpstreamConnection] = []
        self.connects = 0
        self.retired = False
        self._connecting: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None

    async def open(self, method: str, path: str, authority: str, scheme: str,
                   fields: Iterable[tuple[str, str]] = (), *, end_stream: bool = False,
                   timeout: float = 4.0) -> H2Stream:
        """A new stream with its request head sent; waits up to ``timeout`` for a connection
        (or room on one)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    conn = self._pick()
                    if conn is not None:
                        return conn.open_stream(method, path, authority, scheme, fields,
                                                end_stream)
                    if self._connecting is not None:
                        await asyncio.shield(self._connecting)
                    elif len(self.connections) < self.max_connections:
                        await self._connect(timeout)
                    else:
                        if self._room is None or self._room.done():
                            self._room = asyncio.get_running_loop().create_future()
                        await asyncio.shield(self._room)
        except TimeoutError:
            raise UpstreamError("upstream connect timed out", retryable=True,
                                log_detail=f"{self.address}: no HTTP/2 stream could be opened "
                                           f"in {timeout}s") from None

    def _pick(self) -> H2UpstreamConnection | None:
        for conn in self.connections:
            if conn.capacity() > 0:
                return conn
        return None

    async def _connect(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        done = self._connecting = loop.create_future()
        self.connects += 1
        try:
            try:
                transport, conn = await loop.create_connection(
                    lambda: H2UpstreamConnection(self), self.host, self.port,
                    ssl=self.ssl_context, server_hostname=self.server_hostname)
            except (OSError, TimeoutError) as exc:
                raise _connect_error(exc, self.address, timeout) from exc
            try:
                if self.ssl_context is not None:
                    agreed = transport.get_extra_info("ssl_object").selected_alpn_protocol()
                    if agreed != "h2":  # RFC 9113 §3.3: h2 over TLS is chosen by ALPN only
                        raise UpstreamError("upstream TLS did not agree on h2", retryable=True,
                                            log_detail=f"{self.address}: ALPN chose "
                                                       f"{agreed!r}, not h2")
                # no stream before the peer's SETTINGS: until then its
                # SETTINGS_MAX_CONCURRENT_STREAMS is unknown (RFC 9113 §6.5.2: unlimited),
                # and a burst of waiters would all land on this connection
                await conn.settled
            except BaseException:
                transport.close()
                raise
            if conn.closed:
                raise UpstreamError("upstream connect failed", retryable=True,
                                    log_detail=f"{self.address}: closed right after connect")
            if self.retired:
                conn._close()
            else:
                self.connections.append(conn)
        finally:
            self._connecting = None
            done.set_result(None)

    def forget(self, conn: H2UpstreamConnection) -> None:
        if conn in self.connections:
            self.connections.remove(conn)
        self.capacity_changed()

    def capacity_changed(self) -> None:
        room = self._room
        if room is not None and not room.done():
            room.set_result(None)

    def state(self) -> dict[str, int]:
        return {"connections": len(self.connections), "connects": self.connects,
                "streams": sum(len(c.streams) for c in self.connections)}

    def retire(self) -> None:
        """No target uses this origin any more: close idle connections, let busy ones end."""
        self.retired = True
        for conn in list(self.connections):
            conn.goaway = True  # no new streams here
            if not conn.streams:
                conn._close()
        self.connections.clear()

    async def close(self) -> None:
        self.retire()
