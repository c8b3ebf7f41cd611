"""Between callbacks and coroutines: the two adapters the request path uses, defined once.

The hot path hands results on by callback (``done(result)``, where a result is a value or the
exception that ended the work), so that a request needs no task or future; code that must
wait (a cold start, a body still arriving, the cloud API) is a coroutine. ``on_task`` runs a
coroutine on a task of its own and hands its outcome to a callback; ``awaited`` waits for a
callback-style operation from a coroutine (tests, tools, the slow paths).

A leaf: it knows asyncio and nothing of HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

#: gets a result once: the value, or the exception that ended the work
Done = Callable[[Any], None]
#: stops work in flight; its ``done`` is not called after it
Cancel = Callable[[], object]


def on_task(work: Coroutine[Any, Any, Any], done: Done) -> Cancel:
    """Run ``work`` on a task; ``done`` gets its value or its exception (not a cancellation:
    whoever cancels it stops waiting)."""
    task = asyncio.get_running_loop().create_task(work)

    def finished(task: asyncio.Task[Any]) -> None:
        if not task.cancelled():
            exc = task.exception()
            done(task.result() if exc is None else exc)

    task.add_done_callback(finished)
    return task.cancel


async def awaited(start: Callable[[Done], Cancel | None]) -> Any:
    """Call ``start(done)`` and wait for what ``done`` gets: its value is returned, its
    exception raised. Cancelling the wait calls the cancel that ``start`` returned."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    box: list[Any] = []  # not the future's result: the loop may hold on to a done future

    def done(result: Any) -> None:
        if not future.done():
            box.append(result)
            future.set_result(None)

    cancel = start(done)
    try:
        await future
    except asyncio.CancelledError:
        if cancel is not None:
            cancel()
        raise
    result = box.pop()
    if isinstance(result, BaseException):
        raise result
    return result
