"""Bytes out: the one place that turns a Response or a ProxyError into HTTP/1.1 bytes (and into
the header list of an HTTP/2 HEADERS frame, ``h2_head``, which http2.py hands to its engine).

Strategy (the hot path): status lines and the static headers are pre-encoded ``bytes``; the
``Date`` header is rebuilt at most once a second; a response is joined into one ``bytes`` so the
connection does one ``transport.write`` per response. Error pages are built once per status.
``Content-Length`` is always computed here (RFC 9110 §8.6), never copied from a backend's
headers: a plain body's is its size; a streamed body's, or the GET's of a HEAD answer that came
without its body, is the ``length`` its backend put in the Response (none known: none sent,
rather than a wrong one).
"""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus

import orjson

from .errors import (BadFunctionResponse, ClientCertificateInvalid, ClientCertificateRequired,
                     FunctionError, ProxyError)
from .messages import Response
from .vocabulary import FRAMING, HOP_BY_HOP, NO_BODY_STATUSES

SERVER_NAME = "clbscf-proxy"

#: CLB's documented body for an integration response it cannot parse (SPEC §6).
ANALYSE_FAILED_BODY = b'{"errno":403,"error":"Analyse scf response failed."}'

STATUS_LINES: dict[int, bytes] = {
    s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode("ascii") for s in HTTPStatus
}
_SERVER_HEADER = f"Server: {SERVER_NAME}\r\n".encode("ascii")


def server_header(tokens: bool) -> bytes:
    """The ``Server`` line: the name alone, or with the version (``server_tokens on``)."""
    if not tokens:
        return _SERVER_HEADER
    from . import __version__
    return f"Server: {SERVER_NAME}/{__version__}\r\n".encode("ascii")
_KEEP_ALIVE = b"Connection: keep-alive\r\n"
_CLOSE = b"Connection: close\r\n"

_date_second = 0
_date_header = b""


def date_header() -> bytes:
    """``Date: ...\\r\\n`` for the current second, rebuilt once a second."""
    global _date_second, _date_header
    now = int(time.time())
    if now != _date_second:
        _date_second = now
        _date_header = b"Date: " + formatdate(now, usegmt=True).encode("ascii") + b"\r\n"
    return _date_header


def status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    if line is None:  # a valid but unregistered code a function may return (e.g. 299)
        line = f"HTTP/1.1 {status} Unknown\r\n".encode("ascii")
    return line


def serialize(response: Response, keep_alive: bool, head_only: bool = False,
              server: bytes = _SERVER_HEADER) -> bytes:
    """The whole response as one ``bytes``; HEAD gets the headers of the GET, no body.

    An answer to HEAD that came without its body (a function that answers HEAD as HEAD) has
    the GET's length in ``response.length`` when its backend knew it, and then sends that;
    otherwise it sends no Content-Length at all: a 0 would contradict the GET (RFC 9110 §8.6,
    a HEAD response's Content-Length, if sent, is the GET's)."""
    status = response.status
    parts = [status_line(status), server, date_header()]
    for name, value in response.headers:
        parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    body = response.body
    if status in NO_BODY_STATUSES:
        body = b""
    elif head_only and not body:
        if response.length is not None:
            parts.append(b"Content-Length: %d\r\n" % response.length)
    else:
        parts.append(b"Content-Length: %d\r\n" % len(body))
    parts.append(_KEEP_ALIVE if keep_alive else _CLOSE)
    parts.append(b"\r\n")
    if body and not head_only:
        parts.append(body)
    return b"".join(parts)


def serialize_head(response: Response, keep_alive: bool, chunked: bool,
                   server: bytes = _SERVER_HEADER) -> bytes:
    """Status line and headers of a streamed response (or of a 101 hand-over)."""
    parts = [status_line(response.status), server, date_header()]
    for name, value in response.headers:
        parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    if response.status == 101:
        return b"".join(parts) + b"\r\n"  # its Connection/Upgrade come from the backend
    if response.status not in NO_BODY_STATUSES:
        if response.length is not None:
            parts.append(b"Content-Length: %d\r\n" % response.length)
        elif chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
    parts.append(_KEEP_ALIVE if keep_alive else _CLOSE)
    parts.append(b"\r\n")
    return b"".join(parts)


#: fields an HTTP/2 response never carries: connection-specific ones (RFC 9113 §8.2.2) and the
#: framing, which is the writer's (as for HTTP/1.1)
_H2_DROPPED = HOP_BY_HOP | FRAMING


def h2_head(response: Response, length: int | None,
            server: bytes = _SERVER_HEADER) -> list[tuple[bytes, bytes]]:
    """The header list of ``response`` for HTTP/2: ``:status``, Server and Date as on
    HTTP/1.1, the response's fields with names lower-cased (RFC 9113 §8.2.1) and without the
    connection-specific ones, and ``content-length`` when ``length`` is known (never for
    204/304/1xx)."""
    status = response.status
    out = [(b":status", b"%d" % status), (b"server", server[8:-2]),
           (b"date", date_header()[6:-2])]
    for name, value in response.headers:
        lname = name.lower()
        if lname not in _H2_DROPPED:
            out.append((lname.encode("latin-1"), value.encode("latin-1")))
    if length is not None and status not in NO_BODY_STATUSES:
        out.append((b"content-length", b"%d" % length))
    return out


LAST_CHUNK = b"0\r\n\r\n"


def frame_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (RFC 9112 §7.1)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def continue_response() -> bytes:
    """The interim ``100 Continue`` for a request with ``Expect: 100-continue``."""
    return b"HTTP/1.1 100 Continue\r\n\r\n"


def _html_page(status: int) -> bytes:
    phrase = STATUS_LINES[status].decode("ascii").split(" ", 2)[2].strip()
    return (
        f"<html>\r\n<head><title>{status} {phrase}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {phrase}</h1></center>\r\n<hr><center>{SERVER_NAME}</center>\r\n"
        "</body>\r\n</html>\r\n"
    ).encode("ascii")


_HTML = (("Content-Type", "text/html"),)
_JSON = (("Content-Type", "application/json"),)
_PAGES: dict[int, Response] = {
    s: Response(s, _HTML, _html_page(s)) for s in (400, 404, 408, 413, 414, 431, 500, 501, 502,
                                                   503, 504, 505)
}


def _nginx_ssl_page(text: str) -> Response:
    # nginx's pages for its 495/496, sent with status 400 (ngx_http_special_response.c)
    return Response(400, _HTML, (
        f"<html>\r\n<head><title>400 {text}</title></head>\r\n<body>\r\n"
        f"<center><h1>400 Bad Request</h1></center>\r\n<center>{text}</center>\r\n"
        f"<hr><center>{SERVER_NAME}</center>\r\n</body>\r\n</html>\r\n").encode("ascii"))


#: mutual TLS refusals: nginx's texts (docs/BEHAVIOUR.md §8)
_CLASS_PAGES: dict[type[ProxyError], Response] = {
    ClientCertificateRequired: _nginx_ssl_page("No required SSL certificate was sent"),
    ClientCertificateInvalid: _nginx_ssl_page("The SSL certificate error"),
}


def error_response(exc: ProxyError) -> Response:
    """The client's view of an error: CLB's texts where CLB documents one, nginx's for the
    mutual TLS refusals, else a short page."""
    status = exc.status_hint
    special = _CLASS_PAGES.get(type(exc))
    if special is not None:
        return special
    if isinstance(exc, BadFunctionResponse):
        return Response(status, _JSON, ANALYSE_FAILED_BODY)
    if isinstance(exc, FunctionError) and exc.debug:
        return Response(status, _JSON, orjson.dumps(exc.error))
    page = _PAGES.get(status) or Response(status, _HTML, _html_page(status))
    if exc.retry_after is not None:
        return Response(status, page.headers + (("Retry-After", str(exc.retry_after)),),
                        page.body)
    return page


def redirect_response(location: str, status: int = 301) -> Response:
    """``status`` (301 by default: the CLB trailing-slash redirect, SPEC §3; a rewrite's
    301/302/307) to ``location``."""
    return Response(status, (("Location", location),) + _HTML, _html_page(status))
