"""A scriptable HTTP/2 backend (h2 library, cleartext) for what grpcio will not do on request:
reset a stream mid-answer, refuse one, or send GOAWAY. In a thread of the test process on
127.0.0.1, port 0 (tests/threaded.py).

Paths: ``/reset`` answers 200 and one DATA frame, then RST_STREAM(INTERNAL_ERROR);
``/refuse`` RST_STREAM(REFUSED_STREAM) before any answer; ``/goaway`` GOAWAY(NO_ERROR) with
last stream id 0, so the stream was never processed; anything else 200 ``ok`` with a
``grpc-status: 0`` trailer. ``requests`` lists the paths seen.
"""

from __future__ import annotations

import asyncio

import h2.config
import h2.connection
import h2.events
from h2.errors import ErrorCodes

from tests.threaded import ThreadedServer


class _Backend(asyncio.Protocol):
    def __init__(self, owner: H2Backend) -> None:
        self.owner = owner
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding="latin-1"))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.h2.initiate_connection()
        transport.write(self.h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                path = dict(event.headers or ())[":path"]
                self.owner.requests.append(str(path))
                self._answer(event.stream_id, str(path))
            elif isinstance(event, h2.events.DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length or 0,
                                                  event.stream_id)
        self.transport.write(self.h2.data_to_send())

    def _answer(self, sid: int, path: str) -> None:
        if path == "/refuse":
            self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
        elif path == "/goaway":
            self.h2.close_connection(ErrorCodes.NO_ERROR, last_stream_id=0)
        elif path == "/reset":
            self.h2.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
            self.h2.send_data(sid, b"\0\0\0\0\x02hi")
            self.h2.reset_stream(sid, ErrorCodes.INTERNAL_ERROR)
        else:
            self.h2.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
            self.h2.send_data(sid, b"ok")
            self.h2.send_headers(sid, [("grpc-status", "0")], end_stream=True)


class H2Backend(ThreadedServer):
    thread_name = "h2-backend"

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[str] = []

    async def _open(self) -> asyncio.AbstractServer:
        loop = asyncio.get_running_loop()
        return await loop.create_server(lambda: _Backend(self), "127.0.0.1", 0)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"
