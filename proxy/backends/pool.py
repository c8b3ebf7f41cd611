"""The keep-alive pool of upstream connections per origin, and how they are opened.

Owns, per origin (an address, or a host and port over TLS): the idle connections, LIFO (the
warmest first, so the upstream's own idle timer rarely beats us), at most ``max_idle``, each
retired after ``idle_timeout`` by the pool's deadline sweep (the same pass checks the busy
connections' read deadlines, backends/upstream.py); connections handed out are *busy* until
``release`` (pooled again or closed) or ``detach``. It connects over TCP, or TLS with
``ssl_context`` (verifying ``server_hostname``, also sent as SNI, RFC 6066 §3); with
``max_open`` it bounds the open connections, and ``acquire`` waits for one to come free. With
``opener`` the TCP socket is made by it, then connected here (a web function's instance lives in
a network namespace of its own: scf/netns.py makes its sockets).
Connect and TLS failures are ``UpstreamError`` with ``retryable`` (nothing was sent).

Must not know what is sent on the connections.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Callable

from ..deadlines import Deadlines, clock
from ..errors import UpstreamError
from .upstream import IDLE, MAX_HEAD, UpstreamConnection

MAX_IDLE = 64
IDLE_TIMEOUT = 15.0
#: how often a pool checks its deadlines (read timeouts, idle retirement): a timeout fires up
#: to this much late
SWEEP_INTERVAL = 0.1


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class Pool:
    """Idle keep-alive connections to one upstream origin (LIFO: the warmest first)."""

    def __init__(self, address: str, max_idle: int = MAX_IDLE,
                 idle_timeout: float = IDLE_TIMEOUT, *, ssl_context: ssl.SSLContext | None = None,
                 server_hostname: str | None = None, max_open: int = 0,
                 max_head: int = MAX_HEAD,
                 opener: Callable[[], socket.socket] | None = None) -> None:
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
        #: makes the (non-blocking) socket to connect, instead of the event loop
        self.opener = opener
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
                if self.opener is not None:
                    sock = self.opener()
                    try:
                        await loop.sock_connect(sock, (self.host, self.port))
                    except BaseException:
                        sock.close()
                        raise
                    _, conn = await loop.create_connection(
                        lambda: UpstreamConnection(self), sock=sock)
                else:
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
