"""``LocalFunction.recycle`` (``--reload``) in-process, on real instances: calls in flight
finish on the instance they have, which then goes; idle instances go at once; a caller waiting
in line is served by a new instance; one instance is warmed on the new code."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import orjson
import uvloop

from proxy.config import Function
from proxy.messages import Invocation
from proxy.scf.local import LocalFunction, LocalFunctions
from tests.integration.test_local_runtime import _alive, _children

FUNCTIONS = Path(__file__).resolve().parents[1] / "functions"


def _sleeps(**kwargs: object) -> Function:
    return Function(namespace="default", name="sleeps", handler="index.main_handler",
                    code=FUNCTIONS / "sleeps", timeout=30, **kwargs)  # type: ignore[arg-type]


def _event(seconds: float) -> bytes:
    return orjson.dumps({"queryString": {"seconds": str(seconds)}})


def _pid(invocation: Invocation) -> int:
    return int(json.loads(orjson.loads(invocation.result)["body"])["pid"])


async def _until(check: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def _get(pool: LocalFunctions) -> LocalFunction:
    fn = pool.get("default", "sleeps")
    assert fn is not None
    return fn


def test_recycle_keeps_calls_in_flight_and_replaces_every_instance() -> None:
    async def main() -> None:
        pool = LocalFunctions([_sleeps(concurrency=2)])
        fn = _get(pool)
        try:
            slow = asyncio.ensure_future(fn.invoke(_event(2), "slow"))
            await _until(lambda: fn.stats()["busy"] == 1)
            idle_pid = _pid(await fn.invoke(_event(0), "quick"))
            assert fn.stats()["idle"] == 1
            assert pool.recycle("default", "sleeps") is True
            await _until(lambda: not _alive(idle_pid))  # the idle instance went at once
            await _until(lambda: fn.stats()["idle"] == 1)  # one warmed on the new code
            busy_pid = _pid(await slow)  # the call in flight finished on its instance...
            await _until(lambda: not _alive(busy_pid))  # ...which then went
            fresh = _pid(await fn.invoke(_event(0), "after"))
            assert fresh not in (idle_pid, busy_pid)
            assert fn.stats()["instances"] == 1
        finally:
            await pool.close()
        assert _children() == []
    uvloop.run(main())


def test_a_caller_in_line_gets_a_new_instance_after_a_recycle() -> None:
    async def main() -> None:
        pool = LocalFunctions([_sleeps(concurrency=1)])
        fn = _get(pool)
        try:
            first = asyncio.ensure_future(fn.invoke(_event(1.5), "first"))
            await _until(lambda: fn.stats()["busy"] == 1)
            second = asyncio.ensure_future(fn.invoke(_event(0), "second"))
            await _until(lambda: fn.stats()["queued"] == 1)
            pool.recycle("default", "sleeps")
            old = _pid(await first)
            assert _pid(await second) != old
            assert fn.stats()["instances"] == 1
        finally:
            await pool.close()
        assert _children() == []
    uvloop.run(main())


def test_recycling_an_unknown_function_says_so() -> None:
    async def main() -> None:
        pool = LocalFunctions([_sleeps()])
        try:
            assert pool.recycle("default", "nosuch") is False
        finally:
            await pool.close()
    uvloop.run(main())
