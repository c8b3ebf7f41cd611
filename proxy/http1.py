"""HTTP/1.1 request parsing, sans-I/O: bytes in, ``RequestHead`` / body ``bytes`` / ``END`` out.

Owns the framing of requests on a client connection (where a head ends, the request-line and
header-section limits, Content-Length and chunked bodies, pipelining, when to stop reading) and
the meaning of a head (target forms, Host, Content-Length, Transfer-Encoding, Connection,
Expect, Upgrade). Must not know asyncio, sockets, logging or routing.

Strategy. Two engines judge the *syntax* of a complete head: llhttp through httptools (the fast
path) or h11 (pure Python). Everything else is ours and shared, so that both give the same verdict
on every input, however it is split:

* httptools reports neither byte offsets nor size limits, so the framing is ours: a head ends at
  the first CRLF CRLF; the limits are measured on lines as RFC 9112 §2.2 defines them (ended by
  LF, which must follow a CR). The common case (a whole, small head in one read) costs two C-level
  scans; anything else goes through an incremental line scanner that never re-reads a line.
* Bodies are framed here too (Content-Length counting, a strict chunked decoder). The engines
  see heads only, so llhttp needs no body callbacks and h11 no state-machine cycling.
* Each engine is told not to judge what the other judges differently: llhttp runs with its
  Transfer-Encoding leniencies on; h11's "only chunked" 501 is overruled (it raises it only
  after every line passed its syntax check); h11 gets pre-checks for what llhttp rejects and it
  lets through (obs-fold, control bytes). Methods, versions, target forms, Host, Content-Length,
  Transfer-Encoding are judged by ``_interpret`` for both.

Verdict order, the same on both engines: request-line and header-section limits (414, 431) line
by line as bytes arrive, then bare CR/LF per line, then the engine's syntax verdict on the whole
head (400), then our 400 rules, then 501, then 413. An error found after events were produced in
the same ``feed`` is held back and raised by the next call (``error`` shows it at once), so a
good request pipelined before a bad one is still answered.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Final

import h11

from .errors import (
    BadRequest,
    HeadersTooLarge,
    NotImplementedCoding,
    PayloadTooLarge,
    ProxyError,
    UriTooLong,
)
from .vocabulary import TOKEN_BYTES

try:
    import httptools
except ImportError:  # pragma: no cover - the pure-Python install
    httptools = None  # type: ignore[assignment]

# llhttp's leniency switches arrived with httptools 0.6.3 (llhttp 9); older llhttp has other
# defaults, so it does not count as available.
HAVE_HTTPTOOLS: Final = httptools is not None and hasattr(
    httptools.HttpRequestParser, "set_dangerous_leniencies")


@dataclass(frozen=True, slots=True)
class Limits:
    #: bytes of the request line, CRLF excluded (414 beyond; RFC 9112 §3 asks for >= 8000)
    max_request_line: int = 8192
    #: bytes of the header section: the field lines and the empty line, CRLFs included (431)
    max_header_size: int = 65536
    #: field lines (431 beyond); the same two limits apply to a chunked body's trailers
    max_header_count: int = 100
    #: Content-Length, or the sum of a chunked body's chunk sizes (413 beyond)
    max_body_size: int = 62914560


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~1 us more per request
class RequestHead:
    method: str
    #: the request-target path before ``?``, as sent (absolute-form: the URI's path)
    path: str
    #: after ``?``, "" if none
    query: str
    #: names as sent, values latin-1 decoded with OWS trimmed; fields whose name holds "_"
    #: are left out (see ``_interpret``)
    headers: tuple[tuple[str, str], ...]
    #: "1.1" or "1.0"
    http_version: str
    #: the connection may persist after this request: HTTP/1.1 without "close", HTTP/1.0 with
    #: "keep-alive" (RFC 9112 §9.3)
    keep_alive: bool
    content_length: int | None
    chunked: bool
    expect_continue: bool
    #: the Upgrade header value of a request asking to switch protocols, else ""
    upgrade: str
    #: bytes of the head as received (request line, fields, the empty line)
    length: int = 0


class EndOfRequest:
    """The marker that ends a request's events; use the one instance, ``END``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "END"


END: Final = EndOfRequest()
Event = RequestHead | bytes | EndOfRequest
Buffer = bytes | bytearray

# -- the grammar we hold requests to ---------------------------------------------------------

#: RFC 9110 §5.6.4 quoted-string (qdtext / quoted-pair)
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t\x20-\x7e\x80-\xff])*"'
#: RFC 9112 §7.1 chunk-size [chunk-ext] CRLF; size bounded to 16 hex digits (§7.1: guard
#: against integer overflow), so a size always fits in 64 bits
_CHUNK_LINE: Final = re.compile(
    rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[ \t]*" + TOKEN_BYTES
    + rb"(?:[ \t]*=[ \t]*(?:" + TOKEN_BYTES + rb"|" + _QUOTED + rb"))?)*\r\n")
#: a trailer field line (RFC 9112 §7.1.2 / §5): token ":" visible chars, SP, HT, obs-text
_FIELD_LINE: Final = re.compile(TOKEN_BYTES + rb":[\t\x20-\x7e\x80-\xff]*\r\n")
#: control bytes other than HT (CR and LF are line ends, judged by the framing); RFC 9110 §5.5
_CTL: Final = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
#: uri-host [":" port] (RFC 9110 §7.2, RFC 3986 §3.2.2); userinfo is not allowed (§4.2.4)
_HOST: Final = re.compile(r"(?:\[[0-9A-Za-z:.]+\]|[-A-Za-z0-9._~!$&'()*+,;=%]*)(?::[0-9]*)?")
_ABSOLUTE: Final = re.compile(r"(?i:https?)://([^/?#]*)([/?][^#]*)?")
_CONTENT_LENGTH: Final = re.compile(r"[0-9]{1,20}")
_MAX_UINT64: Final = (1 << 64) - 1
#: longest chunk-size line, extensions included (RFC 9112 §7.1.1: limit chunk extensions)
MAX_CHUNK_LINE: Final = 4096

VERSIONS: Final = {"HTTP/1.1": "1.1", "HTTP/1.0": "1.0"}
#: the methods llhttp knows for HTTP (RFC 9110 §9 + WebDAV & co.), without CONNECT: a gateway
#: has no tunnels to open (authority-form targets are refused below)
METHODS: Final = frozenset((
    "GET HEAD POST PUT DELETE OPTIONS TRACE PATCH COPY LOCK MKCOL MOVE PROPFIND PROPPATCH "
    "SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY "
    "SUBSCRIBE UNSUBSCRIBE PURGE MKCALENDAR LINK UNLINK SOURCE").split())
#: the fields ``_interpret`` reads, by lower-cased name
_SPECIAL: Final = frozenset(
    ("host", "content-length", "transfer-encoding", "connection", "expect", "upgrade"))

# framing states
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _STOPPED = range(7)


def _check_line_end(data: Buffer, start: int, lf: int) -> None:
    """The line ``data[start:lf + 1]`` must end in CRLF and hold no other CR (RFC 9112 §2.2)."""
    if lf == start or data[lf - 1] != 13:
        raise BadRequest("bare LF in the request head")
    if data.find(b"\r", start, lf - 1) >= 0:
        raise BadRequest("bare CR in the request head")


def _request_line_too_long(data: Buffer, start: int, stop: int, limit: int) -> bool:
    """Whether the request line ``data[start:stop]`` (no LF seen in it) is over ``limit``
    whatever follows: one byte past the limit is fine only if it is the CR of CRLF."""
    size = stop - start
    return size > limit + 1 or (size == limit + 1 and data[stop - 1] != 13)


class RequestParser(ABC):
    """Turns a client's bytes into request events. Subclasses supply ``_check_head``."""

    kind: ClassVar[str] = ""
    __slots__ = (
        "_limits", "_state", "_buf", "_error", "_trailing", "_closing", "_remaining",
        "_total", "_lines", "_scanned", "_in_fields", "_field_bytes", "_field_count",
    )

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._state = _HEAD
        self._buf = bytearray()  # bytes not consumed yet: always the start of an item
        self._error: ProxyError | None = None
        self._trailing = b""  # rarely used: the shared empty bytes until then
        self._closing = False  # the current request is the last one (close or upgrade)
        self._remaining = 0  # body bytes left in the Content-Length body or the chunk
        self._total = 0  # chunked: declared body bytes so far
        # progress inside the item at the buffer start (a head, a chunk-size line, a trailer
        # line), as offsets from that start
        self._lines = 0  # head: where the next unread line starts
        self._scanned = 0  # no LF before this offset in the current line
        self._in_fields = False  # the head's request line is behind us
        self._field_bytes = 0  # header or trailer section so far
        self._field_count = 0

    # -- public API ---------------------------------------------------------------------------

    @property
    def error(self) -> ProxyError | None:
        """The error that killed the parser (possibly not raised yet), or None."""
        return self._error

    @property
    def partial_head(self) -> bool:
        """Bytes of a head that is not complete yet are waiting for more."""
        return self._state == _HEAD and bool(self._buf)

    @property
    def between_requests(self) -> bool:
        """Nothing of a request is held and nothing went wrong: the parser is as good as new
        (its connection may hand it to another one; ``_emit_head`` reset its head scan)."""
        return self._state == _HEAD and not self._buf and self._error is None

    @property
    def trailing(self) -> bytes:
        """Bytes received after the final request (Connection: close, HTTP/1.0 or Upgrade)."""
        return bytes(self._trailing)

    def feed(self, data: bytes) -> list[Event]:
        """Parse ``data``; return the events it completes, in order."""
        if self._error is not None:
            raise self._again()
        if self._state == _STOPPED:
            self._trailing += data
            return []
        buf = self._buf
        if buf:
            buf += data
        view: Buffer = buf if buf else data
        events: list[Event] = []
        try:
            pos = self._run(view, events)
        except ProxyError as exc:
            self._error = exc
            self._buf = bytearray()
            if events:
                return events  # the requests before the error are still owed an answer
            raise
        if self._state == _STOPPED:
            self._trailing += view[pos:]
            self._buf = bytearray()
        elif view is buf:
            del buf[:pos]
        elif pos < len(view):
            self._buf = bytearray(memoryview(view)[pos:])
        return events

    def feed_eof(self) -> None:
        """The client closed its side: fine between requests, ``BadRequest`` mid-request."""
        if self._error is not None:
            raise self._again()
        if self._state == _STOPPED or (self._state == _HEAD and not self._buf):
            return
        # RFC 9112 §6.3 / §8: a message cut short is incomplete, never forwarded as whole
        self._error = BadRequest("connection closed in the middle of a request")
        raise self._error

    # -- framing ------------------------------------------------------------------------------

    def _again(self) -> ProxyError:
        error = self._error
        assert error is not None
        return type(error)(str(error), log_detail=error.log_detail)

    def _run(self, data: Buffer, events: list[Event]) -> int:
        pos = 0
        end = len(data)
        steps = self._STEPS
        while pos < end and self._state != _STOPPED:
            new = steps[self._state](self, data, pos, events)
            if new < 0:
                break  # the item at ``pos`` needs more bytes
            pos = new
        return pos

    def _step_head(self, data: Buffer, pos: int, events: list[Event]) -> int:
        limits = self._limits
        if not self._lines and not self._in_fields:
            if data.startswith(b"\r\n", pos):
                # RFC 9112 §2.2: a server SHOULD ignore empty lines before a request-line
                while data.startswith(b"\r\n", pos):
                    pos += 2
                return pos
            end = data.find(b"\r\n\r\n", pos)
            # Fast path: a head this small cannot break a size limit, and one with no more LFs
            # than the count limit allows cannot break that one, whatever its line ends are;
            # bare CR/LF are then the engine's to reject (llhttp does; the h11 adapter checks).
            if (end >= 0 and end + 4 - pos <= limits.max_request_line
                    and end + 4 - pos <= limits.max_header_size
                    and data.count(b"\n", pos, end + 4) <= limits.max_header_count + 2):
                return self._emit_head(data, pos, end + 4, events)
        stop = self._scan_head(data, pos)
        return stop if stop < 0 else self._emit_head(data, pos, stop, events)

    def _scan_head(self, data: Buffer, pos: int) -> int:
        """Check the head's lines from where the last call stopped: limits first, then line ends.
        Returns where the head ends, or -1 when it is not complete yet."""
        limits = self._limits
        end = len(data)
        start = pos + self._lines
        while True:
            lf = data.find(b"\n", max(start, pos + self._scanned), end)
            if lf < 0:
                break
            if not self._in_fields:
                if _request_line_too_long(data, start, lf, limits.max_request_line):
                    raise UriTooLong("request line over %d bytes" % limits.max_request_line)
                _check_line_end(data, start, lf)
                self._in_fields = True
            else:
                # the header section: field lines and the empty line that ends it
                self._field_bytes += lf + 1 - start
                if self._field_bytes > limits.max_header_size:
                    raise HeadersTooLarge("header section over %d bytes" % limits.max_header_size)
                _check_line_end(data, start, lf)
                if lf - start == 1:
                    return lf + 1  # the empty line
                self._field_count += 1
                if self._field_count > limits.max_header_count:
                    raise HeadersTooLarge("more than %d header lines" % limits.max_header_count)
            start = lf + 1
        self._lines = start - pos
        self._scanned = end - pos
        if not self._in_fields:
            if _request_line_too_long(data, start, end, limits.max_request_line):
                raise UriTooLong("request line over %d bytes" % limits.max_request_line)
        elif self._field_bytes + end - start > limits.max_header_size:
            raise HeadersTooLarge("header section over %d bytes" % limits.max_header_size)
        return -1

    def _emit_head(self, data: Buffer, pos: int, stop: int, events: list[Event]) -> int:
        self._lines = self._scanned = self._field_bytes = self._field_count = 0
        self._in_fields = False
        if pos == 0 and stop == len(data) and isinstance(data, bytes):
            raw = data
        else:
            raw = bytes(memoryview(data)[pos:stop])
        self._check_head(raw)
        head = _interpret(raw, self._limits)
        head.length = stop - pos
        events.append(head)
        self._closing = not head.keep_alive or bool(head.upgrade)
        if head.chunked:
            self._state = _CHUNK_SIZE
            self._total = 0
        elif head.content_length:
            self._state = _LENGTH
            self._remaining = head.content_length
        else:
            self._end(events)
        return stop

    def _end(self, events: list[Event]) -> None:
        events.append(END)
        # RFC 9112 §9.6: nothing after "close" is processed, nor after an HTTP/1.0 request
        # without "keep-alive" (§9.3); after an Upgrade the bytes are the new protocol's.
        self._state = _STOPPED if self._closing else _HEAD

    def _take(self, data: Buffer, pos: int, events: list[Event]) -> int:
        """Emit up to ``_remaining`` body bytes from ``pos``; return the new position."""
        take = min(self._remaining, len(data) - pos)
        if take == len(data) and isinstance(data, bytes):
            events.append(data)
        else:
            events.append(bytes(memoryview(data)[pos:pos + take]))
        self._remaining -= take
        return pos + take

    def _step_length(self, data: Buffer, pos: int, events: list[Event]) -> int:
        pos = self._take(data, pos, events)
        if not self._remaining:
            self._end(events)
        return pos

    def _step_chunk_size(self, data: Buffer, pos: int, events: list[Event]) -> int:
        start = pos
        pos = self._whole_chunks(data, pos, events)
        if pos != start:
            self._scanned = 0
            return pos  # the next call goes on from here, step by step
        end = len(data)
        lf = data.find(b"\n", pos + self._scanned, min(end, pos + MAX_CHUNK_LINE))
        if lf < 0:
            if end - pos >= MAX_CHUNK_LINE:
                raise BadRequest("chunk-size line over %d bytes" % MAX_CHUNK_LINE)
            self._scanned = end - pos
            return -1
        self._scanned = 0
        match = _CHUNK_LINE.fullmatch(data, pos, lf + 1)
        if match is None:
            raise BadRequest("invalid chunk-size line")
        size = int(match.group(1), 16)
        if size:
            self._total += size
            if self._total > self._limits.max_body_size:
                raise PayloadTooLarge("chunked body over %d bytes" % self._limits.max_body_size)
            self._remaining = size
            self._state = _CHUNK_DATA
        else:
            self._state = _TRAILER  # last-chunk: the trailer section follows
            self._field_bytes = self._field_count = 0
        return lf + 1

    def _whole_chunks(self, data: Buffer, pos: int, events: list[Event]) -> int:
        """Fast path for runs of small chunks: consume the complete, well-formed chunks at
        ``pos`` with one regex match each and emit their data as one event. Anything else (the
        last chunk, a partial or broken one) is left to the step-by-step path, which has the
        same verdicts."""
        end = len(data)
        parts: list[Buffer] = []
        try:
            while True:
                match = _CHUNK_LINE.match(data, pos, pos + MAX_CHUNK_LINE)
                if match is None:
                    break
                size = int(match.group(1), 16)
                first = match.end()
                stop = first + size
                if not size or stop + 2 > end or data[stop] != 13 or data[stop + 1] != 10:
                    break
                self._total += size
                if self._total > self._limits.max_body_size:
                    raise PayloadTooLarge("chunked body over %d bytes" % self._limits.max_body_size)
                parts.append(data[first:stop])
                pos = stop + 2
        finally:
            if parts:
                events.append(b"".join(parts))
        return pos

    def _step_chunk_data(self, data: Buffer, pos: int, events: list[Event]) -> int:
        pos = self._take(data, pos, events)
        if not self._remaining:
            self._state = _CHUNK_END
        return pos

    def _step_chunk_end(self, data: Buffer, pos: int, events: list[Event]) -> int:
        # chunk-data is followed by CRLF (RFC 9112 §7.1)
        if data[pos] != 13 or (len(data) > pos + 1 and data[pos + 1] != 10):
            raise BadRequest("chunk data not followed by CRLF")
        if len(data) == pos + 1:
            return -1
        self._state = _CHUNK_SIZE
        return pos + 2

    def _step_trailer(self, data: Buffer, pos: int, events: list[Event]) -> int:
        """One trailer line. Trailers are checked like header lines and then dropped
        (RFC 9110 §6.5.1 lets a recipient discard them)."""
        limits = self._limits
        end = len(data)
        lf = data.find(b"\n", pos + self._scanned, end)
        if lf < 0:
            if self._field_bytes + end - pos > limits.max_header_size:
                raise HeadersTooLarge("trailer section over %d bytes" % limits.max_header_size)
            self._scanned = end - pos
            return -1
        self._scanned = 0
        self._field_bytes += lf + 1 - pos
        if self._field_bytes > limits.max_header_size:
            raise HeadersTooLarge("trailer section over %d bytes" % limits.max_header_size)
        if lf == pos + 1 and data[pos] == 13:
            self._end(events)
            return lf + 1
        if _FIELD_LINE.fullmatch(data, pos, lf + 1) is None:
            raise BadRequest("invalid trailer line")
        self._field_count += 1
        if self._field_count > limits.max_header_count:
            raise HeadersTooLarge("more than %d trailer lines" % limits.max_header_count)
        return lf + 1

    _STEPS: ClassVar[dict[int, Callable[[RequestParser, Buffer, int, list[Event]], int]]] = {
        _HEAD: _step_head, _LENGTH: _step_length, _CHUNK_SIZE: _step_chunk_size,
        _CHUNK_DATA: _step_chunk_data, _CHUNK_END: _step_chunk_end, _TRAILER: _step_trailer,
    }

    # -- the engine -----------------------------------------------------------------------------

    @abstractmethod
    def _check_head(self, head: bytes) -> None:
        """Raise ``BadRequest`` unless ``head`` (request line to the empty line) is well formed."""


class _LlhttpDone:
    """httptools protocol object: whether llhttp saw the message end, and whether the message
    let the connection stay open (read when the headers end: llhttp forgets it afterwards)."""

    __slots__ = ("complete", "keep_alive", "parser")

    def __init__(self) -> None:
        self.complete = False
        self.keep_alive = False
        self.parser: httptools.HttpRequestParser | None = None

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.keep_alive = self.parser.should_keep_alive()

    def on_message_complete(self) -> None:
        self.complete = True


class HttptoolsParser(RequestParser):
    """llhttp judges the head's syntax, in C.

    One llhttp parser serves every connection of the process: a head is always fed whole and
    synchronously, and the parser is kept only while it is between messages (else replaced),
    so no state carries over from one head to the next. An idle keep-alive connection so holds
    no llhttp state at all (memory per idle connection, issue 8).
    """

    kind = "httptools"
    __slots__ = ()
    _done = _LlhttpDone()
    _llhttp: httptools.HttpRequestParser | None = None

    def __init__(self, limits: Limits) -> None:
        if not HAVE_HTTPTOOLS:
            raise RuntimeError("httptools >= 0.6.3 is not installed")
        super().__init__(limits)

    @classmethod
    def _new_llhttp(cls) -> httptools.HttpRequestParser:
        parser = httptools.HttpRequestParser(cls._done)
        cls._done.parser = parser
        # Transfer-Encoding and its clash with Content-Length are judged by _interpret (400 or
        # 501 as RFC 9112 §6.1/§6.3 say); strict llhttp would answer some of them differently.
        parser.set_dangerous_leniencies(
            lenient_transfer_encoding=True, lenient_chunked_length=True)
        return parser

    def _check_head(self, head: bytes) -> None:
        cls = HttptoolsParser
        llhttp = cls._llhttp or cls._new_llhttp()
        cls._llhttp = None  # whatever happens below, only a parser between messages goes back
        done = cls._done
        done.parser = llhttp
        done.complete = done.keep_alive = False
        try:
            llhttp.feed_data(head)
            # reusable only if llhttp is between messages: no body pending (bodies are framed
            # by us) and no "close" (it would refuse data after it)
            reusable = done.complete and done.keep_alive
        except httptools.HttpParserUpgrade:
            reusable = False  # Upgrade or CONNECT: the head was fine, _interpret decides
        except httptools.HttpParserError as exc:
            raise BadRequest("malformed request head", log_detail=str(exc)) from exc
        if reusable:
            cls._llhttp = llhttp


class H11Parser(RequestParser):
    """h11 judges the head's syntax, in pure Python, after the checks llhttp makes and h11
    does not."""

    kind = "h11"
    __slots__ = ()

    def _check_head(self, head: bytes) -> None:
        # llhttp rejects these and h11 lets them through: h11 unfolds obs-fold (RFC 9112 §5.2
        # lets us reject it instead), accepts bare LF (§2.2; the fast path leaves line ends to
        # the engine), and accepts control bytes in field values (RFC 9110 §5.5: invalid).
        if b"\r\n " in head or b"\r\n\t" in head:
            raise BadRequest("obs-fold or whitespace before a field name")
        crlf = head.count(b"\r\n")
        if head.count(b"\n") != crlf or head.count(b"\r") != crlf:
            raise BadRequest("bare CR or LF in the request head")
        if _CTL.search(head) is not None:
            raise BadRequest("control byte in the request head")
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=len(head) + 1)
        conn.receive_data(head)
        try:
            conn.next_event()
        except h11.RemoteProtocolError as exc:
            # h11 raises its 501 ("only chunked is supported") from the field normalisation,
            # which runs after every line matched its grammar: the syntax is fine, and
            # Transfer-Encoding is ours to judge.
            if exc.error_status_hint != 501:
                raise BadRequest("malformed request head", log_detail=str(exc)) from exc


# -- the meaning of a head ----------------------------------------------------------------------


def _split_target(method: str, target: str) -> tuple[str, str, str | None]:
    """(path, query, authority or None) of a request-target (RFC 9112 §3.2)."""
    if target[:1] == "/":  # origin-form
        if "#" in target:
            raise BadRequest("fragment in the request target")
        path, _, query = target.partition("?")
        return path, query, None
    if target == "*":  # asterisk-form, for a server-wide OPTIONS only (§3.2.4)
        if method != "OPTIONS":
            raise BadRequest("asterisk-form target with " + method)
        return "*", "", None
    match = _ABSOLUTE.fullmatch(target)  # absolute-form (§3.2.2)
    if match is None:
        raise BadRequest("request target is not origin-, absolute- or asterisk-form")
    authority, rest = match.group(1), match.group(2) or "/"
    host = authority.rsplit(":", 1)[0] if not authority.endswith("]") else authority
    if not host or _HOST.fullmatch(authority) is None:
        # RFC 9110 §4.2.1: an http(s) URI with an empty host is invalid; §4.2.4: userinfo is an
        # error
        raise BadRequest("bad authority in the absolute-form target")
    path, _, query = rest.partition("?")
    return path or "/", query, authority


def _codings(values: list[str]) -> list[str]:
    """The transfer codings of all Transfer-Encoding lines, in order, lower-cased; empty list
    elements are skipped (RFC 9110 §5.6.1)."""
    return [c for c in (c.strip(" \t").lower() for v in values for c in v.split(",")) if c]


def _interpret(raw: bytes, limits: Limits) -> RequestHead:
    """Build the head from a syntactically valid ``raw`` head; raise for what it means.

    One pass over the field lines; the fields that change the meaning of a request (Host,
    framing, Connection, Expect, Upgrade) are collected as they pass, and a head with none
    but Host (most of them) skips every rule about the others."""
    text = raw.decode("latin-1")
    line_end = text.find("\r\n")
    parts = text[:line_end].split(" ")
    if len(parts) != 3:  # llhttp lets several spaces through; RFC 9112 §3 has exactly one
        raise BadRequest("request line is not: method SP target SP version")
    method, target, version_text = parts
    version = VERSIONS.get(version_text)
    if version is None:  # h11 takes any HTTP/d.d, llhttp takes 0.9 and 2.0
        raise BadRequest("unsupported HTTP version " + version_text[:16])
    if method not in METHODS:
        raise BadRequest("unsupported method " + method[:32])
    path, query, authority = _split_target(method, target)

    headers: list[tuple[str, str]] = []
    hosts: list[str] = []
    special: dict[str, list[str]] | None = None
    fields = text[line_end + 2:-4]
    for line in fields.split("\r\n") if fields else ():
        name, _, value = line.partition(":")
        if "_" in name:
            # Ignored, as nginx does by default (underscores_in_headers off): a backend that
            # maps "_" and "-" to one name (CGI, WSGI) would otherwise read Transfer_Encoding
            # as framing we did not apply, or X_Real_IP as the address we vouch for.
            continue
        value = value.strip(" \t")
        headers.append((name, value))
        lname = name.lower()
        if lname in _SPECIAL:
            if lname == "host":
                hosts.append(value)
            else:
                if special is None:
                    special = {}
                special.setdefault(lname, []).append(value)

    # RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host, more than one Host, or an
    # invalid one (an HTTP/1.0 request may have none)
    if len(hosts) > 1 or (not hosts and version == "1.1"):
        raise BadRequest("missing or repeated Host")
    if hosts:
        host = hosts[0]
        if _HOST.fullmatch(host) is None:
            raise BadRequest("invalid Host")
        # An empty host ("Host:", "Host: :80") would make the target URI http:///..., which
        # RFC 9110 §4.2.1 says to reject as invalid (nginx: 400 too). With an absolute-form
        # target the URI's authority is the host and the field is ignored (RFC 9112 §3.2.2).
        if (not host or host[0] == ":") and authority is None:
            raise BadRequest("empty Host")
    if authority is not None:
        # §3.2.2: with an absolute-form target the Host field is ignored for the URI's authority
        headers = [(n, authority) if n.lower() == "host" else (n, v) for n, v in headers]
        if not hosts:
            headers.append(("Host", authority))
    if special is None:
        return RequestHead(method, path, query, tuple(headers), version, version == "1.1",
                           None, False, False, "")

    lengths = special.get("content-length", [])
    content_length = None
    if lengths:
        # §6.3: one valid value only; "5, 5" and repeated lines are refused like llhttp does
        if len(lengths) > 1 or _CONTENT_LENGTH.fullmatch(lengths[0]) is None:
            raise BadRequest("invalid Content-Length")
        content_length = int(lengths[0])
        if content_length > _MAX_UINT64:
            raise BadRequest("Content-Length overflow")

    te = special.get("transfer-encoding")
    chunked = False
    if te is not None:
        codings = _codings(te)
        if version == "1.0":  # §6.1: framing is faulty
            raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
        if lengths:  # §6.1: both; SPEC §9 refuses it
            raise BadRequest("both Content-Length and Transfer-Encoding")
        if not codings or "" in te:  # (llhttp refuses an empty line even among others)
            raise BadRequest("empty Transfer-Encoding")
        if "chunked" in codings[:-1]:  # §6.3 chunked not final; §7.1 chunked applied twice
            raise BadRequest("chunked is not the final transfer coding")
        if codings != ["chunked"]:
            # §6.1: a coding we do not understand; we decode none but chunked ("gzip, chunked"
            # included: the backends expect the body as the client meant it)
            raise NotImplementedCoding("unsupported transfer coding")
        chunked = True

    connection = special.get("connection")
    tokens = {t.strip(" \t").lower() for v in connection for t in v.split(",")} \
        if connection else set()
    # RFC 9110 §7.8: Upgrade counts only with the "upgrade" connection option, and never in 1.0
    upgrades = special.get("upgrade")
    upgrade = ", ".join(upgrades) if upgrades and version == "1.1" and "upgrade" in tokens else ""
    # RFC 9110 §10.1.1: a 100-continue expectation in an HTTP/1.0 request is ignored
    expect = version == "1.1" and any(
        v.lower() == "100-continue" for v in special.get("expect", ()))

    if content_length is not None and content_length > limits.max_body_size:
        raise PayloadTooLarge("Content-Length over %d bytes" % limits.max_body_size)
    # RFC 9112 §9.3: never after "close"; 1.1 persists otherwise, 1.0 only with "keep-alive"
    # (Appendix C.2.2), which we honour as nginx does: to its client a gateway is the origin
    # server, not the proxy that §9.3 forbids to keep an HTTP/1.0 client's connection
    keep_alive = "close" not in tokens and (version == "1.1" or "keep-alive" in tokens)
    return RequestHead(method, path, query, tuple(headers), version, keep_alive,
                       content_length, chunked, expect, upgrade)


PARSERS: Final[dict[str, type[RequestParser]]] = {
    "httptools": HttptoolsParser,
    "h11": H11Parser,
    "auto": HttptoolsParser if HAVE_HTTPTOOLS else H11Parser,
}


def make_parser(kind: str, limits: Limits) -> RequestParser:
    """A request parser of ``kind``: "httptools", "h11" or "auto" (httptools when installed)."""
    try:
        cls = PARSERS[kind]
    except KeyError:
        raise ValueError("unknown parser %r (choose from %s)"
                         % (kind, ", ".join(sorted(PARSERS)))) from None
    return cls(limits)
