"""The outgoing HTTP/1.1 client: framing, keep-alive reuse, the pool bound, timeouts, TLS."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import trustme
import uvloop

from proxy.backends.h1client import HTTPClient, parse_url, serialize_request
from proxy.errors import UpstreamError, UpstreamTimeout

Handler = Callable[["Peer"], Awaitable[None]]


class Peer:
    """One accepted connection of the scripted server, with request-reading helpers."""

    def __init__(self, index: int, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, log: list[tuple[int, bytes, bytes]]) -> None:
        self.index = index
        self.reader = reader
        self.writer = writer
        self._log = log

    async def request(self) -> tuple[bytes, bytes] | None:
        """(head, body) of the next request, None at EOF."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self.reader.readexactly(length)
        self._log.append((self.index, head, body))
        return head, body

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


class Server:
    """A raw TCP (or TLS) server on port 0 that runs ``handler`` for every connection."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.connections = 0
        self.requests: list[tuple[int, bytes, bytes]] = []
        self.closed = asyncio.Event()  # set each time a connection's handler ends
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{port}"

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0,
                                                  ssl=self.ssl_context)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handler(Peer(self.connections, reader, writer, self.requests))
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a cancelled handler ends quietly at teardown
        finally:
            writer.close()
            self._tasks.discard(task)
            self.closed.set()


def ok(body: bytes = b"hello", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def answer_all(peer: Peer) -> None:
    while await peer.request() is not None:
        await peer.send(ok())


Runner = Callable[[Coroutine[Any, Any, None]], None]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Each test runs on both event loops: the proxy runs on uvloop, tests may not."""
    runner: Runner = asyncio.run if request.param == "asyncio" else uvloop.run
    return runner


def test_content_length_body_is_read_whole(run: Runner) -> None:
    async def main() -> None:
        async with Server(answer_all) as server:
            client = HTTPClient()
            response = await client.request("GET", server.url + "/x?y=1")
            assert (response.status, response.body) == (200, b"hello")
            assert response.header("content-length") == "5"
            assert server.requests[0][1].startswith(b"GET /x?y=1 HTTP/1.1\r\nHost: 127.0.0.1:")
            await client.close()
    run(main())


def test_chunked_body_arriving_in_pieces_is_reassembled(run: Runner) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
        await peer.send(b"lo\r\n6;ext=1\r\n world\r\n")
        await peer.send(b"0\r\nTrailer: x\r\n\r\n")
        await answer_all(peer)

    async def main() -> None:
        async with Server(handler) as server:
            client = HTTPClient()
            assert (await client.request("GET", server.url)).body == b"hello world"
            # the chunked message ended cleanly, so the connection is reused
            assert (await client.request("GET", server.url)).body == b"hello"
            assert server.connections == 1
            await client.close()
    run(main())


def test_close_delimited_body_ends_at_eof_and_is_not_reused(run: Runner) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")

    async def main() -> None:
        async with Server(handler) as server:
            client = HTTPClient()
            assert (await client.request("GET", server.url)).body == b"until the end"
            assert (await client.request("GET", server.url)).body == b"until the end"
            assert server.connections == 2
            await client.close()
    run(main())


def test_sequential_requests_reuse_one_connection(run: Runner) -> None:
    async def main() -> None:
        async with Server(answer_all) as server:
            client = HTTPClient()
            for _ in range(5):
                assert (await client.request("POST", server.url, (), b"{}")).status == 200
            assert server.connections == 1 and client.connections_opened == 1
            assert len(server.requests) == 5
            await client.close()
    run(main())


def test_connection_close_answer_is_not_reused(run: Runner) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(ok(extra=b"Connection: close\r\n"))
        await peer.request()  # a client that kept the connection would wait here

    async def main() -> None:
        async with Server(handler) as server:
            client = HTTPClient(read_timeout=2)
            await client.request("GET", server.url)
            await client.request("GET", server.url)
            assert server.connections == 2
            await client.close()
    run(main())


def test_head_answer_with_content_length_has_no_body_and_keeps_the_connection(
        run: Runner) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        await answer_all(peer)

    async def main() -> None:
        async with Server(handler) as server:
            client = HTTPClient(read_timeout=2)
            head = await client.request("HEAD", server.url)
            assert (head.status, head.body, head.header("Content-Length")) == (200, b"", "1000")
            assert (await client.request("GET", server.url)).body == b"hello"
            assert server.connections == 1
            await client.close()
    run(main())


def test_interim_1xx_answers_are_skipped(run: Runner) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
        await peer.send(ok(b"final"))

    async def main() -> None:
        async with Server(handler) as server:
            client = HTTPClient()
            response = await client.request("GET", server.url)
            assert (response.status, response.body) == (200, b"final")
            await client.close()
    run(main())


def test_silent_server_gives_upstream_timeout(run: Runner) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.reader.read()  # never answers

    async def main() -> None:
        async with Server(handler) as server:
            client = HTTPClient(read_timeout=0.2)
            with pytest.raises(UpstreamTimeout) as info:
                await client.request("GET", server.url)
            assert "0.2" in info.value.log_detail
            await client.close()
    run(main())


def test_refused_connection_gives_upstream_error(run: Runner) -> None:
    async def main() -> None:
        async with Server(answer_all) as server:
            url = server.url
        client = HTTPClient(connect_timeout=2)
        with pytest.raises(UpstreamError) as info:
            await client.request("GET", url)
        assert "connect failed" in info.value.log_detail
        assert info.value.retryable  # nothing reached the server: another target may serve it
        await client.close()
    run(main())


def test_body_cut_short_gives_upstream_error(run: Runner) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")

    async def main() -> None:
        async with Server(handler) as server:
            client = HTTPClient()
            with pytest.raises(UpstreamError) as info:
                await client.request("GET", server.url)
            assert "closed after" in info.value.log_detail
            await client.close()
    run(main())


def test_malformed_answer_gives_upstream_error(run: Runner) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n")

    async def main() -> None:
        async with Server(handler) as server:
            client = HTTPClient()
            with pytest.raises(UpstreamError, match="malformed"):
                await client.request("GET", server.url)
            await client.close()
    run(main())


def test_oversized_body_gives_upstream_error(run: Runner) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(ok(b"x" * 5000))

    async def main() -> None:
        async with Server(handler) as server:
            client = HTTPClient(max_body_size=4096)
            with pytest.raises(UpstreamError, match="too large"):
                await client.request("GET", server.url)
            await client.close()
    run(main())


def test_stray_bytes_after_an_answer_prevent_reuse(run: Runner) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(ok() + ok(b"unsolicited"))
        await answer_all(peer)

    async def main() -> None:
        async with Server(handler) as server:
            client = HTTPClient(read_timeout=2)
            assert (await client.request("GET", server.url)).body == b"hello"
            assert (await client.request("GET", server.url)).body == b"hello"
            assert server.connections == 2
            await client.close()
    run(main())


def _drop_second_request(peer: Peer) -> Awaitable[None]:
    """First connection: answer one request, then read the next and close unanswered (the
    keep-alive race as the client sees it). Later connections answer normally."""
    async def script() -> None:
        if peer.index > 1:
            await answer_all(peer)
            return
        await peer.request()
        await peer.send(ok())
        await peer.request()
    return script()


def test_idempotent_request_dropped_on_a_reused_connection_is_retried_once(
        run: Runner) -> None:
    async def main() -> None:
        async with Server(_drop_second_request) as server:
            client = HTTPClient()
            await client.request("GET", server.url)
            assert (await client.request("GET", server.url)).body == b"hello"
            assert server.connections == 2 and len(server.requests) == 3
            await client.close()
    run(main())


def test_post_dropped_on_a_reused_connection_is_not_retried(run: Runner) -> None:
    async def main() -> None:
        async with Server(_drop_second_request) as server:
            client = HTTPClient()
            await client.request("POST", server.url, (), b"1")
            with pytest.raises(UpstreamError) as info:
                await client.request("POST", server.url, (), b"2")
            assert "reused" in info.value.log_detail and not info.value.retryable
            assert len(server.requests) == 2 and server.connections == 1
            await client.close()
    run(main())


def test_idle_connection_closed_by_the_server_leaves_the_pool(run: Runner) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(ok())  # keep-alive answer, then the server closes anyway

    async def main() -> None:
        async with Server(handler) as server:
            client = HTTPClient()
            await client.request("POST", server.url, (), b"1")
            await server.closed.wait()
            for _ in range(100):  # let the loop deliver the FIN to the client's protocol
                if client.idle_connections == 0:
                    break
                await asyncio.sleep(0)
            assert client.idle_connections == 0
            assert (await client.request("POST", server.url, (), b"2")).status == 200
            assert server.connections == 2
            await client.close()
    run(main())


def test_idle_timeout_closes_a_pooled_connection(run: Runner) -> None:
    async def main() -> None:
        async with Server(answer_all) as server:
            client = HTTPClient(idle_timeout=0.05)
            await client.request("GET", server.url)
            assert client.idle_connections == 1
            await asyncio.wait_for(server.closed.wait(), 2)  # the server saw our close
            assert client.idle_connections == 0
            await client.close()
    run(main())


def test_pool_size_bounds_the_connections_to_one_origin(run: Runner) -> None:
    in_flight = 0
    both_seen = asyncio.Event()

    async def handler(peer: Peer) -> None:
        nonlocal in_flight
        while await peer.request() is not None:
            in_flight += 1
            if in_flight >= 2:
                both_seen.set()
            await both_seen.wait()  # hold the first answers until two requests are in flight
            in_flight -= 1
            await peer.send(ok())

    async def main() -> None:
        async with Server(handler) as server:
            client = HTTPClient(pool_size=2)
            results = await asyncio.gather(*(client.request("GET", server.url)
                                             for _ in range(8)))
            assert all(r.status == 200 for r in results)
            assert server.connections == 2 and client.connections_opened == 2
            await client.close()
    run(main())


def test_busy_pool_waits_at_most_the_connect_timeout(run: Runner) -> None:
    release = asyncio.Event()
    first_seen = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        first_seen.set()
        await release.wait()
        await peer.send(ok())

    async def main() -> None:
        async with Server(handler) as server:
            client = HTTPClient(pool_size=1, connect_timeout=0.1)
            first = asyncio.create_task(client.request("GET", server.url))
            await first_seen.wait()  # the only connection is now busy
            with pytest.raises(UpstreamError, match="pool exhausted"):
                await client.request("GET", server.url)
            release.set()
            assert (await first).status == 200
            await client.close()
    run(main())


def test_close_closes_idle_connections(run: Runner) -> None:
    async def main() -> None:
        async with Server(answer_all) as server:
            client = HTTPClient()
            await client.request("GET", server.url)
            await client.close()
            await asyncio.wait_for(server.closed.wait(), 2)
            with pytest.raises(UpstreamError):
                await client.request("GET", server.url)
    run(main())


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


def test_https_with_the_trusted_ca_reuses_the_tls_connection(run: Runner,
                                                             ca: trustme.CA) -> None:
    async def main() -> None:
        async with Server(answer_all, _server_context(ca)) as server:
            trust = ssl.create_default_context()
            ca.configure_trust(trust)
            client = HTTPClient(ssl_context=trust)
            for _ in range(3):
                assert (await client.request("GET", server.url)).body == b"hello"
            assert server.connections == 1
            await client.close()
    run(main())


def test_https_with_an_untrusted_certificate_fails_verification(run: Runner,
                                                                ca: trustme.CA) -> None:
    async def main() -> None:
        async with Server(answer_all, _server_context(ca)) as server:
            other = ssl.create_default_context()
            trustme.CA().configure_trust(other)
            client = HTTPClient(ssl_context=other)
            with pytest.raises(UpstreamError) as info:
                await client.request("GET", server.url)
            assert "certificate verification failed" in info.value.log_detail
            await client.close()
    run(main())


def test_request_bytes_put_host_first_and_compute_the_length() -> None:
    data = serialize_request("POST", "/a", "h:8080",
                             [("X-A", "1"), ("Content-Length", "99"), ("Connection", "close")],
                             b"body")
    assert data == b"POST /a HTTP/1.1\r\nHost: h:8080\r\nX-A: 1\r\nContent-Length: 4\r\n\r\nbody"
    assert serialize_request("GET", "/", "h", [], b"") == b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    assert b"Content-Length: 0" in serialize_request("POST", "/", "h", [], b"")
    given = serialize_request("GET", "/", "h", [("host", "other")], b"")
    assert given == b"GET / HTTP/1.1\r\nhost: other\r\n\r\n"


@pytest.mark.parametrize("name,value", [("X-A", "1\r\nX-Injected: 1"), ("Bad Name", "v"),
                                        ("X-A", "nul\x00")])
def test_header_injection_is_refused(name: str, value: str) -> None:
    with pytest.raises(ValueError):
        serialize_request("GET", "/", "h", [(name, value)], b"")


@pytest.mark.parametrize("url,origin,target,host", [
    ("http://a.test/p?q=1", ("http", "a.test", 80), "/p?q=1", "a.test"),
    ("https://a.test", ("https", "a.test", 443), "/", "a.test"),
    ("https://a.test:8443/x", ("https", "a.test", 8443), "/x", "a.test:8443"),
    ("http://[::1]:81/", ("http", "::1", 81), "/", "[::1]:81"),
])
def test_parse_url(url: str, origin: tuple[str, str, int], target: str, host: str) -> None:
    assert parse_url(url) == (origin, target, host)


@pytest.mark.parametrize("url", ["ftp://a.test/", "a.test/x", "http:///x"])
def test_parse_url_rejects_what_it_cannot_reach(url: str) -> None:
    with pytest.raises(ValueError):
        parse_url(url)
