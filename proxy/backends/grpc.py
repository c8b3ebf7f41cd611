"""CVM targets of a GRPC or GRPCS rule: requests relayed over HTTP/2 (h2upstream.py), and
CLB's gRPC health check.

Owns the exchange of one request with one gRPC backend, as the router starts it: the request
fields (the client's end-to-end fields as for HTTP/1.1, headers.py, plus the CLB headers;
``Host`` becomes ``:authority``; ``te: trailers`` kept when the client sent it, the one TE an
HTTP/2 request may carry, RFC 9113 §8.2.2, and which gRPC requires), the body streamed up as
it arrives (never buffered whole: gRPC streams), the response head as a ``Response`` whose
body streams back; ``GrpcCheck``, the rule's health check spoken in gRPC.

Interface for an HTTP/2 frontend (the router hands it the ``Response``): ``response.stream``
is a ``GrpcBody``. Iterate it for the DATA; once it is exhausted, ``trailers`` holds the
backend's trailers (grpc-status, grpc-message, ...) to send as the final HEADERS frame; when
``headers_only`` is true the backend answered with its head alone (gRPC's Trailers-Only:
grpc-status is among ``response.headers``), to be relayed as one HEADERS frame with
END_STREAM. An exception from the iteration means the backend reset the stream or went away:
reset the client's stream (RST_STREAM), never end it cleanly. ``await body.aclose()`` (or
dropping it) resets the backend stream when the client went away first.

Decisions (ours):
- gRPC needs HTTP/2 end to end (trailers carry its status): a request that reached a GRPC rule
  over HTTP/1.x is answered **505 HTTP Version Not Supported** (RFC 9110 §15.6.6: the server
  refuses the request's major version) at once, nothing is sent to the backend; 426 would need
  an ``Upgrade`` the client could follow, and h2c upgrade is gone from RFC 9113. The frontend
  sets ``Request.http_version`` to ``"2"`` (or ``"2.0"``) for HTTP/2 requests.
- Errors before the head: connect, TLS and refused streams are ``UpstreamError`` (502, tried on
  another target while no byte of the client's body was read); a reset after it aborts the
  client's stream. ``proxy_read_timeout`` bounds the wait for the head and between DATA
  frames (a long server stream that sends nothing for that long is cut, as nginx's
  ``grpc_read_timeout``).
- The health check (``GrpcCheck``): every ``interval`` a fresh HTTP/2 connection (TLS for
  GRPCS) sends ``POST <path>`` with an empty gRPC message; healthy when an HTTP 200 answer
  carries ``grpc-status`` 0 (the path is a real method) or 12 UNIMPLEMENTED (CLB's default
  ``ExtendedCode``, for a path the server does not know); ``method`` and ``http_codes`` do not
  apply. CLB's ExtendedCode is not configurable here.

Must not know routing, the client connection, or how the frontend frames the response.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..config import Listener, Rule
from ..deadlines import clock
from ..errors import HttpVersionNotSupported, ProxyError, UpstreamError
from ..handover import Cancel, Done, on_task
from ..headers import CLB_HEADERS, DROPPED, TrustedProxies, clb_values, end_to_end
from ..messages import Outcome, Request, Response, Route, UpstreamTiming
from ..streams import RequestBody
from ..vocabulary import FRAMING, RESPONSE_DROPPED
from .h2upstream import H2Pool, H2Stream
from .health import USER_AGENT, ActiveCheck, PassiveEjection

#: what a gRPC request never carries of the client's fields: hop-by-hop and forged CLB ones,
#: framing (HTTP/2 frames its own), Host (sent as :authority), Expect
_NOT_FORWARDED = DROPPED | FRAMING | {"host", "expect"}
#: an empty gRPC message (Length-Prefixed-Message: not compressed, length 0)
EMPTY_MESSAGE = b"\0\0\0\0\0"
#: grpc-status values a health check counts as alive: OK, UNIMPLEMENTED (CLB's default)
HEALTHY_STATUSES = frozenset({"0", "12"})


def is_http2(request: Request) -> bool:
    return request.http_version.startswith("2")


def request_fields(request: Request, trusted: TrustedProxies) -> list[tuple[str, str]]:
    """The fields sent on the backend stream (no pseudo-headers: h2upstream adds them)."""
    kept, chain = end_to_end(request, trusted, _NOT_FORWARDED)
    fields = list(kept)
    fields += zip(CLB_HEADERS, clb_values(request, chain))
    te = request.header("te")
    if te is not None and "trailers" in te.lower():
        fields.append(("te", "trailers"))
    return fields


class GrpcBody:
    """A gRPC response body: DATA as the backend sends it; ``trailers`` once exhausted."""

    __slots__ = ("_stream", "_sender", "_timeout", "_timing", "_target")

    def __init__(self, target: GrpcTarget, stream: H2Stream,
                 sender: asyncio.Task[None] | None, timeout: float,
                 timing: UpstreamTiming) -> None:
        self._target = target
        self._stream: H2Stream | None = stream
        self._sender = sender
        self._timeout = timeout
        self._timing = timing

    @property
    def trailers(self) -> list[tuple[str, str]]:
        """The backend's trailers, once the iteration ended cleanly ([] otherwise)."""
        stream = self._stream
        return stream.trailers if stream is not None else []

    @property
    def headers_only(self) -> bool:
        return self._stream is not None and self._stream.headers_only

    def __aiter__(self) -> GrpcBody:
        return self

    async def __anext__(self) -> bytes:
        stream = self._stream
        if stream is None:
            raise StopAsyncIteration
        try:
            chunk = await stream.read(self._timeout)
        except BaseException:
            self._end(clean=False)
            raise
        if not chunk:
            self._timing.done = clock()
            self._end(clean=True)
            raise StopAsyncIteration
        return chunk

    def _end(self, clean: bool) -> None:
        stream = self._stream
        if stream is None:
            return
        sender, self._sender = self._sender, None
        if sender is not None and not sender.done():
            sender.cancel()  # the answer is complete: the rest of the upload is not wanted
        if not clean or not stream.local_closed:
            stream.reset()  # RFC 9113 §8.1: a complete answer may cut the request short
        if clean:
            return  # the stream stays readable: trailers and headers_only
        self._stream = None

    async def aclose(self) -> None:
        """The client went away before the end: reset the backend's stream."""
        self._end(clean=False)

    def __del__(self) -> None:
        stream = self._stream
        if stream is not None and not stream.ended:
            self._end(clean=False)


class GrpcTarget:
    """One CVM target of a GRPC or GRPCS rule: what the router starts requests on."""

    __slots__ = ("pool", "passive", "check", "trusted", "connect_timeout", "read_timeout",
                 "send_timeout", "scheme")

    def __init__(self, pool: H2Pool, passive: PassiveEjection, check: ActiveCheck,
                 listener: Listener, rule: Rule) -> None:
        own = rule.custom_config.overrides()
        self.pool = pool
        self.passive = passive
        self.check = check
        self.trusted = TrustedProxies(listener.trusted_proxies)
        self.connect_timeout = own.get("proxy_connect_timeout", listener.proxy_connect_timeout)
        self.read_timeout = own.get("proxy_read_timeout", listener.proxy_read_timeout)
        self.send_timeout = own.get("proxy_send_timeout", listener.proxy_send_timeout)
        self.scheme = "https" if pool.ssl_context is not None else "http"

    def usable(self) -> bool:
        check = self.check
        if not check.running and check.config.enabled:
            check.start()
        return check.healthy and not self.passive.ejected

    def start(self, request: Request, route: Route, done: Done) -> Cancel | None:
        if not is_http2(request):
            done(HttpVersionNotSupported(
                "gRPC needs HTTP/2", log_detail=f"HTTP/{request.http_version} request to a "
                f"{self.scheme == 'https' and 'GRPCS' or 'GRPC'} rule ({route.domain}"
                f"{route.url}); gRPC is carried over HTTP/2 only"))
            return None
        return on_task(self(request, route), done)

    async def __call__(self, request: Request, route: Route) -> Outcome:
        timing = UpstreamTiming(self.pool.address, clock())
        for attempt in (1, 2):
            #: "opened" once the stream is open, "read" once the client's body was read
            progress: list[str] = []
            try:
                stream, sender, status, fields = await self._exchange(request, progress,
                                                                      timing)
                break
            except UpstreamError as exc:
                if "read" in progress:
                    exc.retryable = False  # the client's body was read into this attempt
                if not exc.retryable or attempt == 2 or "opened" not in progress:
                    raise  # a connect failure: the router tries another target
                # REFUSED_STREAM or GOAWAY: not processed (RFC 9113 §8.7), and nothing of
                # the client's body is lost: once more, on this target, before another
        self.passive.success()
        timing.header = clock()
        timing.status = status
        # h2 already refused connection-specific fields (RFC 9113 §8.2.2); framing, Date
        # and Server are the frontend's to write
        headers = tuple(f for f in fields if f[0] not in RESPONSE_DROPPED)
        return Outcome(Response(status, headers, stream=GrpcBody(
            self, stream, sender, self.read_timeout, timing)), route, upstream=timing)

    async def _exchange(self, request: Request, progress: list[str], timing: UpstreamTiming
                        ) -> tuple[H2Stream, asyncio.Task[None] | None, int,
                                   list[tuple[str, str]]]:
        """One attempt: the stream opened, the body on its way, the response head in."""
        query = request.query
        path = f"{request.path}?{query}" if query else request.path
        authority = request.header("host") or self.pool.address
        body = request.stream
        try:
            stream = await self.pool.open(request.method, path, authority, self.scheme,
                                          request_fields(request, self.trusted),
                                          end_stream=body is None and not request.body,
                                          timeout=self.connect_timeout)
        except UpstreamError as exc:
            if exc.retryable:
                self.passive.failure()
            raise
        progress.append("opened")
        timing.sent = clock()
        sender = None
        try:
            if body is not None:
                sender = asyncio.get_running_loop().create_task(
                    _send_body(stream, body, self.send_timeout, progress))
            elif request.body:
                await stream.send(request.body, end_stream=True, timeout=self.send_timeout)
            status, fields = await stream.response(self.read_timeout)
        except BaseException:
            if sender is not None:
                sender.cancel()
            stream.reset()
            raise
        return stream, sender, status, fields


async def _send_body(stream: H2Stream, body: RequestBody, timeout: float,
                     progress: list[str]) -> None:
    """The client's body up the stream as it arrives, then END_STREAM; a failure resets the
    backend stream (the response side then reports it)."""
    try:
        while True:
            chunk = await body.read()
            if not chunk:
                await stream.end()
                return
            if "read" not in progress:
                progress.append("read")
            await stream.send(chunk, timeout=timeout)
    except asyncio.CancelledError:
        raise
    except ProxyError:
        stream.reset()


class GrpcCheck(ActiveCheck):
    """CLB's gRPC health check of one target of a GRPC or GRPCS rule."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.grpc_status = ""

    async def probe(self) -> bool:
        timeout = self.config.timeout
        host = f"[{self.host}]" if ":" in self.host else self.host
        pool = H2Pool(f"{host}:{self.port}", ssl_context=self.ssl_context, max_connections=1)
        try:
            async with asyncio.timeout(timeout):
                stream = await pool.open("POST", self.config.path, self.host_header,
                                         "https" if self.ssl_context else "http",
                                         [("content-type", "application/grpc"),
                                          ("te", "trailers"), ("user-agent", USER_AGENT)],
                                         timeout=timeout)
                await stream.send(EMPTY_MESSAGE, end_stream=True, timeout=timeout)
                status, fields = await stream.response(timeout)
                while await stream.read(timeout):
                    pass
        except (ProxyError, TimeoutError) as exc:
            self.last_status = 0
            self.last_error = f"{type(exc).__name__}: {exc}"
            return False
        finally:
            pool.retire()
        self.last_status = status
        grpc_status = dict(stream.trailers or fields).get("grpc-status", "")
        self.grpc_status = grpc_status
        ok = status == 200 and grpc_status in HEALTHY_STATUSES
        self.last_error = "" if ok else f"status {status}, grpc-status {grpc_status or 'none'}"
        return ok
