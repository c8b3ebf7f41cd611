"""HttpConnection through its protocol callbacks only: a fake transport, a fake clock, a fake
router (tests/protocol/fakes.py).

Every test runs on both parsers. Bytes go in with data_received / eof_received, time passes with
the fake clock and ``state.sweep()``; the assertions are on what the client would see: the bytes
written (parsed back into responses), reading paused or not, FIN, close, abort. Nothing here
reads the connection's private attributes, so these keep passing while its internals change.

The listener's client timeouts are distinct (header 10 s, body 20 s, keep-alive 30 s) so a test
can tell which one fired.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from proxy import writer
from proxy.connection import LINGER_TIME, LINGER_TIMEOUT, MAX_QUEUED
from proxy.errors import BadRequest, PayloadTooLarge, RequestTimeout
from proxy.messages import Request, Response
from proxy.streams import HIGH_WATER

from .fakes import Client, FakeTunnel, async_test, chunks, get, post

HEADER_TIMEOUT, BODY_TIMEOUT, KEEPALIVE_TIMEOUT = 10.0, 20.0, 30.0
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@pytest.fixture(params=["httptools", "h11"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


async def read_body(request: Request) -> Response:
    """A backend that reads the whole body and echoes it."""
    assert request.stream is not None
    return Response(200, (), await request.stream.read_all(1 << 24))


async def ready(response: Response) -> Response:
    """A backend that answers at once (``lambda r: ready(Response(...))``: a fresh stream per
    request)."""
    return response


# -- keep-alive and pipelining -------------------------------------------------------------------


@async_test
async def test_keep_alive_answers_two_requests_in_order_and_stays_open(kind):
    c = Client(kind)
    c.send(get("/one"))
    await c.until(lambda: len(c.finals()) == 1)
    c.send(get("/two", "Connection: keep-alive"))
    await c.until(lambda: len(c.finals()) == 2)
    first, second = c.finals()
    assert (first.status, first.body) == (200, b"GET /one")
    assert (second.status, second.body) == (200, b"GET /two")
    assert first.all("connection") == ["keep-alive"] == second.all("connection")
    assert first.header("content-length") == "8"
    assert not c.transport.closed and c.transport.reading
    request = c.router.requests[0]
    assert (request.client_ip, request.client_port, request.listener) == (
        "203.0.113.7", 50123, "web")


@async_test
async def test_pipelined_requests_are_answered_in_order_one_at_a_time(kind):
    c = Client(kind)
    c.router.hold("/a", "/b", "/c")
    c.send(get("/a") + get("/b") + get("/c"))
    await c.settle()
    c.router.release("/b")  # a later answer being ready changes nothing
    await c.settle()
    assert c.router.paths == ["/a"]
    assert c.transport.data == b""
    c.router.release("/a")
    await c.until(lambda: len(c.router.paths) == 3)
    assert len(c.finals()) == 2
    c.router.release("/c")
    await c.until(lambda: len(c.finals()) == 3)
    assert [r.body for r in c.finals()] == [b"GET /a", b"GET /b", b"GET /c"]
    assert all(r.header("connection") == "keep-alive" for r in c.finals())
    assert c.router.max_active == 1


@async_test
async def test_max_queued_pipelined_requests_pause_reading_until_they_drain(kind):
    c = Client(kind)
    c.router.hold("/0", "/1")
    c.send(get("/0"))
    await c.settle()
    c.send(b"".join(get(f"/{i}") for i in range(1, MAX_QUEUED)))
    assert c.transport.reading  # MAX_QUEUED - 1 waiting
    c.send(get(f"/{MAX_QUEUED}"))
    assert not c.transport.reading  # MAX_QUEUED waiting behind the one in flight
    c.router.release("/0")
    await c.until(lambda: len(c.router.paths) == 2)
    assert c.transport.reading  # MAX_QUEUED - 1 waiting again
    assert c.router.paths == ["/0", "/1"]
    c.router.release("/1")
    await c.until(lambda: len(c.finals()) == MAX_QUEUED + 1)
    assert [r.body for r in c.finals()] == [f"GET /{i}".encode() for i in range(MAX_QUEUED + 1)]
    assert c.transport.reading and not c.transport.closed


@async_test
async def test_good_request_pipelined_before_a_bad_one_is_answered_first(kind):
    c = Client(kind)
    c.send(get("/ok") + b"GET /bad HTTP/1.1\r\n\r\n")  # no Host: 400
    await c.until(lambda: len(c.finals()) == 2)
    ok, bad = c.finals()
    assert (ok.status, ok.body) == (200, b"GET /ok")
    assert bad.status == 400 and bad.header("connection") == "close"
    assert c.router.paths == ["/ok"]


# -- what pauses reading -------------------------------------------------------------------------


@async_test
async def test_request_body_unread_past_high_water_pauses_reading_without_a_body_timeout(kind):
    c = Client(kind)
    go = asyncio.Event()
    c.router.handler = reads_body_after(go)
    total = 2 * HIGH_WATER + 10
    c.send(post("/up", b"", length=total) + b"a" * (HIGH_WATER // 2))
    c.send(b"b" * (HIGH_WATER // 2))
    assert c.transport.reading  # exactly HIGH_WATER waiting
    c.send(b"c")
    assert not c.transport.reading
    c.advance(BODY_TIMEOUT * 3)  # we are slow, not the client: no 408
    assert c.transport.data == b"" and not c.transport.closed
    go.set()
    await c.until(lambda: c.transport.reading)
    rest = total - HIGH_WATER - 1
    c.send(b"d" * rest)
    await c.until(lambda: c.finals())
    [reply] = c.finals()
    assert reply.status == 200 and reply.header("connection") == "keep-alive"
    assert reply.body == b"a" * (HIGH_WATER // 2) + b"b" * (HIGH_WATER // 2) + b"c" + b"d" * rest


@async_test
async def test_an_error_being_answered_pauses_reading_and_waits_for_the_response_in_flight(kind):
    c = Client(kind)
    c.router.hold("/ok")
    c.send(get("/ok"))
    await c.settle()
    c.send(b"GET /bad HTTP/1.1\r\n\r\n")  # no Host: 400
    assert not c.transport.reading
    await c.settle()
    assert c.transport.data == b""  # the error is owed after the response before it
    c.router.release("/ok")
    await c.until(lambda: len(c.finals()) == 2)
    ok, bad = c.finals()
    assert (ok.status, ok.header("connection")) == (200, "keep-alive")
    assert (bad.status, bad.header("connection")) == (400, "close")
    assert c.router.paths == ["/ok"]


@async_test
async def test_client_not_reading_pauses_reading_and_holds_back_the_next_pipelined_request(kind):
    c = Client(kind)
    c.transport.high_water = 10
    c.send(get("/a") + get("/b"))
    await c.until(lambda: c.finals())
    await c.settle()
    assert not c.transport.reading
    assert c.router.paths == ["/a"]  # no more answers for a client that reads none
    assert len(c.finals()) == 1
    c.transport.drain()
    assert c.transport.reading
    await c.until(lambda: len(c.finals()) == 2)
    assert [r.body for r in c.finals()] == [b"GET /a", b"GET /b"]


# -- client timeouts (fake clock) ----------------------------------------------------------------


@async_test
async def test_header_timeout_answers_408_then_closes(kind):
    c = Client(kind)
    c.send(b"GET / HTTP/1.1\r\nHost: exa")
    c.advance(HEADER_TIMEOUT - 0.1)
    assert c.transport.data == b""
    c.advance(0.2)
    [reply] = c.finals()
    assert reply.status == 408 and reply.header("connection") == "close"
    assert reply.body == writer.error_response(RequestTimeout()).body
    assert b"<title>408 Request Timeout</title>" in reply.body
    c.advance(LINGER_TIMEOUT + 0.1)
    assert c.transport.close_called and not c.transport.aborted
    assert c.router.requests == []


@async_test
async def test_the_listeners_own_headers_go_on_our_error_pages_too(kind):
    c = Client(kind)
    c.ctx.extra_headers = (("Strict-Transport-Security", "max-age=63072000"),)
    c.send(get("/a") + b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
    await c.until(lambda: len(c.finals()) == 2)
    assert c.statuses() == [200, 400]
    for reply in c.finals():  # the backend's answer and the connection's own 400
        assert reply.header("strict-transport-security") == "max-age=63072000"


@async_test
async def test_header_timeout_counts_from_the_first_byte_however_slowly_the_head_trickles(kind):
    c = Client(kind)
    c.advance(HEADER_TIMEOUT - 1)  # idle before the first byte does not count
    for part in (b"G", b"ET / HTTP/1.1\r\n", b"Host: example.com\r\n"):
        c.send(part)
        c.advance(HEADER_TIMEOUT / 4)
    assert c.transport.data == b""
    c.advance(HEADER_TIMEOUT / 4 + 0.1)
    assert [r.status for r in c.finals()] == [408]


@async_test
async def test_a_pipelined_head_left_incomplete_gets_the_header_timeout_too(kind):
    c = Client(kind)
    c.send(get("/a") + b"GET /b HTTP/1.1\r\nHost: exa")  # a whole request, then half a head
    await c.until(lambda: c.finals())
    c.advance(HEADER_TIMEOUT - 0.1)
    assert c.statuses() == [200]
    c.advance(0.2)  # a slow second head must not hold the connection open for ever
    assert c.statuses() == [200, 408]


@async_test
async def test_connection_that_sends_nothing_is_closed_quietly_after_the_header_timeout(kind):
    c = Client(kind)
    c.advance(HEADER_TIMEOUT - 0.1)
    assert not c.transport.closed
    c.advance(0.2)
    assert c.transport.close_called and not c.transport.aborted
    assert c.transport.data == b""
    await c.settle()
    assert c.transport.lost


@async_test
async def test_body_timeout_answers_408_and_closes(kind):
    c = Client(kind)
    c.router.handler = read_body
    c.send(post("/up", b"abc", length=10))
    await c.settle()
    c.advance(BODY_TIMEOUT - 5)
    c.send(b"de")  # every arrival restarts the body timeout
    c.advance(BODY_TIMEOUT - 5)
    await c.settle()
    assert c.transport.data == b""
    c.advance(5.1)
    await c.until(lambda: c.finals())
    [reply] = c.finals()
    assert reply.status == 408 and reply.header("connection") == "close"
    assert reply.body == writer.error_response(RequestTimeout()).body
    c.advance(LINGER_TIMEOUT + 0.1)
    assert c.transport.closed and not c.transport.aborted


@async_test
async def test_body_timeout_of_a_queued_request_answers_408_and_never_dispatches_it(kind):
    c = Client(kind)
    c.router.hold("/a")
    c.send(get("/a") + post("/b", b"ab", length=10))
    await c.settle()
    c.advance(BODY_TIMEOUT + 0.1)
    c.router.release("/a")
    await c.until(lambda: len(c.finals()) == 2)
    first, timeout = c.finals()
    assert (first.status, first.body) == (200, b"GET /a")
    assert timeout.status == 408 and timeout.header("connection") == "close"
    assert c.router.paths == ["/a"]  # no backend saw a part of a body that cannot be whole


@async_test
async def test_keep_alive_idle_timeout_closes_quietly_without_aready(kind):
    c = Client(kind)
    c.send(get("/"))
    await c.until(lambda: c.finals())
    written = bytes(c.transport.data)
    c.advance(KEEPALIVE_TIMEOUT - 0.1)  # longer than the header timeout: that one is not armed
    assert not c.transport.closed
    c.advance(0.2)
    assert c.transport.close_called and not c.transport.aborted
    assert c.transport.data == written and not c.transport.late
    assert not c.transport.eof_written


@async_test
async def test_client_that_takes_nothing_for_client_body_timeout_is_aborted(kind):
    c = Client(kind)
    c.transport.high_water = 10
    c.send(get("/"))
    await c.until(lambda: c.finals())
    c.advance(BODY_TIMEOUT - 0.1)
    assert not c.transport.aborted
    c.advance(0.2)
    assert c.transport.aborted


@async_test
async def test_send_timeout_restarts_whenever_the_client_drains(kind):
    c = Client(kind)
    c.transport.high_water = 10
    gate = asyncio.Event()
    c.router.handler = lambda r: ready(Response(
        200, (), stream=chunks(b"x" * 100, b"y" * 100, gate=gate), length=200))
    c.send(get("/"))
    await c.until(lambda: c.transport.writing_paused)
    c.advance(BODY_TIMEOUT - 5)
    c.transport.drain()  # it reads: the next write gets a fresh timeout
    gate.set()
    await c.until(lambda: c.transport.data.endswith(b"y" * 100))
    assert c.transport.writing_paused
    c.advance(BODY_TIMEOUT - 1)
    assert not c.transport.aborted
    c.advance(1.1)
    assert c.transport.aborted


@async_test
async def test_send_timeout_spares_a_slow_client_that_keeps_taking_data(kind):
    c = Client(kind)
    c.transport.high_water = 1000
    c.router.handler = lambda r: ready(Response(200, (), b"z" * 100_000))
    c.send(get("/"))
    await c.until(lambda: c.finals())
    for _ in range(4):  # 40 KB every half timeout: slow, but never stalled
        c.advance(BODY_TIMEOUT / 2)
        c.transport.take(20_000)
    assert not c.transport.aborted


@async_test
async def test_close_waits_for_the_client_to_take_the_last_response_then_send_timeout_aborts(
        kind):
    c = Client(kind)
    c.transport.high_water = 10
    c.send(get("/", "Connection: close"))
    await c.until(lambda: c.finals())
    await c.settle()
    assert c.transport.close_called and not c.transport.lost  # still flushing
    c.advance(BODY_TIMEOUT + 0.1)
    assert c.transport.aborted


@async_test
async def test_close_with_a_small_unsent_remainder_still_aborts_after_the_send_timeout(kind):
    c = Client(kind)
    c.transport.high_water = 1 << 20  # buffered, but never enough to pause writing
    c.send(get("/", "Connection: close"))
    await c.until(lambda: c.finals())
    await c.settle()
    assert c.transport.close_called and not c.transport.lost
    c.advance(BODY_TIMEOUT - 0.1)
    assert not c.transport.aborted
    c.advance(0.2)
    assert c.transport.aborted


@async_test
async def test_close_completes_when_the_client_takes_the_lastready(kind):
    c = Client(kind)
    c.transport.high_water = 10
    c.send(get("/", "Connection: close"))
    await c.until(lambda: c.finals())
    c.transport.drain()
    await c.settle()
    assert c.transport.lost
    c.advance(BODY_TIMEOUT + 0.1)
    assert not c.transport.aborted


# -- lingering close ---------------------------------------------------------------------------


def too_large(c: Client) -> None:
    """A body over client_max_body_size: 413 at the head, with the body still arriving."""
    c.send(post("/up", b"x" * 100, length=5000))


@async_test
async def test_lingering_close_after_an_error_discards_input_and_closes_after_silence(kind):
    c = Client(kind, {"client_max_body_size": 1000})
    too_large(c)
    [reply] = c.finals()
    assert reply.status == 413 and reply.header("connection") == "close"
    assert reply.body == writer.error_response(PayloadTooLarge()).body
    assert c.transport.eof_written and c.transport.reading and not c.transport.closed
    written = bytes(c.transport.data)
    for _ in range(3):  # every arrival restarts the silence
        c.advance(LINGER_TIMEOUT - 1)
        c.send(b"x" * 1000 + get("/smuggled"))
    await c.settle()
    assert not c.transport.closed
    assert c.transport.data == written and c.router.requests == []
    c.advance(LINGER_TIMEOUT + 0.1)
    assert c.transport.close_called and not c.transport.aborted


@async_test
async def test_lingering_close_ends_when_the_client_sends_eof(kind):
    c = Client(kind, {"client_max_body_size": 1000})
    too_large(c)
    assert c.transport.eof_written and not c.transport.closed
    c.send(b"x" * 100)
    assert c.eof() is False
    assert c.transport.close_called and not c.transport.aborted
    assert [r.status for r in c.finals()] == [413]


@async_test
async def test_lingering_close_ends_after_linger_time_even_if_the_client_keeps_sending(kind):
    c = Client(kind, {"client_max_body_size": 1000})
    too_large(c)
    step = LINGER_TIMEOUT - 1
    elapsed = 0.0
    while elapsed + step < LINGER_TIME:
        c.advance(step)
        elapsed += step
        c.send(b"x" * 10)
        assert not c.transport.closed
    c.advance(step)
    c.send(b"x" * 10)
    assert c.transport.close_called and not c.transport.aborted


# -- the last request: Connection: close, HTTP/1.0 ----------------------------------------------


@async_test
async def test_connection_close_request_is_answered_with_close_then_closed(kind):
    c = Client(kind)
    c.router.hold("/last")
    c.send(get("/last", "Connection: close"))
    await c.settle()
    assert not c.transport.reading  # the last request is in
    c.send(get("/after"))  # nothing after "close" is processed
    c.router.release("/last")
    await c.until(lambda: c.transport.lost)
    [reply] = c.finals()
    assert (reply.status, reply.header("connection")) == (200, "close")
    assert c.router.paths == ["/last"]


@async_test
async def test_bytes_pipelined_after_connection_close_are_not_processed_and_we_linger(kind):
    c = Client(kind)
    c.send(get("/last", "Connection: close") + get("/after"))
    await c.until(lambda: c.finals())
    await c.settle()
    [reply] = c.finals()
    assert reply.header("connection") == "close"
    assert c.router.paths == ["/last"]
    # the client sent more than we answer: our FIN first, so it reads the answer, not a reset
    assert c.transport.eof_written and not c.transport.closed
    c.advance(LINGER_TIMEOUT + 0.1)
    assert c.transport.close_called and not c.transport.aborted


@pytest.mark.parametrize("extra", [(), ("Connection: foo",), ("Keep-Alive: timeout=5",),
                                   ("Connection: keep-alive, close",)])
@async_test
async def test_http10_request_is_answered_with_close_then_closed(kind, extra):
    c = Client(kind)
    c.send(get("/old", *extra, version="1.0"))
    await c.until(lambda: c.transport.lost)
    [reply] = c.finals()
    assert (reply.status, reply.body) == (200, b"GET /old")
    assert reply.all("connection") == ["close"]
    assert c.router.requests[0].http_version == "1.0"


# -- HTTP/1.0 keep-alive (RFC 9112 §9.3, Appendix C.2.2; as nginx) --------------------------------

KA = "Connection: keep-alive"


@async_test
async def test_http10_keep_alive_keeps_the_connection_and_says_so(kind):
    c = Client(kind)
    for i in range(3):
        c.send(get(f"/{i}", KA, version="1.0"))
        await c.until(lambda n=i + 1: len(c.finals()) == n)
    assert [r.body for r in c.finals()] == [b"GET /0", b"GET /1", b"GET /2"]
    assert all(r.all("connection") == ["keep-alive"] and r.header("content-length") == "6"
               for r in c.finals())
    assert not c.transport.closed and c.transport.reading
    assert [r.http_version for r in c.router.requests] == ["1.0"] * 3
    # a 1.0 request without the token is the last one
    c.send(get("/last", version="1.0"))
    await c.until(lambda: c.transport.lost)
    assert c.finals()[-1].all("connection") == ["close"]
    assert not c.transport.aborted


@async_test
async def test_http10_keep_alive_pipelined_requests_are_answered_in_order(kind):
    c = Client(kind)
    c.router.hold("/a")
    c.send(get("/a", KA, version="1.0") + post("/b", b"body", KA, version="1.0")
           + get("/c", KA, version="1.0"))
    await c.settle()
    assert c.router.paths == ["/a"]
    c.router.release("/a")
    await c.until(lambda: len(c.finals()) == 3)
    assert [r.body for r in c.finals()] == [b"GET /a", b"POST /b", b"GET /c"]
    assert all(r.header("connection") == "keep-alive" for r in c.finals())
    assert not c.transport.closed and c.router.max_active == 1


@async_test
async def test_http10_keep_alive_idle_connection_gets_the_keep_alive_timeout(kind):
    c = Client(kind)
    c.send(get("/", KA, version="1.0"))
    await c.until(lambda: c.finals())
    c.advance(KEEPALIVE_TIMEOUT - 0.1)
    assert not c.transport.closed
    c.advance(0.2)
    assert c.transport.close_called and not c.transport.aborted


@async_test
async def test_http10_keep_alive_streamed_response_with_a_length_keeps_the_connection(kind):
    c = Client(kind)
    c.router.handler = lambda r: ready(Response(200, (), stream=chunks(b"hel", b"lo"), length=5))
    c.send(get("/s", KA, version="1.0"))
    await c.until(lambda: c.finals() and c.finals()[0].complete)
    await c.settle()
    c.send(get("/t", KA, version="1.0"))
    await c.until(lambda: len(c.finals()) == 2 and c.finals()[1].complete)
    await c.settle()
    assert all((r.framing, r.body, r.header("connection")) == ("length", b"hello", "keep-alive")
               for r in c.finals())
    assert not c.transport.closed


@async_test
async def test_http10_keep_alive_streamed_response_without_a_length_still_closes(kind):
    c = Client(kind)
    c.router.hold("/next")
    c.router.handler = lambda r: ready(Response(200, (), stream=chunks(b"hel", b"lo")))
    # a pipelined request behind it: never dispatched, the client is told nothing persists
    c.send(get("/s", KA, version="1.0") + get("/next", KA, version="1.0"))
    await c.until(lambda: c.transport.eof_written or c.transport.closed)
    await c.settle()
    [reply] = c.finals()
    assert reply.framing == "close" and reply.body == b"hello"
    assert reply.all("connection") == ["close"] and reply.header("transfer-encoding") is None
    assert c.router.paths == ["/s"]
    # it sent more than we answered: our FIN first, its late bytes discarded, then the close
    assert c.transport.eof_written and not c.transport.aborted
    c.send(get("/late", KA, version="1.0"))
    c.advance(LINGER_TIMEOUT + 0.1)
    assert c.transport.close_called and c.router.paths == ["/s"]


@async_test
async def test_http10_keep_alive_streamed_response_without_a_length_alone_closes_at_once(kind):
    c = Client(kind)
    c.router.handler = lambda r: ready(Response(200, (), stream=chunks(b"x")))
    c.send(get("/s", KA, version="1.0"))
    await c.until(lambda: c.transport.lost)
    assert c.finals()[0].header("connection") == "close" and not c.transport.eof_written


@async_test
async def test_http10_keep_alive_head_of_a_streamed_response_without_length_keeps_it(kind):
    c = Client(kind)
    c.router.handler = lambda r: ready(Response(200, (), stream=chunks(b"hel", b"lo")))
    c.send(get("/h", KA, version="1.0", method="HEAD"))
    await c.until(lambda: c.finals({0}))
    await c.settle()
    [head] = c.finals({0})
    assert head.header("connection") == "keep-alive" and head.header("content-length") is None
    assert c.transport.data.endswith(b"\r\n\r\n") and not c.transport.closed


@async_test
async def test_http10_keep_alive_error_answer_still_closes(kind):
    c = Client(kind)
    c.send(get("/ok", KA, version="1.0") + b"GET / HTTP/1.0\r\nHost:\r\n\r\n")
    await c.until(lambda: len(c.finals()) == 2)
    ok, bad = c.finals()
    assert ok.header("connection") == "keep-alive"
    assert bad.status == 400 and bad.header("connection") == "close"
    assert c.router.paths == ["/ok"]


@async_test
async def test_draining_closes_an_http10_keep_alive_connection_after_its_response(kind):
    c = Client(kind)
    c.state.draining = True
    c.send(get("/", KA, version="1.0"))
    await c.until(lambda: c.transport.lost)
    assert c.finals()[0].header("connection") == "close"


# -- Expect: 100-continue ------------------------------------------------------------------------


def reads_body_after(go: asyncio.Event) -> Callable[[Request], Awaitable[Response]]:
    """A backend that starts reading the request body only once ``go`` is set."""
    async def handler(request: Request) -> Response:
        await go.wait()
        return await read_body(request)
    return handler


@async_test
async def test_100_continue_is_sent_only_when_the_backend_starts_reading_the_body(kind):
    c = Client(kind)
    go = asyncio.Event()
    c.router.handler = reads_body_after(go)
    c.send(post("/up", b"", "Expect: 100-continue", length=5))
    await c.settle()
    assert c.transport.data == b""
    go.set()
    await c.until(lambda: c.transport.data)
    assert c.transport.data == CONTINUE
    c.send(b"hello")
    await c.until(lambda: c.finals())
    assert c.statuses() == [100, 200]
    assert c.finals()[0].body == b"hello"
    assert c.finals()[0].header("connection") == "keep-alive"


@async_test
async def test_body_timeout_does_not_run_while_the_client_waits_for_100_continue(kind):
    c = Client(kind)
    go = asyncio.Event()
    c.router.handler = reads_body_after(go)
    c.send(post("/up", b"", "Expect: 100-continue", length=5))
    await c.settle()
    c.advance(BODY_TIMEOUT + 1)  # the backend is slow to start; the client waits for us
    go.set()
    await c.until(lambda: c.transport.data)
    c.send(b"hello")
    await c.until(lambda: c.finals())
    assert c.statuses() == [100, 200]
    assert c.finals()[0].body == b"hello"


@async_test
async def test_100_continue_is_not_sent_when_the_body_came_without_waiting(kind):
    c = Client(kind)
    c.router.handler = read_body
    c.send(post("/up", b"hello", "Expect: 100-continue"))
    await c.until(lambda: c.finals())
    assert c.statuses() == [200]


@async_test
async def test_100_continue_is_not_sent_to_an_http10_client(kind):
    c = Client(kind)
    c.router.handler = read_body
    c.send(post("/up", b"", "Expect: 100-continue", length=5, version="1.0"))
    await c.until(lambda: c.router.requests)
    await c.settle()
    assert c.transport.data == b""
    c.send(b"hello")
    await c.until(lambda: c.finals())
    assert c.statuses() == [200]
    assert c.finals()[0].body == b"hello"


@async_test
async def test_100_continue_is_not_sent_when_the_backend_answers_without_reading(kind):
    c = Client(kind)
    c.send(post("/up", b"", "Expect: 100-continue", length=5))
    await c.until(lambda: c.finals())
    assert c.statuses() == [200]
    assert c.finals()[0].header("connection") == "close"  # the body never came


# -- request bodies left unread ------------------------------------------------------------------


@async_test
async def test_body_left_unread_by_the_backend_closes_the_connection_after_theready(kind):
    c = Client(kind)
    c.send(post("/up", b"part", length=100))
    await c.until(lambda: c.finals())
    [reply] = c.finals()
    assert (reply.status, reply.header("connection")) == (200, "close")
    # the rest of the body is discarded, never parsed as a request (no CL.0 desync)
    c.send(get("/smuggled") + b"x" * 200)
    await c.settle()
    assert c.router.paths == ["/up"] and len(c.finals()) == 1
    c.advance(LINGER_TIMEOUT + 0.1)
    assert c.transport.closed and not c.transport.aborted


@async_test
async def test_body_received_whole_but_not_read_keeps_the_connection(kind):
    c = Client(kind)
    c.send(post("/up", b"0123456789") + get("/next"))
    await c.until(lambda: len(c.finals()) == 2)
    first, second = c.finals()
    assert first.header("connection") == "keep-alive"
    assert second.body == b"GET /next"
    assert not c.transport.closed


# -- response framing ---------------------------------------------------------------------------


@async_test
async def test_head_gets_the_headers_of_the_get_without_a_body(kind):
    c = Client(kind)
    c.send(get("/h", method="HEAD") + get("/after"))
    await c.until(lambda: len(c.finals({0})) == 2)
    head, after = c.finals({0})
    assert head.status == 200 and head.header("content-length") == str(len(b"HEAD /h"))
    assert after.body == b"GET /after" and after.complete  # no stray body bytes between


@async_test
async def test_head_of_a_streamed_response_gets_its_headers_and_no_body(kind):
    c = Client(kind)
    c.router.handler = lambda r: ready(Response(200, (), stream=chunks(b"hel", b"lo"),
                                                    length=5))
    c.send(get("/h", method="HEAD"))
    await c.until(lambda: c.finals({0}))
    await c.settle()
    [head] = c.finals({0})
    assert head.header("content-length") == "5"
    assert c.transport.data.endswith(b"\r\n\r\n")
    assert not c.transport.closed


@async_test
async def test_streamed_response_with_a_length_is_sent_with_content_length(kind):
    c = Client(kind)
    c.router.handler = lambda r: ready(Response(200, (("X-A", "1"),),
                                                    stream=chunks(b"hel", b"lo"), length=5))
    c.send(get("/s"))
    await c.until(lambda: c.finals() and c.finals()[0].complete)
    await c.settle()
    [reply] = c.finals()
    assert reply.header("content-length") == "5" and reply.header("transfer-encoding") is None
    assert reply.body == b"hello" and reply.header("x-a") == "1"
    assert reply.header("connection") == "keep-alive" and not c.transport.closed


@async_test
async def test_streamed_response_without_a_length_is_chunked_for_an_http11_client(kind):
    c = Client(kind)
    c.router.handler = lambda r: ready(Response(200, (), stream=chunks(b"hel", b"", b"lo")))
    c.send(get("/s") + get("/next"))
    await c.until(lambda: len(c.finals()) == 2)
    reply, after = c.finals()
    assert reply.framing == "chunked" and reply.complete
    assert reply.body == b"hello" and reply.header("content-length") is None
    # an empty chunk from the backend is skipped, not sent as the last-chunk
    assert c.transport.data.count(b"\r\n0\r\n\r\n") == 2
    assert after.framing == "chunked" and after.complete


@async_test
async def test_streamed_response_without_a_length_is_close_delimited_for_an_http10_client(kind):
    c = Client(kind)
    c.router.handler = lambda r: ready(Response(200, (), stream=chunks(b"hel", b"lo")))
    c.send(get("/s", version="1.0"))
    await c.until(lambda: c.transport.lost)
    [reply] = c.finals()
    assert reply.framing == "close" and reply.body == b"hello"
    assert reply.header("transfer-encoding") is None and reply.header("connection") == "close"
    assert not c.transport.aborted


@async_test
async def test_streamed_response_waits_for_a_slow_client_before_the_next_chunk(kind):
    c = Client(kind)
    c.transport.high_water = 10
    c.router.handler = lambda r: ready(Response(200, (), stream=chunks(b"a" * 50, b"b" * 50),
                                                    length=100))
    c.send(get("/s"))
    await c.until(lambda: c.transport.writing_paused)
    await c.settle()
    assert c.transport.data.endswith(b"a" * 50)
    c.transport.drain()
    await c.until(lambda: c.finals() and c.finals()[0].complete)
    assert c.finals()[0].body == b"a" * 50 + b"b" * 50


@pytest.mark.parametrize("length", [10, None], ids=["content-length", "chunked"])
@async_test
async def test_backend_stream_that_raises_mid_body_aborts_the_connection(kind, length):
    c = Client(kind)
    c.router.handler = lambda r: ready(Response(
        200, (), stream=chunks(b"hello", fail=RuntimeError("backend broke off")), length=length))
    c.send(get("/s") + get("/next"))
    await c.until(lambda: c.transport.aborted)
    await c.settle()
    [reply] = c.finals()
    assert not reply.complete  # never a truncated body that looks whole
    assert not c.transport.data.endswith(b"0\r\n\r\n")
    assert c.router.paths == ["/s"]


@async_test
async def test_router_exception_answers_500_and_keeps_the_connection(kind):
    c = Client(kind)

    async def handler(request: Request) -> Response:
        if request.path == "/boom":
            raise RuntimeError("bug")
        return Response(200, (), b"fine")

    c.router.handler = handler
    c.send(get("/boom") + get("/next"))
    await c.until(lambda: len(c.finals()) == 2)
    boom, after = c.finals()
    assert boom.status == 500 and boom.header("connection") == "keep-alive"
    assert after.body == b"fine"


# -- 101 hand-over ---------------------------------------------------------------------------------


def upgrade_request() -> bytes:
    return get("/ws", "Connection: Upgrade", "Upgrade: websocket")


@async_test
async def test_101_hands_the_connection_to_the_tunnel(kind):
    c = Client(kind)
    tunnel = FakeTunnel()
    c.router.handler = lambda r: ready(Response(
        101, (("Connection", "Upgrade"), ("Upgrade", "websocket")), tunnel=tunnel))
    c.send(upgrade_request())
    await c.until(lambda: tunnel.attached is not None)
    assert tunnel.attached is c.transport
    assert c.router.requests[0].upgrade == "websocket"
    [reply] = c.replies()
    assert reply.status == 101
    assert reply.all("connection") == ["Upgrade"] and reply.header("upgrade") == "websocket"
    assert reply.header("content-length") is None and reply.body == b""
    assert c.transport.reading
    frame = b"\x81\x05hello"
    c.send(frame + get("/not-http"))  # the tunnel's bytes now, never parsed
    assert tunnel.from_client_data == frame + get("/not-http")
    c.advance(KEEPALIVE_TIMEOUT + BODY_TIMEOUT + HEADER_TIMEOUT)  # no client timeout applies
    assert not c.transport.closed
    assert c.eof() is True and tunnel.eof  # half-close: the tunnel decides
    assert not c.transport.closed
    c.transport.lose()
    assert tunnel.closed
    assert len(c.router.requests) == 1 and len(c.replies()) == 1


@async_test
async def test_upgrade_declined_by_the_backend_is_answered_and_closed(kind):
    c = Client(kind)
    c.send(upgrade_request())
    await c.until(lambda: c.transport.lost)
    [reply] = c.finals()
    assert (reply.status, reply.header("connection")) == (200, "close")


# -- EOF and the client going away ------------------------------------------------------------


@async_test
async def test_eof_before_any_request_closes_quietly(kind):
    c = Client(kind)
    assert c.eof() is False
    assert c.transport.close_called and c.transport.data == b""


@async_test
async def test_eof_between_requests_closes_quietly(kind):
    c = Client(kind)
    c.send(get("/"))
    await c.until(lambda: c.finals())
    written = bytes(c.transport.data)
    assert c.eof() is False
    assert c.transport.close_called and not c.transport.aborted
    assert c.transport.data == written


@async_test
async def test_eof_in_the_middle_of_a_head_answers_400_and_closes(kind):
    c = Client(kind)
    c.send(b"GET / HTTP/1.1\r\nHost: exa")
    c.eof()
    [reply] = c.finals()
    assert reply.status == 400 and reply.header("connection") == "close"
    assert reply.body == writer.error_response(BadRequest()).body
    assert c.transport.close_called
    assert c.router.requests == []


@async_test
async def test_eof_in_the_middle_of_a_body_answers_400_and_closes(kind):
    c = Client(kind)
    c.router.handler = read_body
    c.send(post("/up", b"abc", length=10))
    await c.until(lambda: c.router.requests)
    c.eof()
    await c.until(lambda: c.finals())
    [reply] = c.finals()
    assert reply.status == 400 and reply.header("connection") == "close"
    await c.settle()
    assert c.transport.close_called and not c.transport.aborted


@async_test
async def test_eof_after_a_whole_request_still_answers_it_then_closes(kind):
    c = Client(kind)
    c.router.hold("/a")
    c.send(get("/a"))
    await c.settle()
    assert c.eof() is True  # half-close: the answer is still owed
    assert not c.transport.closed
    c.router.release("/a")
    await c.until(lambda: c.transport.lost)
    [reply] = c.finals()
    assert (reply.body, reply.header("connection")) == (b"GET /a", "close")


@async_test
async def test_client_gone_while_a_request_is_in_flight_cancels_the_backend_call(kind):
    c = Client(kind)
    c.router.hold("/a")
    c.send(get("/a") + get("/b"))
    await c.settle()
    c.transport.lose()
    await c.settle()
    assert c.router.cancelled == ["/a"]
    c.router.release("/a")
    await c.settle()
    assert c.router.paths == ["/a"]  # the queued one is dropped too
    assert c.transport.data == b"" and not c.transport.late


# -- graceful drain -------------------------------------------------------------------------------


@async_test
async def test_close_if_idle_closes_an_idle_keep_alive_connection(kind):
    c = Client(kind)
    c.send(get("/"))
    await c.until(lambda: c.finals())
    written = bytes(c.transport.data)
    assert c.conn.close_if_idle() is True
    assert c.transport.close_called and c.transport.data == written


@async_test
async def test_close_if_idle_leaves_a_connection_that_owes_an_answer_or_has_half_a_head(kind):
    c = Client(kind)
    c.router.hold("/a")
    c.send(get("/a"))
    await c.settle()
    assert c.conn.close_if_idle() is False
    c.router.release("/a")
    await c.until(lambda: c.finals())
    c.send(b"GET /b HTTP/1.1\r\n")
    assert c.conn.close_if_idle() is False
    assert not c.transport.closed
    c.send(b"Host: example.com\r\n\r\n")
    await c.until(lambda: len(c.finals()) == 2)


@async_test
async def test_draining_makes_the_next_response_connection_close(kind):
    c = Client(kind)
    c.router.hold("/a")
    c.send(get("/a"))
    await c.settle()
    c.state.draining = True
    c.router.release("/a")
    await c.until(lambda: c.transport.lost)
    [reply] = c.finals()
    assert (reply.status, reply.header("connection")) == (200, "close")
