"""Deadlines checked by one periodic sweep, instead of a timer handle each.

Owns the bookkeeping that the upstream pools (read timeouts, idle retirement) and the local
function pools (invocation timeouts) share: an object with a ``deadline`` (a ``clock()`` time,
0.0 when none) and an ``expire()`` method is *armed* here, and a pass every ``interval``
seconds, scheduled only while something is armed (or ``after`` asks for more), expires those
whose time has come. Arming is a set insertion, so a request that arms and disarms pays no
timer handle (a uvloop ``call_later`` plus its ``cancel`` cost ~1.8 µs); a deadline fires up to
``interval`` late.

A leaf: it knows asyncio's loop and nothing of what expires.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

clock = time.monotonic


class Expiring(Protocol):
    deadline: float

    def expire(self) -> None: ...


class Deadlines:
    """The armed objects of one owner, and the sweep that expires them."""

    __slots__ = ("interval", "armed", "_after", "_handle")

    def __init__(self, interval: float, after: Callable[[float], bool] | None = None) -> None:
        self.interval = interval
        self.armed: set[Expiring] = set()
        #: run at the end of each pass with its clock(); True keeps the sweep going
        self._after = after
        self._handle: asyncio.TimerHandle | None = None

    def arm(self, item: Expiring, timeout: float) -> None:
        """``item`` expires ``timeout`` seconds from now unless disarmed or re-armed."""
        item.deadline = clock() + timeout
        self.armed.add(item)
        if self._handle is None:
            self.watch()

    def disarm(self, item: Expiring) -> None:
        item.deadline = 0.0
        self.armed.discard(item)

    def watch(self) -> None:
        """Make sure a pass is scheduled (``after`` has something to do)."""
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(self.interval, self._sweep)

    def _sweep(self) -> None:
        self._handle = None
        now = clock()
        for item in [i for i in self.armed if i.deadline <= now]:
            self.armed.discard(item)
            item.deadline = 0.0
            item.expire()
        more = self._after(now) if self._after is not None else False
        if self.armed or more:
            self.watch()
