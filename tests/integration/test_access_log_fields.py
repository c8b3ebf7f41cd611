"""CLB's access-log fields through the real proxy: request id, upstream status, address and
times (seconds), request_length, bytes_sent, connection_requests, ssl_protocol/ssl_cipher."""

from __future__ import annotations

import json
import re
import socket
import ssl
from pathlib import Path

from tests.configs import function, listener, scf_rule
from tests.proxyproc import ProxyProcess
from tests.upstreams import Upstream
from tests.wsgiupstream import WsgiUpstream


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", head, re.I)[1])  # type: ignore[index]
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_cvm_and_scf_records_carry_clbs_fields(tmp_path: Path) -> None:
    slow = Upstream("S").start()
    try:
        with WsgiUpstream() as wsgi:
            config = (listener("web", custom_config="proxy_set_header Stgw-request-id "
                                                    "$stgw_request_id;")
                      + f"""
  [[listener.rule]]
  domain = "slow.test"
  url = "/"
  health_check = {{ enabled = false }}
  targets = [{{ type = "CVM", address = "{slow.address}" }}]

  [[listener.rule]]
  domain = "wsgi.test"
  url = "/"
  health_check = {{ enabled = false }}
  targets = [{{ type = "CVM", address = "{wsgi.address}" }}]
""" + scf_rule("fn.test", "/", "echo") + function("echo"))
            with ProxyProcess.with_config(config, tmp_path) as proxy:
                sent = []
                got = []
                with socket.create_connection(("127.0.0.1", proxy.port()), timeout=30) as s:
                    for req in (b"GET /slow?head=0.3&body=0.3 HTTP/1.1\r\nHost: slow.test\r\n"
                                b"\r\n",
                                b"POST /id?q=1 HTTP/1.1\r\nHost: wsgi.test\r\n"
                                b"Content-Length: 5\r\n\r\nhello",
                                # request_length counts the head as received: a field
                                # dropped for its "_" and the blanks around a value too
                                b"GET /fn HTTP/1.1\r\nHost: fn.test\r\nX_Dropped: 1\r\n"
                                b"User-Agent:   spaced  \r\n\r\n"):
                        s.sendall(req)
                        sent.append(req)
                        got.append(_read_response(s))
                (slow_rec,) = proxy.access_records("/slow", 1)
                (wsgi_rec,) = proxy.access_records("/id", 1)
                (fn_rec,) = proxy.access_records("/fn", 1)
    finally:
        slow.stop()
    for i, rec in enumerate((slow_rec, wsgi_rec, fn_rec)):
        assert re.fullmatch(r"[0-9a-f]{32}", rec["stgw_request_id"])
        assert rec["connection_requests"] == i + 1
        assert rec["request_length"] == len(sent[i])
        assert rec["bytes_sent"] == len(got[i]) == rec["bytes"]
        assert rec["ssl_protocol"] == "" and rec["ssl_cipher"] == ""
        assert rec["request_time"] >= 0
    assert len({r["stgw_request_id"] for r in (slow_rec, wsgi_rec, fn_rec)}) == 3
    # the CVM exchange: CLB's definitions, each from the start of connecting
    assert slow_rec["upstream_status"] == "200"
    assert slow_rec["upstream_addr"] == slow.address
    assert slow_rec["server_name"] == "slow.test"
    connect, header, response = (slow_rec["upstream_connect_time"],
                                 slow_rec["upstream_header_time"],
                                 slow_rec["upstream_response_time"])
    # the upstream slept 0.3 s before its head and 0.3 s more before its body
    assert 0 <= connect <= header and header >= 0.3 and response >= header + 0.3
    assert slow_rec["request_time"] >= response
    # the header the upstream got is the record's id
    seen = next(r for r in wsgi.requests if r["path"] == "/id")
    assert seen["headers"]["stgw-request-id"] == wsgi_rec["stgw_request_id"]
    # an SCF target has no upstream in CLB's sense
    assert fn_rec["upstream_status"] == "" and fn_rec["upstream_response_time"] is None
    assert fn_rec["upstream_addr"] == ""
    json.dumps(fn_rec)


def test_https_records_name_the_tls_protocol_and_cipher(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with ProxyProcess(["--listen", "127.0.0.1:0", "--tls", "--state-dir", str(state)]) as proxy:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", proxy.port()), timeout=30) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as sock:
                sock.sendall(b"GET /tls HTTP/1.1\r\nHost: localhost\r\n\r\n")
                _read_response(sock)
                version, cipher = sock.version(), sock.cipher()[0]
        (rec,) = proxy.access_records("/tls", 1)
    assert (rec["ssl_protocol"], rec["ssl_cipher"]) == (version, cipher)
    assert rec["ssl_protocol"].startswith("TLSv1.")
