"""scf/instance.py's invocations ahead, in process: a fake transport and owner, no worker.

What is held: the invocation an idle instance is sent goes out at once; those sent ahead while
it runs go out together at the end of the loop's turn (one write, so the worker wakes once for
all of them), in order; the output marks split what the worker printed between invocations;
an instance that goes before the ones ahead hands them back, unsent ones included.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from proxy.config import Function
from proxy.deadlines import Deadlines
from proxy.scf import frames
from proxy.scf.instance import Instance


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.aborted = False

    def writelines(self, chunks: Any) -> None:
        self.writes.append(b"".join(chunks))

    def abort(self) -> None:
        self.aborted = True


class FakeOwner:
    def __init__(self, ahead: int) -> None:
        self.config = Function(namespace="default", name="f", handler="index.main_handler",
                               code=Path("/nonexistent"), invocations_ahead=ahead)
        self.key = "default/f"
        self.deadlines = Deadlines(0.1)
        self.reruns: list[tuple[bytes, str]] = []
        self.replies: list[tuple[str, bytes]] = []

    def spawned(self, instance: Instance) -> None: ...
    def release(self, instance: Instance) -> None: ...
    def gone(self, instance: Instance) -> None: ...
    def reaped(self, instance: Instance) -> None: ...

    def replied(self, instance: Instance, reply: Any, status: str, body: bytes) -> None:
        self.replies.append((instance.request_id, body))
        if instance.ahead:
            instance.next()

    def rerun(self, event: bytes, request_id: str, reply: Any) -> None:
        self.reruns.append((event, request_id))


def _instance(ahead: int) -> tuple[Instance, FakeTransport, FakeOwner]:
    owner = FakeOwner(ahead)
    instance = Instance(owner)  # type: ignore[arg-type]
    transport = FakeTransport()
    instance.transport = transport  # type: ignore[assignment]
    instance.ready = True
    return instance, transport, owner


def _frames(*payloads: bytes) -> bytes:
    return frames.encode(*payloads)


def _noop(result: Any) -> None:
    pass


def test_ahead_frames_go_out_together_at_the_end_of_the_turn() -> None:
    async def main() -> None:
        instance, transport, _ = _instance(4)
        instance.run(b"h1", b"e1", "r1", _noop)
        assert transport.writes == [_frames(b"h1", b"e1")]  # idle: at once
        instance.run(b"h2", b"e2", "r2", _noop)
        instance.run(b"h3", b"e3", "r3", _noop)
        assert len(transport.writes) == 1  # ahead: held for the turn
        assert [a[0] for a in instance.ahead] == ["r2", "r3"]
        await asyncio.sleep(0)
        assert transport.writes[1:] == [_frames(b"h2", b"e2", b"h3", b"e3")]
        instance.owner.deadlines.disarm(instance)
    asyncio.run(main())


def test_the_marks_split_output_between_invocations(caplog: Any) -> None:
    import logging
    caplog.set_level(logging.INFO, logger="proxy.function")

    async def main() -> None:
        instance, _, owner = _instance(2)
        instance.run(b"h1", b"e1", "r1", _noop)
        instance.run(b"h2", b"e2", "r2", _noop)
        await asyncio.sleep(0)
        mark = frames.END_OF_OUTPUT
        # what the worker printed for r1 (its last line unended), the mark, then r2's
        instance.partial[0] += b"one of r1\nlast of r1" + mark + b"one of r2\n"
        instance._log_lines(0)
        instance._on_reply(frames.OK, b"{}")
        assert instance.request_id == "r2"  # r2 runs now; what followed the mark is its
        instance.partial[0] += mark
        instance._on_reply(frames.OK, b"{}")
        assert owner.replies == [("r1", b"{}"), ("r2", b"{}")]
        instance.owner.deadlines.disarm(instance)
    asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if " stdout: " in r.getMessage()]
    assert lines == ["function=default/f request_id=r1 stdout: one of r1",
                     "function=default/f request_id=r1 stdout: last of r1",
                     "function=default/f request_id=r2 stdout: one of r2"]


def test_an_instance_that_goes_hands_back_the_ones_ahead_sent_or_not() -> None:
    async def main() -> None:
        instance, transport, owner = _instance(4)
        instance.run(b"h1", b"e1", "r1", _noop)
        instance.run(b"h2", b"e2", "r2", _noop)
        await asyncio.sleep(0)
        instance.run(b"h3", b"e3", "r3", _noop)  # still held when the instance goes
        instance.kill(None)
        assert owner.reruns == [(b"e2", "r2"), (b"e3", "r3")]
        assert transport.aborted
        written = len(transport.writes)
        await asyncio.sleep(0)
        assert len(transport.writes) == written  # nothing more goes to a dead instance
    asyncio.run(main())
