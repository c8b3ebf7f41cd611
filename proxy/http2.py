"""HTTP/2 client connections (RFC 9113): ALPN ``h2`` on HTTPS listeners, h2c by prior knowledge.

Owns one client's HTTP/2 connection: its streams turned into the same ``Request`` values an
HTTP/1.1 connection makes (``http_version`` "2.0", so a function's event says
``X-Client-Proto-Ver: HTTP/2.0``; CVM targets still get HTTP/1.1 from the upstream pools, as
CLB sends) and handed to the same router's ``dispatch``; the answers written back as HEADERS
and DATA frames; flow control both ways; the limits of docs/BEHAVIOUR.md "HTTP/2"; graceful
GOAWAY on drain and reload; which SNI names are offered h2 (``sni_http2``, CLB's per-domain
``Http2`` switch, decided at the handshake).

Strategy: the h2 library (python-hyper) is the protocol engine, sans-I/O: bytes in, events
out, frames queued in ``data_to_send``; framing, HPACK, stream states and window accounting
are its, and so are the verdicts it reaches itself (a CONTINUATION run is at most 64 frames,
the decoded header list at most SETTINGS_MAX_HEADER_LIST_SIZE, the HPACK table at most 4096
bytes, stream ids only grow, no window past 2^31-1: each a GOAWAY with its RFC error code).
What h2 does not limit is ours: a Rapid Reset budget (CVE-2023-44487), reading paused while
the client does not take what we write (a PING or SETTINGS flood cannot pile up answers),
keepalive_requests, the idle, body and send timeouts.

Flow control. Inbound: each stream's window is STREAM_WINDOW and is given back only as the
backend reads the body, so an unread body holds at most STREAM_WINDOW bytes; the connection
window (CONNECTION_WINDOW) is larger than every stream's window together, so a stalled stream
never blocks the others. Outbound: a response body is pulled from its backend only while less
than STREAM_BUFFER bytes of it wait for the client's window, so a slow reader of one stream
leaves the upstream connection paused (backends/upstream.py stops reading past its high-water
mark) and costs bounded memory, and the other streams go on.

It stays on protocol callbacks like connection.py: a stream costs no task unless its response
body is streamed (one pump per streamed body). A streamed body that offers ``trailers`` (a
gRPC answer, backends/grpc.py) ends with them as the final HEADERS frame; one that is
``headers_only`` (gRPC's Trailers-Only) is answered by its head alone, END_STREAM on it.
Nothing here imports connection.py: the
listener's context and the request-id source are handed in.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hpack.exceptions import HPACKError
from hyperframe.frame import Frame, GoAwayFrame

from . import writer
from .config import Listener, Rule
from .errors import (
    BadGateway,
    BadRequest,
    HeadersTooLarge,
    PayloadTooLarge,
    ProxyError,
    RequestTimeout,
)
from .http1 import METHODS
from .messages import Outcome, Request, Response
from .recording import tls_fields
from .rules import RuleTablePy
from .streams import RequestBody
from .vocabulary import NO_BODY_STATUSES

if TYPE_CHECKING:
    from .handover import Cancel

error_log = logging.getLogger("proxy.error")

#: RFC 9113 §3.4: what a client's connection starts with (h2c with prior knowledge is told
#: from HTTP/1.1 by it)
PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: SETTINGS_MAX_CONCURRENT_STREAMS (nginx's http2_max_concurrent_streams); one more open
#: stream is a connection error PROTOCOL_ERROR (h2's verdict, RFC 9113 §5.1.2)
MAX_CONCURRENT_STREAMS: Final = 128
#: SETTINGS_INITIAL_WINDOW_SIZE: request body bytes a stream may have unread by its backend
STREAM_WINDOW: Final = 65535
#: the connection's receive window: above MAX_CONCURRENT_STREAMS x STREAM_WINDOW, so streams
#: whose backends read slowly never hold the connection's window
CONNECTION_WINDOW: Final = 16 * 1024 * 1024
#: response body bytes held per stream while the client's window is closed; the next chunk
#: is pulled from the backend only below this
STREAM_BUFFER: Final = 64 * 1024
#: the largest DATA frame we send (SETTINGS_MAX_FRAME_SIZE's floor, so every client takes it)
MAX_DATA_FRAME: Final = 16384
#: Rapid Reset (CVE-2023-44487): streams the client may reset before they are answered, as a
#: token bucket: RESET_BURST at once, refilled at RESET_RATE a second; beyond it the
#: connection ends with GOAWAY ENHANCE_YOUR_CALM and every backend call of it is cancelled
RESET_BURST: Final = 200
RESET_RATE: Final = 100.0
#: HPACK dynamic table we allow the client (SETTINGS_HEADER_TABLE_SIZE, RFC 7541 default);
#: a larger table size update is a COMPRESSION_ERROR
HEADER_TABLE_SIZE: Final = 4096
#: bytes handed to the transport beyond which reading stops until the client takes them
#: (answers to PINGs and SETTINGS cannot grow without bound)
WRITE_HIGH: Final = 256 * 1024

_CONFIG: Final = h2.config.H2Configuration(
    client_side=False, header_encoding=None, validate_inbound_headers=True,
    normalize_inbound_headers=True, validate_outbound_headers=True)
#: connection-specific request fields (RFC 9113 §8.2.2): h2 refuses them; "te" other than
#: "trailers" too. Pseudo-headers are read, never forwarded.
_PSEUDO: Final = frozenset({b":method", b":scheme", b":authority", b":path", b":protocol"})


class _Engine(h2.connection.H2Connection):
    """h2's connection, with one verdict corrected: a header block HPACK cannot decode is a
    COMPRESSION_ERROR (RFC 9113 §4.3, RFC 7541 §4.2 for a table size update over ours); h2
    reports every decoding failure but the oversized list as PROTOCOL_ERROR."""

    def _receive_frame(self, frame: Frame) -> list[h2.events.Event]:
        try:
            return super()._receive_frame(frame)
        except h2.exceptions.ProtocolError as exc:
            if isinstance(exc.__cause__, HPACKError) \
                    and not isinstance(exc, h2.exceptions.DenialOfServiceError):
                exc.error_code = ErrorCodes.COMPRESSION_ERROR
            raise


def sni_http2(listener: Listener) -> Callable[[str | None], bool] | None:
    """CLB's per-domain ``Http2`` switch as the TLS layer applies it: ALPN happens before any
    Host is known, so an SNI name is offered h2 when the domain a request with that Host would
    be routed to (exact, wildcard, regex, else the default domain: the router's own domain
    choice) has ``http2`` on; no SNI is judged as the default domain. None: every domain has
    it on, and every handshake is offered h2. A mutual TLS listener offers http/1.1 only:
    the client certificate's verdict and headers are carried by HTTP/1.1 connections
    (connection.MutualTlsConnection; docs/BEHAVIOUR.md §8)."""
    if listener.ssl_mode == "MUTUAL":
        return _never
    if all(rule.http2 for rule in listener.rules):
        return None
    if not any(rule.http2 for rule in listener.rules):
        return _never
    domains = list(dict.fromkeys(rule.domain for rule in listener.rules))
    off = {rule.domain for rule in listener.rules if not rule.http2}
    table = RuleTablePy(replace(listener, rules=tuple(Rule(domain, "/") for domain in domains)))
    allowed = tuple(domain not in off for domain in domains)
    default = table.default_domain
    default_allowed = allowed[default] if default >= 0 else True

    def offers_h2(server_name: str | None) -> bool:
        if not server_name:
            return default_allowed
        index, _ = table.match(server_name, "/")
        return allowed[index] if index >= 0 else True

    return offers_h2


def _never(server_name: str | None) -> bool:
    return False


class _Body(RequestBody):
    """A stream's request body: what its backend reads is given back to the client as window
    (``credit``), so at most STREAM_WINDOW bytes of it wait unread."""

    __slots__ = ("_credit",)

    def __init__(self, declared_length: int | None, credit: Callable[[int], None]) -> None:
        super().__init__(declared_length, _nothing, _nothing)
        self._credit = credit

    async def read(self) -> bytes:
        chunk = await RequestBody.read(self)
        if chunk:
            self._credit(len(chunk))
        return chunk


def _nothing() -> None:
    return None


class _Stream:
    """One request/response exchange on the connection."""

    __slots__ = ("sid", "request", "body", "cancel", "started", "pending", "pending_bytes",
                 "end_pending", "trailers", "waiter", "sent", "pump", "answered", "unacked",
                 "body_deadline", "done", "error")

    def __init__(self, sid: int) -> None:
        self.sid = sid
        self.request: Request | None = None
        self.body: _Body | None = None
        self.cancel: Cancel | None = None
        self.started = 0.0
        #: response body bytes waiting for the client's window
        self.pending: deque[bytes] = deque()
        self.pending_bytes = 0
        #: END_STREAM goes out once ``pending`` is empty
        self.end_pending = False
        #: the response's trailers, sent as the final HEADERS frame (END_STREAM on it)
        self.trailers: list[tuple[bytes, bytes]] = []
        #: the pump waits here for window or buffer room
        self.waiter: asyncio.Future[None] | None = None
        #: response bytes (headers estimated, body exact) for the access log
        self.sent = 0
        self.pump: asyncio.Task[None] | None = None
        #: the router has answered (the Outcome, kept for the record once the body is out)
        self.answered: Outcome | None = None
        #: request body bytes received and not yet given back as window
        self.unacked = 0
        #: the clock() time by which more of the request body must come (0.0: none due)
        self.body_deadline = 0.0
        #: our side is finished (END_STREAM or RST_STREAM sent)
        self.done = False
        #: the error answered instead of dispatching (a bad header block)
        self.error: ProxyError | None = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


async def _exhaust(source: Any) -> None:
    """Run a response body's source to its end, its bytes unwanted (a head-only answer)."""
    try:
        async for _ in source:
            pass
    except Exception as exc:  # noqa: BLE001 - the answer is out; the backend's end is moot
        error_log.debug("body of a head-only answer broke off: %s", exc)


class H2Connection(asyncio.Protocol):
    """The server side of one HTTP/2 connection. ``ctx`` is the listener's
    connection.ListenerContext; ``new_id`` makes stgw_request_ids."""

    def __init__(self, ctx: Any, new_id: Callable[[], str]) -> None:
        self.ctx = ctx
        self.state = ctx.state
        self.new_id = new_id
        self.transport: Any = None
        self.client_ip = ""
        self.client_port = 0
        self.server_addr = ""
        self.tls: tuple[str, str] | None = None
        self.streams: dict[int, _Stream] = {}
        self.h2 = _Engine(_CONFIG)
        #: the last stream id our GOAWAY accepts; None before we send one
        self.goaway_last: int | None = None
        #: the connection is ending for an error of the client's: nothing more is read
        self.failed = False
        self.write_paused = False
        self.read_paused = False
        self.served = 0
        self.heads = 0
        self.reset_tokens = float(RESET_BURST)
        self.reset_stamp = 0.0
        # the sweep's fields (connection.ServerState.sweep reads them on every connection)
        self.deadline = 0.0
        self.idle_deadline = 0.0
        self.send_deadline = 0.0
        self.send_buffered = 0

    # -- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.client_ip, self.client_port = sys.intern(peer[0]), peer[1]
        if self.ctx.wants_server_addr:
            local = transport.get_extra_info("sockname")
            if isinstance(local, tuple) and local:
                self.server_addr = sys.intern(local[0])
        self.state.connections.add(self)
        if self.ctx.gate is not None:
            self.ctx.gate.opened()
        limit = self.ctx.listener.max_header_size
        conn = self.h2
        conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limit,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.HEADER_TABLE_SIZE: HEADER_TABLE_SIZE,
        })
        conn.decoder.max_header_list_size = limit
        conn.decoder.max_allowed_table_size = HEADER_TABLE_SIZE
        conn.initiate_connection()
        conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._flush()
        self._idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        if self.ctx.gate is not None:
            self.ctx.gate.closed()
        self.deadline = self.send_deadline = 0.0
        for stream in list(self.streams.values()):
            self._abandon(stream)
        self.streams.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        self._pause_reading()
        self._watch_send()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.send_deadline = 0.0
        if self.read_paused and not self.failed:
            self.read_paused = False
            self.transport.resume_reading()
        for stream in list(self.streams.values()):
            if stream.pending or stream.end_pending:
                self._send_pending(stream)
            stream.wake()
        self._flush()

    def eof_received(self) -> bool | None:
        # The client sent its FIN: it opens no more streams; what it asked is still answered.
        if not self.streams:
            return None
        self.goaway()
        return True

    def data_received(self, data: bytes) -> None:
        if self.failed:
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 queued the GOAWAY with the error code its verdict carries, except for a bad
            # preface (RFC 9113 §3.4 makes that GOAWAY optional; we send it)
            if self.h2.state_machine.state is not h2.connection.ConnectionState.CLOSED:
                try:
                    self.h2.close_connection(ErrorCodes.PROTOCOL_ERROR)
                except h2.exceptions.ProtocolError:
                    pass
            error_log.info("%s:%s HTTP/2 connection error: %s", self.client_ip,
                           self.client_port, exc)
            self._fail()
            return
        for event in events:
            kind = type(event)
            if kind is h2.events.DataReceived:
                self._on_data(event)  # type: ignore[arg-type]
            elif kind is h2.events.RequestReceived:
                self._on_request(event)  # type: ignore[arg-type]
            elif kind is h2.events.StreamEnded:
                self._on_end(event.stream_id)  # type: ignore[attr-defined]
            elif kind is h2.events.WindowUpdated:
                self._on_window(event.stream_id)  # type: ignore[attr-defined]
            elif kind is h2.events.StreamReset:
                self._on_reset(event)  # type: ignore[arg-type]
                if self.failed:
                    return
            elif kind is h2.events.TrailersReceived:
                pass  # dropped, as HTTP/1.1 trailers are (RFC 9110 §6.5.1); StreamEnded follows
            elif kind is h2.events.RemoteSettingsChanged:
                self._on_window(0)  # the initial window may have changed every stream's
            elif kind is h2.events.ConnectionTerminated:
                self.goaway()  # the client is leaving: finish what it asked, then close
        self._flush()

    # -- requests ---------------------------------------------------------------------------

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id
        if self.goaway_last is not None and sid > self.goaway_last:
            self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)  # after our GOAWAY: retry
            return
        stream = _Stream(sid)
        self.streams[sid] = stream
        self.idle_deadline = 0.0
        self.heads += 1
        if self.heads >= self.ctx.max_requests:
            self.goaway()  # keepalive_requests: this is the last stream the connection takes
        ended = event.stream_ended is not None
        try:
            request = self._request(stream, event.headers or [], ended)
        except ProxyError as exc:
            stream.error = exc
            self._respond(stream, Outcome(writer.error_response(exc)), None)
            return
        stream.request = request
        stream.started = self.state.clock()
        try:
            cancel = self.state.router.dispatch(
                request, lambda outcome: self._respond(stream, outcome, request))
        except Exception as exc:  # a bug must cost one 500, not the connection
            error_log.exception("internal error serving %s %s", request.method, request.path)
            self._respond(stream, Outcome(writer.error_response(ProxyError(str(exc)))), request)
            return
        if stream.answered is None and not stream.done:
            stream.cancel = cancel

    def _request(self, stream: _Stream, raw: list[Any], ended: bool) -> Request:
        """The Request of a stream's header block (h2 checked its syntax, RFC 9113 §8.2)."""
        method = path = authority = ""
        headers: list[tuple[str, str]] = []
        cookies: list[str] = []
        host = ""
        length: int | None = None
        count = 0
        for name, value in raw:
            if name[:1] == b":":
                if name == b":method":
                    method = value.decode("latin-1")
                elif name == b":path":
                    path = value.decode("latin-1")
                elif name == b":authority":
                    authority = value.decode("latin-1")
                elif name == b":protocol":
                    raise BadRequest("extended CONNECT is not supported")
                continue
            count += 1
            text = name.decode("latin-1")
            if "_" in text:  # ignored, as http1.py does (underscores_in_headers off)
                continue
            if text == "cookie":  # RFC 9113 §8.2.3: crumbs are one field again for HTTP/1.1
                cookies.append(value.decode("latin-1"))
                continue
            if text == "host":
                host = value.decode("latin-1")
                continue
            if text == "content-length":
                length = int(value)  # h2 checked it is a number matching the DATA it counts
            headers.append((text, value.decode("latin-1")))
        if count > self.ctx.limits.max_header_count:
            raise HeadersTooLarge("more than %d header fields" % self.ctx.limits.max_header_count)
        if method not in METHODS:  # CONNECT too: a gateway opens no tunnels
            raise BadRequest("unsupported method " + method[:32])
        if not path or (path[0] != "/" and not (path == "*" and method == "OPTIONS")):
            raise BadRequest("bad :path")
        authority = authority or host  # RFC 9113 §8.3.1: :authority wins over Host
        if not authority:
            raise BadRequest("no :authority or Host")
        headers.insert(0, ("host", authority))
        if cookies:
            headers.append(("cookie", "; ".join(cookies)))
        path, _, query = path.partition("?")
        if "#" in path:
            raise BadRequest("fragment in :path")
        body = None
        if not ended:
            if length is not None and length > self.ctx.limits.max_body_size:
                raise PayloadTooLarge("content-length over %d bytes"
                                      % self.ctx.limits.max_body_size)
            body = _Body(length, functools.partial(self._credit, stream))
            stream.body = body
            self._body_wait(stream)
        return Request(method, path, query, tuple(headers), b"", "2.0", self.client_ip,
                       self.client_port, self.ctx.scheme, self.ctx.listener.name, time.time(),
                       True, body, "", self.new_id(), self.server_addr)

    def _on_data(self, event: h2.events.DataReceived) -> None:
        stream = self.streams.get(event.stream_id)
        size = event.flow_controlled_length or 0
        data = event.data or b""
        if stream is None or stream.body is None or stream.body.ended:
            # nobody reads it (answered already, refused): the window comes back at once
            if size:
                self.h2.acknowledge_received_data(size, event.stream_id)
            return
        body = stream.body
        padding = size - len(data)
        stream.unacked += len(data)
        if padding:
            self.h2.acknowledge_received_data(padding, stream.sid)
        if body.received + len(data) > self.ctx.limits.max_body_size:
            body.abort(PayloadTooLarge("body over %d bytes" % self.ctx.limits.max_body_size))
            return
        if data:
            body.feed(data)
        self._body_wait(stream)

    def _credit(self, stream: _Stream, size: int) -> None:
        """The backend read ``size`` bytes of the stream's body: the client may send more."""
        size = min(size, stream.unacked)
        if size <= 0 or self.transport is None:
            return
        stream.unacked -= size
        self.h2.acknowledge_received_data(size, stream.sid)
        self._flush()

    def _on_end(self, sid: int) -> None:
        stream = self.streams.get(sid)
        if stream is not None and stream.body is not None:
            stream.body.end()
            stream.body_deadline = 0.0

    def _body_wait(self, stream: _Stream) -> None:
        """More of the body must come within client_body_timeout (idle between DATA)."""
        stream.body_deadline = self.state.clock() + self.ctx.listener.client_body_timeout
        self._arm(stream.body_deadline)

    # -- responses --------------------------------------------------------------------------

    def _respond(self, stream: _Stream, outcome: Outcome, request: Request | None) -> None:
        if stream.done or stream.answered is not None or self.streams.get(stream.sid) is not stream:
            return
        stream.cancel = None
        stream.answered = outcome
        response = outcome.response if self.ctx.plain else self._with_listener_headers(
            outcome.response, outcome.route.domain if outcome.route is not None else None)
        head_only = request is not None and request.method == "HEAD"
        if response.tunnel is not None or response.status == 101:
            # no Upgrade over HTTP/2 (RFC 9113 §8.6); a backend's 101 is not passed on
            response = writer.error_response(ProxyError("101 from the backend on HTTP/2"))
        no_body = head_only or response.status in NO_BODY_STATUSES
        if response.stream is None:
            body = b"" if no_body else response.body
            # HEAD: the GET's length, when known (writer.serialize's rule)
            length = len(response.body) if response.body or not head_only else response.length
            if not self._send_head(stream, response, length, not body):
                return
            if body:
                stream.pending.append(body)
                stream.pending_bytes = len(body)
            stream.end_pending = bool(body)
            self._send_pending(stream)
        elif getattr(response.stream, "headers_only", False):
            # the backend's head was its whole answer (gRPC's Trailers-Only): one HEADERS
            # frame with END_STREAM; the source is still run to its end, which closes the
            # backend's stream (and cuts an upload still under way)
            self._send_head(stream, response, None, True)
            asyncio.get_running_loop().create_task(_exhaust(response.stream))
        else:
            if not self._send_head(stream, response, response.length, False):
                return
            stream.pump = asyncio.get_running_loop().create_task(
                self._pump(stream, response, no_body))
        self._flush()

    def _send_head(self, stream: _Stream, response: Response, length: int | None,
                   end: bool) -> bool:
        headers = writer.h2_head(response, length, self.ctx.server_header)
        try:
            self.h2.send_headers(stream.sid, headers, end_stream=end)
        except (h2.exceptions.ProtocolError, ValueError, TypeError) as exc:
            # a header value HTTP/2 cannot carry (a function's CR/LF, say): 502 instead
            error_log.warning("%s: response head not valid for HTTP/2: %s",
                              stream.request.path if stream.request else "?", exc)
            try:
                page = writer.error_response(BadGateway("bad response head"))
                self.h2.send_headers(stream.sid, writer.h2_head(
                    page, None, self.ctx.server_header), end_stream=True)
            except h2.exceptions.ProtocolError:
                self._reset(stream, ErrorCodes.INTERNAL_ERROR)
                return False
            end = True
        stream.sent += sum(len(n) + len(v) + 32 for n, v in headers)
        if end:
            self._finished(stream)
            return False
        return True

    async def _pump(self, stream: _Stream, response: Response, no_body: bool) -> None:
        """Pull a streamed body from its backend while the stream has buffer room; a backend
        that breaks off resets the stream (the client never sees a truncated body as whole)."""
        source = response.stream
        assert source is not None
        try:
            async for chunk in source:
                if no_body or not chunk:
                    continue
                stream.pending.append(chunk)
                stream.pending_bytes += len(chunk)
                self._send_pending(stream)
                self._flush()
                while stream.pending_bytes >= STREAM_BUFFER or self.write_paused:
                    if stream.done:
                        return
                    stream.waiter = asyncio.get_running_loop().create_future()
                    try:
                        await stream.waiter
                    finally:
                        stream.waiter = None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the backend broke off mid-body
            error_log.info("%s: response body broke off: %s",
                           stream.request.path if stream.request else "?", exc)
            if not stream.done:
                self._reset(stream, ErrorCodes.INTERNAL_ERROR)
                self._flush()
            return
        finally:
            stream.pump = None
        if not stream.done:
            trailers = getattr(source, "trailers", None)
            if trailers and not no_body:
                stream.trailers = [(name.lower().encode("latin-1"), value.encode("latin-1"))
                                   for name, value in trailers]
            stream.end_pending = True
            self._send_pending(stream)
            self._flush()

    def _send_pending(self, stream: _Stream) -> None:
        """Send what the client's windows allow of the stream's waiting body; END_STREAM
        after the last of it."""
        if stream.done or self.transport is None:
            return
        conn = self.h2
        pending = stream.pending
        try:
            while pending:
                window = min(conn.local_flow_control_window(stream.sid), MAX_DATA_FRAME,
                             conn.max_outbound_frame_size)
                if window <= 0:
                    return
                chunk = pending[0]
                if len(chunk) <= window:
                    pending.popleft()
                    end = stream.end_pending and not pending and not stream.trailers
                    conn.send_data(stream.sid, chunk, end_stream=end)
                    stream.pending_bytes -= len(chunk)
                    stream.sent += len(chunk)
                    if end:
                        self._finished(stream)
                        return
                else:
                    conn.send_data(stream.sid, chunk[:window])
                    pending[0] = chunk[window:]
                    stream.pending_bytes -= window
                    stream.sent += window
            if stream.end_pending:
                if stream.trailers:
                    stream.sent += sum(len(n) + len(v) + 32 for n, v in stream.trailers)
                    conn.send_headers(stream.sid, stream.trailers, end_stream=True)
                else:
                    conn.end_stream(stream.sid)
                self._finished(stream)
        except h2.exceptions.StreamClosedError:
            self._forget(stream)
            return
        except h2.exceptions.ProtocolError as exc:  # trailers HTTP/2 cannot carry
            error_log.warning("%s: response trailers not valid for HTTP/2: %s",
                              stream.request.path if stream.request else "?", exc)
            self._reset(stream, ErrorCodes.INTERNAL_ERROR)
            return
        finally:
            if stream.pending_bytes < STREAM_BUFFER:
                stream.wake()

    def _on_window(self, sid: int) -> None:
        if sid:
            stream = self.streams.get(sid)
            if stream is not None:
                self._send_pending(stream)
            return
        for stream in list(self.streams.values()):
            if stream.pending:
                self._send_pending(stream)

    def _finished(self, stream: _Stream) -> None:
        """Our side of the stream is done: record it; a request body still arriving is not
        wanted any more (RFC 9113 §8.1: RST_STREAM NO_ERROR after a complete response)."""
        stream.done = True
        outcome = stream.answered
        request = stream.request
        if outcome is not None and request is not None:
            self.served += 1
            self.state.recorder.answered(request, outcome, stream.sent,
                                         self.state.clock() - stream.started, self.served,
                                         self.tls or self._tls_info())
        elif stream.error is not None:
            self.state.recorder.refused(self.ctx.listener.name, self.client_ip, stream.error,
                                        stream.sent, self.served + 1, self.tls or self._tls_info())
        body = stream.body
        if body is not None and not body.ended:
            try:
                self.h2.reset_stream(stream.sid, ErrorCodes.NO_ERROR)
            except h2.exceptions.ProtocolError:
                pass
        self._forget(stream)

    def _forget(self, stream: _Stream) -> None:
        stream.done = True
        stream.wake()
        if stream.unacked:
            self.h2.acknowledge_received_data(stream.unacked, stream.sid)
            stream.unacked = 0
        if self.streams.get(stream.sid) is stream:
            del self.streams[stream.sid]
        if not self.streams:
            if self.goaway_last is not None:
                self._close()
            else:
                self._idle()

    def _reset(self, stream: _Stream, code: ErrorCodes) -> None:
        try:
            self.h2.reset_stream(stream.sid, code)
        except h2.exceptions.ProtocolError:
            pass
        self._abandon(stream)
        self._forget(stream)

    def _abandon(self, stream: _Stream) -> None:
        """Stop whatever still works for the stream: the backend call, the body pump."""
        stream.done = True
        cancel, stream.cancel = stream.cancel, None
        if cancel is not None:
            cancel()
        pump, stream.pump = stream.pump, None
        if pump is not None:
            pump.cancel()
        body = stream.body
        if body is not None and not body.ended:
            body.abort(BadRequest("stream reset by the client"))
        stream.pending.clear()
        stream.pending_bytes = 0

    def _on_reset(self, event: h2.events.StreamReset) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        if not stream.done and event.remote_reset:
            # Rapid Reset: a stream reset before it was answered cost us a dispatch
            now = self.state.clock()
            self.reset_tokens = min(float(RESET_BURST),
                                    self.reset_tokens + (now - self.reset_stamp) * RESET_RATE)
            self.reset_stamp = now
            self.reset_tokens -= 1.0
        self._abandon(stream)
        self._forget(stream)
        if self.reset_tokens < 0:
            error_log.warning("%s:%s reset streams faster than %s/s: GOAWAY "
                              "ENHANCE_YOUR_CALM", self.client_ip, self.client_port, RESET_RATE)
            self.h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM)
            self._fail()

    def _with_listener_headers(self, response: Response, domain: str | None) -> Response:
        ctx = self.ctx
        plan = ctx.domain_headers.get(domain, ctx.response_headers) if domain is not None \
            else ctx.response_headers
        headers = response.headers
        if plan is not None:
            headers = plan.apply(response.status, headers)
        return Response(response.status, headers + ctx.extra_headers, response.body,
                        response.stream, response.length, response.tunnel)

    # -- the connection's end ---------------------------------------------------------------

    def goaway(self) -> None:
        """Graceful end (drain, reload, keepalive_requests, the client's own GOAWAY): GOAWAY
        NO_ERROR naming the last stream taken; streams up to it finish, later ones are
        refused, and the connection closes when none is left. Sent as a frame of our own: h2
        would refuse to send anything after its own GOAWAY, the in-flight answers included."""
        if self.goaway_last is not None or self.transport is None:
            return
        self.goaway_last = self.h2.highest_inbound_stream_id
        self._flush()
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.goaway_last
        frame.error_code = ErrorCodes.NO_ERROR
        if not self.transport.is_closing():
            self.transport.write(frame.serialize())
        if not self.streams:
            self._close()

    def close_if_idle(self) -> bool:
        """Drain (server.py): GOAWAY now; closed once the streams in flight are answered."""
        self.goaway()
        return not self.streams

    def _fail(self) -> None:
        """A connection error: send the GOAWAY h2 queued, stop every stream, close."""
        self.failed = True
        self._flush()
        for stream in list(self.streams.values()):
            self._abandon(stream)
        self.streams.clear()
        self._close()

    def _close(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._flush()
        transport.close()
        if transport.get_write_buffer_size():
            self._watch_send()

    def _flush(self) -> None:
        transport = self.transport
        data = self.h2.data_to_send()
        if data and transport is not None and not transport.is_closing():
            transport.write(data)
            if transport.get_write_buffer_size() > WRITE_HIGH:
                self._pause_reading()

    def _pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    # -- deadlines (the ServerState sweep) --------------------------------------------------

    def _idle(self) -> None:
        """No stream open: the client has keepalive_timeout to start one."""
        timeout = self.ctx.listener.keepalive_timeout or self.ctx.listener.client_header_timeout
        self.idle_deadline = self.state.clock() + timeout
        self._arm(self.idle_deadline)

    def _arm(self, when: float) -> None:
        if not self.deadline or when < self.deadline:
            self.deadline = when
            self.state.watch()

    def _watch_send(self) -> None:
        if not self.send_deadline and self.transport is not None:
            self.send_deadline = self.state.clock() + self.ctx.send_timeout
            self.send_buffered = self.transport.get_write_buffer_size()
            self.state.watch()

    def expire(self, now: float) -> None:
        """Called by the sweep: the send timeout, the idle timeout, body timeouts."""
        transport = self.transport
        if transport is None:
            return
        if 0.0 < self.send_deadline <= now:
            buffered = transport.get_write_buffer_size()
            if buffered and buffered < self.send_buffered:
                self.send_buffered = buffered
                self.send_deadline = now + self.ctx.send_timeout
            elif buffered or self.write_paused:
                error_log.info("%s:%s took nothing for %ss: connection aborted",
                               self.client_ip, self.client_port, self.ctx.send_timeout)
                transport.abort()
                return
            else:
                self.send_deadline = 0.0
        if not 0.0 < self.deadline <= now:
            return
        self.deadline = 0.0
        if self.idle_deadline and not self.streams:
            if self.idle_deadline <= now:
                self.idle_deadline = 0.0
                self.goaway()
                return
            self._arm(self.idle_deadline)
        for stream in list(self.streams.values()):
            due = stream.body_deadline
            if not due:
                continue
            if due <= now and self._client_may_send(stream.sid):
                stream.body_deadline = 0.0
                body = stream.body
                if body is not None and not body.ended:
                    body.abort(RequestTimeout("client body timeout"))
            elif due <= now:  # its window is closed because its backend reads slowly
                stream.body_deadline = now + self.ctx.listener.client_body_timeout
                self._arm(stream.body_deadline)
            else:
                self._arm(due)
        self._flush()

    def _client_may_send(self, sid: int) -> bool:
        """The client has window to send more of the stream's body: silence is its own."""
        try:
            return self.h2.remote_flow_control_window(sid) > 0
        except h2.exceptions.StreamClosedError:
            return False

    def _tls_info(self) -> tuple[str, str]:
        """The connection's TLS protocol and cipher ("" without TLS), read once."""
        https = self.ctx.scheme == "https" and self.transport is not None
        self.tls = info = tls_fields(self.transport.get_extra_info("ssl_object")
                                     if https else None)
        return info
