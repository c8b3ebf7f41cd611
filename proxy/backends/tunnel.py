"""The byte tunnel that carries a connection after a ``101 Switching Protocols`` (WebSocket).

Owns the piping between the client's transport and the upstream's transport once both sides
agreed to switch protocols (RFC 9110 §7.8): bytes go through unchanged in both directions, a
half-close (EOF) is passed on as a half-close where the transport can do one (RFC 9293 §3.6;
a TLS client transport cannot, so the upstream's EOF closes it after the buffered bytes are
written), and when either side is gone both are closed. Idle tunnels (no byte either way for
``idle_timeout``, the listener's proxy_read_timeout, as nginx applies it to WebSockets) are
closed.

Backpressure both ways with the transports' own flow control: when one side's write buffer
passes its high-water mark (``pause_writing``), reading from the other side is paused until it
drains (``resume_writing``). To receive the client transport's flow-control callbacks the
tunnel becomes that transport's protocol in ``attach`` (``set_protocol``); it still calls the
connection's ``connection_lost`` when the client goes, so the server's bookkeeping of open
connections stays right. The upstream's callbacks arrive through ``upstream_*`` methods that
the upstream connection's protocol forwards.

Bytes the upstream sends before ``attach`` (right after its 101, or in the same read as it) are
kept and written first; reading the upstream pauses meanwhile. An upstream that closed before
``attach`` still has those bytes delivered, then the client is closed.

Must not know HTTP, WebSocket framing, pools or routing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class Tunnel(asyncio.Protocol):
    """Pipes bytes between one client transport and one upstream transport."""

    def __init__(self, upstream: asyncio.Transport, early: bytes = b"",
                 idle_timeout: float = 60.0) -> None:
        self._up = upstream
        self._client: asyncio.Transport | None = None
        self._client_protocol: Any = None
        self._pending: list[bytes] = [early] if early else []
        self._up_eof = False
        self._up_gone = False
        self._client_eof = False
        #: the client transport is TLS: it closes after eof_received whatever we return
        self._client_tls = False
        self._closed = False
        self._up_paused_by_us = False
        self.idle_timeout = idle_timeout
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(idle_timeout,
                                                                         self._check_idle)
        #: called once when the tunnel closes (a web function's instance counts it as busy)
        self.on_close: Callable[[], None] | None = None
        #: bytes passed client -> upstream and upstream -> client
        self.sent = 0
        self.received = 0
        if self._pending:
            self._pause_up()

    # -- what the client connection calls ----------------------------------------------------

    def attach(self, client_transport: Any) -> None:
        """The 101 head is written: the tunnel takes over ``client_transport``."""
        self._client = client_transport
        self._client_tls = client_transport.get_extra_info("sslcontext") is not None
        self._client_protocol = client_transport.get_protocol()
        client_transport.set_protocol(self)
        if self._closed:
            client_transport.close()
            return
        for data in self._pending:
            self.received += len(data)
            client_transport.write(data)
        self._pending.clear()
        if self._up_gone:
            self.close()
            return
        if self._up_eof:
            self._eof_to_client()
        if self._up_paused_by_us and client_transport.get_write_buffer_size() == 0:
            self._resume_up()

    def from_client(self, data: bytes) -> None:
        if self._closed:
            return
        self._last = self._loop.time()
        self.sent += len(data)
        self._up.write(data)

    def client_eof(self) -> bool:
        """The client half-closed: pass it on; the tunnel stays open for the other way."""
        self._client_eof = True
        if self._up_eof:
            self.close()
            return True
        if self._up.can_write_eof():
            self._up.write_eof()
        else:  # pragma: no cover - TCP upstreams can always half-close
            self.close()
        return True

    def client_closed(self) -> None:
        self.close()

    # -- asyncio.Protocol for the client transport (after attach) ----------------------------

    def data_received(self, data: bytes) -> None:
        self.from_client(data)

    def eof_received(self) -> bool | None:
        keep_open = self.client_eof()
        # TLS: the transport closes anyway, and asyncio warns about a True it cannot honour
        return None if self._client_tls else keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()
        protocol, self._client_protocol = self._client_protocol, None
        if protocol is not None:
            protocol.connection_lost(exc)  # the connection's own bookkeeping

    def pause_writing(self) -> None:
        self._pause_up()

    def resume_writing(self) -> None:
        self._resume_up()

    # -- what the upstream connection forwards -----------------------------------------------

    def upstream_data(self, data: bytes) -> None:
        if self._closed:
            return
        self._last = self._loop.time()
        client = self._client
        if client is None:
            self._pending.append(data)
            self._pause_up()
            return
        self.received += len(data)
        client.write(data)

    def upstream_eof(self) -> bool:
        self._up_eof = True
        if self._client is not None:
            self._eof_to_client()
        return True

    def upstream_lost(self, exc: Exception | None) -> None:
        if self._client is None:
            self._up_gone = True  # attach still writes what it sent, then closes
            return
        self.close()

    def upstream_paused(self) -> None:
        if self._client is not None and not self._closed:
            self._client.pause_reading()

    def upstream_resumed(self) -> None:
        if self._client is not None and not self._closed:
            self._client.resume_reading()

    # -- both ends ---------------------------------------------------------------------------

    def _eof_to_client(self) -> None:
        client = self._client
        assert client is not None
        if self._client_eof:
            self.close()
        elif client.can_write_eof():
            client.write_eof()
        else:  # TLS: no half-close; close() still writes what is buffered first
            self.close()

    def _pause_up(self) -> None:
        if not self._up_paused_by_us and not self._closed:
            self._up_paused_by_us = True
            self._up.pause_reading()

    def _resume_up(self) -> None:
        if self._up_paused_by_us and not self._closed:
            self._up_paused_by_us = False
            self._up.resume_reading()

    def _check_idle(self) -> None:
        self._timer = None
        if self._closed:
            return
        idle = self._loop.time() - self._last
        if idle >= self.idle_timeout:
            self.close()
        else:
            self._timer = self._loop.call_later(self.idle_timeout - idle, self._check_idle)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close both ends (buffered bytes are still written)."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending.clear()
        self._up.close()
        if self._client is not None:
            self._client.close()
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()
