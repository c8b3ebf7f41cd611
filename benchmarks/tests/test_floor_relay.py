"""The floor relay: headers copied, one X-Forwarded-For added, one upstream connection per
client connection, HTTPS with --tls."""

from __future__ import annotations

import http.client
import http.server
from contextlib import AbstractContextManager
import json
import ssl
from pathlib import Path
from typing import Any

import trustme

from benchmarks.tests.servers import serving
from benchmarks import procs


class _Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        body = json.dumps({"path": self.path, "client_port": self.client_address[1],
                           "headers": list(self.headers.items())}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Origin", "echo")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def echo() -> AbstractContextManager[int]:
    return serving(_Echo)


def get(conn: http.client.HTTPConnection,
        path: str) -> tuple[http.client.HTTPResponse, dict[str, Any]]:
    conn.request("GET", path, headers={"Host": "bench.local", "X-Custom": "kept"})
    response = conn.getresponse()
    return response, json.loads(response.read())


def test_headers_copied_forwarded_for_added_one_upstream_connection(tmp_path: Path) -> None:
    with echo() as port:
        relay = procs.start_floor("floor", port, tmp_path, None)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=10)
            first, seen = get(conn, "/a?b=1")
            second, again = get(conn, "/c")
            conn.close()
        finally:
            relay.stop()
    assert (first.status, first.getheader("X-Origin")) == (200, "echo")
    headers = dict(seen["headers"])
    assert seen["path"] == "/a?b=1"
    assert headers["Host"] == "bench.local" and headers["X-Custom"] == "kept"
    assert [k for k, _ in seen["headers"]].count("X-Forwarded-For") == 1
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert second.status == 200 and again["path"] == "/c"
    assert again["client_port"] == seen["client_port"]  # the same upstream connection


def test_tls_listener(tmp_path: Path) -> None:
    leaf = trustme.CA().issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with echo() as port:
        relay = procs.start_floor("floor-tls", port, tmp_path, None, (cert, key))
        try:
            conn = http.client.HTTPSConnection("127.0.0.1", relay.port, timeout=10,
                                               context=context)
            response, seen = get(conn, "/tls")
            conn.close()
        finally:
            relay.stop()
    assert response.status == 200 and seen["path"] == "/tls"
