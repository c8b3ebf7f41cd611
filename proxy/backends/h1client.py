"""The buffered HTTP/1.1 client for the calls the proxy makes itself.

Owns the buffered API of the one outgoing layer (upstream.py's ``UpstreamConnection`` and
``Pool``, which also carry the CVM targets' streamed exchanges): a request sent with its whole
body and the whole response waited for, as a ``ClientResponse`` (the cloud API and invoke
URLs through ``HTTPClient.request``, health checks through ``exchange`` on a connection of
their own); the URL and the request bytes; the body size limit; which connection is reused;
and the keep-alive-race retry. Framing (llhttp, HEAD, 1xx, close-delimited bodies), the read
timeout, TLS, the pool bound and the conversion of socket, TLS and framing failures into the
error tree (UpstreamError 502, UpstreamTimeout 504) are upstream.py's.

Strategy: ``exchange`` writes the request and sets the connection's ``notify`` to a collector
that takes the body chunks after each read and resolves one future when the response ended
(complete by its framing, or failed), so a response costs one future, not one per read. The
read timeout is the longest wait between two reads (nginx's proxy_read_timeout), not a
deadline for the whole response. A connection goes back to the pool only when its response
ended cleanly: complete, keep-alive per llhttp (RFC 9112 §9.3), no stray bytes after it, not
closed by the peer. ``HTTPClient`` keeps one ``Pool`` per origin (scheme, host, port), at most
``pool_size`` connections open; a request that finds them all busy waits for one up to
``connect_timeout``.

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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urlsplit

from ..errors import UpstreamError
from ..messages import Headers
from ..vocabulary import CONTENT_METHODS, FRAMING, HOP_BY_HOP, IDEMPOTENT_METHODS, TOKEN
from .pool import Pool
from .upstream import UpstreamClosed, UpstreamConnection

DEFAULT_PORTS = {"http": 80, "https": 443}
#: framing and connection headers are this client's to decide (RFC 9112 §6, §9.6); a caller's
#: copies are dropped
_MANAGED_HEADERS = HOP_BY_HOP | FRAMING
#: RFC 9110 §5.5 field values carry no CR, LF or NUL
_BAD_VALUE = re.compile(r"[\r\n\x00]")


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


class _Collector:
    """The ``notify`` of one buffered exchange: takes the body as llhttp hands it over and
    resolves ``done`` once the response is complete, failed, or over ``limit`` bytes."""

    __slots__ = ("conn", "limit", "done", "body", "size", "too_large")

    def __init__(self, conn: UpstreamConnection, limit: int, done: asyncio.Future[None]) -> None:
        self.conn = conn
        self.limit = limit
        self.done = done
        self.body: list[bytes] = []
        self.size = 0
        self.too_large = False

    def __call__(self) -> None:
        conn = self.conn
        if conn.chunks:
            self.size += conn.buffered
            if self.size > self.limit:
                self.too_large = True
                self._end()
                return
            self.body.append(conn.take_all())
        if conn.complete or conn.error is not None:
            self._end()

    def _end(self) -> None:
        self.conn.notify = None
        if not self.done.done():
            self.done.set_result(None)


async def exchange(conn: UpstreamConnection, data: bytes, timeout: float, *,
                   head_only: bool = False, max_body: int = 64 * 1024 * 1024) -> ClientResponse:
    """Write ``data`` (a whole request) on the busy ``conn`` and wait for the whole response;
    with ``head_only`` it ends at its head (the answer to HEAD, RFC 9110 §9.3.2, or a check
    that wants the status only). Raises UpstreamClosed (the connection ended before the
    response did), UpstreamError (malformed or over ``max_body``) or UpstreamTimeout (nothing
    read for ``timeout``). The caller releases ``conn``, reusable when ``reusable(conn)``."""
    done = asyncio.get_running_loop().create_future()
    collector = _Collector(conn, max_body, done)
    conn.begin(head_only, False)
    conn.notify = collector
    conn.transport.write(data)
    conn.body_sent = True
    conn.arm(timeout)
    try:
        await done
    finally:
        conn.notify = None
    if collector.too_large:
        raise UpstreamError("response too large",
                            log_detail=f"{conn.pool.address}: body over {max_body} bytes")
    if conn.error is not None:
        raise conn.error
    return ClientResponse(conn.status, tuple(conn.raw_headers), b"".join(collector.body))


def reusable(conn: UpstreamConnection) -> bool:
    """The response ended cleanly and nothing else came (RFC 9112 §9.3: keep-alive)."""
    return (conn.complete and conn.error is None and conn.keep_alive and not conn.dirty
            and not conn.closed and not conn.chunks)


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
        self._pools: dict[Origin, Pool] = {}
        self._closed = False
        #: connections opened so far (for metrics and tests)
        self.connections_opened = 0

    @property
    def idle_connections(self) -> int:
        return sum(len(p.idle) for p in self._pools.values())

    def _pool(self, origin: Origin) -> Pool:
        pool = self._pools.get(origin)
        if pool is None:
            context: ssl.SSLContext | None = None
            if origin.scheme == "https":
                if self._ssl is None:
                    self._ssl = ssl.create_default_context()  # verifying; built on first use
                context = self._ssl
            host = f"[{origin.host}]" if ":" in origin.host else origin.host
            pool = self._pools[origin] = Pool(
                f"{host}:{origin.port}", self.pool_size, self.idle_timeout, ssl_context=context,
                server_hostname=origin.host, max_open=self.pool_size,
                max_head=self.max_head_size)
        return pool

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
        method = method.upper()
        data = serialize_request(method, target, host_header, headers, body)
        timeout = self.read_timeout if read_timeout is None else read_timeout
        retry_allowed = method in IDEMPOTENT_METHODS if idempotent is None else idempotent
        pool = self._pool(origin)
        for attempt in (0, 1):
            conn, reused = await pool.acquire(self.connect_timeout)
            if not reused:
                self.connections_opened += 1
            keep = False
            try:
                response = await exchange(conn, data, timeout, head_only=method == "HEAD",
                                          max_body=self.max_body_size)
                keep = reusable(conn)
                return response
            except UpstreamClosed as exc:
                if reused and not conn.got_bytes and retry_allowed and attempt == 0:
                    continue  # the keep-alive race: try once more on a fresh connection
                raise UpstreamError(
                    "connection closed before the response ended", retryable=retry_allowed,
                    log_detail=f"{exc.log_detail} ({'reused' if reused else 'new'} "
                               f"connection)") from exc
            finally:
                pool.release(conn, keep)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def close(self) -> None:
        """Close idle connections; busy ones close when their request ends."""
        self._closed = True
        for pool in self._pools.values():
            pool.retire()
        # let the transports deliver their close before the loop may stop
        await asyncio.sleep(0)
