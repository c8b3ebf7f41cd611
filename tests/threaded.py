"""A test server on its own asyncio loop in a daemon thread, for servers that the real proxy
(another process) talks to while the test's own thread blocks on its requests."""

from __future__ import annotations

import asyncio
import threading
from typing import TypeVar

S = TypeVar("S", bound="ThreadedServer")


class ThreadedServer:
    """Subclasses say how to open the listening server (``_open``) on 127.0.0.1, port 0;
    ``start()`` (or ``with``) runs it and sets ``port``, ``stop()`` closes it and cancels what
    it was still doing."""

    thread_name = "test-server"

    def __init__(self) -> None:
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def _open(self) -> asyncio.AbstractServer:
        raise NotImplementedError

    def start(self: S) -> S:
        ready = threading.Event()

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            server = loop.run_until_complete(self._open())
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            server.close()
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

        self._thread = threading.Thread(target=run, name=self.thread_name, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"{self.thread_name} did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self: S) -> S:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
