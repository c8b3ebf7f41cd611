"""custom_config (CLB's personalised configuration) through the real proxy: each directive we
accept changes what a client or an upstream sees. Timeouts below CLB's minimum (30 s) are shown
by laying a custom value over a short listener key: the short one would have fired."""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
from collections.abc import Iterator

import pytest
import requests

from proxy import __version__
from tests.configs import listener
from tests.proxyproc import ProxyProcess
from tests.upstreams import Upstream
from tests.wsgiupstream import WsgiUpstream

LISTENER_CC = (
    "add_header Access-Control-Allow-Origin *;\n"
    "add_header X-Always yes always;\n"
    "more_set_headers 'X-Set: listener';\n"
    "keepalive_requests 3;\n"
    "keepalive_timeout 1s;\n"
    "send_timeout 1s;\n"
    "client_max_body_size 1M;\n"
    "client_header_timeout 30s;\n"
    "client_body_timeout 30s;\n"
    "proxy_set_header X-Real-Port $remote_port;\n"
    "proxy_set_header Stgw-request-id $stgw_request_id;\n"
    "proxy_set_header X-clb-stgw-vip $server_addr;\n"
    "server_tokens on;\n"
)
DOMAIN_CC = (
    "add_header X-Domain d;\n"
    "proxy_read_timeout 30s;\n"
    "proxy_request_buffering off;\n"
    "proxy_redirect off;\n"
)


def _rule(domain: str, address: str, custom: str = "") -> str:
    extra = f"  custom_config = {json.dumps(custom)}\n" if custom else ""
    return f"""
  [[listener.rule]]
  domain = "{domain}"
  url = "/"
  health_check = {{ enabled = false }}
  targets = [{{ type = "CVM", address = "{address}" }}]
{extra}"""


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[ProxyProcess, WsgiUpstream, Upstream]]:
    with WsgiUpstream() as wsgi:
        slow = Upstream("S").start()
        try:
            # short listener keys that custom_config must override
            config = (listener("cc", client_header_timeout=0.5, client_body_timeout=0.5,
                               proxy_read_timeout=0.5, custom_config=LISTENER_CC)
                      + _rule("plain.test", wsgi.address)
                      + _rule("dom.test", wsgi.address, DOMAIN_CC)
                      + _rule("slow.test", slow.address, DOMAIN_CC)
                      + _rule("fast.test", slow.address))
            path = tmp_path_factory.mktemp("cc")
            with ProxyProcess.with_config(config, path) as proxy:
                yield proxy, wsgi, slow
        finally:
            slow.stop()


def _get(port: int, host: str, path: str = "/") -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path, headers={"Host": host})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


def test_add_header_more_set_headers_and_server_tokens(stage: tuple[ProxyProcess, WsgiUpstream,
                                                                    Upstream]) -> None:
    proxy, _, _ = stage
    resp = _get(proxy.port(), "plain.test")
    assert resp.status == 200
    assert resp.getheader("Access-Control-Allow-Origin") == "*"
    assert resp.getheader("X-Always") == "yes" and resp.getheader("X-Set") == "listener"
    assert resp.getheader("Server") == f"clbscf-proxy/{__version__}"
    # a domain with add_header of its own does not inherit the listener's (nginx)
    resp = _get(proxy.port(), "dom.test")
    assert resp.getheader("X-Domain") == "d" and resp.getheader("X-Always") is None
    assert resp.getheader("X-Set") == "listener"
    # our own error page: add_header only with "always"; more_set_headers always
    resp = _get(proxy.port(), "plain.test", "/a%00b")
    assert resp.status == 400
    assert resp.getheader("X-Always") == "yes" and resp.getheader("X-Set") == "listener"
    assert resp.getheader("Access-Control-Allow-Origin") is None


def test_proxy_set_header_adds_clbs_optional_headers(stage: tuple[ProxyProcess, WsgiUpstream,
                                                                  Upstream]) -> None:
    proxy, wsgi, _ = stage
    with socket.create_connection(("127.0.0.1", proxy.port()), timeout=30) as sock:
        port = sock.getsockname()[1]
        sock.sendall(b"GET /h HTTP/1.1\r\nHost: plain.test\r\nConnection: close\r\n\r\n")
        while sock.recv(65536):
            pass
    seen = next(r for r in wsgi.requests if r["path"] == "/h")["headers"]
    assert seen["x-real-port"] == str(port)
    assert re.fullmatch(r"[0-9a-f]{32}", seen["stgw-request-id"])
    assert seen["x-clb-stgw-vip"] == "127.0.0.1"


def test_keepalive_requests_closes_after_the_third(stage: tuple[ProxyProcess, WsgiUpstream,
                                                                Upstream]) -> None:
    proxy, _, _ = stage
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port(), timeout=30)
    closes = []
    for _ in range(3):
        conn.request("GET", "/", headers={"Host": "plain.test"})
        resp = conn.getresponse()
        resp.read()
        closes.append(resp.getheader("Connection"))
    assert closes == ["keep-alive", "keep-alive", "close"]
    conn.close()


def test_keepalive_timeout_closes_an_idle_connection(stage: tuple[ProxyProcess, WsgiUpstream,
                                                                  Upstream]) -> None:
    proxy, _, _ = stage
    with socket.create_connection(("127.0.0.1", proxy.port()), timeout=30) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: plain.test\r\n\r\n")
        data = b""
        while True:  # the answer, then the close 1 s later (the default would be 75 s)
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and data.count(b"HTTP/1.1 200 OK") == 1


def test_client_max_body_size(stage: tuple[ProxyProcess, WsgiUpstream, Upstream]) -> None:
    proxy, _, _ = stage
    url = f"http://127.0.0.1:{proxy.port()}/"
    assert requests.post(url, data=b"x" * (1 << 20), headers={"Host": "plain.test"},
                         timeout=30).status_code == 200
    assert requests.post(url, data=b"x" * ((1 << 20) + 1), headers={"Host": "plain.test"},
                         timeout=30).status_code == 413


def test_client_header_and_body_timeouts_are_the_custom_ones(
        stage: tuple[ProxyProcess, WsgiUpstream, Upstream]) -> None:
    proxy, _, _ = stage
    with socket.create_connection(("127.0.0.1", proxy.port()), timeout=30) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: plain.test\r\n")
        time.sleep(1.5)  # past the listener's 0.5 s, well within custom_config's 30 s
        sock.sendall(b"Content-Length: 4\r\nConnection: close\r\n\r\nab")
        time.sleep(1.5)
        sock.sendall(b"cd")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:200]


def test_send_timeout_cuts_off_a_client_that_does_not_read(
        stage: tuple[ProxyProcess, WsgiUpstream, Upstream]) -> None:
    proxy, _, _ = stage
    with socket.create_connection(("127.0.0.1", proxy.port()), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /download?n=50000000 HTTP/1.1\r\nHost: fast.test\r\n\r\n")
        proxy.wait_for_log("took nothing for 1.0s", timeout=30)


def test_domain_proxy_read_timeout_buffering_and_redirect(
        stage: tuple[ProxyProcess, WsgiUpstream, Upstream]) -> None:
    proxy, wsgi, _ = stage
    port = proxy.port()
    # the listener's 0.5 s read timeout on a domain without its own: 504
    assert _get(port, "fast.test", "/slow?head=1.5").status == 504
    # the domain's proxy_read_timeout 30s: the slow answer comes
    resp = _get(port, "slow.test", "/slow?head=1.5")
    assert resp.status == 200
    # the domain's proxy_request_buffering off: a chunked upload reaches wsgiref chunked
    requests.post(f"http://127.0.0.1:{port}/off", data=iter([b"abc", b"def"]),
                  headers={"Host": "dom.test"}, timeout=30)
    seen = next(r for r in wsgi.requests if r["path"] == "/off")
    assert seen["transfer_encoding"] == "chunked" and seen["length"] == 0
    requests.post(f"http://127.0.0.1:{port}/on", data=iter([b"abc", b"def"]),
                  headers={"Host": "plain.test"}, timeout=30)
    seen = next(r for r in wsgi.requests if r["path"] == "/on")
    assert seen["content_length"] == "6" and seen["length"] == 6
    # proxy_redirect off: the upstream's own address is left in Location
    resp = _get(port, "dom.test", "/redirect?to=/x")
    assert resp.getheader("Location") == f"http://{wsgi.address}/x"
    resp = _get(port, "plain.test", "/redirect?to=/x")
    assert resp.getheader("Location") == "http://plain.test/x"
