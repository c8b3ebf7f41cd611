"""The control channel between the supervisor and one worker process (supervisor.py, worker.py).

Owns the conversation over the socket pair the supervisor creates for each worker. Every
message is two frames (scf/frames.py framing): a JSON header and a body, so the metrics text and
the rule table's document travel without being re-encoded.

    supervisor -> worker  {"op": "setup"}    WorkerSetup as JSON   (first, once)
    worker -> supervisor  {"op": "ready"}    b""                   (once its sockets are served)
    supervisor -> worker  {"op": "metrics"}  b""      -> reply {"ok": true}  exposition text
    supervisor -> worker  {"op": "health"}   b""      -> reply {"ok": true}  JSON
    supervisor -> worker  {"op": "status"}   b""      -> reply {"ok": true}  JSON (status page)
    supervisor -> worker  {"op": "reload"}   document -> reply {"ok": bool, "error": str}

A worker is told what the supervisor was told: its command line, and the TOML document the
rule table holds (the file's text, or the store's), which it reads with the same loader
(cli.document_parser). No ``Config`` object crosses the channel: what a worker serves is what
the document says, as on every other instance of a fleet. An empty document means "none":
the command line alone describes the config (the embedded default, --listen).
Requests from the supervisor are answered in order, one at a time. The worker treats the
channel's EOF as "the supervisor is gone" and drains and exits.

Must not know: what the ops do (the worker's handlers) or how workers are supervised.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from .scf import frames

#: the environment variable that gives a worker its end of the channel (a file descriptor)
CONTROL_FD_VARIABLE = "CLBSCF_CONTROL_FD"


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker needs to serve: the supervisor's command line and rule-table document,
    and the listening sockets' file descriptors it inherited."""

    #: the command line the supervisor was started with (its options are the worker's)
    argv: list[str]
    #: the rule table's TOML document; None: the command line alone describes the config
    document: str | None
    #: listener name -> file descriptors of its listening sockets (inherited)
    sockets: dict[str, list[int]]
    index: int
    #: --scf-api: the file descriptor of the local SCF API's listening socket (-1: none)
    scf_api_fd: int = -1

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, data: bytes) -> WorkerSetup:
        """The setup ``encode`` wrote; ValueError for anything else."""
        try:
            value = orjson.loads(data)
            setup = cls(**value)
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"not a worker setup: {exc}") from None
        if not (isinstance(setup.argv, list) and all(isinstance(a, str) for a in setup.argv)
                and (setup.document is None or isinstance(setup.document, str))
                and isinstance(setup.sockets, dict) and isinstance(setup.index, int)
                and isinstance(setup.scf_api_fd, int)):
            raise ValueError("not a worker setup: a field has the wrong type")
        return setup


def encode_document(document: str | None) -> bytes:
    """The body of a reload: the document as UTF-8, empty for none."""
    return document.encode() if document is not None else b""


def decode_document(body: bytes) -> str | None:
    return body.decode() if body else None


class ChannelClosed(Exception):
    """The other end went away."""


class Channel:
    """One end of the channel: send and receive (header, body) messages."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        return cls(reader, writer)

    async def send(self, header: dict[str, Any], body: bytes = b"") -> None:
        self._writer.write(frames.encode(orjson.dumps(header), body))
        await self._writer.drain()

    async def _frame(self) -> bytes:
        try:
            (size,) = frames.LENGTH.unpack(await self._reader.readexactly(frames.LENGTH.size))
            if size > frames.MAX_FRAME_BYTES:
                raise frames.FrameError(f"control frame of {size} bytes")
            return await self._reader.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise ChannelClosed(str(exc)) from None

    async def receive(self) -> tuple[dict[str, Any], bytes]:
        header = orjson.loads(await self._frame())
        return header, await self._frame()

    async def request(self, op: str, body: bytes = b"",
                      timeout: float = 10.0) -> tuple[dict[str, Any], bytes]:
        """Send one op and wait for its reply (one request at a time per channel)."""
        async with self._lock:
            await self.send({"op": op}, body)
            return await asyncio.wait_for(self.receive(), timeout)

    async def serve(self, handlers: dict[str, Callable[[bytes], Awaitable[
            tuple[dict[str, Any], bytes]]]]) -> None:
        """Answer requests with ``handlers[op](body) -> (header, body)`` until EOF."""
        while True:
            try:
                header, body = await self.receive()
            except ChannelClosed:
                return
            handler = handlers.get(str(header.get("op")))
            if handler is None:
                await self.send({"ok": False, "error": f"unknown op {header.get('op')!r}"})
                continue
            reply, data = await handler(body)
            await self.send(reply, data)

    def close(self) -> None:
        self._writer.close()
