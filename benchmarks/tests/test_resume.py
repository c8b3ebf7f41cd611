"""benchmarks/resume.py against a throw-away Python HTTPS server: resumed connections are
counted from openssl s_time's output, and a server that never resumes is refused, not timed."""

from __future__ import annotations

import http.server
import os
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trustme

from benchmarks import resume


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args: object) -> None:
        pass


class _Server:
    """What resume.measure needs of procs.Server: the port and the processes to watch."""

    def __init__(self, port: int) -> None:
        self.port = port

    def roots(self) -> list[tuple[str, int]]:
        return [("test", os.getpid())]


@contextmanager
def https_server(tmp_path: Path, fresh_context_each_time: bool) -> Iterator[_Server]:
    leaf = trustme.CA().issue_cert("127.0.0.1")
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    leaf.cert_chain_pems[0].write_to_path(cert)
    leaf.private_key_pem.write_to_path(key)

    def context() -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        return ctx

    shared = context()

    class Server(http.server.ThreadingHTTPServer):
        def get_request(self):  # type: ignore[no-untyped-def]
            sock, address = super().get_request()
            # a new context (new cache, new ticket key) per connection never resumes
            ctx = context() if fresh_context_each_time else shared
            return ctx.wrap_socket(sock, server_side=True), address

        def shutdown_request(self, request):  # type: ignore[no-untyped-def]
            try:  # close_notify: OpenSSL drops a session whose connection ends without it
                request.unwrap()
            except (OSError, ValueError):
                pass
            super().shutdown_request(request)

    httpd = Server(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield _Server(httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_resumed_connections_are_counted(tmp_path: Path, version: str) -> None:
    with https_server(tmp_path, False) as server:
        got = resume.measure(server, seconds=1, clients=1, version=version, cpus=None)
    assert got.connections > 0 and got.rate > 0
    assert got.resumed_share >= 0.9


def test_a_server_that_does_not_resume_is_an_error(tmp_path: Path) -> None:
    with https_server(tmp_path, True) as server:
        with pytest.raises(resume.ResumeError, match="resumed"):
            resume.measure(server, seconds=1, clients=1, version="-tls1_2", cpus=None)
