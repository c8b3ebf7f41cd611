"""The CVM exchange in one process: a CvmTarget against the test upstream on port 0.

Framing both ways, reuse decisions, error mapping, timeouts, backpressure and the keep-alive
race, without the proxy process around it (tests/integration/test_cvm.py does that).
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import socket
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from proxy.backends.cvm import CvmTarget, CvmUpstreams, request_head, response_headers
from proxy.backends.upstream import HIGH_WATER
from proxy.config import Config, HealthCheck, Listener, Rule, Target
from proxy.errors import PayloadTooLarge, RequestTimeout, UpstreamError, UpstreamTimeout
from proxy.headers import TrustedProxies
from proxy.messages import Request, Response, Route
from proxy.streams import RequestBody
from tests.upstreams import Server, pattern_bytes

ROUTE = Route("web", "a.test", "/", "loc-1", "CVM:x")


def _request(method: str = "GET", path: str = "/", query: str = "",
             headers: tuple[tuple[str, str], ...] = (("Host", "a.test"),),
             stream: RequestBody | None = None, upgrade: str = "",
             version: str = "1.1") -> Request:
    return Request(method, path, query, headers, b"", version, "192.0.2.7", 5555, "http", "web",
                   time.time(), True, stream, upgrade)


class Env:
    """An upstream server and a bound CvmTarget in the running loop."""

    def __init__(self, server: asyncio.Server, upstream: Server, target: CvmTarget,
                 upstreams: CvmUpstreams) -> None:
        self.server = server
        self.upstream = upstream
        self.target = target
        self.upstreams = upstreams

    async def call(self, request: Request) -> Response:
        return (await self.target(request, ROUTE)).response

    async def get(self, path: str, query: str = "", method: str = "GET") -> tuple[Response, bytes]:
        response = await self.call(_request(method, path, query))
        return response, await _read(response)


async def _read(response: Response) -> bytes:
    if response.stream is None:
        return response.body
    return b"".join([chunk async for chunk in response.stream])


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run(test: Callable[[Env], Awaitable[Any]], *, read_timeout: float = 5.0,
        handler: Handler | None = None, address: str | None = None,
        buffering: bool = False, spool_dir: Path | None = None, timed: bool = True) -> Any:
    """``buffering``: proxy_request_buffering (off by default here: most tests are about the
    streamed exchange); ``timed``: CvmUpstreams' (upstream timings, the access log's)."""
    async def main() -> Any:
        upstream = Server("A")
        server = await asyncio.start_server(handler or upstream.serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        target = Target("CVM", address=address or f"127.0.0.1:{port}")
        listener = Listener("web", "HTTP", 0, proxy_read_timeout=read_timeout,
                            proxy_connect_timeout=1.0, proxy_request_buffering=buffering,
                            client_max_body_size=1 << 20)
        rule = Rule("a.test", "/", health_check=HealthCheck(enabled=False), targets=(target,),
                    location_id="loc-1")
        upstreams = CvmUpstreams(eject_after=3, eject_for=10, timed=timed,
                                 **({"spool_dir": spool_dir} if spool_dir else {}))
        bound, _ = upstreams.bind(listener, rule, target)
        assert isinstance(bound, CvmTarget)
        try:
            return await test(Env(server, upstream, bound, upstreams))
        finally:
            await upstreams.close()
            server.close()

    return uvloop.run(main())


# --- the request head ------------------------------------------------------------------------

def test_request_head_keeps_host_drops_hop_by_hop_and_expect_and_adds_clb_headers() -> None:
    request = _request("GET", "/p", "a=1", headers=(
        ("Host", "a.test"), ("Connection", "keep-alive, X-Secret"), ("X-Secret", "s"),
        ("Keep-Alive", "timeout=5"), ("Expect", "100-continue"), ("TE", "trailers"),
        ("X-Forwarded-For", "6.6.6.6"), ("Accept", "*/*")))
    head = request_head(request, TrustedProxies(()), "10.0.0.1:80", False).decode()
    assert head.startswith("GET /p?a=1 HTTP/1.1\r\nHost: a.test\r\n")
    for gone in ("Connection", "X-Secret", "Keep-Alive", "Expect", "TE:", "6.6.6.6"):
        assert gone not in head
    assert "Accept: */*\r\n" in head and "X-Forwarded-For: 192.0.2.7\r\n" in head
    assert "X-Real-IP: 192.0.2.7\r\n" in head and "X-Client-Proto: http\r\n" in head
    assert "Content-Length" not in head and head.endswith("\r\n\r\n")


@pytest.mark.parametrize("declared,framing", [(10, "Content-Length: 10"),
                                              (None, "Transfer-Encoding: chunked")])
def test_request_body_framing_follows_the_client(declared: int | None, framing: str) -> None:
    stream = RequestBody(declared, lambda: None, lambda: None)
    head = request_head(_request("PUT", headers=(("Host", "a"), ("Content-Length", "99"),
                                                 ("Transfer-Encoding", "chunked")),
                                 stream=stream), TrustedProxies(()), "x:1", False).decode()
    assert head.count("Content-Length") + head.count("Transfer-Encoding") == 1
    assert framing in head


def test_bodiless_post_says_content_length_zero() -> None:
    head = request_head(_request("POST"), TrustedProxies(()), "x:1", False).decode()
    assert "Content-Length: 0\r\n" in head


def test_http10_client_without_host_gets_the_target_address_as_host() -> None:
    head = request_head(_request(headers=(), version="1.0"), TrustedProxies(()), "10.0.0.1:80",
                        False).decode()
    assert "Host: 10.0.0.1:80\r\n" in head and "X-Client-Proto-Ver: HTTP/1.0\r\n" in head


def test_websocket_upgrade_puts_connection_and_upgrade_back() -> None:
    request = _request(headers=(("Host", "a"), ("Connection", "Upgrade"),
                                ("Upgrade", "websocket"), ("Sec-WebSocket-Key", "k")),
                       upgrade="websocket")
    head = request_head(request, TrustedProxies(()), "x:1", True).decode()
    assert "Connection: upgrade\r\nUpgrade: websocket\r\n" in head
    assert "Sec-WebSocket-Key: k\r\n" in head


def test_response_headers_drop_hop_by_hop_named_framing_date_and_server() -> None:
    raw = [("Content-Type", "text/plain"), ("Connection", "close, X-Hop"), ("X-Hop", "1"),
           ("Keep-Alive", "timeout=5"), ("Transfer-Encoding", "chunked"),
           ("Content-Length", "5"), ("Date", "x"), ("Server", "y"), ("Set-Cookie", "a=1"),
           ("Set-Cookie", "b=2")]
    assert response_headers(raw) == ((("Content-Type", "text/plain"), ("Set-Cookie", "a=1"),
                                      ("Set-Cookie", "b=2")), False)
    assert response_headers([("location", "/x")]) == ((("location", "/x"),), True)


# --- responses -------------------------------------------------------------------------------

@pytest.mark.parametrize("timed", [True, False])
def test_upstream_timings_are_taken_only_when_timed(timed: bool) -> None:
    async def test(env: Env) -> None:
        for path in ("/", "/download"):  # the body with the head, and one streamed after it
            outcome = await env.target(_request("GET", path, "n=100000"), ROUTE)
            body = await _read(outcome.response)
            assert outcome.response.status == 200 and body
            timing = outcome.upstream
            if not timed:
                assert timing is None
                continue
            assert timing is not None and timing.status == 200
            assert timing.address == env.target.pool.address
            assert 0 < timing.start <= timing.sent <= timing.header <= timing.done
    run(test, timed=timed)


def test_get_streams_the_body_and_reuses_the_connection() -> None:
    async def test(env: Env) -> None:
        for _ in range(3):
            response, body = await env.get("/download", "n=1000000")
            assert response.status == 200 and response.length == 1000000
            assert body == pattern_bytes(0, 1000000)
        assert env.upstream.stats["connections"] == 1
        assert env.target.pool.state() == {"idle": 1, "busy": 0, "connects": 1}
    run(test)


def test_chunked_response_has_no_length_and_drops_trailers() -> None:
    async def test(env: Env) -> None:
        response, body = await env.get("/chunked", "parts=a,bb,ccc")
        assert response.length is None and body == b"abbccc"
        assert not any(k.lower() in ("x-trailer", "transfer-encoding")
                       for k, _ in response.headers)
        await env.get("/")
        assert env.upstream.stats["connections"] == 1
    run(test)


def test_head_answer_keeps_its_length_and_has_no_body() -> None:
    async def test(env: Env) -> None:
        response, body = await env.get("/download", "n=500", method="HEAD")
        assert response.status == 200 and response.length == 500 and body == b""
        _, body = await env.get("/")
        assert body == b"A" and env.upstream.stats["connections"] == 1
    run(test)


@pytest.mark.parametrize("code", [204, 304])
def test_204_and_304_have_no_body_and_keep_the_connection(code: int) -> None:
    async def test(env: Env) -> None:
        response, body = await env.get("/status", f"code={code}")
        assert response.status == code and response.stream is None and body == b""
        if code == 304:
            assert ("ETag", '"v1"') in response.headers
        await env.get("/")
        assert env.upstream.stats["connections"] == 1
    run(test)


@pytest.mark.parametrize("path,query,expected", [
    ("/status", "code=204&body=1", b""),
    ("/broken", "kind=extra", b"ok"),
])
def test_bytes_beyond_the_response_discard_the_connection(path: str, query: str,
                                                          expected: bytes) -> None:
    async def test(env: Env) -> None:
        _, body = await env.get(path, query)
        assert body == expected
        _, body = await env.get("/")
        assert body == b"A" and env.target.pool.connects == 2
    run(test)


def test_close_delimited_body_ends_cleanly_at_the_close() -> None:
    async def test(env: Env) -> None:
        response, body = await env.get("/broken", "kind=close_delimited")
        assert response.length is None and body == b"until-close"
        assert env.target.pool.state()["idle"] == 0
    run(test)


@pytest.mark.parametrize("kind", ["cl_te", "bad_status", "garbage", "lf_only"])
def test_broken_response_head_is_a_502_that_is_not_retried(kind: str) -> None:
    async def test(env: Env) -> None:
        with pytest.raises(UpstreamError) as info:
            await env.get("/broken", f"kind={kind}")
        assert info.value.status_hint == 502 and not info.value.retryable
        assert env.target.pool.state()["busy"] == 0 and env.target.pool.connects == 1
    run(test)


@pytest.mark.parametrize("path,query", [("/broken", "kind=bad_chunk"),
                                        ("/die", "total=100000&after=1000")])
def test_upstream_breaking_off_mid_body_raises_from_the_body(path: str, query: str) -> None:
    async def test(env: Env) -> None:
        response = await env.call(_request("GET", path, query + "&delay=0.1"))
        assert response.status == 200
        with pytest.raises(UpstreamError):
            await _read(response)
        assert env.target.pool.state() == {"idle": 0, "busy": 0, "connects": 1}
    run(test)


def test_bad_framing_in_the_same_read_as_the_head_is_a_502() -> None:
    async def test(env: Env) -> None:
        # head, a chunk and a bad chunk size in one read: the client gets a 502 at once
        with pytest.raises(UpstreamError) as info:
            await env.call(_request("GET", "/broken", "kind=bad_chunk"))
        assert not info.value.retryable
    run(test)


@pytest.mark.parametrize("method,retryable", [("GET", True), ("DELETE", True),
                                              ("POST", False), ("PATCH", False)])
def test_reset_before_the_response_is_retryable_only_when_replayable(
        method: str, retryable: bool) -> None:
    async def test(env: Env) -> None:
        with pytest.raises(UpstreamError) as info:
            await env.get("/reset", method=method)
        assert info.value.retryable is retryable
    run(test)


def test_connect_failures_are_retryable_and_eject_the_target() -> None:
    async def test(env: Env) -> None:
        for _ in range(3):
            assert env.target.usable()
            with pytest.raises(UpstreamError) as info:
                await env.get("/")
            assert info.value.retryable and "connect" in info.value.log_detail
        assert not env.target.usable()
        assert env.upstreams.state()["ejection"]["127.0.0.1:9"]["ejected"]
    run(test, address="127.0.0.1:9")


def test_slow_response_head_is_a_read_timeout() -> None:
    async def test(env: Env) -> None:
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await env.get("/slow", "head=2")
        assert time.monotonic() - started < 1.5
    run(test, read_timeout=0.3)


def test_gap_in_the_body_longer_than_the_read_timeout_raises_from_the_body() -> None:
    async def test(env: Env) -> None:
        response = await env.call(_request("GET", "/slow", "body=2"))
        with pytest.raises(UpstreamTimeout):
            await _read(response)
    run(test, read_timeout=0.3)


def test_an_unread_body_that_is_dropped_closes_its_connection() -> None:
    async def test(env: Env) -> None:
        response = await env.call(_request("GET", "/download", "n=10000000"))
        assert env.target.pool.busy == 1
        del response
        gc.collect()
        assert env.target.pool.state() == {"idle": 0, "busy": 0, "connects": 1}
    run(test)


def test_a_slow_reader_pauses_the_upstream_so_buffering_stays_bounded() -> None:
    async def test(env: Env) -> None:
        response = await env.call(_request("GET", "/download", "n=50000000"))
        assert response.stream is not None
        first = await response.stream.__anext__()
        await asyncio.sleep(0.3)  # the upstream could send all 50 MB in that time
        conn = response.stream._conn  # type: ignore[attr-defined]
        assert conn.read_paused and conn.buffered <= HIGH_WATER + 1024 * 1024
        rest = await _read(response)
        assert len(first) + len(rest) == 50000000
    run(test)


def test_an_upgrade_answer_is_a_101_with_a_tunnel() -> None:
    async def test(env: Env) -> None:
        request = _request(headers=(("Host", "a"), ("Connection", "Upgrade"),
                                    ("Upgrade", "websocket")), upgrade="websocket", path="/ws")
        response = await env.call(request)
        assert response.status == 101 and response.tunnel is not None
        headers = dict(response.headers)
        assert headers["Connection"] == "upgrade" and headers["Upgrade"] == "websocket"
        assert headers["Sec-WebSocket-Accept"] == "test"
        response.tunnel.close()
        assert env.target.pool.state()["busy"] == 0
    run(test)


def test_101_to_a_request_that_did_not_ask_is_a_502() -> None:
    async def test(env: Env) -> None:
        with pytest.raises(UpstreamError):
            await env.call(_request(headers=(("Host", "a"), ("Upgrade", "h2c")), upgrade="h2c",
                                    path="/ws"))
    # the test upstream only switches for websocket; make it switch for anything
    async def switch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)
    run(test, handler=switch)


# --- request bodies --------------------------------------------------------------------------

async def _feed(stream: RequestBody, parts: list[bytes], end: bool = True) -> None:
    for part in parts:
        await asyncio.sleep(0)
        stream.feed(part)
    if end:
        stream.end()


@pytest.mark.parametrize("declared", [True, False])
def test_upload_is_streamed_with_the_clients_framing(declared: bool) -> None:
    parts = [b"x" * 100000, b"y" * 5, b"z" * 300000]
    total = sum(map(len, parts))

    async def test(env: Env) -> None:
        stream = RequestBody(total if declared else None, lambda: None, lambda: None)
        feeder = asyncio.ensure_future(_feed(stream, parts))
        response = await env.call(_request("POST", "/upload", "hash=1", stream=stream))
        out = json.loads(await _read(response))
        await feeder
        assert out["received"] == total
        assert (out["content_length"], out["transfer_encoding"]) == (
            (str(total), None) if declared else (None, "chunked"))
        await env.get("/")
        assert env.upstream.stats["connections"] == 1  # body sent whole: reused
    run(test)


def test_expect_is_answered_by_our_first_read_and_not_forwarded() -> None:
    async def test(env: Env) -> None:
        first_read: list[float] = []
        stream = RequestBody(3, lambda: None, lambda: None,
                             lambda: first_read.append(time.monotonic()))
        request = _request("POST", "/echo", stream=stream,
                           headers=(("Host", "a"), ("Expect", "100-continue")))
        feeder = asyncio.ensure_future(_feed(stream, [b"abc"]))
        out = json.loads(await _read(await env.call(request)))
        await feeder
        assert first_read and out["body"] == "abc"
        assert not any(k.lower() == "expect" for k, _ in out["headers"])
    run(test)


def test_client_body_error_fails_the_request_and_drops_the_upstream_connection() -> None:
    async def test(env: Env) -> None:
        stream = RequestBody(1000, lambda: None, lambda: None)
        stream.feed(b"x" * 10)
        request = _request("POST", "/upload", stream=stream)
        task = asyncio.ensure_future(env.call(request))
        await asyncio.sleep(0.05)
        stream.abort(RequestTimeout("client body timeout"))
        with pytest.raises(RequestTimeout):
            await task
        assert env.target.pool.state() == {"idle": 0, "busy": 0, "connects": 1}
    run(test)


@pytest.mark.parametrize("size", [10, 500_000])
def test_buffered_upload_is_sent_whole_with_content_length(size: int, tmp_path: Path) -> None:
    parts = [b"x" * (size // 2), b"y" * (size - size // 2)]

    async def test(env: Env) -> None:
        stream = RequestBody(None, lambda: None, lambda: None)
        feeder = asyncio.ensure_future(_feed(stream, parts))
        response = await env.call(_request("POST", "/upload", "hash=1", stream=stream))
        out = json.loads(await _read(response))
        await feeder
        assert (out["received"], out["content_length"], out["transfer_encoding"]) == (
            size, str(size), None)
        assert out["sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()
        assert list(tmp_path.iterdir()) == []  # the spool file (if any) was never named
    run(test, buffering=True, spool_dir=tmp_path)


def test_buffered_upload_broken_by_the_client_never_connects() -> None:
    async def test(env: Env) -> None:
        stream = RequestBody(None, lambda: None, lambda: None)
        stream.feed(b"x" * 100_000)
        task = asyncio.ensure_future(env.call(_request("POST", "/upload", stream=stream)))
        await asyncio.sleep(0.05)
        stream.abort(RequestTimeout("client body timeout"))
        with pytest.raises(RequestTimeout):
            await task
        assert env.target.pool.state()["connects"] == 0
        assert env.upstream.stats["connections"] == 0
    run(test, buffering=True)


def test_buffered_upload_over_the_limit_is_413_before_connecting() -> None:
    async def test(env: Env) -> None:
        stream = RequestBody(None, lambda: None, lambda: None)
        feeder = asyncio.ensure_future(_feed(stream, [b"x" * 600_000] * 2))
        with pytest.raises(PayloadTooLarge):
            await env.call(_request("POST", "/upload", stream=stream))
        feeder.cancel()
        assert env.target.pool.state()["connects"] == 0
    run(test, buffering=True)


def test_buffered_upload_whose_connect_fails_is_not_retryable() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"

    async def test(env: Env) -> None:
        stream = RequestBody(3, lambda: None, lambda: None)
        stream.feed(b"abc")
        stream.end()
        with pytest.raises(UpstreamError) as info:
            await env.call(_request("POST", "/upload", stream=stream))
        assert info.value.retryable is False  # its body was read: no other target gets it
    run(test, buffering=True, address=address)


# --- the keep-alive race ---------------------------------------------------------------------

def _race_server() -> tuple[Handler, list[str]]:
    """Answers the first request of each connection; resets on the second (as a server whose
    idle timer fired just as the request arrived)."""
    seen: list[str] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head.split(b" ")[0].decode())
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return
        seen.append(head.split(b" ")[0].decode() + "(reset)")
        writer.transport.abort()

    return handler, seen


def test_pooled_connection_dead_on_reuse_is_retried_fresh_for_get() -> None:
    handler, seen = _race_server()

    async def test(env: Env) -> None:
        await env.get("/")
        _, body = await env.get("/")
        assert body == b"ok"
        assert seen == ["GET", "GET(reset)", "GET"]
    run(test, handler=handler)


def test_pooled_connection_dead_on_reuse_is_not_retried_for_post() -> None:
    handler, seen = _race_server()

    async def test(env: Env) -> None:
        await env.get("/")
        with pytest.raises(UpstreamError) as info:
            await env.get("/", method="POST")
        assert not info.value.retryable
        assert seen == ["GET", "POST(reset)"]
    run(test, handler=handler)


def test_idle_connections_close_after_the_idle_timeout() -> None:
    async def test(env: Env) -> None:
        env.target.pool.idle_timeout = 0.05
        await env.get("/")
        assert env.target.pool.state()["idle"] == 1
        await asyncio.sleep(0.2)
        assert env.target.pool.state()["idle"] == 0
    run(test)


# --- CvmUpstreams across reloads -------------------------------------------------------------

def _config(*rules: Rule) -> Config:
    return Config(listeners=(Listener("web", "HTTP", 0, rules=rules),))


def test_rebinding_keeps_pools_and_health_and_retain_prunes_the_rest() -> None:
    checked = HealthCheck(interval=60)  # started, but no second round during the test
    one = Target("CVM", address="127.0.0.1:9")
    two = Target("CVM", address="127.0.0.1:10")
    rule_a = Rule("a.test", "/", health_check=checked, targets=(one, two), location_id="la")
    rule_b = Rule("b.test", "/", health_check=checked, targets=(one,), location_id="lb")
    listener = Listener("web", "HTTP", 0)

    async def main() -> None:
        upstreams = CvmUpstreams()
        first = [upstreams.bind(listener, r, t)[0] for r, t in
                 ((rule_a, one), (rule_a, two), (rule_b, one))]
        again = upstreams.bind(listener, rule_a, one)[0]
        assert isinstance(again, CvmTarget) and isinstance(first[0], CvmTarget)
        assert again.pool is first[0].pool and again.check is first[0].check
        assert first[2].pool is first[0].pool and first[2].check is not first[0].check
        assert all(isinstance(b, CvmTarget) and b.check.running for b in first)
        upstreams.retain(_config(Rule("b.test", "/", targets=(one,), location_id="lb")))
        state = upstreams.state()
        assert set(state["pools"]) == {"127.0.0.1:9"}
        assert [(c["location_id"], c["address"]) for c in state["checks"]] == [
            ("lb", "127.0.0.1:9")]
        removed = [b for b in first if isinstance(b, CvmTarget) and b.check.retired]
        assert len(removed) == 2 and not any(b.check.running for b in removed)
        assert first[1].pool.retired  # type: ignore[attr-defined]
        await upstreams.close()
        assert not first[2].check.running  # type: ignore[attr-defined]

    uvloop.run(main())
