"""SPEC §5: the event a function receives, field by field, through the real proxy process.

The echo function answers with the event it got as its body.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.configs import function, listener, scf_rule
from tests.proxyproc import ProxyProcess


CONFIG = listener() + scf_rule("ev.test", "/", "echo") + function("echo")


@pytest.fixture(scope="module", params=["httptools", "h11"])
def proxy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[ProxyProcess]:
    with ProxyProcess.with_config(CONFIG, tmp_path_factory.mktemp("ev"),
                                  "--http", request.param) as proc:
        yield proc


def _exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request over a raw socket (so the bytes are exactly ours); the parsed response."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        length = int(headers["Content-Length"])
        while len(body) < length:
            body += s.recv(65536)
        return int(lines[0].split()[1]), headers, body


def _event(proxy: ProxyProcess, raw: bytes) -> dict[str, Any]:
    status, _, body = _exchange(proxy.port(), raw)
    assert status == 200, body
    return json.loads(body)  # type: ignore[no-any-return]


def test_get_with_repeated_keys_and_percent_encoding(proxy: ProxyProcess) -> None:
    event = _event(proxy, (
        b"GET /p/%E4%BD%A0?a=1&a=2&b=%E4%BD%A0&c&d=x+y HTTP/1.1\r\nHost: ev.test\r\n"
        b"Cookie: a=1\r\nCookie: b=2\r\nX-Multi: 1\r\nx-multi: 2\r\n"
        b"User-Agent: tests\r\n\r\n"))
    assert event["httpMethod"] == "GET"
    assert event["path"] == "/p/%E4%BD%A0"
    assert event["queryString"] == {"a": ["1", "2"], "b": "你", "c": "", "d": "x y"}
    assert event["body"] == "" and event["isBase64Encoded"] is False
    headers = event["headers"]
    assert headers["Host"] == "ev.test" and headers["User-Agent"] == "tests"
    assert headers["Cookie"] == "a=1; b=2"
    assert headers["X-Multi"] == "1, 2"
    assert headers["X-Real-IP"] == "127.0.0.1"
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert headers["X-Client-Proto"] == "http" and headers["X-Forwarded-Proto"] == "http"
    assert headers["X-Client-Proto-Ver"] == "HTTP/1.1"
    seconds, millis = headers["X-Stgw-Time"].split(".")
    assert seconds.isdigit() and len(millis) == 3
    ctx = event["requestContext"]
    assert ctx["sourceIp"] == "127.0.0.1" and isinstance(ctx["sourcePort"], int)
    assert ctx["protocol"] == "http" and ctx["listener"] == "web"
    assert ctx["domain"] == "ev.test" and ctx["url"] == "/"
    assert ctx["requestId"] and ctx["requestTime"]


def test_forged_clb_headers_are_replaced(proxy: ProxyProcess) -> None:
    event = _event(proxy, (
        b"GET / HTTP/1.1\r\nHost: ev.test\r\nX-Forwarded-For: 6.6.6.6\r\n"
        b"X-Real-IP: 6.6.6.6\r\nX-Client-Proto: https\r\nConnection: keep-alive, X-Keep\r\n"
        b"X-Keep: dropped\r\n\r\n"))
    headers = event["headers"]
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert headers["X-Real-IP"] == "127.0.0.1"
    assert headers["X-Client-Proto"] == "http"
    assert "X-Keep" not in headers and "Connection" not in headers


def test_json_post(proxy: ProxyProcess) -> None:
    body = b'{"key1": "123", "key2": "abc"}'
    event = _event(proxy, b"POST /api HTTP/1.1\r\nHost: ev.test\r\n"
                          b"Content-Type: application/json; charset=utf-8\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert event["httpMethod"] == "POST"
    assert event["isBase64Encoded"] is False
    assert event["body"] == body.decode()
    assert event["payload"] == {"key1": "123", "key2": "abc"}


def test_form_post_is_base64(proxy: ProxyProcess) -> None:
    body = b"a=1&b=%E4%BD%A0"
    event = _event(proxy, b"POST /form HTTP/1.1\r\nHost: ev.test\r\n"
                          b"Content-Type: application/x-www-form-urlencoded\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == body
    assert event["payload"] == event["body"]


def test_binary_upload_is_base64(proxy: ProxyProcess) -> None:
    body = bytes(range(256)) * 40
    event = _event(proxy, b"PUT /upload HTTP/1.1\r\nHost: ev.test\r\n"
                          b"Content-Type: image/png\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == body


def test_chunked_upload_is_reassembled(proxy: ProxyProcess) -> None:
    event = _event(proxy, b"POST /chunked HTTP/1.1\r\nHost: ev.test\r\n"
                          b"Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\n\r\n")
    assert event["isBase64Encoded"] is False
    assert event["body"] == "hello world"
    assert "Transfer-Encoding" not in event["headers"]


def test_text_body_that_is_not_utf8_is_base64(proxy: ProxyProcess) -> None:
    body = b"\xff\xfe bad"
    event = _event(proxy, b"POST / HTTP/1.1\r\nHost: ev.test\r\nContent-Type: text/plain\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == body
