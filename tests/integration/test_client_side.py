"""SPEC §9 on the wire: keep-alive, pipelining, HEAD, limits, timeouts and malformed requests,
through the real proxy process, on both parsers."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from tests.configs import function, listener, scf_rule
from tests.proxyproc import ProxyProcess, raw_exchange

CONFIG = (listener(client_header_timeout=1, client_body_timeout=1, keepalive_timeout=1,
                   client_max_body_size=100000, max_request_line=2000, max_header_size=8000,
                   max_header_count=20)
          + scf_rule("c.test", "/", "echo")
          + listener("capped", max_connections=3) + scf_rule("c.test", "/", "echo")
          + function("echo"))


@pytest.fixture(scope="module", params=["httptools", "h11"])
def proxy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[ProxyProcess]:
    with ProxyProcess.with_config(CONFIG, tmp_path_factory.mktemp("client"),
                                  "--http", request.param) as proc:
        yield proc


def _responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a byte stream of Content-Length-framed responses."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, data[:200]
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
        n = int(headers.get("content-length", "0"))
        body = b"" if status == 100 else rest[:n]
        out.append((status, headers, body))
        data = rest if status == 100 else rest[n:]
    return out


def _status(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


GET = b"GET /%s HTTP/1.1\r\nHost: c.test\r\n\r\n"


def test_keep_alive_serves_many_requests_on_one_connection(proxy: ProxyProcess) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port()), timeout=5) as s:
        for i in range(50):
            s.sendall(GET % str(i).encode())
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            while len(body) < length:
                body += s.recv(65536)
            assert json.loads(body)["path"] == f"/{i}"


def test_pipelined_requests_are_answered_in_order(proxy: ProxyProcess) -> None:
    body = b'{"n": 2}'
    raw = (GET % b"one"
           + b"POST /two HTTP/1.1\r\nHost: c.test\r\nContent-Type: application/json\r\n"
             b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
           + b"GET /three HTTP/1.1\r\nHost: c.test\r\nConnection: close\r\n\r\n")
    responses = _responses(raw_exchange(proxy.port(), raw))
    assert [json.loads(b)["path"] for _, _, b in responses] == ["/one", "/two", "/three"]
    assert responses[1][2] and json.loads(responses[1][2])["payload"] == {"n": 2}
    assert responses[2][1]["connection"] == "close"


def test_nothing_after_connection_close_is_processed(proxy: ProxyProcess) -> None:
    raw = (b"GET /a HTTP/1.1\r\nHost: c.test\r\nConnection: close\r\n\r\n" + GET % b"b")
    responses = _responses(raw_exchange(proxy.port(), raw))
    assert len(responses) == 1


def test_head_gets_headers_without_body(proxy: ProxyProcess) -> None:
    data = raw_exchange(proxy.port(),
                        b"HEAD / HTTP/1.1\r\nHost: c.test\r\nConnection: close\r\n\r\n")
    head, _, rest = data.partition(b"\r\n\r\n")
    assert _status(head) == 200
    assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) > 0
    assert rest == b""


def test_http10_connection_is_closed_after_the_response(proxy: ProxyProcess) -> None:
    data = raw_exchange(proxy.port(), b"GET / HTTP/1.0\r\nHost: c.test\r\n\r\n")
    assert _status(data) == 200
    assert b"Connection: close" in data


def test_expect_100_continue(proxy: ProxyProcess) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port()), timeout=5) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: c.test\r\nContent-Type: text/plain\r\n"
                  b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(b"hello")
        data = b""
        while b'"body"' not in data:
            data += s.recv(65536)
        assert _status(data) == 200


@pytest.mark.parametrize("raw,status", [
    (b"POST / HTTP/1.1\r\nHost: c.test\r\nContent-Length: 3\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: c.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
     400),
    (b"POST / HTTP/1.1\r\nHost: c.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"GET / HTTP/1.1\nHost: c.test\n\n", 400),
    (b"GET / HTTP/1.1\r\nHost: c.test\r\nX-A: a\rb\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: c.test\r\nX-A: a\r\n b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost : c.test\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: c.test\r\nX-A: a\x00b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"GET /" + b"a" * 2100 + b" HTTP/1.1\r\nHost: c.test\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: c.test\r\n" + b"X-Big: " + b"b" * 9000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: c.test\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(25))
     + b"\r\n", 431),
    (b"POST / HTTP/1.1\r\nHost: c.test\r\nContent-Length: 200000\r\n\r\n", 413),
    (b"POST / HTTP/1.1\r\nHost: c.test\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
])
def test_bad_request_gets_its_status_and_a_closed_connection(proxy: ProxyProcess, raw: bytes,
                                                             status: int) -> None:
    data = raw_exchange(proxy.port(), raw)
    assert _status(data) == status, data[:300]
    assert b"Connection: close" in data


def test_error_after_a_good_pipelined_request_comes_after_its_response(proxy: ProxyProcess
                                                                        ) -> None:
    data = raw_exchange(proxy.port(), GET % b"good" + b"GET / HTTP/1.1\r\n\r\n")
    responses = _responses(data)
    assert [s for s, _, _ in responses] == [200, 400]


def test_slow_header_gets_408(proxy: ProxyProcess) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port()), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: c.test\r\n")
        started = time.monotonic()
        data = s.recv(65536)
        assert _status(data) == 408
        assert time.monotonic() - started < 3


def test_slow_body_gets_408(proxy: ProxyProcess) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port()), timeout=5) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: c.test\r\nContent-Length: 10\r\n\r\nabc")
        data = s.recv(65536)
        assert _status(data) == 408


def test_idle_keep_alive_connection_is_closed_quietly(proxy: ProxyProcess) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port()), timeout=5) as s:
        s.sendall(GET % b"x")
        data = b""
        while b'"path"' not in data:
            data += s.recv(65536)
        s.settimeout(4)
        assert s.recv(65536) == b""  # closed after keepalive_timeout, no response


def test_connections_past_max_connections_wait_in_the_backlog(proxy: ProxyProcess) -> None:
    port = proxy.port("capped")
    request = GET % b"capped"
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
    try:
        for s in held:  # three served connections, kept open
            s.sendall(request)
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as waiting:
            # the kernel completed the handshake (backlog), but nobody reads it yet
            waiting.sendall(request)
            waiting.settimeout(0.5)
            with pytest.raises(socket.timeout):
                waiting.recv(65536)
            held.pop().close()  # room for one more: it is accepted and answered
            waiting.settimeout(5)
            assert waiting.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        for s in held:
            s.close()
    proxy.wait_for_log("max_connections")
