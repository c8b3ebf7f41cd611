"""The wire format between the proxy and a local function instance: length-prefixed frames.

Owns the framing (a 4-byte big-endian length, then that many payload bytes), its bounds, and the
names of the messages that travel in frames. Strategy: sans-I/O; ``encode`` builds the bytes,
``FrameDecoder.feed`` takes whatever the socket gave and returns the complete payloads. A length
over ``MAX_FRAME_BYTES`` is a protocol error, raised before any of it is buffered, so a confused
or hostile peer cannot make the other side allocate more than one bounded frame.

The conversation (payloads are orjson objects unless said otherwise):

    worker -> proxy   READY    {"pid", "baseline_kb", "import_error": str | null,
                                "init_function_ms": the handler's import, "mem_kb": peak RSS}
    proxy  -> worker  INVOKE   {"request_id", "context": {...}}   then the event (raw JSON bytes)
    worker -> proxy   REPLY    {"status": one of STATUSES, "mem_kb": peak RSS}
                               then the body (raw bytes):
                               ok -> the return value as JSON; error / import_error -> the SCF
                               error object as JSON; memory / too_large / not_json -> a message

A function with ``invocations_ahead`` (scf/local.py) is sent its next invocations while it
runs one; its worker then writes END_OF_OUTPUT to fd 1 and fd 2 after each invocation, before
its reply, so the proxy can tell which invocation printed what (scf/instance.py).

The event travels as its own frame so the proxy never decodes and re-encodes it. Imported by the
worker process too, so it must stay free of the proxy's other modules (and of asyncio).
"""

from __future__ import annotations

import struct

from ..vocabulary import SCF_PAYLOAD_LIMIT

#: 4-byte big-endian unsigned length in front of every payload
LENGTH = struct.Struct(">I")
#: the worker checks the result against SCF's quota before sending (SCF status 407)
MAX_RESULT_BYTES = SCF_PAYLOAD_LIMIT
MAX_EVENT_BYTES = SCF_PAYLOAD_LIMIT
#: room for the JSON header frames and an event right at the quota
FRAME_OVERHEAD = 64 * 1024
MAX_FRAME_BYTES = max(MAX_RESULT_BYTES, MAX_EVENT_BYTES) + FRAME_OVERHEAD

#: reply statuses; the proxy maps each to an outcome (scf/local.py)
OK = "ok"
ERROR = "error"  # the handler raised: body is the SCF error object (status 430)
IMPORT_ERROR = "import_error"  # the handler cannot be imported: body is the SCF error object
MEMORY = "memory"  # MemoryError under the address-space limit (SCF 434)
TOO_LARGE = "too_large"  # the result is over MAX_RESULT_BYTES (SCF 407)
NOT_JSON = "not_json"  # the return value cannot be serialised to JSON
STATUSES = frozenset({OK, ERROR, IMPORT_ERROR, MEMORY, TOO_LARGE, NOT_JSON})


#: written to the output pipes after each invocation by a worker that is sent invocations
#: ahead (``worker_argv``'s ``marks``): what came before it in a pipe is that invocation's
END_OF_OUTPUT = b"\0scf:end-of-invocation\0\n"


class FrameError(Exception):
    """The peer broke the framing: a length over the bound."""


def encode(*payloads: bytes) -> bytes:
    """The frames of ``payloads``, back to back. Raises FrameError for one over the bound."""
    parts: list[bytes] = []
    for payload in payloads:
        if len(payload) > MAX_FRAME_BYTES:
            raise FrameError(f"frame of {len(payload)} bytes is over {MAX_FRAME_BYTES}")
        parts.append(LENGTH.pack(len(payload)))
        parts.append(payload)
    return b"".join(parts)


class FrameDecoder:
    """Incremental decoder: feed it bytes in any split, get back complete payloads in order."""

    __slots__ = ("_buf", "_need", "max_frame")

    def __init__(self, max_frame: int = MAX_FRAME_BYTES) -> None:
        self._buf = bytearray()
        #: the payload length being waited for, or -1 while the length prefix is incomplete
        self._need = -1
        self.max_frame = max_frame

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        buf = self._buf
        while True:
            if self._need < 0:
                if len(buf) < LENGTH.size:
                    break
                (need,) = LENGTH.unpack_from(buf)
                if need > self.max_frame:
                    raise FrameError(f"frame length {need} is over {self.max_frame}")
                del buf[: LENGTH.size]
                self._need = need
            if len(buf) < self._need:
                break
            out.append(bytes(buf[: self._need]))
            del buf[: self._need]
            self._need = -1
        return out

    @property
    def pending(self) -> int:
        """Bytes received that are not yet part of a returned payload (0 between frames)."""
        return len(self._buf) + (LENGTH.size if self._need >= 0 else 0)
