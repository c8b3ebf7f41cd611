"""The control channel between the supervisor and one worker process (supervisor.py, worker.py).

Owns the conversation over the socket pair the supervisor creates for each worker. Every
message is two frames (scf/frames.py framing): a JSON header and a body, so the metrics text and
a pickled ``Config`` travel without being re-encoded.

    supervisor -> worker  {"op": "setup"}    pickled WorkerSetup   (first, once)
    worker -> supervisor  {"op": "ready"}    b""                   (once its sockets are served)
    supervisor -> worker  {"op": "metrics"}  b""      -> reply {"ok": true}  exposition text
    supervisor -> worker  {"op": "health"}   b""      -> reply {"ok": true}  JSON
    supervisor -> worker  {"op": "status"}   b""      -> reply {"ok": true}  JSON (status page)
    supervisor -> worker  {"op": "reload"}   pickled Config -> reply {"ok": bool, "error": str}

Requests from the supervisor are answered in order, one at a time. The channel is a socket
pair between a process and the child it started, nothing else can reach it; even so the worker
unpickles only the config's own value types (``loads``), never arbitrary objects.
The worker treats the channel's EOF as "the supervisor is gone" and drains and exits.

Must not know: what the ops do (the worker's handlers) or how workers are supervised.
"""

from __future__ import annotations

import asyncio
import io
import pickle
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from .config import Config
from .scf import frames

#: the environment variable that gives a worker its end of the channel (a file descriptor)
CONTROL_FD_VARIABLE = "CLBSCF_CONTROL_FD"


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker needs to serve: its config, options and the listening sockets' fds."""

    config: Config
    parser_kind: str
    drain_timeout: float
    access_log: bool
    log_level: str
    #: listener name -> file descriptors of its listening sockets (inherited)
    sockets: dict[str, list[int]]
    index: int
    #: --reload: the worker watches the functions' code and recycles its own instances
    reload: bool = False
    #: --scf-api: the file descriptor of the local SCF API's listening socket (-1: none)
    scf_api_fd: int = -1


#: what a setup or config pickle may contain: our frozen values, paths and builtin containers
_ALLOWED = {"proxy.config", "proxy.control", "pathlib"}
_BUILTINS = {"tuple", "frozenset", "set", "list", "dict", "str", "int", "float", "bool"}
#: value classes of other modules the config holds (by name: never a module's functions)
_CLASSES = {("proxy.customconfig", "CustomConfig")}


class _ValuesOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module in _ALLOWED or (module == "builtins" and name in _BUILTINS) \
                or (module, name) in _CLASSES:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a config value")


def dumps(value: Config | WorkerSetup) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def loads(data: bytes) -> Any:
    """A Config or WorkerSetup from ``dumps``; UnpicklingError for anything else."""
    return _ValuesOnly(io.BytesIO(data)).load()


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
