"""HttpConnection on a TLS transport (a fake one whose ``sslcontext`` is set): what differs
from plain TCP. Issue 15 item 5: a TLS transport cannot half-close, so ``eof_received``
returns None there (asyncio closes it anyway and warns about a True); plain TCP still
half-closes (tests/protocol/test_connection.py)."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from proxy.config import Listener
from proxy.connection import HttpConnection, ListenerContext, ServerState
from proxy.logs import AccessLog

from .fakes import FakeClock, FakeRouter, FakeTransport, FakeTunnel, async_test, get


@pytest.fixture(params=["httptools", "h11"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


def tls_connection(kind: str, tls: bool = True) -> tuple[HttpConnection, FakeTransport,
                                                         FakeRouter]:
    router = FakeRouter()
    state = ServerState(router, AccessLog(enabled=False), None, clock=FakeClock())
    ctx = ListenerContext(Listener(name="tls", protocol="HTTPS", port=0), kind, state)
    conn = HttpConnection(ctx)
    transport = FakeTransport()
    if tls:
        transport.extra["sslcontext"] = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    transport.protocol = conn
    conn.connection_made(transport)
    return conn, transport, router


@async_test
async def test_close_notify_with_a_request_in_flight_does_not_ask_to_stay_open(kind):
    conn, transport, router = tls_connection(kind)
    router.hold("/a")
    conn.data_received(get("/a"))
    for _ in range(20):
        await asyncio.sleep(0)
    assert conn.eof_received() is None


@async_test
async def test_close_notify_in_the_middle_of_a_head_does_not_ask_to_stay_open(kind):
    conn, transport, _ = tls_connection(kind)
    conn.data_received(b"GET / HTTP/1.1\r\nHost: exa")
    assert conn.eof_received() is None


@async_test
async def test_close_notify_in_a_tunnel_does_not_ask_to_stay_open(kind):
    conn, transport, _ = tls_connection(kind)
    tunnel = FakeTunnel()
    conn.tunnel = tunnel
    assert conn.eof_received() is None and tunnel.eof


@async_test
async def test_an_https_listener_without_tls_on_the_transport_still_half_closes(kind):
    # the https scheme alone does not decide: the transport says whether it is TLS
    conn, transport, router = tls_connection(kind, tls=False)
    router.hold("/a")
    conn.data_received(get("/a"))
    for _ in range(20):
        await asyncio.sleep(0)
    assert conn.eof_received() is True
