"""CVM targets: requests streamed to upstream servers over HTTP/1.1 keep-alive pools.

Owns the exchange of one request with one upstream: the request body read whole first
(``proxy_request_buffering``, on by default: streams.buffer_body, in memory or a temp file, then
sent with Content-Length) or streamed; the request head (the client's end-to-end headers from
headers.py, Host kept, ``Expect`` dropped, our framing: Content-Length when the body was
buffered or the client declared one, else chunked), the body sent up, the response head turned
into a ``Response`` whose body streams back as the client takes it, or a 101 handed to a
``Tunnel``; and ``CvmUpstreams``, the long-lived owner of every pool and health state, which
binds targets for the router. The wire (llhttp parsing, flow control, pooling) is upstream.py's;
health state is health.py's, fed and read here.

Strategy: the exchange (``_Exchange``) is callbacks: the request head is written on a pooled
connection (or one connected for it, on a task: ``loop.create_connection`` is a coroutine),
and the answer is handed to the router from the upstream's ``data_received``, with no task or
future per request. An upload is sent by a task of its own that reads the client's
``RequestBody`` only once the upstream connection is ready (its first read sends the client's
100 Continue; ``Expect`` is never forwarded, a proxy may answer it itself, RFC 9110 §10.1.1)
and waits for the upstream to drain, while the exchange goes on waiting for the response head,
so an upstream that answers early or echoes as it reads cannot deadlock us. There is no read
timeout while the body is still being sent (nginx starts proxy_read_timeout once the request
is sent).

A connection returns to its pool only when the response ended cleanly (complete by its
framing, keep-alive per RFC 9112 §9.3), the request body was sent whole and nothing else
arrived; otherwise it is closed. An upstream that breaks off mid-body makes the body iterator
raise, so the client connection is aborted, never ended as if complete (RFC 9112 §6.3).

Errors: connect failure or timeout (``proxy_connect_timeout``) and a reset before any response
byte give ``UpstreamError`` (502; ``retryable`` when nothing was sent, or the method is
idempotent (RFC 9110 §9.2.2) and has no body: the router may try another target; never for a
request whose body was read); a broken response head is a 502 that is not retryable (the
upstream got the request); waiting longer than ``proxy_read_timeout`` gives ``UpstreamTimeout``
(504). A *reused* connection that dies before any response byte (the keep-alive race) is
retried once here on a fresh connection, for bodiless idempotent requests only. Connect
failures (and only they: one endpoint that crashes on a request must not take the whole server
out) feed passive ejection; any response head clears it.

``proxy_redirect default``: a ``Location``/``Refresh`` naming the target's own address is
rewritten to the client's scheme and Host (headers.rewrite_redirects; the prefixes are
computed once per bound target, and a response without either field costs nothing).

Decisions (ours): upstream ``Date`` and ``Server`` are replaced by ours (nginx's
proxy_hide_header default; two Date fields would be invalid, RFC 9110 §6.6.1); a POST, PUT or
PATCH without a body is sent with ``Content-Length: 0`` (RFC 9110 §8.6); a client without
``Host`` (HTTP/1.0) is sent the target's address as Host; pools are per address (shared by
rules; per address and TLS context for a rule's ``forward_type = "HTTPS"``, tlsclient.py, the
same exchange over TLS), health checks per listener + rule + address (over TLS for HTTPS);
after a reload ``retain(config)`` stops what no rule uses any more.

Must not know routing, the client connection, or how the writer frames the response.
"""

from __future__ import annotations

import asyncio
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import H2_FORWARD_TYPES, TLS_FORWARD_TYPES, Config, Listener, Rule, Target
from ..errors import ConfigError, UpstreamError
from ..handover import Cancel, Done, awaited
from ..customconfig import CustomConfig
from ..headers import (CLB_LINES, CLIENT_CERT_HEADERS, DROPPED, TrustedProxies, clb_values,
                       end_to_end, optional_value, redirect_prefixes, rewrite_redirects)
from ..deadlines import clock
from ..messages import Headers, Outcome, Request, Response, Route, UpstreamTiming
from ..streams import SPOOL_READ_SIZE, BufferedBody, RequestBody, buffer_body
from ..vocabulary import CONTENT_METHODS, FRAMING, IDEMPOTENT_METHODS, RESPONSE_DROPPED
from .health import ActiveCheck, PassiveEjection
from .tunnel import Tunnel
from .grpc import GrpcCheck, GrpcTarget
from .h2upstream import H2Pool
from .pool import IDLE_TIMEOUT, MAX_IDLE, Pool, split_address
from .tlsclient import ALPN, ContextKey, Contexts
from .upstream import DONE, HEAD, UpstreamConnection

Usable = Callable[[], bool]

#: what a CVM request never carries of the client's fields: hop-by-hop and forged CLB ones
#: (headers.py), and those we set ourselves (framing) or answer ourselves (Expect)
_NOT_FORWARDED = DROPPED | FRAMING | {"expect"}


def request_head(request: Request, trusted: TrustedProxies, address: str,
                 upgrade: bool, buffered: int = -1, optional: tuple[str, ...] = ()) -> bytes:
    """The request line and header block sent upstream (HTTP/1.1 whatever the client spoke);
    ``buffered``: the length of a body read whole first (proxy_request_buffering), which is
    then sent with that Content-Length whatever the client's framing was; ``optional``: the
    headers custom_config's proxy_set_header asks for (customconfig.OPTIONAL_HEADERS)."""
    kept, chain = end_to_end(request, trusted, _NOT_FORWARDED)
    query = request.query
    parts = [f"{request.method} {request.path}?{query} HTTP/1.1\r\n" if query
             else f"{request.method} {request.path} HTTP/1.1\r\n"]
    parts += [f"{name}: {value}\r\n" for name, value in kept]
    if request.http_version == "1.0" and request.header("host") is None:
        # an HTTP/1.0 client may send none; HTTP/1.1 requires one (RFC 9112 §3.2)
        parts.append(f"Host: {address}\r\n")
    parts.append(CLB_LINES.format(*clb_values(request, chain)))
    if optional:  # custom_config's proxy_set_header, and mutual TLS's client certificate
        parts += [f"{name}: {value}\r\n" for name in optional
                  if (value := optional_value(name, request))]
    if upgrade:  # hop-by-hop, so headers.py dropped them: a WebSocket handshake needs both;
        # only the websocket protocol is offered (never h2c, which would bypass us)
        parts.append("Connection: upgrade\r\nUpgrade: websocket\r\n")
    stream = request.stream
    if buffered >= 0:
        parts.append(f"Content-Length: {buffered}\r\n")
    elif stream is not None:
        length = stream.declared_length
        parts.append("Transfer-Encoding: chunked\r\n" if length is None
                     else f"Content-Length: {length}\r\n")
    elif request.body or request.method in CONTENT_METHODS:
        parts.append(f"Content-Length: {len(request.body)}\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1")


#: response field name as sent -> _KEEP, _DROP or _CONNECTION (verdicts cached: an upstream
#: sends the same few names on every response)
_VERDICTS: dict[str, int] = {}
_VERDICTS_MAX = 512
_KEEP, _DROP, _CONNECTION, _REDIRECT = 0, 1, 2, 3
#: response fields proxy_redirect may rewrite
_REDIRECT_FIELDS = frozenset({"location", "refresh"})
#: Connection options that name no field we would still forward
_NOTHING_MORE = RESPONSE_DROPPED | {"close", ""}


def _verdict(name: str) -> int:
    lname = name.lower()
    verdict = _CONNECTION if lname == "connection" else _DROP if lname in RESPONSE_DROPPED \
        else _REDIRECT if lname in _REDIRECT_FIELDS else _KEEP
    if len(_VERDICTS) >= _VERDICTS_MAX:  # bounded: names are the upstream's choice
        _VERDICTS.clear()
    _VERDICTS[name] = verdict
    return verdict


def response_headers(raw: list[tuple[str, str]]) -> tuple[Headers, bool]:
    """The upstream's end-to-end response fields: hop-by-hop ones, those named in Connection
    (RFC 9110 §7.6.1), framing, Date and Server removed; and whether a Location or Refresh
    field is among them (for proxy_redirect)."""
    named: set[str] | None = None
    out = []
    verdicts = _VERDICTS
    redirect = False
    for field in raw:
        verdict = verdicts.get(field[0])
        if verdict is None:
            verdict = _verdict(field[0])
        if verdict == _KEEP:
            out.append(field)
        elif verdict == _REDIRECT:
            out.append(field)
            redirect = True
        elif verdict == _CONNECTION:
            tokens = {token.strip().lower() for token in field[1].split(",")}
            if not tokens <= _NOTHING_MORE:  # "keep-alive", "close": nothing more to drop
                named = (named or set()) | tokens
    if named:
        return tuple(field for field in out if field[0].lower() not in named), redirect
    return tuple(out), redirect


def _header(raw: list[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in raw if k.lower() == name), None)


async def send_body(conn: UpstreamConnection, stream: RequestBody, chunked: bool,
                    timeout: float) -> None:
    """Stream the client's body upstream, waiting for the upstream to drain (send timeout =
    read timeout, as nginx's proxy_send_timeout defaults to the same 60 s). Returns quietly
    when the upstream went away: the response side reports that."""
    transport = conn.transport
    while not conn.closed:
        chunk = await stream.read()
        if conn.closed:
            return
        if not chunk:
            if chunked:
                transport.write(b"0\r\n\r\n")  # RFC 9112 §7.1: last-chunk, no trailers
            conn.body_sent = True
            return
        if chunked:
            transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        else:
            transport.write(chunk)
        if conn.write_paused:
            await conn.drain(timeout)


async def send_file(conn: UpstreamConnection, body: BufferedBody, timeout: float) -> None:
    """Send a body spooled to a temp file (proxy_request_buffering), waiting for the upstream
    to drain; the file is closed (and so gone) whatever happens."""
    try:
        file = body.file
        assert file is not None
        transport = conn.transport
        while not conn.closed:
            chunk = file.read(SPOOL_READ_SIZE)
            if not chunk:
                conn.body_sent = True
                return
            transport.write(chunk)
            if conn.write_paused:
                await conn.drain(timeout)
    finally:
        body.close()


def _stop(sender: asyncio.Task[None] | None) -> None:
    if sender is not None and not sender.done():
        sender.cancel()


def _consume(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: its error was raised to the request, or did not matter


class ResponseBody:
    """The streamed response body: chunks as the upstream sends them, pulled by the client
    connection; raises when the upstream breaks off, so the client never sees a clean end."""

    __slots__ = ("_target", "_conn", "_sender", "_timing")

    def __init__(self, target: CvmTarget, conn: UpstreamConnection,
                 sender: asyncio.Task[None] | None, timing: UpstreamTiming | None) -> None:
        self._target = target
        self._conn: UpstreamConnection | None = conn
        self._sender = sender
        self._timing = timing

    def __aiter__(self) -> ResponseBody:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        try:
            while not conn.chunks:
                if conn.error is not None:
                    raise conn.error
                if conn.complete:
                    if self._timing is not None:
                        self._timing.done = clock()
                    self._end(True)
                    raise StopAsyncIteration
                await conn.wait()
        except StopAsyncIteration:
            raise
        except BaseException:
            self._end(False)
            raise
        return conn.take_chunk()

    def _end(self, clean: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._target.finish(conn, self._sender, clean)

    def __del__(self) -> None:  # never iterated to the end (the client went away first)
        if self._conn is not None:
            self._end(False)


class _NoBody:
    """The body of a HEAD answer: none, whatever Content-Length says (RFC 9110 §9.3.2)."""

    def __aiter__(self) -> _NoBody:
        return self

    async def __anext__(self) -> bytes:
        raise StopAsyncIteration


class _Exchange:
    """One request's exchange with one CVM target, driven by callbacks: the connection (taken
    from the pool, or connected for it), the request written, then ``done`` called once, from
    the upstream's ``data_received``, with the Outcome, or with the UpstreamError that ended it
    (after the keep-alive race retry, see the module docstring)."""

    __slots__ = ("target", "request", "route", "done", "head", "upgrade", "replayable",
                 "conn", "reused", "sender", "connecting", "over", "buffering", "buffered",
                 "timing")

    def __init__(self, target: CvmTarget, request: Request, route: Route, done: Done) -> None:
        self.target = target
        self.request = request
        self.route = route
        self.done = done
        self.upgrade = "websocket" in request.upgrade.lower()
        self.head = request_head(request, target.trusted, target.pool.address, self.upgrade,
                                 optional=target.optional_headers)
        # Nothing of a bodiless idempotent request can be lost by sending it again.
        self.replayable = request.stream is None and request.method in IDEMPOTENT_METHODS
        self.conn: UpstreamConnection | None = None
        self.reused = False
        self.sender: asyncio.Task[None] | None = None
        self.connecting: asyncio.Task[UpstreamConnection] | None = None
        self.over = False
        #: proxy_request_buffering: the task reading the body whole, then the body it read
        self.buffering: asyncio.Task[BufferedBody] | None = None
        self.buffered: BufferedBody | None = None
        self.timing: UpstreamTiming | None = None

    def start(self) -> None:
        stream = self.request.stream
        target = self.target
        if stream is not None and target.buffering and not self.upgrade:
            # Read the whole body first: nothing goes upstream before it is whole and within
            # client_max_body_size, and it goes with Content-Length (nginx and CLB's default).
            task = self.buffering = asyncio.get_running_loop().create_task(
                buffer_body(stream, target.body_limit, target.spool_dir))
            task.add_done_callback(self._buffered)
            return
        self._take()

    def _buffered(self, task: asyncio.Task[BufferedBody]) -> None:
        self.buffering = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            if not self.over:
                self._end(exc)
            return
        body = task.result()
        if self.over:  # cancelled meanwhile
            body.close()
            return
        self.buffered = body
        self.head = request_head(self.request, self.target.trusted, self.target.pool.address,
                                 False, body.length, self.target.optional_headers)
        self._take()

    def _take(self) -> None:
        # the times are for the access log's upstream_* fields only: none without the log
        self.timing = UpstreamTiming(self.target.pool.address, clock()) \
            if self.target.timed else None
        conn = self.target.pool.take()
        if conn is None:
            self._connect()
        else:
            self._send(conn, True)

    def cancel(self) -> None:
        """The client went away: stop, and drop the connection (it may hold half a reply)."""
        if self.over:
            return
        self.over = True
        if self.buffering is not None:
            self.buffering.cancel()  # buffer_body closes its file
        if self.connecting is not None:
            self.connecting.cancel()
        if self.buffered is not None and self.sender is None:
            self.buffered.close()  # read, never handed to a sender (which would close it)
        conn, self.conn = self.conn, None
        if conn is not None:
            _stop(self.sender)
            self.target.pool.release(conn, False)

    def _connect(self) -> None:
        task = asyncio.get_running_loop().create_task(
            self.target.pool.connect(self.target.connect_timeout))
        task.add_done_callback(self._connected)
        self.connecting = task

    def _connected(self, task: asyncio.Task[UpstreamConnection]) -> None:
        self.connecting = None
        if task.cancelled():
            return
        exc = task.exception()
        if self.over:  # cancelled while connecting: nobody wants it
            if exc is None:
                self.target.pool.release(task.result(), False)
            return
        if exc is not None:
            self.target.passive.failure()
            if self.buffered is not None and isinstance(exc, UpstreamError):
                # the client's body was read into this exchange: another target's exchange
                # would find the stream at its end and send an empty body
                exc.retryable = False
            self._end(exc)
            return
        self._send(task.result(), False)

    def _send(self, conn: UpstreamConnection, reused: bool) -> None:
        self.conn = conn
        self.reused = reused
        request = self.request
        target = self.target
        conn.begin(request.method == "HEAD", self.upgrade)
        conn.read_timeout = target.read_timeout
        conn.notify = self._news
        if self.timing is not None:
            self.timing.sent = clock()
        buffered = self.buffered
        if buffered is not None:
            if buffered.file is None:
                conn.transport.write(self.head + buffered.data)
                conn.body_sent = True
                conn.arm(target.read_timeout)
                return
            conn.transport.write(self.head)
            sender = self.sender = asyncio.get_running_loop().create_task(
                send_file(conn, buffered, target.send_timeout))
            sender.add_done_callback(self._sent)
            return
        stream = request.stream
        if stream is not None:
            conn.transport.write(self.head)
            sender = self.sender = asyncio.get_running_loop().create_task(
                send_body(conn, stream, stream.declared_length is None, target.send_timeout))
            sender.add_done_callback(self._sent)
            return
        conn.transport.write(self.head + request.body if request.body else self.head)
        conn.body_sent = True
        conn.arm(target.read_timeout)

    def _sent(self, sender: asyncio.Task[None]) -> None:
        """The body went up (or failed): a client error fails the request; otherwise the read
        timeout starts now (nginx starts proxy_read_timeout once the request is sent)."""
        _consume(sender)
        if self.buffered is not None:
            self.buffered.close()  # a sender cancelled before it ran never closed it
        conn = self.conn
        if self.over or conn is None or self.sender is not sender:
            return
        failed = sender.exception() if not sender.cancelled() else None
        if failed is not None:
            self._failed(failed)
        elif conn.phase == HEAD and not conn.closed:
            conn.arm(self.target.read_timeout)

    def _news(self) -> None:
        conn = self.conn
        if conn is None or self.over:
            return
        if conn.error is not None:
            self._failed(conn.error)
        elif conn.phase != HEAD:
            self.over = True
            self.conn = None
            conn.notify = None
            self.target.passive.success()
            timing = self.timing
            if timing is not None:
                timing.header = clock()
                timing.status = conn.status
            self.done(Outcome(self.target.response(conn, self.sender, self.request, timing),
                              self.route, upstream=timing))

    def _failed(self, exc: BaseException) -> None:
        conn = self.conn
        assert conn is not None
        self.conn = None
        _stop(self.sender)
        self.sender = None
        self.target.pool.release(conn, False)
        if isinstance(exc, UpstreamError) and not conn.got_bytes:
            if self.reused and self.replayable:
                self._connect()  # the keep-alive race: once more, on a fresh connection
                return
            exc.retryable = self.replayable
        self._end(exc)

    def _end(self, result: BaseException) -> None:
        self.over = True
        self.done(result)


class CvmTarget:
    """One CVM target of one rule: what the router starts requests on."""

    __slots__ = ("pool", "passive", "check", "trusted", "connect_timeout", "read_timeout",
                 "buffering", "body_limit", "spool_dir", "redirect_prefixes", "send_timeout",
                 "optional_headers", "timed")

    def __init__(self, pool: Pool, passive: PassiveEjection, check: ActiveCheck,
                 listener: Listener, spool_dir: Path,
                 domain: CustomConfig | None = None, scheme: str = "http",
                 timed: bool = True) -> None:
        """``domain``: the rule's domain's custom_config, over the listener's settings (which
        already hold the listener's custom_config); ``timed``: record each exchange's
        UpstreamTiming (the access log's upstream_* fields; off when the log is)."""
        own = domain.overrides() if domain is not None else {}
        self.timed = timed
        self.pool = pool
        self.passive = passive
        self.check = check
        self.trusted = TrustedProxies(listener.trusted_proxies)
        self.connect_timeout = own.get("proxy_connect_timeout", listener.proxy_connect_timeout)
        self.read_timeout = own.get("proxy_read_timeout", listener.proxy_read_timeout)
        self.send_timeout = own.get("proxy_send_timeout", listener.proxy_send_timeout)
        #: proxy_request_buffering: read the body whole (memory, then spool_dir) before sending
        self.buffering = own.get("proxy_request_buffering", listener.proxy_request_buffering)
        self.body_limit = listener.client_max_body_size
        self.spool_dir = spool_dir
        #: proxy_redirect default: Location/Refresh prefixes naming this target, rewritten
        redirect = own.get("proxy_redirect", listener.custom_config.proxy_redirect)
        self.redirect_prefixes = redirect_prefixes(pool.address, scheme) \
            if redirect is not False else ()
        #: proxy_set_header: the optional CLB headers (the domain's, else the listener's),
        #: then a mutual TLS listener's client certificate headers
        self.optional_headers = (domain.proxy_set_headers if domain is not None
                                 and domain.proxy_set_headers
                                 else listener.custom_config.proxy_set_headers)
        if listener.protocol == "HTTPS" and listener.ssl_mode == "MUTUAL":
            self.optional_headers += CLIENT_CERT_HEADERS

    def usable(self) -> bool:
        """Healthy by the active check and not ejected by real traffic."""
        check = self.check
        if not check.running and check.config.enabled:
            check.start()  # lazily: the router asks from inside the running loop
        return check.healthy and not self.passive.ejected

    def start(self, request: Request, route: Route, done: Done) -> Cancel:
        """Send ``request``; ``done`` gets the Outcome or the UpstreamError, once (never
        after the returned cancel was called)."""
        exchange = _Exchange(self, request, route, done)
        exchange.start()
        return exchange.cancel

    async def __call__(self, request: Request, route: Route) -> Outcome:
        """``start`` awaited: the same exchange, for callers that have a task anyway."""
        outcome: Outcome = await awaited(lambda done: self.start(request, route, done))
        return outcome

    def response(self, conn: UpstreamConnection, sender: asyncio.Task[None] | None,
                 request: Request, timing: UpstreamTiming | None = None) -> Response:
        """The client's Response from the upstream's head (and body, when it came whole)."""
        status, raw = conn.status, conn.raw_headers
        headers, redirect = response_headers(raw)
        if redirect and self.redirect_prefixes:
            headers = rewrite_redirects(headers, self.redirect_prefixes, request)
        if status == 101:
            _stop(sender)
            self.pool.detach()
            tunnel = Tunnel(conn.transport, conn.buf, self.read_timeout)
            conn.buf = b""
            conn.tunnel = tunnel
            if conn.closed:  # it said its piece and left: the client gets it, then the close
                tunnel.upstream_lost(None)
            upgrade = _header(raw, "upgrade") or "websocket"
            return Response(101, headers + (("Connection", "upgrade"), ("Upgrade", upgrade)),
                            tunnel=tunnel)
        if conn.phase == DONE:  # HEAD, 204, 304: the head was all of it
            if timing is not None:
                timing.done = timing.header
            self.finish(conn, sender, True)
            if status == 204 or status == 304:
                return Response(status, headers)
            length = _header(raw, "content-length")
            return Response(status, headers, stream=_NoBody(),
                            length=int(length) if length is not None else None)
        if conn.complete and conn.error is None:
            # The whole body came with the head (most small answers): a plain body, so the
            # client gets head and body in one write.
            body = conn.take_all() if conn.chunks else b""
            if timing is not None:
                timing.done = timing.header
            self.finish(conn, sender, True)
            return Response(status, headers, body)
        length = _header(raw, "content-length")
        return Response(status, headers, stream=ResponseBody(self, conn, sender, timing),
                        length=int(length) if length is not None else None)

    def finish(self, conn: UpstreamConnection, sender: asyncio.Task[None] | None,
               clean: bool) -> None:
        """The exchange is over: pool the connection only if nothing is left on it."""
        _stop(sender)
        self.pool.release(conn, clean and conn.body_sent and conn.keep_alive
                          and not conn.dirty and not conn.chunks and conn.error is None)


#: a pool's identity: the address, and the TLS context's key for HTTPS (None: plain)
PoolKey = tuple[str, ContextKey | None]


def _pool_name(key: PoolKey) -> str:
    """How metrics name a pool: its address, ``https://`` in front for TLS."""
    return key[0] if key[1] is None else f"https://{key[0]}"


def check_host(rule: Rule, address: str) -> str:
    """The health check's Host: its own domain, else the rule's when that is one fixed name,
    else the target's address (a wildcard or regex domain names no host)."""
    domain = rule.health_check.domain or rule.domain
    return address if domain.startswith("~") or "*" in domain else domain


class CvmUpstreams:
    """Every CVM target of the server; outlives routers so pools and health survive reloads.

    ``bind`` is what the router calls per CVM target (``Backends.cvm``); ``retain(config)``,
    called after a reload has been swapped in, stops the health checks and retires the pools
    that no rule of ``config`` uses any more; ``close()`` at shutdown.
    """

    def __init__(self, *, max_idle: int = MAX_IDLE, idle_timeout: float = IDLE_TIMEOUT,
                 eject_after: int = 3, eject_for: float = 10.0,
                 spool_dir: Path | None = None, timed: bool = True) -> None:
        """``spool_dir``: where buffered request bodies too large for memory are kept (the
        system's temp folder when not given; the server gives the state folder's);
        ``timed``: the targets record upstream timings (the server turns it off with its
        access log: nothing else reads them)."""
        self.spool_dir = spool_dir or Path(tempfile.gettempdir())
        self.timed = timed
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.eject_after = eject_after
        self.eject_for = eject_for
        self._pools: dict[PoolKey, Pool] = {}
        #: GRPC/GRPCS rules' HTTP/2 pools (grpc.py), keyed as the HTTP/1.1 ones
        self._h2pools: dict[PoolKey, H2Pool] = {}
        #: the TLS client contexts of HTTPS and GRPCS rules, one per CA bundle and ALPN
        self._contexts = Contexts()
        self._passive: dict[str, PassiveEjection] = {}
        self._checks: dict[tuple[str, str, str], ActiveCheck] = {}

    def bind(self, listener: Listener, rule: Rule,
             target: Target) -> tuple[CvmTarget | GrpcTarget, Usable]:
        address = target.address
        key, context = self._origin(rule, address)
        passive = self._passive.get(address)
        if passive is None:
            passive = self._passive[address] = PassiveEjection(
                target.label, self.eject_after, self.eject_for)
        grpc = rule.forward_type in H2_FORWARD_TYPES
        check = self._check(listener, rule, target, context, GrpcCheck if grpc else ActiveCheck)
        if grpc:
            h2pool = self._h2pools.get(key)
            if h2pool is None:
                h2pool = self._h2pools[key] = H2Pool(address, ssl_context=context,
                                                     idle_timeout=self.idle_timeout)
            bound_grpc = GrpcTarget(h2pool, passive, check, listener, rule)
            return bound_grpc, bound_grpc.usable
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = Pool(address, self.max_idle, self.idle_timeout,
                                           ssl_context=context)
        bound = CvmTarget(pool, passive, check, listener, self.spool_dir, rule.custom_config,
                          "https" if context is not None else "http", self.timed)
        return bound, bound.usable

    def _check(self, listener: Listener, rule: Rule, target: Target,
               context: ssl.SSLContext | None, kind: type[ActiveCheck]) -> ActiveCheck:
        """The rule's check of the target, made or reconfigured (and replaced when the rule
        changed between HTTP/1.1 and gRPC), started when a loop runs."""
        address = target.address
        check_key = (listener.name, rule.location_id, address)
        check = self._checks.get(check_key)
        if check is not None and type(check) is not kind:
            check.stop(retire=True)
            check = None
        host, port = split_address(address)
        if check is None:
            check = self._checks[check_key] = kind(
                f"{target.label} ({listener.name} {rule.domain}{rule.url})", host, port,
                rule.health_check, check_host(rule, address), context)
        else:
            check.reconfigure(rule.health_check, check_host(rule, address), context)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # no loop yet: the first usable() starts it
        else:
            check.start()
        return check

    def _origin(self, rule: Rule, address: str) -> tuple[PoolKey, ssl.SSLContext | None]:
        """The pool a rule's target uses: by address, and for TLS by the context too (a
        pool's connections are all of one kind); the context is made once per CA here."""
        if rule.forward_type not in TLS_FORWARD_TYPES:
            return (address, None), None
        key, context = self._contexts.get(rule.backend_ca, ALPN[rule.forward_type])
        return (address, key), context

    def retain(self, config: Config) -> None:
        keys = {(lst.name, rule.location_id, t.address) for lst in config.listeners
                for rule in lst.rules for t in rule.targets if t.type == "CVM"}
        addresses = {key[2] for key in keys}
        pools: set[PoolKey] = set()
        h2pools: set[PoolKey] = set()
        for lst in config.listeners:
            for rule in lst.rules:
                for t in rule.targets:
                    if t.type == "CVM":
                        try:
                            origin = self._origin(rule, t.address)[0]
                        except ConfigError:
                            continue  # its CA file is gone: nothing can use that pool
                        (h2pools if rule.forward_type in H2_FORWARD_TYPES else pools).add(origin)
        self._contexts.retain({o[1] for o in pools | h2pools if o[1] is not None})
        for key in [k for k in self._checks if k not in keys]:
            self._checks.pop(key).stop(retire=True)
        for pool_key in [k for k in self._pools if k not in pools]:
            self._pools.pop(pool_key).retire()
        for pool_key in [k for k in self._h2pools if k not in h2pools]:
            self._h2pools.pop(pool_key).retire()
        for address in [a for a in self._passive if a not in addresses]:
            self._passive.pop(address, None)

    def health_of(self, listener: str, location_id: str, address: str) -> str:
        """CLB's HealthStatusDetail of one bound target: Alive, Dead, Unknown (fewer checks
        than the unhealthy threshold so far, or not bound in this process), Close (the rule's
        check is off)."""
        check = self._checks.get((listener, location_id, address))
        if check is None:
            return "Unknown"
        if not check.config.enabled:
            return "Close"
        if check.checks < check.config.unhealthy_threshold:  # no verdict can be made yet
            return "Unknown"
        return "Alive" if check.healthy else "Dead"

    def state(self) -> dict[str, Any]:
        """Pools, ejection and health-check state, for metrics."""
        return {
            "pools": {_pool_name(k): p.state() for k, p in self._pools.items()},
            "h2_pools": {_pool_name(k): p.state() for k, p in self._h2pools.items()},
            "ejection": {a: p.state() for a, p in self._passive.items()},
            "checks": [{"listener": k[0], "location_id": k[1], "address": k[2], **c.state()}
                       for k, c in self._checks.items()],
        }

    async def close(self) -> None:
        checks, self._checks = list(self._checks.values()), {}
        for check in checks:
            await check.close()
        for pool in self._pools.values():
            pool.retire()
        self._pools.clear()
        for h2pool in self._h2pools.values():
            h2pool.retire()
        self._h2pools.clear()
