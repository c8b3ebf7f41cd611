"""An idle keep-alive connection holds no request parser: between requests it goes to the
listener's spares (``ListenerContext.spare``) and the next connection that receives bytes takes
it. This is a memory mechanism (issue 12: an idle connection's weight), so unlike
test_connection.py these tests look at the connection's ``parser`` on purpose; what the
client sees is checked too. Both parsers."""

from __future__ import annotations

import pytest

from proxy.connection import SPARE_PARSERS, HttpConnection

from .fakes import Client, FakeTransport, async_test, get, post


@pytest.fixture(params=["httptools", "h11"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


def _second(c: Client, peer: tuple[str, int] = ("198.51.100.9", 40000)
            ) -> tuple[HttpConnection, FakeTransport]:
    """Another connection of the same listener (the same ListenerContext, so the same spares)."""
    conn = HttpConnection(c.ctx)
    transport = FakeTransport(peer)
    transport.protocol = conn
    conn.connection_made(transport)
    return conn, transport


@async_test
async def test_an_idle_connection_holds_no_parser_and_the_next_one_takes_it(kind):
    c = Client(kind)
    assert c.conn.parser is None  # none until the first byte
    c.send(get("/one"))
    used = c.conn.parser
    assert used is not None
    await c.until(lambda: len(c.finals()) == 1)
    assert c.conn.parser is None and c.ctx.spare == [used]
    other, transport = _second(c)
    other.data_received(get("/two"))
    assert other.parser is used and c.ctx.spare == []
    await c.until(lambda: b"GET /two" in transport.data)
    assert transport.data.startswith(b"HTTP/1.1 200 ") and not transport.closed
    assert other.parser is None and c.ctx.spare == [used]  # answered: idle, spared again
    # the first connection, asked again, takes it back; a third one then makes its own
    c.send(get("/three"))
    assert c.conn.parser is used
    third, _ = _second(c, ("198.51.100.10", 40001))
    third.data_received(get("/four")[:5])
    assert third.parser is not None and third.parser is not used
    await c.until(lambda: len(c.finals()) == 2)
    assert [r.body for r in c.finals()] == [b"GET /one", b"GET /three"]


@async_test
async def test_a_parser_holding_part_of_the_next_request_stays_with_its_connection(kind):
    c = Client(kind)
    c.router.hold("/a")
    c.send(get("/a") + get("/b")[:10])  # the start of a pipelined head
    await c.settle()
    parser = c.conn.parser
    c.router.release("/a")
    await c.until(lambda: len(c.finals()) == 1)
    assert c.conn.parser is parser and c.ctx.spare == []
    c.send(get("/b")[10:])
    await c.until(lambda: len(c.finals()) == 2)
    assert [r.body for r in c.finals()] == [b"GET /a", b"GET /b"]
    assert c.ctx.spare == [parser]  # idle now


@async_test
async def test_a_parser_that_failed_is_never_spared(kind):
    c = Client(kind)
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")  # repeated Host: 400
    await c.until(lambda: len(c.finals()) == 1)
    assert c.finals()[0].status == 400
    assert c.ctx.spare == [] and c.conn.parser is not None and c.conn.parser.error is not None


@async_test
async def test_a_connection_that_closes_keeps_its_parser_out_of_the_spares(kind):
    c = Client(kind)
    c.send(get("/", "Connection: close"))
    await c.until(lambda: len(c.finals()) == 1)
    assert c.transport.closed and c.ctx.spare == []


@async_test
async def test_a_body_is_read_by_a_spared_parser_like_a_new_one(kind):
    c = Client(kind)
    c.send(get("/"))
    await c.until(lambda: len(c.finals()) == 1)
    spared = c.ctx.spare[0]
    other, transport = _second(c)
    other.data_received(post("/upload", b"hello"))
    assert other.parser is spared
    await c.until(lambda: b"\r\n\r\n" in transport.data)
    assert transport.data.startswith(b"HTTP/1.1 200 ")
    assert c.router.requests[-1].method == "POST"


@async_test
async def test_at_most_spare_parsers_are_kept(kind):
    c = Client(kind)
    others = [_second(c, ("198.51.100.9", 40000 + i)) for i in range(SPARE_PARSERS + 3)]
    for conn, _ in others:
        conn.data_received(get("/"))
    await c.until(lambda: all(b"GET /" in t.data for _, t in others))
    assert all(conn.parser is None for conn, _ in others)
    assert len(c.ctx.spare) == SPARE_PARSERS


@async_test
async def test_eof_from_an_idle_connection_without_a_parser_closes_it_quietly(kind):
    c = Client(kind)
    c.send(get("/"))
    await c.until(lambda: len(c.finals()) == 1)
    assert c.conn.parser is None
    c.eof()
    await c.settle()
    assert len(c.finals()) == 1  # no error answer for a connection that sent nothing more
