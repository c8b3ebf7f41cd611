"""Issue 14 on the wire, through the real proxy process, on both parsers: HTTP/1.0 keep-alive
(RFC 9112 §9.3, Appendix C.2.2; as nginx: ``ab -k`` keeps its connections) for an SCF and a CVM
target, and the 400 for an empty ``Host`` (RFC 9110 §4.2.1, RFC 9112 §3.2; as nginx)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
from collections.abc import Iterator
from typing import BinaryIO

import pytest

from tests import debian
from tests.configs import function, listener, rule, scf_rule
from tests.proxyproc import ProxyProcess, raw_exchange
from tests.upstreams import Upstream, pattern_bytes

KEEP_ALIVE = b"Connection: keep-alive\r\n"


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = Upstream("U").start()
    try:
        yield up
    finally:
        assert up.proc is not None
        up.proc.kill()
        up.proc.wait()


@pytest.fixture(scope="module", params=["httptools", "h11"])
def proxy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          upstream: Upstream) -> Iterator[ProxyProcess]:
    config = (listener(keepalive_timeout=5, default_domain="c.test")
              + scf_rule("c.test", "/", "echo")
              + rule("v.test", "/", f'[{{ type = "CVM", address = "{upstream.address}" }}]')
              + "  health_check = { enabled = false }\n"
              + function("echo"))
    with ProxyProcess.with_config(config, tmp_path_factory.mktemp("http10"),
                                  "--http", request.param) as proc:
        yield proc


def read_response(stream: BinaryIO) -> tuple[int, dict[str, str], bytes]:
    """One response from ``sock.makefile("rb")``: framed by its Content-Length, or without one
    by the close."""
    lines = []
    while (line := stream.readline()) not in (b"\r\n", b""):
        lines.append(line.decode("latin-1").rstrip("\r\n"))
    assert lines, "closed before a response"
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    if "content-length" in headers:
        body = stream.read(int(headers["content-length"]))
        assert len(body) == int(headers["content-length"]), "closed in the middle of a body"
    else:
        body = stream.read()
    return int(lines[0].split()[1]), headers, body


def closed_by_peer(stream: BinaryIO) -> bool:
    return stream.read(1) == b""


TARGETS = {  # host -> how the answer names the request's path
    "c.test": lambda body: json.loads(body)["path"],  # the SCF echo function: the event
    "v.test": lambda body: json.loads(body)["target"],  # the CVM echo upstream
}


@pytest.mark.parametrize("host", TARGETS)
def test_http10_keep_alive_client_keeps_its_connection(proxy: ProxyProcess, host: str) -> None:
    path = "/echo"
    with socket.create_connection(("127.0.0.1", proxy.port()), timeout=10) as sock, \
            sock.makefile("rb") as stream:
        for i in range(5):
            sock.sendall(b"GET %s?i=%d HTTP/1.0\r\nHost: %s\r\n%s\r\n"
                         % (path.encode(), i, host.encode(), KEEP_ALIVE))
            status, headers, body = read_response(stream)
            assert (status, headers["connection"]) == (200, "keep-alive"), headers
            assert TARGETS[host](body).startswith(path)
        # a body on the same connection, then the request that ends it (no token: close)
        sock.sendall(b"POST %s HTTP/1.0\r\nHost: %s\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: 5\r\n%s\r\nhello" % (path.encode(), host.encode(),
                                                           KEEP_ALIVE))
        status, headers, body = read_response(stream)
        assert (status, headers["connection"]) == (200, "keep-alive")
        sock.sendall(b"GET %s HTTP/1.0\r\nHost: %s\r\n\r\n" % (path.encode(), host.encode()))
        status, headers, _ = read_response(stream)
        assert (status, headers["connection"]) == (200, "close")
        assert closed_by_peer(stream)


def test_http10_keep_alive_pipelined_requests_are_answered_in_order(
        proxy: ProxyProcess) -> None:
    raw = b"".join(b"GET /echo?n=%d HTTP/1.0\r\nHost: %s\r\n%s\r\n" % (i, host, KEEP_ALIVE)
                   for i, host in enumerate([b"c.test", b"v.test", b"c.test"]))
    with socket.create_connection(("127.0.0.1", proxy.port()), timeout=10) as sock, \
            sock.makefile("rb") as stream:
        sock.sendall(raw)
        answers = [read_response(stream) for _ in range(3)]
    assert [h["connection"] for _, h, _ in answers] == ["keep-alive"] * 3
    assert json.loads(answers[1][2])["target"] == "/echo?n=1"


def test_http10_keep_alive_with_a_body_of_unknown_length_still_closes(
        proxy: ProxyProcess) -> None:
    # a chunked upstream answer too large to arrive in one read: streamed, its length unknown
    n = 3_000_000
    with socket.create_connection(("127.0.0.1", proxy.port()), timeout=10) as sock, \
            sock.makefile("rb") as stream:
        sock.sendall(b"GET /download?n=%d&chunked=1 HTTP/1.0\r\nHost: v.test\r\n%s\r\n"
                     % (n, KEEP_ALIVE) + b"GET /echo HTTP/1.0\r\nHost: v.test\r\n%s\r\n"
                     % KEEP_ALIVE)
        status, headers, body = read_response(stream)  # no length: read to the close
    assert (status, headers["connection"], len(body)) == (200, "close", n)
    assert "transfer-encoding" not in headers and "content-length" not in headers
    assert body == pattern_bytes(0, n)  # the download alone: the /echo after it is not answered


@pytest.mark.parametrize("host", TARGETS)
def test_ab_k_keeps_its_connections(proxy: ProxyProcess, host: str) -> None:
    [ab] = debian.ensure(("ab",), ("apache2-utils",), "the ab -k test")
    done = subprocess.run(
        [ab, "-k", "-n", "200", "-c", "4", "-H", f"Host: {host}",
         f"http://127.0.0.1:{proxy.port()}/echo"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

    def field(name: str) -> int:
        match = re.search(rf"^{name}:\s+(\d+)", done.stdout, re.M)
        assert match, done.stdout
        return int(match.group(1))

    assert field("Complete requests") == 200 and field("Failed requests") == 0, done.stdout
    assert field("Keep-Alive requests") == 200, done.stdout
    assert "Non-2xx responses" not in done.stdout, done.stdout


# --- Host -------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
@pytest.mark.parametrize("host", [b"Host:", b"Host: ", b"Host: :8080"],
                         ids=["empty", "blank", "port_only"])
def test_empty_host_is_refused_with_400(proxy: ProxyProcess, version: bytes,
                                        host: bytes) -> None:
    data = raw_exchange(proxy.port(), b"GET / HTTP/%s\r\n%s\r\n\r\n" % (version, host))
    head = data.partition(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in head, data[:300]


def test_http10_without_host_goes_to_the_default_domain(proxy: ProxyProcess) -> None:
    data = raw_exchange(proxy.port(), b"GET /no-host HTTP/1.0\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert json.loads(body)["path"] == "/no-host"  # the default domain's SCF rule


def test_absolute_form_with_an_empty_host_is_routed_by_the_target(proxy: ProxyProcess) -> None:
    data = raw_exchange(proxy.port(), b"GET http://v.test/echo?abs=1 HTTP/1.1\r\nHost:\r\n"
                                      b"Connection: close\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), data[:300]
    out = json.loads(body)
    assert out["name"] == "U" and out["target"] == "/echo?abs=1"
    assert ["Host", "v.test"] in out["headers"]
