"""A real grpcio server for the GRPC/GRPCS tests and benchmarks, with hand-written generic
handlers (raw bytes in and out, no generated code), in this process on 127.0.0.1, port 0.

Methods of service ``test.Echo``:
  Unary          the request message back, prefixed with ``echo:``
  Count          server streaming: the request is a decimal n, the answer n messages
                 ``0``, ``1``, ... (``size`` bytes each when the request is ``n:size``)
  Sum            client streaming: the total length of every request message, in decimal
  Fail           aborts with INVALID_ARGUMENT and the message ``bad thing``
  Cancel         sends one message, then the server cancels the call (RST_STREAM)
  Forever        server streaming until the client goes away; then ``gone`` counts it
Every call records its ``:authority`` and metadata (``seen``), and under ``TIME_REMAINING`` the
seconds left of its deadline (None without one: grpc-timeout is not metadata).

``wire`` holds gRPC's length-prefixed message framing (gRPC over HTTP/2 "Length-Prefixed-Message":
a compressed flag byte, a 4-byte big-endian length, the message).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import trustme

SERVICE = "test.Echo"
#: the key of ``seen`` that holds the call's remaining deadline, in seconds
TIME_REMAINING = "(time remaining)"


def frame(message: bytes) -> bytes:
    return struct.pack(">BI", 0, len(message)) + message


def unframe(data: bytes) -> list[bytes]:
    out = []
    while data:
        flag, length = struct.unpack(">BI", data[:5])
        assert flag == 0, "compressed messages are not used here"
        out.append(data[5:5 + length])
        data = data[5 + length:]
    return out


class _Echo:
    def __init__(self, server: GrpcServer) -> None:
        self.server = server

    def _record(self, context: grpc.ServicerContext) -> None:
        with self.server.lock:
            seen: dict[str, Any] = dict(context.invocation_metadata())
            seen[TIME_REMAINING] = context.time_remaining()  # the deadline the call came with
            self.server.seen.append(seen)

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._record(context)
        return b"echo:" + request

    def count(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._record(context)
        n, _, size = request.decode().partition(":")
        for i in range(int(n)):
            yield str(i).encode().ljust(int(size or 0), b".")

    def sum(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        self._record(context)
        return str(sum(len(r) for r in requests)).encode()

    def fail(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._record(context)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad thing")
        raise AssertionError("abort returns never")

    def forever(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._record(context)
        gone = threading.Event()
        context.add_callback(gone.set)  # the call ended: the client cancelled (RST_STREAM)
        while not gone.wait(0.01):
            yield b"more"
        with self.server.lock:
            self.server.gone += 1

    def cancel(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._record(context)
        yield b"first"
        context.cancel()


def _handlers(echo: _Echo) -> grpc.GenericRpcHandler:
    same = dict(request_deserializer=None, response_serializer=None)
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(echo.unary, **same),
        "Count": grpc.unary_stream_rpc_method_handler(echo.count, **same),
        "Sum": grpc.stream_unary_rpc_method_handler(echo.sum, **same),
        "Fail": grpc.unary_unary_rpc_method_handler(echo.fail, **same),
        "Cancel": grpc.unary_stream_rpc_method_handler(echo.cancel, **same),
        "Forever": grpc.unary_stream_rpc_method_handler(echo.forever, **same),
    })


class GrpcServer:
    """``GrpcServer()`` cleartext, ``GrpcServer(ca)`` TLS with a leaf of ``ca`` for localhost
    and 127.0.0.1; ``with`` starts and stops it; ``address`` is ``127.0.0.1:port``."""

    def __init__(self, ca: trustme.CA | None = None, workers: int = 8,
                 options: tuple[tuple[str, Any], ...] = ()) -> None:
        """``options``: grpcio server options, such as ``("grpc.max_concurrent_streams", 1)``."""
        self.seen: list[dict[str, Any]] = []
        #: Forever calls whose client went away
        self.gone = 0
        self.lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                                   options=list(options))
        self._server.add_generic_rpc_handlers((_handlers(_Echo(self)),))
        if ca is None:
            self.port = self._server.add_insecure_port("127.0.0.1:0")
        else:
            leaf = ca.issue_cert("localhost", "127.0.0.1")
            key = leaf.private_key_pem.bytes()
            chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
            self.port = self._server.add_secure_port(
                "127.0.0.1:0", grpc.ssl_server_credentials([(key, chain)]))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> GrpcServer:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None)
