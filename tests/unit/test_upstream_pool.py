"""The outgoing layer's pool on its own: TLS with SNI, the open-connection bound, connect
failures, and the buffered ``exchange`` on one of its connections."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import trustme
import uvloop

from proxy.backends.h1client import exchange, reusable
from proxy.backends.pool import Pool
from proxy.errors import UpstreamError

Runner = Callable[[Coroutine[Any, Any, None]], None]
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
GET = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    runner: Runner = asyncio.run if request.param == "asyncio" else uvloop.run
    return runner


async def answer_all(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(OK)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def serve(handler: Handler, context: ssl.SSLContext | None = None
                ) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=context)
    return server, f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


def test_tls_pool_verifies_server_hostname_and_sends_it_as_sni(run: Runner) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("api.test").configure_cert(server_context)
    names: list[str | None] = []
    server_context.sni_callback = lambda sock, name, ctx: names.append(name)  # type: ignore[assignment,return-value]
    trust = ssl.create_default_context()
    ca.configure_trust(trust)

    async def main() -> None:
        server, address = await serve(answer_all, server_context)
        pool = Pool(address, ssl_context=trust, server_hostname="api.test")
        for _ in range(2):
            conn, reused = await pool.acquire(2)
            response = await exchange(conn, GET, 2)
            assert (response.status, response.body) == (200, b"ok")
            pool.release(conn, reusable(conn))
        assert reused and names == ["api.test"] and pool.state()["connects"] == 1
        mismatch = Pool(address, ssl_context=trust)  # verifies 127.0.0.1: not in the cert
        with pytest.raises(UpstreamError) as info:
            await mismatch.connect(2)
        assert info.value.retryable and "certificate verification failed" in info.value.log_detail
        pool.retire()
        server.close()
    run(main())


def test_a_full_pool_hands_the_next_released_connection_to_the_waiter(run: Runner) -> None:
    async def main() -> None:
        server, address = await serve(answer_all)
        pool = Pool(address, max_open=1)
        first, reused = await pool.acquire(1)
        assert not reused
        waiting = asyncio.ensure_future(pool.acquire(1))
        await asyncio.sleep(0.01)
        assert not waiting.done() and len(pool.waiting) == 1
        await exchange(first, GET, 2)
        pool.release(first, reusable(first))
        second, reused = await waiting
        assert second is first and reused and pool.state()["connects"] == 1
        pool.release(second, False)
        pool.retire()
        server.close()
    run(main())


def test_a_full_pool_gives_up_after_the_timeout_and_forgets_the_waiter(run: Runner) -> None:
    async def main() -> None:
        server, address = await serve(answer_all)
        pool = Pool(address, max_open=1)
        conn, _ = await pool.acquire(1)
        with pytest.raises(UpstreamError, match="pool exhausted") as info:
            await pool.acquire(0.05)
        assert info.value.retryable and not pool.waiting
        pool.release(conn, False)  # closing one frees the slot: a new connection is made
        again, reused = await pool.acquire(1)
        assert not reused and pool.state()["connects"] == 2
        pool.release(again, False)
        server.close()
    run(main())


def test_refused_connect_is_retryable_and_frees_its_slot(run: Runner) -> None:
    async def main() -> None:
        server, address = await serve(answer_all)
        server.close()
        await server.wait_closed()
        pool = Pool(address, max_open=1)
        for _ in range(2):  # the failed connect did not keep the only slot
            with pytest.raises(UpstreamError) as info:
                await pool.acquire(1)
            assert info.value.retryable and "connect failed" in info.value.log_detail
        assert pool.opening == 0 and pool.busy == 0
    run(main())


@pytest.mark.parametrize("answer,error", [
    (b"HTTP/1.1 099 X\r\n\r\n", "malformed"),  # RFC 9110 §15: no status below 100
    (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000 + b"\r\n\r\n", "head too large"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc", "closed"),
])
def test_broken_answers_fail_the_exchange(run: Runner, answer: bytes, error: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    async def main() -> None:
        server, address = await serve(handler)
        pool = Pool(address)
        conn = await pool.connect(1)
        with pytest.raises(UpstreamError, match=error):
            await exchange(conn, GET, 2)
        assert not reusable(conn)
        pool.release(conn, False)
        server.close()
    run(main())
