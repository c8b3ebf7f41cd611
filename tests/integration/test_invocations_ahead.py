"""``invocations_ahead``: a busy event-function instance is sent its next invocations at once
and runs them in turn, with real worker processes driven through LocalFunctions (as
test_local_runtime.py). What each test holds: the order and the timeouts (each starts when
its invocation starts), the output of each invocation logged under its own request id, and
an instance that dies, times out or runs out of memory handing the ones it did not reach to a
new instance, each run exactly once."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvloop

from proxy.errors import FunctionCrashed, FunctionTimeout, Overloaded
from proxy.messages import Invocation

from .test_local_runtime import _children, _fn, _get, _pool, _until

# Sleeps for "seconds", prints tagged lines (print, stderr, a raw write, a last line without
# its newline), notes its run in runs.txt, then does "how": answer, exit, hog (200 MB) or hang.
HANDLER = """
import json, os, sys, time
def main_handler(event, context):
    query = event.get("queryString") or {}
    tag = context["request_id"]
    started = time.time()
    with open("runs.txt", "a") as runs:
        runs.write(tag + "\\n")
    time.sleep(float(query.get("seconds", 0)))
    for i in range(3):
        print(f"line {i} of {tag}")
    print(f"error of {tag}", file=sys.stderr)
    os.write(1, f"raw of {tag}\\n".encode())
    sys.stdout.write(f"tail of {tag}")
    how = query.get("how", "answer")
    if how == "exit":
        os._exit(1)
    if how == "hog":
        hog = bytearray(200 * 1024 * 1024)
    if how == "hang":
        time.sleep(60)
    return {"statusCode": 200, "headers": {}, "isBase64Encoded": False,
            "body": json.dumps({"pid": os.getpid(), "started": started, "ended": time.time(),
                                "tag": tag})}
"""


def _code(tmp_path: Path) -> Path:
    (tmp_path / "index.py").write_text(HANDLER)
    return tmp_path


def _event(**query: Any) -> bytes:
    return orjson.dumps({"queryString": {k: str(v) for k, v in query.items()}})


def _body(invocation: Invocation) -> Any:
    return json.loads(orjson.loads(invocation.result)["body"])


def _runs(code: Path) -> list[str]:
    return (code / "runs.txt").read_text().split()


def test_a_busy_instance_runs_the_invocations_sent_ahead_in_turn(tmp_path: Path) -> None:
    async def main() -> None:
        fn_config = _fn("ahead", _code(tmp_path), concurrency=1, min_instances=1,
                        invocations_ahead=3, timeout=1)
        async with _pool(fn_config, start=True) as pool:
            fn = _get(pool, "ahead")
            # each runs 0.5 s: five in a row take 2.5 s, past the 1 s timeout of any one
            calls = [asyncio.ensure_future(fn.invoke(_event(seconds=0.5), f"r{i}"))
                     for i in range(5)]
            # one runs, three were sent ahead, the fifth waits in the function's queue
            await _until(lambda: fn.stats()["queued"] == 4)
            assert fn.stats()["busy"] == 1 and len(fn._waiters) == 1
            runs = [_body(r) for r in await asyncio.gather(*calls)]
            assert [r["tag"] for r in runs] == [f"r{i}" for i in range(5)]
            assert len({r["pid"] for r in runs}) == 1
            for before, after in zip(runs, runs[1:]):
                assert after["started"] >= before["ended"] - 0.01
            assert fn.stats()["queued"] == 0 and fn.stats()["idle"] == 1
        assert _runs(tmp_path) == [f"r{i}" for i in range(5)]
    uvloop.run(main())


def test_without_it_the_busy_instance_is_waited_for_in_line(tmp_path: Path) -> None:
    async def main() -> None:
        async with _pool(_fn("inline", _code(tmp_path), concurrency=1, min_instances=1),
                         start=True) as pool:
            fn = _get(pool, "inline")
            calls = [asyncio.ensure_future(fn.invoke(_event(seconds=0.3), f"r{i}"))
                     for i in range(3)]
            await _until(lambda: fn.stats()["queued"] == 2)
            assert len(fn._waiters) == 2  # all in line, none sent ahead
            await asyncio.gather(*calls)
    uvloop.run(main())


def test_output_of_each_invocation_is_logged_under_its_own_request_id(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="proxy.function")
    tags = [f"req-{i:02d}" for i in range(24)]
    results: list[Invocation] = []

    async def main() -> None:
        fn_config = _fn("printer", _code(tmp_path), concurrency=2, min_instances=2,
                        invocations_ahead=4)
        async with _pool(fn_config, start=True) as pool:
            fn = _get(pool, "printer")
            results.extend(await asyncio.gather(*(fn.invoke(_event(), t) for t in tags)))
    uvloop.run(main())
    output = [r.getMessage() for r in caplog.records if r.name == "proxy.function"
              and (" stdout: " in r.getMessage() or " stderr: " in r.getMessage())]
    for tag in tags:
        prefix = f"function=default/printer request_id={tag} "
        mine = [line for line in output if line.startswith(prefix)]
        assert sorted(line[len(prefix):] for line in mine) == sorted(
            [f"stdout: line {i} of {tag}" for i in range(3)]
            + [f"stderr: error of {tag}", f"stdout: raw of {tag}", f"stdout: tail of {tag}"])
    assert len(output) == 6 * len(tags)  # no line under a wrong id, none lost
    for invocation in results:
        assert invocation.output is not None
        assert all(invocation.request_id in line for line in invocation.output)
        assert len(invocation.output) == 6


@pytest.mark.parametrize("how, error", [("exit", FunctionCrashed),
                                        ("hang", FunctionTimeout),
                                        ("hog", FunctionCrashed)])
def test_what_an_instance_that_goes_did_not_reach_runs_once_on_a_new_one(
        tmp_path: Path, how: str, error: type[Exception]) -> None:
    async def main() -> None:
        fn_config = _fn("fails", _code(tmp_path), concurrency=1, min_instances=1,
                        invocations_ahead=2, timeout=1, memory=128)
        async with _pool(fn_config, start=True) as pool:
            fn = _get(pool, "fails")
            first = asyncio.ensure_future(fn.invoke(_event(seconds=0.3, how=how), "first"))
            await _until(lambda: fn.stats()["busy"] == 1)
            rest = [asyncio.ensure_future(fn.invoke(_event(), f"next-{i}")) for i in range(2)]
            await _until(lambda: fn.stats()["queued"] == 2)
            assert not fn._waiters  # both were sent ahead
            with pytest.raises(error):
                await first
            answers = [_body(r) for r in await asyncio.gather(*rest)]
            assert [a["tag"] for a in answers] == ["next-0", "next-1"]
            assert fn.stats()["cold_starts"] == 1  # the replacement
        assert sorted(_runs(tmp_path)) == ["first", "next-0", "next-1"]
    uvloop.run(main())


def test_what_an_instance_that_goes_did_not_reach_runs_before_callers_in_line(
        tmp_path: Path) -> None:
    # the two sent ahead were admitted before "late", which waits in line and fills the
    # queue (queue_size 1): when the instance dies they run first, and neither is refused
    async def main() -> None:
        fn_config = _fn("order", _code(tmp_path), concurrency=1, min_instances=1,
                        invocations_ahead=2, queue_size=1)
        async with _pool(fn_config, start=True) as pool:
            fn = _get(pool, "order")
            first = asyncio.ensure_future(fn.invoke(_event(seconds=0.3, how="exit"), "first"))
            await _until(lambda: fn.stats()["busy"] == 1)
            ahead = [asyncio.ensure_future(fn.invoke(_event(), f"next-{i}")) for i in range(2)]
            await _until(lambda: fn.stats()["queued"] == 2)
            late = asyncio.ensure_future(fn.invoke(_event(), "late"))
            await _until(lambda: len(fn._waiters) == 1)
            with pytest.raises(Overloaded):  # the line is full for a new caller
                await fn.invoke(_event(), "refused")
            with pytest.raises(FunctionCrashed):
                await first
            answers = [_body(r) for r in await asyncio.gather(*ahead, late)]
            assert [a["tag"] for a in answers] == ["next-0", "next-1", "late"]
            assert len({a["pid"] for a in answers}) == 1  # the one replacement, in turn
        assert _runs(tmp_path) == ["first", "next-0", "next-1", "late"]
    uvloop.run(main())


def test_close_fails_the_invocations_sent_ahead_and_leaves_no_process(tmp_path: Path) -> None:
    async def main() -> None:
        pool_cm = _pool(_fn("closing", _code(tmp_path), concurrency=1, min_instances=1,
                            invocations_ahead=2, timeout=30), start=True)
        pool = await pool_cm.__aenter__()
        fn = _get(pool, "closing")
        first = asyncio.ensure_future(fn.invoke(_event(seconds=20), "first"))
        await _until(lambda: fn.stats()["busy"] == 1)
        ahead = asyncio.ensure_future(fn.invoke(_event(), "ahead"))
        await _until(lambda: fn.stats()["queued"] == 1)
        await pool_cm.__aexit__(None, None, None)  # closes the pool, checks no child is left
        with pytest.raises(FunctionCrashed):
            await first
        with pytest.raises(Overloaded):
            await ahead
        assert _children() == []
        assert _runs(tmp_path) == ["first"]
    uvloop.run(main())


def test_a_caller_gone_before_its_turn_ahead_gets_nothing_and_the_rest_run(
        tmp_path: Path) -> None:
    async def main() -> None:
        async with _pool(_fn("gone", _code(tmp_path), concurrency=1, min_instances=1,
                             invocations_ahead=2), start=True) as pool:
            fn = _get(pool, "gone")
            first = asyncio.ensure_future(fn.invoke(_event(seconds=0.3), "first"))
            await _until(lambda: fn.stats()["busy"] == 1)
            dropped = asyncio.ensure_future(fn.invoke(_event(), "dropped"))
            kept = asyncio.ensure_future(fn.invoke(_event(), "kept"))
            await _until(lambda: fn.stats()["queued"] == 2)
            dropped.cancel()
            assert _body(await kept)["tag"] == "kept"
            assert _body(await first)["tag"] == "first"
            assert dropped.cancelled()
            assert fn.stats()["idle"] == 1
        # as SCF does, what was sent runs to its end: its result is dropped
        assert _runs(tmp_path) == ["first", "dropped", "kept"]
    uvloop.run(main())


def test_one_sent_ahead_that_does_not_start_within_queue_timeout_gets_503_and_still_runs(
        tmp_path: Path) -> None:
    async def main() -> None:
        fn_config = _fn("late", _code(tmp_path), concurrency=1, min_instances=1,
                        invocations_ahead=2, timeout=5, queue_timeout=0.5)
        async with _pool(fn_config, start=True) as pool:
            fn = _get(pool, "late")
            first = asyncio.ensure_future(fn.invoke(_event(seconds=1.5), "first"))
            await _until(lambda: fn.stats()["busy"] == 1)
            began = time.monotonic()
            with pytest.raises(Overloaded) as info:
                await fn.invoke(_event(), "late")  # sent ahead, its turn 1.5 s away
            assert 0.4 <= time.monotonic() - began < 1.2
            assert info.value.status_hint == 503
            assert _body(await first)["tag"] == "first"
            # it was sent, so it runs in its turn (its result dropped); the instance stays
            await _until(lambda: _runs(tmp_path) == ["first", "late"])
            await _until(lambda: fn.stats()["idle"] == 1)
            assert _body(await fn.invoke(_event(), "after"))["tag"] == "after"
    uvloop.run(main())
