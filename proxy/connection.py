"""One client connection: an ``asyncio.Protocol`` that parses, dispatches and writes.

Owns the HTTP/1.1 connection semantics: keep-alive (an HTTP/1.0 client's too, when it asks with
``Connection: keep-alive`` and the response has a length); pipelining (requests are parsed as
they arrive and answered strictly in order, one in flight at a time); request bodies handed to
the backend as a ``RequestBody`` stream as they arrive (dispatch happens at the end of the
head, so a CVM upload streams and an SCF target reads it whole); ``Expect: 100-continue``
answered when the backend starts reading; ``Connection: close`` (RFC 9112 §9.6: nothing after
it is processed); a body left unread by the backend closes the connection after the response
(RFC 9112 §9.3, no CL.0 desync); the client timeouts of SPEC §9 (header deadline -> 408, body
idle -> 408, keep-alive idle -> quiet close); backpressure both ways (unread body, queued
requests or a full write buffer pause reading); streamed responses (Content-Length or chunked;
a backend that breaks off mid-body aborts the connection instead of ending it cleanly); a send
timeout for a client that stops reading (``send_timeout``, by default ``client_body_timeout``);
lingering close after an error with input still arriving; and a 101 hand-over to a tunnel
(WebSocket). An HTTPS connection whose ALPN chose ``h2``, or an h2c listener's connection that
starts with the HTTP/2 preface, is handed over to http2.H2Connection, which shares this
module's ``ListenerContext`` and ``ServerState``.

It stays on protocol callbacks, with no task or future per request: a request is handed to
the router's ``dispatch`` with ``_respond`` as the callback, which the router calls once, at
once (a 404, a redirect) or from the backend's own callback (a CVM answer is written from the
upstream's ``data_received``). Only a streamed response body gets a task, to pump it. Client
timeouts are deadlines checked by one sweep per ``ServerState`` (SWEEP_INTERVAL), not a timer
handle per connection: an idle keep-alive connection costs a few hundred bytes less. What is
recorded of an answered request (metrics, access log) is recording.py's. It knows nothing
about rules or backends: the router is read from the shared ``ServerState`` at dispatch time,
so a reload applies to the next request.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import customconfig, http2, writer
from .errors import ProxyError, RequestTimeout
from .handover import Cancel, on_task
from .http1 import Limits, RequestHead, RequestParser, make_parser
from .messages import ClientCertificate, Outcome, Request, Response
from .recording import Recorder, tls_fields
from .streams import RequestBody
from .vocabulary import NO_BODY_STATUSES

if TYPE_CHECKING:
    from .config import Listener
    from .listening import AcceptGate
    from .logs import AccessLog
    from .metrics import ProxyMetrics
    from .router import Router

error_log = logging.getLogger("proxy.error")

_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count(1)


def next_request_id() -> str:
    """A stgw_request_id: 32 hex digits, a random prefix per process and a counter."""
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


#: pipelined requests parsed ahead of the one in flight before we stop reading
MAX_QUEUED = 8
#: parsers a listener keeps for its connections between requests (ListenerContext.spare)
SPARE_PARSERS = 256
# Why reading is paused (HttpConnection.pauses): the reasons, as bits.
PAUSED_QUEUE = 1  # enough pipelined requests are waiting, or the last one is in
PAUSED_BODY = 2  # the backend is not reading the request body fast enough
PAUSED_ERROR = 4  # an error is being answered: nothing more is read
PAUSED_WRITE = 8  # the client does not read our responses fast enough
#: how often deadlines (client timeouts, keep-alive, lingering close) are checked: a timeout
#: fires up to this much late
SWEEP_INTERVAL = 0.1
#: lingering close (nginx's lingering_time / lingering_timeout): after answering a request whose
#: bytes were not all read, keep reading and discarding for up to LINGER_TIME seconds (closing
#: after LINGER_TIMEOUT seconds of silence), so the client reads our answer instead of a reset
LINGER_TIME = 30.0
LINGER_TIMEOUT = 5.0

# What the connection is waiting for from the client.
IDLE, HEAD, BODY = 0, 1, 2


class ServerState:
    """What connections share: the live router (``dispatch(request, reply) -> cancel``, as
    router.Router has, or only ``async handle(Request) -> Outcome``), the recorder of answered
    requests (metrics and access log), the clock of every deadline, the open connections."""

    def __init__(self, router: Router, access_log: AccessLog,
                 metrics: ProxyMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._router: Any = None
        self.router = router
        #: monotonic seconds for every deadline of every connection (a fake one in tests)
        self.clock = clock
        self.recorder = Recorder(access_log, metrics)
        #: HttpConnection and http2.H2Connection objects (both have what the sweep reads)
        self.connections: set[Any] = set()
        self.draining = False
        self._sweeper: asyncio.TimerHandle | None = None

    @property
    def router(self) -> Any:
        return self._router

    @router.setter
    def router(self, router: Any) -> None:
        """Swapped by a reload: the next request dispatched uses the new one."""
        self._router = router if hasattr(router, "dispatch") else _OnTask(router)

    def watch(self) -> None:
        """A connection armed a deadline: make sure the sweep runs."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep)

    def _sweep(self) -> None:
        """The periodic pass: one walk over the open connections (10,000 idle ones take about
        a millisecond), every SWEEP_INTERVAL while any is open."""
        self.sweep()
        self._sweeper = None
        if self.connections:
            self.watch()

    def sweep(self) -> None:
        """Fire every deadline that has passed by ``clock()``, now (the periodic pass calls
        this; tests with a fake clock call it directly)."""
        now = self.clock()
        for conn in [c for c in self.connections if 0.0 < c.deadline <= now
                     or 0.0 < c.send_deadline <= now]:
            conn.expire(now)

    @property
    def access_log(self) -> AccessLog:
        return self.recorder.access_log


class _OnTask:
    """A router with only ``async handle(Request) -> Outcome`` (the admin API, a test's fake)
    given ``dispatch``: each request is handled on a task of its own."""

    __slots__ = ("handle",)

    def __init__(self, router: Any) -> None:
        self.handle = router.handle

    def dispatch(self, request: Request, reply: Callable[[Outcome], None]) -> Cancel:
        def finished(result: Any) -> None:
            if isinstance(result, BaseException):
                error_log.error("internal error serving %s %s", request.method, request.path,
                                exc_info=result)
                result = Outcome(writer.error_response(ProxyError(str(result))))
            reply(result)

        return on_task(self.handle(request), finished)


class ListenerContext:
    """Per-listener settings shared by all of its connections."""

    __slots__ = ("listener", "scheme", "parser_kind", "limits", "state", "_extra_headers",
                 "gate", "server_header", "response_headers", "domain_headers", "plain",
                 "send_timeout", "wants_server_addr", "max_requests", "mutual",
                 "connection_class", "spare")

    def __init__(self, listener: Listener, parser_kind: str, state: ServerState,
                 extra_headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.listener = listener
        self.scheme = "https" if listener.protocol == "HTTPS" else "http"
        self.parser_kind = parser_kind
        self.limits = Limits(
            max_request_line=listener.max_request_line,
            max_header_size=listener.max_header_size,
            max_header_count=listener.max_header_count,
            max_body_size=listener.client_max_body_size,
        )
        self.state = state
        self._extra_headers = extra_headers
        #: request parsers between requests, for the next connection that receives bytes: an
        #: idle keep-alive connection holds none (SPARE_PARSERS at most are kept)
        self.spare: list[RequestParser] = []
        #: counts this listener's connections against max_connections (listening.py)
        self.gate: AcceptGate | None = None
        #: the listener's tls.ServerTLS (HTTPS), which judges client certificates (MUTUAL)
        self.mutual: Any = None
        #: proxy_set_header X-clb-stgw-vip $server_addr is asked for somewhere
        self.wants_server_addr = any(
            "X-clb-stgw-vip" in cc.proxy_set_headers for cc in
            (listener.custom_config, *(rule.custom_config for rule in listener.rules)))
        #: keepalive_requests (0 in the config: no limit)
        self.max_requests = listener.keepalive_requests or sys.maxsize
        #: send_timeout; unset (0), client_body_timeout's value, as before there was a key
        self.send_timeout = listener.send_timeout or listener.client_body_timeout
        #: the Server line (server_tokens)
        self.server_header = writer.server_header(
            customconfig.server_tokens(listener.custom_config))
        self.configure(listener)

    def configure(self, listener: Listener) -> None:
        """The response headers of custom_config (add_header, more_set_headers), listener's
        and per domain, and the connection class (mutual TLS or not); called again by a
        reload, so new answers and new connections follow the new config."""
        #: what the listener's protocol factory makes: mutual TLS and the h2c preface sniff
        #: cost nothing elsewhere
        self.connection_class: type[HttpConnection] = (
            MutualTlsConnection if listener.protocol == "HTTPS" and listener.ssl_mode == "MUTUAL"
            else H2cConnection if listener.h2c else HttpConnection)
        self.response_headers = customconfig.response_headers(listener.custom_config)
        self.domain_headers: dict[str, customconfig.ResponseHeaders | None] = {
            rule.domain: customconfig.response_headers(listener.custom_config,
                                                       rule.custom_config)
            for rule in listener.rules if rule.custom_config != customconfig.CustomConfig()}
        self._update_plain()

    @property
    def extra_headers(self) -> tuple[tuple[str, str], ...]:
        """Headers added to every response of this listener (e.g. HSTS)."""
        return self._extra_headers

    @extra_headers.setter
    def extra_headers(self, headers: tuple[tuple[str, str], ...]) -> None:
        self._extra_headers = headers
        self._update_plain()

    def _update_plain(self) -> None:
        #: nothing to add to any answer: responses pass untouched
        self.plain = (not self._extra_headers and self.response_headers is None
                      and not any(self.domain_headers.values()))


class HttpConnection(asyncio.Protocol):
    __slots__ = (
        "ctx", "state", "transport", "parser", "client_ip", "client_port", "phase", "body",
        "received_at", "queue", "current", "cancel", "started", "stopped", "pending_error",
        "write_paused", "drain_waiter", "pauses", "tunnel", "linger_until", "deadline",
        "on_deadline", "send_deadline", "send_buffered", "client_eof", "heads",
        "server_addr", "served", "tls", "half_close",
    )

    def __init__(self, ctx: ListenerContext) -> None:
        self.ctx = ctx
        self.state = ctx.state
        self.transport: Any = None
        #: the request parser while a request is on its way in or in flight; None while the
        #: connection is idle (see _after_response: it waits in ``ctx.spare`` then)
        self.parser: RequestParser | None = None
        self.client_ip = ""
        self.client_port = 0
        self.phase = IDLE
        #: the body being received (belongs to the newest request), or None
        self.body: RequestBody | None = None
        self.received_at = 0.0
        #: requests whose heads arrived, waiting for the one in flight to be answered
        self.queue: list[Request] = []  # at most MAX_QUEUED: a list is smaller than a deque
        #: the request in flight: dispatched, its response not all written yet
        self.current: Request | None = None
        #: stops the request in flight (its backend call, or the task writing its body)
        self.cancel: Cancel | None = None
        #: clock() when the request in flight was dispatched
        self.started = 0.0
        #: the clock() time at which ``on_deadline`` is due (0.0: nothing is), see _arm
        self.deadline = 0.0
        self.on_deadline: Any = None
        #: no further request is accepted (Connection: close seen, error, EOF, upgrade)
        self.stopped = False
        #: an error to answer once the requests before it are answered
        self.pending_error: ProxyError | None = None
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        #: why reading is paused, PAUSED_* bits (reading resumes when none is left)
        self.pauses = 0
        self.tunnel: Any = None
        #: lingering close: the loop time reading stops at; 0.0 while not lingering
        self.linger_until = 0.0
        #: the clock() time by which the client must have taken some of what we wrote; 0.0
        #: while nothing waits to be taken (see _watch_send)
        self.send_deadline = 0.0
        #: bytes waiting in the transport when the send deadline was last set
        self.send_buffered = 0
        #: the client has sent its FIN: there is nothing left to linger for
        self.client_eof = False
        #: request heads received on this connection (keepalive_requests)
        self.heads = 0
        #: the local address (CLB's $server_addr), read only when custom_config wants it
        self.server_addr = ""
        #: requests answered on this connection (the access log's connection_requests)
        self.served = 0
        #: (ssl_protocol, ssl_cipher) for the access log, read once, at the first answer
        self.tls: tuple[str, str] | None = None
        #: what eof_received returns to keep the connection half-open: True on plain TCP;
        #: None on TLS, whose transport closes after eof_received whatever it returns (and
        #: asyncio logs a warning for True), set in connection_made
        self.half_close: bool | None = True

    # -- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.ctx.scheme == "https":  # once per connection: what did ALPN choose?
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
                conn = http2.H2Connection(self.ctx, next_request_id)
                transport.set_protocol(conn)
                conn.connection_made(transport)
                return
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            # interned: connections from one address (a NAT, a load balancer) share one string
            self.client_ip, self.client_port = sys.intern(peer[0]), peer[1]
        if self.ctx.scheme == "https" and transport.get_extra_info("sslcontext") is not None:
            self.half_close = None  # TLS cannot half-close: close_notify ends the connection
        if self.ctx.wants_server_addr:
            local = transport.get_extra_info("sockname")
            if isinstance(local, tuple) and local:
                self.server_addr = sys.intern(local[0])
        self.state.connections.add(self)
        if self.ctx.gate is not None:
            self.ctx.gate.opened()
        self._arm(self.ctx.listener.client_header_timeout, HttpConnection._idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        if self.ctx.gate is not None:
            self.ctx.gate.closed()
        self._disarm()
        self.send_deadline = 0.0
        cancel, self.cancel = self.cancel, None
        if cancel is not None:
            cancel()  # the client is gone: stop waiting on the backend
        self.queue.clear()
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_exception(ConnectionResetError("client closed"))
        if self.tunnel is not None:
            self.tunnel.client_closed()

    def pause_writing(self) -> None:
        self.write_paused = True
        self._pause(PAUSED_WRITE)
        self._watch_send()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._resume(PAUSED_WRITE)
        if self.send_deadline and not self.transport.is_closing():
            self.send_deadline = 0.0  # it reads again
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        elif (self.current is None and self.queue and not self.linger_until
              and self.tunnel is None):
            self._dispatch()  # the pipelined request held back by _after_response

    def eof_received(self) -> bool | None:
        self.client_eof = True
        if self.linger_until:
            return None  # the client is done sending: close
        if self.tunnel is not None:
            self.tunnel.client_eof()
            return self.half_close
        try:
            if self.parser is not None:  # else it was idle: nothing was cut short
                self.parser.feed_eof()
        except ProxyError as exc:
            self._fail(exc)
            return self.half_close
        if self.current is None and not self.queue:
            return None  # nothing owed to the client: let the transport close
        self.stopped = True
        # half-close: answer what was asked, then close (plain TCP; a TLS transport closes
        # now, RFC 8446 §6.1 half-close being something asyncio's TLS does not do)
        return self.half_close

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_client(data)
            return
        if self.linger_until:
            self._linger_more()
            return
        if self.stopped and (self.phase != BODY or self.pauses & PAUSED_ERROR):
            return  # past the last request (only its body is still read), or failed
        if self.phase == IDLE:
            self.phase = HEAD
            self.received_at = time.time()
        parser = self.parser
        if parser is None:
            spare = self.ctx.spare
            parser = self.parser = spare.pop() if spare else make_parser(
                self.ctx.parser_kind, self.ctx.limits)
        try:
            events = parser.feed(data)
        except ProxyError as exc:
            self._fail(exc)
            return
        # The parser yields nothing after the last request's end (Connection: close, HTTP/1.0
        # without keep-alive, Upgrade), so every event here belongs to a request we accepted,
        # its body included.
        for event in events:
            if type(event) is bytes:
                if self.body is not None:
                    self.body.feed(event)
            elif type(event) is RequestHead:
                self._on_head(event)
            else:
                self._on_end()
        if parser.error is not None and not self.pauses & PAUSED_ERROR:
            # The requests before the broken bytes were delivered above; the error is
            # answered after them.
            self._fail(parser.error)
        elif self.phase == HEAD or (self.phase == IDLE and parser.partial_head):
            # A head left incomplete (the first request's or a pipelined one's) must be done
            # within client_header_timeout; a head that came whole needs no deadline at all.
            self.phase = HEAD
            if self.on_deadline is not HttpConnection._header_timeout:
                self._arm(self.ctx.listener.client_header_timeout,
                          HttpConnection._header_timeout)
        elif self.phase == BODY and not self.pauses & PAUSED_BODY:
            if self.body is not None and self.body.awaits_continue:
                self._disarm()  # it waits for our 100 Continue: its timeout starts with that
            else:
                self._arm(self.ctx.listener.client_body_timeout, HttpConnection._body_timeout)
        if self.current is None and self.queue:
            self._dispatch()

    # -- request assembly -------------------------------------------------------------------

    def _on_head(self, head: RequestHead) -> None:
        has_body = head.chunked or bool(head.content_length)
        body = None
        if has_body:
            body = RequestBody(head.content_length, self._pause_for_body,
                               self._resume_for_body, self._send_continue
                               if head.expect_continue and head.http_version == "1.1" else None)
        self.body = body
        self.queue.append(Request(
            head.method, head.path, head.query, head.headers, b"", head.http_version,
            self.client_ip, self.client_port, self.ctx.scheme, self.ctx.listener.name,
            self.received_at, head.keep_alive, body, head.upgrade, next_request_id(),
            self.server_addr, None, head.length,
        ))
        self.phase = BODY if has_body else HEAD
        self.heads += 1
        if (not head.keep_alive or head.upgrade
                or self.heads >= self.ctx.max_requests):
            # keepalive_requests: this is the last request the connection serves (nginx).
            # RFC 9112 §9.6: nothing after "close" is processed; after an Upgrade request
            # the bytes that follow belong to the new protocol or to nobody (RFC 9931).
            # Its own body is still read: reading stops at its end (_on_end).
            self.stopped = True
        if (self.stopped and not has_body) or len(self.queue) >= MAX_QUEUED:
            self._pause(PAUSED_QUEUE)

    def _on_end(self) -> None:
        if self.body is not None:
            self.body.end()
            self.body = None
        self.phase = IDLE
        self._disarm()
        if self.stopped:
            self._pause(PAUSED_QUEUE)  # the last request is in: nothing more is read

    def _send_continue(self) -> None:
        body = self.current.stream if self.current is not None else None
        if body is not None and body.received == 0 and not body.ended:
            self.transport.write(writer.continue_response())
            if self.phase == BODY and self.body is body:  # its body timeout starts now
                self._arm(self.ctx.listener.client_body_timeout, HttpConnection._body_timeout)

    def _pause_for_body(self) -> None:
        self._pause(PAUSED_BODY)
        self._disarm()  # the client is not slow, we are: no body timeout while paused

    def _resume_for_body(self) -> None:
        self._resume(PAUSED_BODY)
        if self.phase == BODY:
            self._arm(self.ctx.listener.client_body_timeout, HttpConnection._body_timeout)

    # -- dispatch and response ------------------------------------------------------------

    def _dispatch(self) -> None:
        request = self.queue.pop(0)
        self.current = request
        if len(self.queue) < MAX_QUEUED and (not self.stopped or self.phase == BODY):
            self._resume(PAUSED_QUEUE)
        self.started = self.state.clock()
        try:
            cancel = self.state.router.dispatch(request, self._respond)
        except Exception as exc:  # a bug must cost one 500, not a hung connection
            error_log.exception("internal error serving %s %s", request.method, request.path)
            self._respond(Outcome(writer.error_response(ProxyError(str(exc)))))
            return
        if self.current is request and self.cancel is None:  # else: answered already
            self.cancel = cancel

    def _respond(self, outcome: Outcome) -> None:
        """The router's answer to the request in flight: write it (a streamed body on a task
        of its own), then go on to the next request or close."""
        request = self.current
        transport = self.transport
        if request is None or transport is None or transport.is_closing():
            return
        self.cancel = None
        response = outcome.response if self.ctx.plain else self._with_listener_headers(
            outcome.response, outcome.route.domain if outcome.route is not None else None)
        unread = request.stream is not None and not request.stream.ended
        # The last response on this connection says so: the client asked to close, we are
        # draining, the body was left unread, or reading stopped with nothing else owed.
        last = (not request.keep_alive or self.state.draining or unread
                or (self.stopped and not self.queue and self.pending_error is None))
        head_only = request.method == "HEAD"
        if response.tunnel is not None and response.status == 101:
            self._answered(request, outcome, self._start_tunnel(response), last, unread)
        elif response.stream is None:
            data = writer.serialize(response, not last, head_only, self.ctx.server_header)
            transport.write(data)
            self._answered(request, outcome, len(data), last, unread)
        else:
            pump = asyncio.get_running_loop().create_task(
                self._write_stream(request, outcome, response, last, unread, head_only))
            self.cancel = pump.cancel

    def _with_listener_headers(self, response: Response, domain: str | None = None
                               ) -> Response:
        """``response`` with the headers its listener adds to every answer (HSTS), error
        pages of our own included, and those of custom_config (the routed domain's, else
        the listener's)."""
        ctx = self.ctx
        if ctx.plain:
            return response
        plan = ctx.domain_headers.get(domain, ctx.response_headers) if domain is not None \
            else ctx.response_headers
        headers = response.headers
        if plan is not None:
            headers = plan.apply(response.status, headers)
        return Response(response.status, headers + ctx.extra_headers, response.body,
                        response.stream, response.length, response.tunnel)

    def _answered(self, request: Request, outcome: Outcome, nbytes: int, last: bool,
                  unread: bool) -> None:
        self.served += 1
        self.state.recorder.answered(request, outcome, nbytes,
                                     self.state.clock() - self.started, self.served,
                                     self.tls or self._tls_info())
        self.current = None
        self.cancel = None
        if self.tunnel is not None or self.linger_until or self.transport.is_closing():
            return
        if last:
            # Linger too when the client sent more after its last request (pipelined after
            # "close"): closing with unread input would reset the connection and could take
            # this response with it (RFC 9112 §9.6).
            self._close(linger=unread or (self.parser is not None
                                          and bool(self.parser.trailing)))
        else:
            self._after_response()

    async def _write_stream(self, request: Request, outcome: Outcome, response: Response,
                            last: bool, unread: bool, head_only: bool) -> None:
        """Write a streamed response; a backend that breaks off aborts the connection."""
        keep_alive = not last
        if response.status in NO_BODY_STATUSES:
            head_only = True  # 204/304 never carry a body, whatever the backend sent
            chunked = False
        else:
            chunked = response.length is None and request.http_version == "1.1"
            if response.length is None and not chunked and not head_only:
                # HTTP/1.0 client (keep-alive or not): the end of the body is the close
                keep_alive = False
        head = writer.serialize_head(response, keep_alive, chunked, self.ctx.server_header)
        transport = self.transport
        transport.write(head)
        total = len(head)
        stream = response.stream
        assert stream is not None
        try:
            async for chunk in stream:
                if head_only or not chunk:
                    continue
                transport.write(writer.frame_chunk(chunk) if chunked else chunk)
                total += len(chunk)
                if self.write_paused:
                    await self._drained()
            if chunked and not head_only:
                transport.write(writer.LAST_CHUNK)
        except (Exception, asyncio.CancelledError) as exc:
            # The backend broke off mid-body: the client must see a broken response, never a
            # truncated one that looks complete (RFC 9112 §6.3).
            if not transport.is_closing():
                transport.abort()
            self.cancel = None
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        if not keep_alive and not last:
            # An HTTP/1.0 keep-alive connection closed by a body of unknown length: requests
            # pipelined behind this one are never dispatched, and whatever the client sent
            # after it is lingered over, not reset.
            last = self.stopped = True
            unread = (unread or bool(self.queue) or self.phase != IDLE
                      or (request.stream is not None and not request.stream.ended))
            self.queue.clear()
        self._answered(request, outcome, total, last, unread)

    async def _drained(self) -> None:
        self.drain_waiter = asyncio.get_running_loop().create_future()
        try:
            await self.drain_waiter
        finally:
            self.drain_waiter = None

    def _start_tunnel(self, response: Response) -> int:
        data = writer.serialize_head(response, True, False, self.ctx.server_header)
        self.transport.write(data)
        self.tunnel = response.tunnel
        self._disarm()
        self.pauses = 0
        self.transport.resume_reading()
        self.tunnel.attach(self.transport)
        return len(data)

    def _after_response(self) -> None:
        if self.queue:
            if not self.write_paused:
                # else resume_writing dispatches it: a client that does not read its answers
                # gets no more of them, or pipelined answers would pile up in our memory
                self._dispatch()
            return
        if self.pending_error is not None:
            self._write_error(self.pending_error)
            return
        if self.state.draining:
            self._shut()
            return
        if self.phase == IDLE:
            # Idle: what only a request needs goes (the floats back to the shared 0.0, the
            # parser to the listener's spares), so an idle connection weighs less.
            self.received_at = self.started = 0.0
            parser = self.parser
            if parser is not None and parser.between_requests:
                self.parser = None
                spare = self.ctx.spare
                if len(spare) < SPARE_PARSERS:
                    spare.append(parser)
            self._arm(self.ctx.listener.keepalive_timeout, HttpConnection._idle_timeout)

    # -- errors and timeouts ----------------------------------------------------------------

    def _fail(self, exc: ProxyError) -> None:
        """A framing, limit or timeout error: answer it after what is owed, then close."""
        self.stopped = True
        self._disarm()
        self._pause(PAUSED_ERROR)
        body = self.body
        if body is not None and self.current is not None and self.current.stream is body:
            # The request in flight is the one that broke: its backend gets the error and
            # its response (the error page) is the last one.
            body.abort(exc)
            return
        if body is not None and self.queue and self.queue[-1].stream is body:
            # Broken before its turn came: it is never dispatched, so no backend sees a part
            # of a message that cannot be whole (RFC 9112 §6.3); the error takes its place.
            self.queue.pop()
            self.body = None
        if self.current is None and not self.queue:
            self._write_error(exc)
        else:
            self.pending_error = exc

    def _write_error(self, exc: ProxyError) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        data = writer.serialize(self._with_listener_headers(writer.error_response(exc)), False,
                                server=self.ctx.server_header)
        transport.write(data)
        self.state.recorder.refused(self.ctx.listener.name, self.client_ip, exc, len(data),
                                    self.served + 1, self.tls or self._tls_info())
        # The request that broke may still be arriving: let the client read the answer.
        self._close(linger=True)

    def _close(self, linger: bool) -> None:
        """Close after what was written; with ``linger``, first send our FIN and discard
        what the client still sends (RFC 9112 §9.6: closing with unread input makes the
        kernel reset the connection, and the client may lose our response)."""
        transport = self.transport
        if not linger or self.client_eof or transport.is_closing():
            self._shut()
            return
        self.stopped = True
        self.linger_until = self.state.clock() + LINGER_TIME
        self.pauses = 0
        transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        self._arm(LINGER_TIMEOUT, HttpConnection._shut)

    def _linger_more(self) -> None:
        if self.state.clock() >= self.linger_until:
            self._disarm()
            self._shut()
        else:
            self._arm(LINGER_TIMEOUT, HttpConnection._shut)

    def _shut(self) -> None:
        """Close once what was written has gone out; a client that never takes it is cut
        off by the send timeout (``close`` alone would wait for it forever)."""
        self.transport.close()
        if self.transport.get_write_buffer_size():
            self._watch_send()

    def _watch_send(self) -> None:
        """The client must take some of what we write within ``send_timeout`` (nginx's
        send_timeout: between two successful writes; by default client_body_timeout's
        value), or it is cut off: a client that asks and never reads must not hold the
        connection, its buffers and an upstream connection for ever. Progress is judged by
        the transport's write buffer shrinking, not by it draining to its low-water mark: a
        slow reader of a large response keeps its connection as long as it keeps reading."""
        if not self.send_deadline:
            self.send_deadline = self.state.clock() + self.ctx.send_timeout
            self.send_buffered = self.transport.get_write_buffer_size()
            self.state.watch()

    def _send_timeout(self, now: float) -> None:
        buffered = self.transport.get_write_buffer_size()
        if buffered < self.send_buffered:  # it took some since: another window
            self.send_buffered = buffered
            self.send_deadline = now + self.ctx.send_timeout
            return
        self.send_deadline = 0.0
        error_log.info("%s:%s took nothing for %ss: connection aborted", self.client_ip,
                       self.client_port, self.ctx.send_timeout)
        self.transport.abort()

    def _tls_info(self) -> tuple[str, str]:
        """The connection's TLS protocol and cipher ("" without TLS), read once."""
        https = self.ctx.scheme == "https" and self.transport is not None
        self.tls = info = tls_fields(self.transport.get_extra_info("ssl_object")
                                     if https else None)
        return info

    def _header_timeout(self) -> None:
        self._fail(RequestTimeout("client header timeout"))

    def _body_timeout(self) -> None:
        self._fail(RequestTimeout("client body timeout"))

    def _idle_timeout(self) -> None:
        if self.current is None and not self.queue and self.phase == IDLE:
            self._shut()

    # No timer handle per connection (one costs ~600 bytes, a lot for an idle keep-alive
    # connection, and making one per request costs time): arming sets a deadline that the
    # ServerState's sweep checks a few times a second.

    def _arm(self, seconds: float, callback: Callable[[HttpConnection], None]) -> None:
        """``callback`` is an HttpConnection method taken from the class (called with the
        connection): a bound method would be one more object per idle connection."""
        self.deadline = self.state.clock() + seconds
        self.on_deadline = callback
        self.state.watch()

    def _disarm(self) -> None:
        self.deadline = 0.0
        self.on_deadline = None

    def expire(self, now: float) -> None:
        """Called by the sweep: run what was due by ``now`` (the send timeout first: it
        aborts, and nothing else matters then)."""
        if 0.0 < self.send_deadline <= now:
            self._send_timeout(now)
            if not self.send_deadline:
                return
        if not 0.0 < self.deadline <= now:
            return  # an earlier connection's callback may have changed it
        callback = self.on_deadline
        self.deadline = 0.0
        self.on_deadline = None
        if callback is not None:
            callback(self)

    def _pause(self, reason: int) -> None:
        if not self.pauses and self.transport is not None:
            self.transport.pause_reading()
        self.pauses |= reason

    def _resume(self, reason: int) -> None:
        if self.pauses & reason:
            self.pauses &= ~reason
            if not self.pauses and self.transport is not None:
                self.transport.resume_reading()

    # -- server control ---------------------------------------------------------------------

    def close_if_idle(self) -> bool:
        """Graceful drain: close now if nothing is owed; returns whether it closed."""
        if self.current is None and not self.queue and self.phase == IDLE and self.tunnel is None:
            self._shut()
            return True
        return False



class MutualTlsConnection(HttpConnection):
    """A connection of an HTTPS listener with ``ssl_mode = "MUTUAL"``.

    The client certificate is judged once, when the handshake is done (``ctx.mutual``, the
    listener's tls.ServerTLS): every request of the connection carries the verdict, which
    the backends get as X-Client-Cert-* headers (headers.py). A connection the verdict
    refuses (no certificate where ``ssl_verify_client = "on"`` requires one, a chain longer
    than ``ssl_verify_depth``) answers nginx's 400 ("No required SSL certificate was sent",
    "The SSL certificate error") as soon as the client sends, then closes (nginx also turns
    keep-alive off for these). A certificate OpenSSL cannot verify never gets this far: the
    handshake fails (docs/BEHAVIOUR.md §8).
    """

    __slots__ = ("client_cert", "refusal")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        cert: ClientCertificate = self.ctx.mutual.client_certificate(
            transport.get_extra_info("ssl_object"))
        self.client_cert = cert
        self.refusal: ProxyError | None = cert.refusal(
            self.ctx.mutual.policy.verify_client == "on")

    def data_received(self, data: bytes) -> None:
        refusal = self.refusal
        if refusal is not None:
            # answered at the first bytes, whatever they are: nothing the client sends on
            # this connection is served; lingering close reads and discards the rest
            self.refusal = None
            self.received_at = time.time()
            self._fail(refusal)
            return
        super().data_received(data)

    def _on_head(self, head: RequestHead) -> None:
        super()._on_head(head)
        self.queue[-1].client_cert = self.client_cert


class H2cConnection(HttpConnection):
    """A connection of an HTTP listener with ``h2c``: one that starts with the HTTP/2 preface
    (prior knowledge, RFC 9113 §3.3) becomes an http2.H2Connection, any other stays
    HTTP/1.1. Only such listeners pay the look at the first bytes."""

    __slots__ = ("sniffed",)

    def __init__(self, ctx: ListenerContext) -> None:
        super().__init__(ctx)
        #: the first bytes, while they may still be the start of the preface
        self.sniffed: bytes | None = b""

    def data_received(self, data: bytes) -> None:
        sniffed = self.sniffed
        if sniffed is None:
            HttpConnection.data_received(self, data)
            return
        sniffed += data
        preface = http2.PREFACE
        if sniffed[:len(preface)] != preface[:len(sniffed)]:
            self.sniffed = None  # HTTP/1.1 after all
            HttpConnection.data_received(self, sniffed)
            return
        if len(sniffed) < len(preface):
            self.sniffed = sniffed
            return
        self.sniffed = None
        # hand over: this object leaves the books, the HTTP/2 connection enters them
        self.state.connections.discard(self)
        if self.ctx.gate is not None:
            self.ctx.gate.closed()
        self._disarm()
        transport = self.transport
        self.transport = None
        conn = http2.H2Connection(self.ctx, next_request_id)
        transport.set_protocol(conn)
        conn.connection_made(transport)
        conn.data_received(sniffed)
