"""The client side of the hardening tests: raw bytes out (whole or in segments), responses in.

``send`` writes the bytes, optionally split into segments that arrive separately (TCP_NODELAY
and a short pause between them), optionally half-closes, and reads until the proxy closes or
until the expected number of responses came. ``parse_responses`` splits what came back into
responses (Content-Length, chunked, or close-delimited bodies; interim 1xx skipped; a response
to HEAD recognised by the next status line following its head).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

#: what a proxy connection's end looked like from the client
EOF, RESET, OPEN = "eof", "reset", "open"


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    @property
    def closes(self) -> bool:
        return (self.header("connection") or "").lower() == "close"


@dataclass
class Exchange:
    replies: list[Reply]
    #: bytes after the last whole response (a response cut short, or garbage)
    leftover: bytes
    #: EOF, RESET, or OPEN (still open when we stopped reading)
    end: str
    raw: bytes = field(repr=False, default=b"")

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.replies]


def _head(data: bytes, start: int) -> tuple[int, list[tuple[str, str]], int] | None:
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        return None
    lines = data[start:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not a status line: {lines[0][:80]!r}")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name, value.strip()))
    return int(parts[1]), headers, end + 4


def _chunked(data: bytes, pos: int) -> tuple[bytes, int] | None:
    body = bytearray()
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(data[pos:eol].split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            end = data.find(b"\r\n\r\n", pos - 2)  # trailers, then the empty line
            return (bytes(body), end + 4) if end >= 0 else None
        if len(data) < pos + size + 2:
            return None
        body += data[pos:pos + size]
        pos += size + 2


def parse_responses(data: bytes, at_eof: bool) -> tuple[list[Reply], bytes]:
    """The whole responses in ``data`` and the bytes left over. ``at_eof``: nothing more will
    come, so a body without framing ends here."""
    replies: list[Reply] = []
    pos = 0
    while pos < len(data):
        try:
            head = _head(data, pos)
        except ValueError:
            break
        if head is None:
            break
        status, headers, start = head
        fields = {k.lower(): v for k, v in headers}
        if 100 <= status < 200 and status != 101:
            pos = start  # interim: no body
            continue
        if status in (204, 304):
            body, pos = b"", start
        elif "chunked" in fields.get("transfer-encoding", "").lower():
            got = _chunked(data, start)
            if got is None:
                break
            body, pos = got
        elif "content-length" in fields:
            n = int(fields["content-length"])
            if n and (data.startswith(b"HTTP/1.", start) or (at_eof and start == len(data))):
                body, pos = b"", start  # an answer to HEAD: the next response (or the end)
            elif len(data) >= start + n:  # follows its head at once
                body, pos = data[start:start + n], start + n
            else:
                break
        elif at_eof:
            body, pos = data[start:], len(data)  # delimited by the close
        else:
            break
        replies.append(Reply(status, headers, body))
    return replies, data[pos:]


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def send(port: int, segments: Sequence[bytes] | bytes, *, gap: float = 0.0,
         half_close: bool = False, expect: int | None = None, timeout: float = 5.0,
         sock: socket.socket | None = None) -> Exchange:
    """Send ``segments`` (``gap`` seconds apart), then read until the proxy closes, or until
    ``expect`` responses arrived; with ``half_close`` our side is shut after the last byte."""
    parts = [segments] if isinstance(segments, bytes) else list(segments)
    own = sock is None
    s = connect(port, timeout) if sock is None else sock
    try:
        for i, part in enumerate(parts):
            if i and gap:
                time.sleep(gap)
            try:
                s.sendall(part)
            except OSError:
                break  # the proxy gave up on us already: read what it said
        if half_close:
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        return read_until(s, expect, timeout)
    finally:
        if own:
            s.close()


def read_until(s: socket.socket, expect: int | None, timeout: float = 5.0) -> Exchange:
    data = b""
    end = OPEN
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if expect is not None and len(parse_responses(data, False)[0]) >= expect:
            break
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            end = RESET
            break
        if not chunk:
            end = EOF
            break
        data += chunk
    replies, leftover = parse_responses(data, end != OPEN)
    return Exchange(replies, leftover, end, data)


def wait_closed(s: socket.socket, timeout: float = 5.0) -> str:
    """Read (and drop) until the proxy closes: EOF or RESET; OPEN if it did not by ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not s.recv(65536):
                return EOF
        except TimeoutError:
            break
        except ConnectionResetError:
            return RESET
    return OPEN


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``data`` cut at the given offsets (sorted, deduplicated, inside the data)."""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]
