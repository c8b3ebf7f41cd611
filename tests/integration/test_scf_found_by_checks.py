"""Issue 16's "found by checks", through the real proxy process and real clients:

1. HEAD to a function gets the Content-Length its GET gets, and no body (RFC 9110 §8.6, §9.3.2);
2. a body whose declared length can never fit in a 6 MB event is refused (413) before it is
   read, without 100 Continue, and the connection closes; one that might fit is read as before;
3. the instance the start-up import check starts is the first warm one: module-level code runs
   once, the first request is warm (access log, ``cold start`` line), a broken import still
   warns at start and fails its calls, and an unused instance retires by ``idle_timeout``.
"""

from __future__ import annotations

import http.client
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.vocabulary import SCF_PAYLOAD_LIMIT
from tests.configs import function, listener, scf_rule
from tests.proxyproc import ProxyProcess, http_get, raw_exchange

HOST = "fb.test"
GET_BODY = b'{"message": "forty-five bytes of a GET body"}'
#: the largest body of each kind whose least event size is the 6 MB limit (scf/event.py)
MAX_EVENT = SCF_PAYLOAD_LIMIT
TEXT_BOUND, BINARY_BOUND = MAX_EVENT // 2, MAX_EVENT // 8 * 3


def _read_response(sock: socket.socket, buf: bytes, head_only: bool = False
                   ) -> tuple[int, dict[str, str], bytes, bytes]:
    """One response from ``sock`` (``buf``: bytes already read): status, fields (lower-case
    names), body, and what followed it."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, buf
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    length = 0 if head_only else int(fields.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, rest
        rest += chunk
    return int(lines[0].split()[1]), fields, rest[:length], rest[length:]


# --- 1. HEAD -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    config = (listener() + scf_rule(HOST, "/aware", "headaware")
              + scf_rule(HOST, "/ping", "ping")
              + function("headaware") + function("ping"))
    with ProxyProcess.with_config(config, tmp_path_factory.mktemp("fb")) as proc:
        yield proc


def test_head_to_a_function_gets_the_get_content_length_and_no_body(
        proxy: ProxyProcess) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port()), timeout=5) as sock:
        # HEAD then GET on one connection: a HEAD answer that carried bytes would break
        # the framing of the GET after it
        sock.sendall(f"HEAD /aware HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
                     f"GET /aware HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        head_status, head_fields, head_body, rest = _read_response(sock, b"", head_only=True)
        get_status, get_fields, get_body, rest = _read_response(sock, rest)
    assert (head_status, get_status) == (200, 200)
    assert get_body == GET_BODY and head_body == b"" and rest == b""
    assert head_fields["content-length"] == get_fields["content-length"] == "45"
    head_fields.pop("date"), get_fields.pop("date")
    assert head_fields == get_fields  # the same header fields as the GET (RFC 9110 §9.3.2)


def test_head_through_http_client_keeps_the_connection_in_step(proxy: ProxyProcess) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port(), timeout=5)
    try:
        conn.request("HEAD", "/aware", headers={"Host": HOST})
        resp = conn.getresponse()
        assert (resp.status, resp.getheader("Content-Length"), resp.read()) == (200, "45", b"")
        conn.request("GET", "/aware", headers={"Host": HOST})  # same connection, in step
        assert conn.getresponse().read() == GET_BODY
    finally:
        conn.close()


def test_head_to_a_function_that_ignores_the_method_gets_its_body_length(
        proxy: ProxyProcess) -> None:
    data = raw_exchange(proxy.port(), f"HEAD /ping HTTP/1.1\r\nHost: {HOST}\r\n"
                        "Connection: close\r\n\r\n".encode())
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"\r\nContent-Length: 3\r\n" in head + b"\r\n"
    assert rest == b""


def test_head_answered_without_a_declared_length_sends_none_rather_than_zero(
        proxy: ProxyProcess) -> None:
    data = raw_exchange(proxy.port(), f"HEAD /aware?declare=0 HTTP/1.1\r\nHost: {HOST}\r\n"
                        "Connection: close\r\n\r\n".encode())
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length" not in head
    assert rest == b""


# --- 2. a body that can never fit ----------------------------------------------------------


def _post_head(path: str, content_type: str, length: int, expect: bool = True) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n" + ("Expect: 100-continue\r\n" if expect else "")
            + "\r\n").encode()


@pytest.mark.parametrize("content_type,length,expect", [
    ("application/octet-stream", 5 * 1024 * 1024, True),   # the case
    ("application/octet-stream", 5 * 1024 * 1024, False),  # no Expect: refused unread too
    ("image/png", BINARY_BOUND + 1, True),
    ("text/plain", TEXT_BOUND + 1, True),
])
def test_a_body_that_can_never_fit_gets_413_at_once_unread(
        proxy: ProxyProcess, content_type: str, length: int, expect: bool) -> None:
    began = time.monotonic()
    # only the head is sent: the answer and the close come without a byte of the body
    data = raw_exchange(proxy.port(), _post_head("/ping", content_type, length, expect))
    assert time.monotonic() - began < 4
    assert data.startswith(b"HTTP/1.1 413 "), data[:100]
    assert b"100 Continue" not in data
    assert b"\r\nConnection: close\r\n" in data
    record = proxy.access_records("/ping", 1)[-1]
    assert record["status"] == 413 and record["function_request_id"] == ""


def _upload(proxy: ProxyProcess, content_type: str, body: bytes) -> tuple[bytes, int]:
    """POST with Expect: what came before the body was sent, and the final status."""
    with socket.create_connection(("127.0.0.1", proxy.port()), timeout=10) as sock:
        sock.sendall(_post_head("/ping", content_type, len(body)))
        interim = sock.recv(65536)
        if not interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"):
            return interim, int(interim.split()[1])
        sock.sendall(body)
        status, _, _, _ = _read_response(sock, interim[len(b"HTTP/1.1 100 Continue\r\n\r\n"):])
        return interim, status


def test_a_text_body_too_big_as_base64_but_not_as_text_is_read_and_served(
        proxy: ProxyProcess) -> None:
    interim, status = _upload(proxy, "text/plain", b"a" * (BINARY_BOUND + 100_000))
    assert interim.startswith(b"HTTP/1.1 100 Continue") and status == 200


def test_a_binary_body_under_its_bound_is_read_and_served(proxy: ProxyProcess) -> None:
    interim, status = _upload(proxy, "application/octet-stream", b"\1" * (BINARY_BOUND - 4096))
    assert interim.startswith(b"HTTP/1.1 100 Continue") and status == 200


def test_a_text_body_that_is_not_utf8_is_refused_once_read(proxy: ProxyProcess) -> None:
    # text by its Content-Type, so it might have fitted; read, it goes as Base64: too big
    interim, status = _upload(proxy, "text/plain", b"\xff" * (BINARY_BOUND + 100_000))
    assert interim.startswith(b"HTTP/1.1 100 Continue") and status == 413


# --- 3. the checked instance is the first warm one -----------------------------------------

COUNTS_IMPORTS = """import os

with open("imports.log", "a") as log:  # module-level code: once per instance
    log.write(f"{os.getpid()}\\n")


def main_handler(event, context):
    return {"statusCode": 200, "headers": {}, "body": str(os.getpid())}
"""


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess, Path, Path]]:
    root = tmp_path_factory.mktemp("warm")
    kept, retires, broken = root / "kept", root / "retires", root / "broken"
    for code in (kept, retires, broken):
        code.mkdir()
    (kept / "index.py").write_text(COUNTS_IMPORTS)
    (retires / "index.py").write_text(COUNTS_IMPORTS)
    (broken / "index.py").write_text("raise RuntimeError('at import')\n")
    config = (listener() + "".join(scf_rule(HOST, f"/{n}", n) for n in ("kept", "retires",
                                                                         "broken"))
              + function("kept", str(kept)) + function("retires", str(retires), idle_timeout=1)
              + function("broken", str(broken)))
    with ProxyProcess.with_config(config, root) as proc:
        yield proc, kept, retires


def test_module_code_runs_once_and_the_first_request_is_warm(
        warm: tuple[ProxyProcess, Path, Path]) -> None:
    proxy, kept, _ = warm
    imported = (kept / "imports.log").read_text().split()
    assert len(imported) == 1  # the start-up check imported it, once
    answers = [http_get(proxy.port(), HOST, "/kept") for _ in range(2)]
    assert answers == [(200, imported[0].encode())] * 2  # served by the checked instance
    assert (kept / "imports.log").read_text().split() == imported
    records = proxy.access_records("/kept", 2)
    assert [r["cold_start"] for r in records] == [False, False]
    assert "cold start function=default/kept" not in proxy.stderr


def test_a_broken_import_still_warns_at_start_and_fails_each_call(
        warm: tuple[ProxyProcess, Path, Path]) -> None:
    proxy, _, _ = warm
    warning = next(line for line in proxy.stderr_lines if "default/broken" in line)
    assert "WARNING" in warning and "cannot be imported" in warning
    assert proxy.stderr_lines.index(warning) < next(
        i for i, line in enumerate(proxy.stderr_lines) if "clbscf-proxy: ready" in line)
    assert [http_get(proxy.port(), HOST, "/broken")[0] for _ in range(2)] == [502, 502]
    records = proxy.access_records("/broken", 2)
    assert [r["cold_start"] for r in records] == [False, False]
    for record in records:
        proxy.wait_for_log(f"request_id={record['function_request_id']}")
    errors = [line for line in proxy.stderr_lines
              if "ERROR" in line and "function=default/broken" in line]
    assert len(errors) == 2 and all("at import" in line for line in errors)


def test_an_unused_checked_instance_retires_by_idle_timeout(
        warm: tuple[ProxyProcess, Path, Path]) -> None:
    proxy, _, retires = warm
    [first] = (retires / "imports.log").read_text().split()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # idle_timeout = 1 s, swept every 0.25 s
        try:
            os.kill(int(first), 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the checked instance did not retire")
    status, body = http_get(proxy.port(), HOST, "/retires")
    imported = (retires / "imports.log").read_text().split()
    assert status == 200 and len(imported) == 2 and body == imported[1].encode()
    [record] = proxy.access_records("/retires", 1)
    assert record["cold_start"] is True
    proxy.wait_for_log("cold start function=default/retires")
