"""Listening sockets: binding a listener's address, and accepting only up to its connection cap.

Owns two things every process shape shares (one process, or a supervisor that binds and workers
that serve):

- ``bind_listener``: the sockets of a listener's address, bound and listening, inheritable (a
  supervisor hands them to its workers). "All addresses" is IPv4 and IPv6 (the IPv6 socket
  v6-only), as asyncio does, except for port 0, where two sockets would get two ports.
- ``AcceptGate``: serves those sockets and enforces ``max_connections`` per process (SPEC §9:
  beyond it, new connections wait in the backlog). The asyncio servers serve *duplicates* of
  the sockets; at the cap they are closed, which stops accepting while the original sockets keep
  listening, so the kernel queues new connections; the first connection to close below the cap
  starts serving again. Nothing is refused and nothing is accepted past the cap (but for the
  few a server had accepted in the same loop turn).

Must not know: HTTP (it is handed a protocol factory), TLS policy (it is handed a context).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import sys
from collections.abc import Callable
from typing import Any

from .config import Listener
from .errors import ConfigError

error_log = logging.getLogger("proxy.error")
BACKLOG = 511


def bind_listener(listener: Listener) -> list[socket.socket]:
    """The bound, listening, inheritable sockets of ``listener``; ConfigError if it cannot.

    For "all addresses", a host without IPv6 (a container with it disabled) still gets its
    IPv4 socket: only a failure of every address is an error.
    """
    host = listener.host or None
    sockets: list[socket.socket] = []
    failure: OSError | None = None
    try:
        infos = socket.getaddrinfo(host, listener.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except OSError as exc:
        infos, failure = [], exc
    if host is None and listener.port == 0:
        infos = [i for i in infos if i[0] == socket.AF_INET] or infos
    elif host is not None:
        infos = infos[:1]
    for family, kind, proto, _, address in dict.fromkeys(
            (i[0], i[1], i[2], "", i[4]) for i in infos):
        try:
            sockets.append(_listening_socket(family, kind, proto, address, host is None))
        except OSError as exc:
            failure = failure or exc
            if host is not None or family == socket.AF_INET:
                break  # the address asked for, or the IPv4 wildcard: no way around it
    if failure is not None and (host is not None or not sockets
                                or all(s.family != socket.AF_INET for s in sockets)):
        for sock in sockets:
            sock.close()
        raise ConfigError(f"listener {listener.name!r}: cannot listen on "
                          f"{listener.host or '*'}:{listener.port}: "
                          f"{getattr(failure, 'strerror', None) or failure}") from failure
    return sockets


def _listening_socket(family: int, kind: int, proto: int, address: tuple[Any, ...],
                      wildcard: bool) -> socket.socket:
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and wildcard:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def announce(listener: Listener, sockets: list[socket.socket]) -> None:
    """The ``listening on`` lines (stderr) that tell operators and tests the real ports."""
    scheme = "https" if listener.protocol == "HTTPS" else "http"
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if sock.family == socket.AF_INET6 else host
        print(f"clbscf-proxy: listening on {scheme}://{shown}:{port} "
              f'(listener "{listener.name}")', file=sys.stderr, flush=True)


class AcceptGate:
    """Serves one listener's sockets while it has fewer than ``limit`` connections open."""

    def __init__(self, name: str, sockets: list[socket.socket],
                 factory: Callable[[], asyncio.Protocol], limit: int,
                 ssl_context: ssl.SSLContext | None = None,
                 handshake_timeout: float | None = None) -> None:
        self.name = name
        self.sockets = sockets
        self.factory = factory
        self.limit = limit
        self.ssl_context = ssl_context
        self.handshake_timeout = handshake_timeout
        self.open = 0
        self._servers: list[asyncio.AbstractServer] = []
        self._resuming = False
        self._closed = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        handshake = self.handshake_timeout if self.ssl_context else None
        servers: list[asyncio.AbstractServer] = []
        for sock in self.sockets:
            servers.append(await loop.create_server(
                self.factory, sock=sock.dup(), backlog=BACKLOG, ssl=self.ssl_context,
                ssl_handshake_timeout=handshake))
        if self._closed or self.open >= self.limit:
            for server in servers:
                server.close()
            return
        self._servers = servers

    async def serve_with(self, ssl_context: ssl.SSLContext) -> None:
        """Accept new connections with ``ssl_context`` (a reload changed the TLS policy):
        servers on the new context start before the old ones close, so the sockets never
        stop accepting; open connections keep the context they were accepted with."""
        self.ssl_context = ssl_context
        old, self._servers = self._servers, []
        if old:
            await self.start()
        for server in old:
            server.close()

    def opened(self) -> None:
        self.open += 1
        if self.open >= self.limit and self._servers:
            error_log.warning("listener %r: %d connections open (max_connections); new ones "
                              "wait in the backlog", self.name, self.open)
            self._pause()

    def closed(self) -> None:
        self.open -= 1
        if self.open < self.limit and not self._servers and not self._resuming \
                and not self._closed:
            self._resuming = True
            task = asyncio.get_running_loop().create_task(self.start())
            task.add_done_callback(self._resumed)

    def _resumed(self, task: asyncio.Task[None]) -> None:
        self._resuming = False
        if not task.cancelled() and task.exception() is not None:
            error_log.error("listener %r: cannot accept again: %s", self.name,
                            task.exception())

    def _pause(self) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()

    def close(self) -> None:
        """Stop accepting for good and close the listening sockets (the port is released)."""
        self._closed = True
        self._pause()
        for sock in self.sockets:
            sock.close()
