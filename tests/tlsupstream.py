"""An HTTP/1.1 upstream over TLS (a CVM server behind a rule with ``forward_type = "HTTPS"``),
in a thread of the test process, that records what the forward-type tests must see.

Certificates come from trustme: ``TlsUpstream(ca)`` serves a leaf of that CA for ``localhost``
and ``127.0.0.1``. Every TLS connection gets a number; for each request it records the
connection number, the SNI name the client sent (None when it sent none), the ALPN protocol
agreed and the method, path and Host. Every answer is keep-alive, 200, a JSON body of that
record (HEAD: the head alone), so one pooled connection can carry many requests.
"""

from __future__ import annotations

import itertools
import json
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socket import socket
from typing import Any

import trustme


@dataclass(frozen=True)
class Seen:
    connection: int
    sni: str | None
    alpn: str | None
    method: str
    path: str
    host: str | None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive by default
    server: _Server

    def setup(self) -> None:
        conn = self.request
        assert isinstance(conn, ssl.SSLSocket)
        conn.do_handshake()  # here, in the connection's thread, not in the accept loop
        super().setup()
        self.number = next(self.server.numbers)

    def _answer(self, body: bool) -> None:
        conn = self.connection
        assert isinstance(conn, ssl.SSLSocket)
        seen = Seen(self.number, self.server.sni.get(id(conn)), conn.selected_alpn_protocol(),
                    self.command, self.path, self.headers.get("Host"))
        with self.server.lock:
            self.server.seen.append(seen)
        data = json.dumps(seen.__dict__).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer(True)

    def do_HEAD(self) -> None:
        self._answer(False)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, context: ssl.SSLContext) -> None:
        self.numbers = itertools.count(1)
        self.sni: dict[int, str | None] = {}
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        context.sni_callback = self._sni
        self.context = context
        super().__init__(("127.0.0.1", 0), _Handler)

    def _sni(self, sock: ssl.SSLObject | ssl.SSLSocket, name: str | None,
             context: ssl.SSLContext) -> None:
        self.sni[id(sock)] = name

    def get_request(self) -> tuple[socket, Any]:
        sock, address = super().get_request()
        # the handshake happens in the handler's thread (_Handler.setup)
        return self.context.wrap_socket(sock, server_side=True,
                                        do_handshake_on_connect=False), address

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up on the handshake (a verification test) is not news


class TlsUpstream:
    """The server; ``start()``/``stop()`` or ``with``; ``address`` names it as ``localhost``."""

    def __init__(self, ca: trustme.CA, alpn: tuple[str, ...] = ("h2", "http/1.1")) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
        # offering h2 first shows that an HTTPS rule's ALPN keeps the backend on http/1.1
        context.set_alpn_protocols(list(alpn))
        self._server = _Server(context)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="tls-upstream")

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    def seen(self, method: str | None = None) -> list[Seen]:
        with self._server.lock:
            return [s for s in self._server.seen if method is None or s.method == method]

    def start(self) -> TlsUpstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> TlsUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
