"""An HTTP/2 client for the tests, on the h2 library: a well-behaved one (``request``) and a
hostile one (raw frames built with hyperframe and hpack, which the library would refuse to
send), over real TLS (ALPN h2) or cleartext (h2c prior knowledge) to the real proxy."""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

import h2.config
import h2.connection
import h2.events
import hpack
import h2.settings
from hyperframe.frame import Frame, GoAwayFrame, SettingsFrame

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def connect(port: int, ca_file: str | None, sni: str = "a.test", timeout: float = 10.0
            ) -> socket.socket:
    """A socket to the proxy: TLS with ALPN h2 when ``ca_file`` is given, else cleartext."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if ca_file is None:
        return raw
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.set_alpn_protocols(["h2"])
    sock = ctx.wrap_socket(raw, server_hostname=sni)
    assert sock.selected_alpn_protocol() == "h2"
    return sock


class Client:
    """The h2 library as a client on one connection."""

    def __init__(self, sock: socket.socket, **settings: int) -> None:
        self.sock = sock
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings({getattr(h2.settings.SettingCodes, k): v
                                       for k, v in settings.items()})
        self.flush()
        self.events: list[Any] = []
        self.closed = False

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def headers(self, path: str, method: str = "GET", authority: str = "a.test",
                extra: list[tuple[str, str]] | None = None, end: bool = True) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(":method", method), (":scheme", "https"),
                                     (":authority", authority), (":path", path),
                                     *(extra or [])], end_stream=end)
        self.flush()
        return sid

    def pump(self, timeout: float = 10.0, until: Any = None) -> list[Any]:
        """Read and process until ``until(events)`` is true, the peer closes or the timeout."""
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            if until is not None and until(self.events):
                break
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            except (ConnectionError, ssl.SSLError):
                self.closed = True
                break
            if not data:
                self.closed = True
                break
            self.events += self.conn.receive_data(data)
            self.flush()
        return self.events

    def response(self, sid: int, timeout: float = 20.0, ack: bool = True
                 ) -> tuple[dict[bytes, bytes], bytes]:
        """The stream's response headers and whole body (window given back as it comes)."""
        body = bytearray()
        headers: dict[bytes, bytes] = {}
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            self.pump(deadline - time.monotonic(), lambda ev, seen=seen: len(ev) > seen)
            for event in self.events[seen:]:
                if getattr(event, "stream_id", None) != sid:
                    continue
                if isinstance(event, h2.events.ResponseReceived):
                    headers = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    if ack:
                        self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
                        self.flush()
                elif isinstance(event, h2.events.StreamEnded):
                    return headers, bytes(body)
                elif isinstance(event, h2.events.StreamReset):
                    raise ConnectionError(f"stream {sid} reset: {event.error_code!r}")
            seen = len(self.events)
            if self.closed:
                break
        raise TimeoutError(f"stream {sid}: no complete response")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class Raw:
    """A hostile client: frames as bytes, the server's frames parsed back with hyperframe."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.encoder = hpack.Encoder()
        self.buffer = b""
        #: the server closed the connection
        self.closed = False
        sock.sendall(PREFACE + SettingsFrame(0).serialize())

    def send(self, *frames: Frame) -> None:
        self.sock.sendall(b"".join(f.serialize() for f in frames))

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def block(self, path: str = "/", authority: str = "a.test", method: str = "GET",
              extra: list[tuple[str, str]] | None = None) -> bytes:
        return self.encoder.encode([(":method", method), (":scheme", "https"),
                                    (":authority", authority), (":path", path),
                                    *(extra or [])])

    def frames(self, timeout: float = 10.0, past_goaway: bool = False) -> list[Frame]:
        """Every frame until the server closes (or the timeout), or until its GOAWAY."""
        out: list[Frame] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            except (ConnectionError, ssl.SSLError):
                self.closed = True
                break
            if not data:
                self.closed = True
                break
            self.buffer += data
            while len(self.buffer) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
                if len(self.buffer) < 9 + length:
                    break
                frame.parse_body(memoryview(self.buffer[9:9 + length]))
                self.buffer = self.buffer[9 + length:]
                out.append(frame)
                if isinstance(frame, GoAwayFrame) and not past_goaway:
                    return out
        return out

    def goaway(self, timeout: float = 10.0) -> GoAwayFrame:
        for frame in self.frames(timeout):
            if isinstance(frame, GoAwayFrame):
                return frame
        raise AssertionError("no GOAWAY")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
