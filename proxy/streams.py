"""Streamed bodies between the client connection and a backend, with backpressure.

``RequestBody`` is filled by the connection as the parser yields body chunks and drained by a
backend: the CVM proxy streams it upstream chunk by chunk (a 1 GB upload in constant memory),
the SCF target reads it whole (``read_all``, bounded) because the event needs all of it.
Backpressure: when more than ``HIGH_WATER`` bytes wait unread the connection pauses reading
from the client; the first ``read`` below ``LOW_WATER`` resumes it. The first ``read`` also
sends the interim ``100 Continue`` a client asked for (RFC 9110 §10.1.1: only when we are
actually going to read the body).

``buffer_body`` is ``proxy_request_buffering on`` (CLB's and nginx's default): the whole body
read before anything goes upstream, kept in memory up to ``CLIENT_BODY_BUFFER_SIZE`` bytes, then
in a temp file under the spool folder; as nginx does with its client body temp files, the file
is unlinked the moment it is created (``tempfile.TemporaryFile``), so nothing is left behind by
an error, a cancel or a crash: closing it (``BufferedBody.close``) frees the space.

A leaf module: it knows about asyncio futures and nothing about sockets or HTTP parsing.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import PayloadTooLarge, ProxyError

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
#: a buffered request body up to this size stays in memory; a larger one goes to a temp file
#: (nginx's client_body_buffer_size is 16k; ours is larger because a Python write costs more
#: per call than nginx's, and 64 KiB per upload in flight is still small)
CLIENT_BODY_BUFFER_SIZE = 64 * 1024
#: how much of a spooled body is read from its file per write upstream
SPOOL_READ_SIZE = 256 * 1024


class RequestBody:
    """The body of one request, fed by the connection, read by one backend."""

    __slots__ = ("_chunks", "_buffered", "_ended", "_error", "_waiter", "_on_pause",
                 "_on_resume", "_on_first_read", "_paused", "_read_started", "received",
                 "declared_length")

    def __init__(self, declared_length: int | None,
                 on_pause: Callable[[], None], on_resume: Callable[[], None],
                 on_first_read: Callable[[], None] | None = None) -> None:
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._ended = False
        self._error: ProxyError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._on_pause = on_pause
        self._on_resume = on_resume
        self._on_first_read = on_first_read
        self._paused = False
        self._read_started = False
        #: bytes received from the client so far
        self.received = 0
        #: Content-Length of the request, or None when chunked
        self.declared_length = declared_length

    # -- the connection's side ------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self.received += len(chunk)
        if self._buffered > HIGH_WATER and not self._paused:
            self._paused = True
            self._on_pause()
        self._wake()

    def end(self) -> None:
        self._ended = True
        self._wake()

    def abort(self, exc: ProxyError) -> None:
        """The client broke the framing or timed out: the reader gets ``exc``."""
        if not self._ended:
            self._error = exc
            self._wake()

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def awaits_continue(self) -> bool:
        """The client asked for ``100 Continue`` and waits for it: nobody read yet, nothing
        came (RFC 9110 §10.1.1)."""
        return self._on_first_read is not None and not self._read_started and not self.received

    # -- the backend's side ----------------------------------------------------------------

    async def read(self) -> bytes:
        """The next chunk, or b"" once the body has ended; raises the client's ProxyError
        (408 body timeout, 400 broken framing) if it broke off."""
        if not self._read_started:
            self._read_started = True
            if self._on_first_read is not None:
                self._on_first_read()
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._ended:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered < LOW_WATER:
            self._paused = False
            self._on_resume()
        return chunk

    async def read_all(self, limit: int) -> bytes:
        """The whole body; ``PayloadTooLarge`` as soon as it passes ``limit`` bytes."""
        if self.declared_length is not None and self.declared_length > limit:
            raise PayloadTooLarge(f"body of {self.declared_length} bytes over {limit}")
        parts: list[bytes] = []
        size = 0
        while True:
            chunk = await self.read()
            if not chunk:
                return b"".join(parts)
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"body over {limit} bytes")
            parts.append(chunk)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)



class BufferedBody:
    """A request body read whole: ``data`` in memory, or ``file`` (unlinked already) holding
    ``length`` bytes. ``close`` frees the file; calling it twice is harmless."""

    __slots__ = ("length", "data", "file")

    def __init__(self, length: int, data: bytes, file: BinaryIO | None) -> None:
        self.length = length
        self.data = data
        self.file = file

    def close(self) -> None:
        file, self.file = self.file, None
        if file is not None:
            file.close()


async def buffer_body(stream: RequestBody, limit: int, spool_dir: Path) -> BufferedBody:
    """Read ``stream`` whole (``PayloadTooLarge`` past ``limit``; the client's ProxyError if it
    breaks off), in memory up to CLIENT_BODY_BUFFER_SIZE, else in a temp file in
    ``spool_dir`` (made on first use, mode 0700). Whatever ends it early, no file is left."""
    if stream.declared_length is not None and stream.declared_length > limit:
        raise PayloadTooLarge(f"body of {stream.declared_length} bytes over {limit}")
    parts: list[bytes] = []
    size = 0
    file: BinaryIO | None = None
    try:
        while True:
            chunk = await stream.read()
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"body over {limit} bytes")
            if file is not None:
                file.write(chunk)
                continue
            parts.append(chunk)
            if size > CLIENT_BODY_BUFFER_SIZE:
                file = _spool_file(spool_dir)
                file.writelines(parts)
                parts = []
        if file is None:
            return BufferedBody(size, parts[0] if len(parts) == 1 else b"".join(parts), None)
        file.flush()
        file.seek(0)
        return BufferedBody(size, b"", file)
    except BaseException:
        if file is not None:
            file.close()
        raise


def _spool_file(spool_dir: Path) -> BinaryIO:
    try:
        os.makedirs(spool_dir, mode=0o700, exist_ok=True)
        return tempfile.TemporaryFile(dir=spool_dir, prefix="body-")
    except OSError as exc:
        raise ProxyError("cannot buffer the request body",
                         log_detail=f"temp file in {spool_dir}: {exc}") from exc
