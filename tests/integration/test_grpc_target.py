"""GRPC/GRPCS rules from the router to a real grpcio server: the router and CvmUpstreams.bind as
the server builds them, fed HTTP/2 ``Request`` values as the HTTP/2 frontend hands them over (a
grpcio client through the real proxy: test_grpc_proxy.py). Unary and server-streaming calls with
trailers, a Trailers-Only error, a client-streamed body, the CLB headers reaching the backend,
GRPCS with backend_ca, the gRPC health check (Alive, then Dead when the server stops) and an
HTTP/1.1 request answered 505 through the real proxy without reaching the backend."""

from __future__ import annotations

import asyncio
import http.client
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trustme
import uvloop

from proxy.backends.cvm import CvmUpstreams
from proxy.backends.grpc import GrpcBody
from proxy.config import Config, parse_config
from proxy.messages import Outcome, Request
from proxy.router import Backends, Router
from proxy.scf.local import LocalFunctions
from proxy.streams import RequestBody
from tests.configs import listener
from tests.grpcserver import GrpcServer, frame, unframe
from tests.h2server import H2Backend
from tests.proxyproc import ProxyProcess

T = TypeVar("T")
GRPC_HEADERS = (("Host", "grpc.test"), ("Content-Type", "application/grpc"),
                ("TE", "trailers"), ("X-Test", "through-the-router"))


def _config(address: str, forward_type: str = "GRPC", check: dict[str, Any] | None = None,
            backend_ca: Path | None = None) -> Config:
    rule: dict[str, Any] = {"domain": "grpc.test", "url": "/", "forward_type": forward_type,
                            "health_check": check or {"enabled": False},
                            "targets": [{"type": "CVM", "address": address}]}
    if backend_ca is not None:
        rule["backend_ca"] = str(backend_ca)
    return parse_config({"listener": [{"name": "web", "protocol": "HTTP", "port": 0,
                                       "rule": [rule]}]}, None, Path("."), {})


def _request(method: str, body: bytes = b"", stream: RequestBody | None = None) -> Request:
    return Request("POST", f"/test.Echo/{method}", "", GRPC_HEADERS, body, "2", "127.0.0.1",
                   40000, "https", "web", time.time(), stream=stream)


def run(make: Callable[[], Awaitable[T]], timeout: float = 60) -> T:
    """On uvloop, the proxy's loop (test_h2upstream.py runs on asyncio's own)."""
    return uvloop.run(asyncio.wait_for(make(), timeout))


async def _answer(outcome: Outcome) -> tuple[int, dict[str, str], list[bytes], dict[str, str],
                                             bool]:
    """(status, head, messages, trailers, headers_only) of a routed gRPC answer."""
    response = outcome.response
    body = response.stream
    assert isinstance(body, GrpcBody)
    parts = [chunk async for chunk in body]
    return (response.status, dict(response.headers), unframe(b"".join(parts)),
            dict(body.trailers), body.headers_only)


async def _routed(config: Config, *requests: Request) -> list[Any]:
    upstreams = CvmUpstreams()
    router = Router(config, Backends(local=LocalFunctions(()), cvm=upstreams.bind))
    try:
        return [await _answer(await router.handle(r)) for r in requests]
    finally:
        await upstreams.close()


@pytest.fixture(scope="module")
def server() -> Iterator[GrpcServer]:
    with GrpcServer() as grpc_server:
        yield grpc_server


def test_unary_and_server_streaming_calls_with_trailers(server: GrpcServer) -> None:
    unary, stream = run(lambda: _routed(_config(server.address),
                                        _request("Unary", frame(b"hi")),
                                        _request("Count", frame(b"3"))))
    assert unary[:3] == (200, unary[1], [b"echo:hi"])
    assert unary[1]["content-type"] == "application/grpc" and "date" not in unary[1]
    assert unary[3]["grpc-status"] == "0" and not unary[4]
    assert stream[2] == [b"0", b"1", b"2"] and stream[3]["grpc-status"] == "0"
    seen = server.seen[-1]
    assert seen["x-test"] == "through-the-router"
    # the CLB headers, as for HTTP/1.1 targets; the version the frontend spoke
    assert seen["x-client-proto-ver"] == "HTTP/2" and seen["x-real-ip"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"


def test_an_error_is_relayed_as_trailers_only(server: GrpcServer) -> None:
    [(status, head, messages, trailers, headers_only)] = run(lambda: _routed(
        _config(server.address), _request("Fail", frame(b"x"))))
    assert status == 200 and headers_only and messages == [] and trailers == {}
    assert head["grpc-status"] == "3" and head["grpc-message"] == "bad thing"


@pytest.fixture(scope="module")
def narrow() -> Iterator[GrpcServer]:
    """A server whose stream window is 16 KiB (no BDP growth): an upload waits for window."""
    with GrpcServer(options=(("grpc.http2.lookahead_bytes", 16384),
                             ("grpc.http2.bdp_probe", 0))) as grpc_server:
        yield grpc_server


@pytest.mark.parametrize("pause", [0.0, 0.2], ids=["fed-at-once", "answer-awaited-first"])
def test_a_client_streamed_body_goes_up_as_it_arrives(narrow: GrpcServer, pause: float
                                                      ) -> None:
    """1.25 MiB through a 16 KiB window. With a pause after the first message the answer is
    awaited before the upload runs out of window: both wait on the one stream at once, and
    each must be woken (one waiter slot left one of them waiting for ever)."""
    server = narrow

    async def go() -> Any:
        body = RequestBody(None, lambda: None, lambda: None)
        upstreams = CvmUpstreams()
        router = Router(_config(server.address), Backends(local=LocalFunctions(()),
                                                          cvm=upstreams.bind))
        try:
            routed = asyncio.ensure_future(router.handle(_request("Sum", stream=body)))
            for i in range(20):  # 20 messages of 64 KiB, fed while the call is open
                body.feed(frame(bytes(65536)))
                await asyncio.sleep(pause if i == 0 else 0)
            body.end()
            return await _answer(await routed)
        finally:
            await upstreams.close()
    status, _, messages, trailers, _ = run(go, timeout=20)
    assert status == 200 and messages == [str(20 * 65536).encode()]
    assert trailers["grpc-status"] == "0"


def test_grpcs_verifies_against_backend_ca(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    other = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    with GrpcServer(ca) as tls:
        [ok] = run(lambda: _routed(_config(tls.address, "GRPCS", backend_ca=ca_file),
                                   _request("Unary", frame(b"tls"))))

        async def refused() -> Outcome:
            upstreams = CvmUpstreams()
            router = Router(_config(tls.address, "GRPCS", backend_ca=other),
                            Backends(local=LocalFunctions(()), cvm=upstreams.bind))
            try:
                return await router.handle(_request("Unary", frame(b"tls")))
            finally:
                await upstreams.close()
        bad = run(refused)
    assert ok[2] == [b"echo:tls"] and ok[3]["grpc-status"] == "0"
    assert bad.response.status == 502 and bad.error == "UpstreamError"


def test_the_grpc_health_check_sees_alive_then_dead() -> None:
    check = {"interval": 2, "timeout": 1, "healthy_threshold": 2, "unhealthy_threshold": 2}

    async def go() -> Any:
        upstreams = CvmUpstreams()
        config = _config(grpc_server.address, check=check)
        Router(config, Backends(local=LocalFunctions(()), cvm=upstreams.bind))
        loc = config.listeners[0].rules[0].location_id
        try:
            async def until(detail: str) -> None:
                while upstreams.health_of("web", loc, grpc_server.address) != detail:
                    await asyncio.sleep(0.1)
            await asyncio.wait_for(until("Alive"), 30)
            [state] = upstreams.state()["checks"]
            grpc_server.__exit__()
            await asyncio.wait_for(until("Dead"), 30)
            return state
        finally:
            await upstreams.close()
    grpc_server = GrpcServer().__enter__()
    state = run(go)
    # the default path "/" is no method: UNIMPLEMENTED, CLB's default ExtendedCode, is alive
    assert state["last_status"] == 200 and state["last_error"] == ""


def test_http1_to_a_grpc_rule_is_505_through_the_real_proxy(tmp_path: Path,
                                                             server: GrpcServer) -> None:
    before = len(server.seen)
    config = (listener() + '\n  [[listener.rule]]\n  domain = "grpc.test"\n  url = "/"\n'
              '  forward_type = "GRPC"\n  health_check = { enabled = false }\n'
              f'  targets = [{{ type = "CVM", address = "{server.address}" }}]\n')
    with ProxyProcess.with_config(config, tmp_path) as proc:
        conn = http.client.HTTPConnection("127.0.0.1", proc.port(), timeout=15)
        try:
            conn.request("POST", "/test.Echo/Unary", body=frame(b"x"),
                         headers={"Host": "grpc.test", "Content-Type": "application/grpc"})
            response = conn.getresponse()
            status, body = response.status, response.read()
            conn.request("GET", "/", headers={"Host": "grpc.test"})  # the connection lives on
            again = conn.getresponse()
            again.read()
        finally:
            conn.close()
        proc.wait_for_log("gRPC is carried over HTTP/2 only", 15)
    assert status == 505 and b"505 HTTP Version Not Supported" in body
    assert again.status == 505
    assert len(server.seen) == before  # nothing reached the backend


def test_a_refused_stream_is_sent_once_more_then_502() -> None:
    # REFUSED_STREAM says the backend did not process it (RFC 9113 §8.7): one more try on
    # the same target, then the router's answer
    async def go(backend: H2Backend) -> Outcome:
        upstreams = CvmUpstreams()
        router = Router(_config(backend.address), Backends(local=LocalFunctions(()),
                                                           cvm=upstreams.bind))
        request = Request("POST", "/refuse", "", GRPC_HEADERS, frame(b"x"), "2", "127.0.0.1",
                          40000, "https", "web", time.time())
        try:
            return await router.handle(request)
        finally:
            await upstreams.close()
    with H2Backend() as backend:
        outcome = run(lambda: go(backend))
    assert outcome.response.status == 502 and outcome.error == "UpstreamError"
    assert backend.requests == ["/refuse", "/refuse"]
