"""A stdlib ``wsgiref`` upstream in a thread of the test process, for the CVM body and redirect
tests: wsgiref reads a request body only by ``Content-Length`` (a chunked body reaches its
application as empty, as it does Django's runserver or uWSGI without chunked input), which is
what proxy_request_buffering must make work.

Every request is recorded (``requests``: method, path, the framing headers, the body as the
application read it). Paths:
  /redirect[?to=PATH]  302 with an absolute ``Location`` naming this server's own address
  /redirect?location=URL  302 with that ``Location``
  /refresh             200 with ``Refresh: 0; url=<this server's address>/next``
  anything else        200, a JSON echo of what was read
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True

    def shutdown_request(self, request: Any) -> None:
        # A lingering close, as nginx's: a body the application did not read (a chunked one,
        # which wsgiref never reads) is read and dropped before the close. Closing with it
        # unread makes the kernel reset the connection, and a proxy reading our answer just
        # then loses it with the reset (seen once in CI as a 502).
        try:
            request.shutdown(socket.SHUT_WR)
            request.settimeout(LINGER_SECONDS)
            while request.recv(65536):
                pass
        except OSError:
            pass
        self.close_request(request)


#: how long a closing connection's unread input is read and dropped
LINGER_SECONDS = 2.0


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class WsgiUpstream:
    """``with WsgiUpstream() as up``: ``up.port``, ``up.address``, ``up.requests``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server = make_server("127.0.0.1", 0, self._app, server_class=_Server,
                                   handler_class=_QuietHandler)
        self.port = self._server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="wsgi-upstream")

    def __enter__(self) -> WsgiUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _app(self, environ: dict[str, Any],
             start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        path = environ["PATH_INFO"]
        seen = {
            "method": environ["REQUEST_METHOD"], "path": path,
            "content_length": environ.get("CONTENT_LENGTH") or "",
            "transfer_encoding": environ.get("HTTP_TRANSFER_ENCODING", ""),
            "host": environ.get("HTTP_HOST", ""),
            "headers": {k[5:].replace("_", "-").lower(): v for k, v in environ.items()
                        if k.startswith("HTTP_")},
            "length": len(body), "sha256": hashlib.sha256(body).hexdigest(),
        }
        with self._lock:
            self.requests.append(seen)
        own = f"http://{self.address}"
        if path == "/redirect":
            query = parse_qs(environ.get("QUERY_STRING", ""))
            to = query.get("location", [own + query.get("to", ["/next"])[0]])[0]
            start_response("302 Found", [("Location", to), ("Content-Length", "0")])
            return [b""]
        if path == "/refresh":
            start_response("200 OK", [("Refresh", f"0; url={own}/next"),
                                      ("Content-Length", "0")])
            return [b""]
        data = json.dumps(seen).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(data)))])
        return [data]
