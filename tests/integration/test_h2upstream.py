"""backends/h2upstream.py against a real grpcio server (tests/grpcserver.py), cleartext and TLS:
unary, server-streaming and client-streaming calls with their trailers (grpc-status,
grpc-message), a trailers-only error answer, a server that resets its stream, the caller
resetting one, flow control both ways past the windows, many streams on one connection and
the peer's SETTINGS_MAX_CONCURRENT_STREAMS, ALPN h2 required over TLS, connect failures."""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import trustme

from proxy.backends.h2upstream import STREAM_WINDOW, H2Pool, H2Stream
from proxy.backends.tlsclient import client_context
from proxy.errors import UpstreamError
from tests.grpcserver import GrpcServer, frame, unframe
from tests.h2server import H2Backend
from tests.tlsupstream import TlsUpstream

T = TypeVar("T")
GRPC_FIELDS = [("content-type", "application/grpc"), ("te", "trailers"),
               ("x-test", "from-the-proxy")]


def run(make: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(make(), 60))


async def call(pool: H2Pool, method: str, *messages: bytes,
               fields: list[tuple[str, str]] | None = None
               ) -> tuple[int, list[tuple[str, str]], list[bytes], dict[str, str]]:
    """One gRPC call: (status, head fields, response messages, trailers)."""
    stream = await pool.open("POST", f"/test.Echo/{method}", "grpc.test", "http",
                             GRPC_FIELDS if fields is None else fields)
    for message in messages:
        await stream.send(frame(message))
    await stream.end()
    status, head = await stream.response()
    body = await read_all(stream)
    trailers = dict(stream.trailers or (head if stream.headers_only else []))
    return status, head, unframe(body), trailers


async def read_all(stream: H2Stream) -> bytes:
    parts = []
    while chunk := await stream.read():
        parts.append(chunk)
    return b"".join(parts)


@pytest.fixture(scope="module")
def server() -> Iterator[GrpcServer]:
    with GrpcServer() as grpc_server:
        yield grpc_server


def test_unary_call_with_trailers(server: GrpcServer) -> None:
    async def go() -> Any:
        pool = H2Pool(server.address)
        try:
            return await call(pool, "Unary", b"hello"), pool.state()
        finally:
            await pool.close()
    (status, head, messages, trailers), state = run(go)
    assert status == 200 and dict(head)["content-type"] == "application/grpc"
    assert messages == [b"echo:hello"]
    assert trailers["grpc-status"] == "0"
    assert state["connects"] == 1
    assert server.seen[-1]["x-test"] == "from-the-proxy"  # request fields reach the backend


def test_server_streaming_past_the_stream_window(server: GrpcServer) -> None:
    # 40 messages of 64 KiB: ten times the 256 KiB a stream may hold unread, so the window
    # must be reopened as the reader goes
    async def go() -> Any:
        pool = H2Pool(server.address)
        try:
            small = await call(pool, "Count", b"5")
            large = await call(pool, "Count", b"40:65536")
            return small, large
        finally:
            await pool.close()
    small, large = run(go)
    assert small[2] == [b"0", b"1", b"2", b"3", b"4"] and small[3]["grpc-status"] == "0"
    assert len(large[2]) == 40 and {len(m) for m in large[2]} == {65536}
    assert large[2][39].startswith(b"39.")
    assert 40 * 65536 >= 10 * STREAM_WINDOW and large[3]["grpc-status"] == "0"


def test_client_streaming_past_the_peer_window(server: GrpcServer) -> None:
    # 2 MiB up in 32 messages: far more than the 64 KiB initial window of HTTP/2
    async def go() -> Any:
        pool = H2Pool(server.address)
        try:
            return await call(pool, "Sum", *[bytes(65536)] * 32)
        finally:
            await pool.close()
    status, _, messages, trailers = run(go)
    assert status == 200 and messages == [str(32 * 65536).encode()]
    assert trailers["grpc-status"] == "0"


def test_an_error_comes_as_a_trailers_only_answer(server: GrpcServer) -> None:
    async def go() -> Any:
        pool = H2Pool(server.address)
        try:
            stream = await pool.open("POST", "/test.Echo/Fail", "grpc.test", "http",
                                     GRPC_FIELDS)
            await stream.send(frame(b"x"), end_stream=True)
            status, head = await stream.response()
            return status, dict(head), stream.headers_only, await read_all(stream)
        finally:
            await pool.close()
    status, head, headers_only, body = run(go)
    assert status == 200 and headers_only and body == b""
    assert head["grpc-status"] == str(grpc.StatusCode.INVALID_ARGUMENT.value[0])
    assert head["grpc-message"] == "bad thing"


def test_an_unknown_method_is_unimplemented(server: GrpcServer) -> None:
    async def go() -> Any:
        pool = H2Pool(server.address)
        try:
            stream = await pool.open("POST", "/test.Echo/Nope", "grpc.test", "http",
                                     GRPC_FIELDS, end_stream=True)
            _, head = await stream.response()
            await read_all(stream)
            return dict(stream.trailers or head)
        finally:
            await pool.close()
    assert run(go)["grpc-status"] == "12"  # UNIMPLEMENTED: what CLB's gRPC check expects


def test_a_call_the_server_cancels_ends_with_cancelled_trailers(server: GrpcServer) -> None:
    # grpcio answers its own cancel with trailers (grpc-status 1), not with RST_STREAM
    status, _, messages, trailers = run(lambda: _one_call(server.address, "Cancel", b""))
    assert status == 200 and messages == [b"first"]
    assert trailers == {"grpc-status": "1", "grpc-message": "CANCELLED"}


async def _one_call(address: str, method: str, *messages: bytes) -> Any:
    pool = H2Pool(address)
    try:
        return await call(pool, method, *messages)
    finally:
        await pool.close()


@pytest.fixture
def backend() -> Iterator[H2Backend]:
    with H2Backend() as h2_backend:
        yield h2_backend


async def _get(pool: H2Pool, path: str) -> tuple[int, bytes]:
    stream = await pool.open("POST", path, "a.test", "http", GRPC_FIELDS, end_stream=True)
    status, _ = await stream.response()
    return status, await read_all(stream)


def test_a_stream_the_backend_resets_mid_answer_raises_and_the_connection_goes_on(
        backend: H2Backend) -> None:
    async def go() -> Any:
        pool = H2Pool(backend.address)
        try:
            stream = await pool.open("POST", "/reset", "a.test", "http", GRPC_FIELDS,
                                     end_stream=True)
            status, _ = await stream.response()
            with pytest.raises(UpstreamError) as info:
                await read_all(stream)
            return status, info.value, await _get(pool, "/after"), pool.state()
        finally:
            await pool.close()
    status, error, after, state = run(go)
    assert status == 200 and "reset" in str(error) and "INTERNAL_ERROR" in error.log_detail
    assert not error.retryable  # it had answered: never replayed
    assert after == (200, b"ok") and state["connects"] == 1


def test_a_refused_stream_is_retryable(backend: H2Backend) -> None:
    async def go() -> Any:
        pool = H2Pool(backend.address)
        try:
            with pytest.raises(UpstreamError) as info:
                await _get(pool, "/refuse")
            return info.value
        finally:
            await pool.close()
    error = run(go)
    assert error.retryable and "REFUSED_STREAM" in error.log_detail  # RFC 9113 §8.7


def test_goaway_fails_unprocessed_streams_as_retryable_and_a_new_connection_is_used(
        backend: H2Backend) -> None:
    async def go() -> Any:
        pool = H2Pool(backend.address)
        try:
            with pytest.raises(UpstreamError) as info:
                await _get(pool, "/goaway")
            return info.value, await _get(pool, "/after"), pool.state()
        finally:
            await pool.close()
    error, after, state = run(go)
    assert error.retryable and "GOAWAY" in error.log_detail
    assert after == (200, b"ok") and state["connects"] == 2
    assert backend.requests == ["/goaway", "/after"]


def test_the_caller_resets_a_stream_and_the_connection_goes_on(server: GrpcServer) -> None:
    async def go() -> Any:
        pool = H2Pool(server.address)
        try:
            stream = await pool.open("POST", "/test.Echo/Count", "grpc.test", "http",
                                     GRPC_FIELDS)
            await stream.send(frame(b"100000:1024"), end_stream=True)
            await stream.response()
            first = await stream.read()
            stream.reset()
            with pytest.raises(UpstreamError):
                await stream.read()
            after = await call(pool, "Unary", b"next")
            return first, after, pool.state()
        finally:
            await pool.close()
    first, after, state = run(go)
    assert first and after[2] == [b"echo:next"]
    assert state == {"connections": 1, "connects": 1, "streams": 0}


def test_many_concurrent_calls_share_one_connection(server: GrpcServer) -> None:
    async def go() -> Any:
        pool = H2Pool(server.address)
        try:
            answers = await asyncio.gather(*(call(pool, "Unary", b"%d" % i)
                                             for i in range(50)))
            return answers, pool.state()
        finally:
            await pool.close()
    answers, state = run(go)
    assert [a[2] for a in answers] == [[b"echo:%d" % i] for i in range(50)]
    assert state["connects"] == 1


def test_the_peers_max_concurrent_streams_is_kept() -> None:
    server = GrpcServer(options=(("grpc.max_concurrent_streams", 1),))  # told by SETTINGS

    async def go(max_connections: int, warm: bool) -> Any:
        pool = H2Pool(server.address, max_connections=max_connections)
        peak = 0
        refused: list[int] = []

        async def one(i: int) -> list[bytes]:
            nonlocal peak
            for _ in range(3):
                stream = await pool.open("POST", "/test.Echo/Count", "grpc.test", "http",
                                         GRPC_FIELDS)
                peak = max(peak, max(len(c.streams) for c in pool.connections))
                await stream.send(frame(b"3:4096"), end_stream=True)
                try:
                    await stream.response()
                except UpstreamError as exc:
                    # grpc-core may still count a stream it has just ended and reset the
                    # next one before answering it (seen rarely, on a loaded machine); what
                    # is checked here is our side: never more open streams than allowed
                    assert "reset by the upstream" in exc.log_detail, exc.log_detail
                    refused.append(i)
                    continue
                return unframe(await read_all(stream))
            raise AssertionError("refused three times")
        try:
            if warm:  # a connection whose SETTINGS are known; cold: the burst comes first
                await call(pool, "Unary", b"settings first")
            answers = await asyncio.gather(*(one(i) for i in range(6)))
            return answers, peak, pool.state()
        finally:
            await pool.close()
    with server:
        for warm in (True, False):
            answers, peak, state = run(functools.partial(go, 1, warm))
            assert all(len(a) == 3 for a in answers) and peak == 1 and state["connects"] == 1
            answers, peak, state = run(functools.partial(go, 2, warm))
            assert all(len(a) == 3 for a in answers) and peak == 1 and state["connects"] == 2


def test_grpcs_over_tls_with_alpn_h2(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    async def go(context: Any) -> Any:
        pool = H2Pool(tls.address, ssl_context=context)
        try:
            return await call(pool, "Count", b"3")
        finally:
            await pool.close()
    with GrpcServer(ca) as tls:
        verified = run(lambda: go(client_context(ca_file, "h2")))
        unverified = run(lambda: go(client_context(None, "h2")))
    assert verified[2] == unverified[2] == [b"0", b"1", b"2"]
    assert verified[3]["grpc-status"] == "0"


def test_a_tls_peer_that_does_not_choose_h2_is_refused() -> None:
    async def go() -> Any:
        pool = H2Pool(f"127.0.0.1:{upstream.port}", ssl_context=client_context(None, "h2"))
        with pytest.raises(UpstreamError) as info:
            await pool.open("POST", "/x", "a.test", "https", GRPC_FIELDS)
        return info.value
    with TlsUpstream(trustme.CA(), alpn=("http/1.1",)) as upstream:
        error = run(go)
    assert "did not agree on h2" in str(error) and error.retryable


def test_a_refused_connect_is_a_retryable_upstream_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused

        async def go() -> Any:
            with pytest.raises(UpstreamError) as info:
                await H2Pool(f"127.0.0.1:{port}").open("POST", "/", "a", "http", GRPC_FIELDS)
            return info.value
        error = run(go)
    assert error.retryable and "connect failed" in str(error)
