"""SPEC §7: the local SCF runtime, with real worker processes, driven through LocalFunctions.

Every test runs its own event loop (uvloop, the production loop; a few also on asyncio's), closes
the pool and checks that no worker process is left behind. Function code is in tests/functions
(shared with the proxy's integration tests) or written into tmp_path for one test.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvloop

from proxy.builtin import HELLO_CODE_DIR
from proxy.config import Function
from proxy.errors import (BadFunctionResponse, FunctionCrashed, FunctionError,
                          FunctionResponseTooLarge, FunctionTimeout, Overloaded,
                          PayloadTooLarge)
from proxy.messages import Invocation
from proxy.scf.local import LocalFunction, LocalFunctions

FUNCTIONS = Path(__file__).resolve().parents[1] / "functions"
Runner = Callable[[Coroutine[Any, Any, None]], None]


def _fn(name: str, code: Path | str, **kwargs: Any) -> Function:
    path = code if isinstance(code, Path) else FUNCTIONS / code
    kwargs.setdefault("handler", "index.main_handler")
    return Function(namespace="default", name=name, code=path, **kwargs)


def _event(**query: Any) -> bytes:
    return orjson.dumps({"queryString": {k: str(v) for k, v in query.items()}})


def _body(invocation: Invocation) -> Any:
    return json.loads(orjson.loads(invocation.result)["body"])


def _children() -> list[int]:
    """Live or zombie child processes of this test process, from /proc."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rpartition(b")")[2].split()
        if int(fields[1]) == me:
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except OSError:
        return False


@asynccontextmanager
async def _pool(*functions: Function, start: bool = False,
                **kwargs: str) -> AsyncIterator[LocalFunctions]:
    pool = LocalFunctions(functions, **kwargs)
    try:
        if start:
            await pool.start()
        yield pool
    finally:
        await pool.close()
        assert _children() == []


async def _until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def _get(pool: LocalFunctions, name: str) -> LocalFunction:
    fn = pool.get("default", name)
    assert fn is not None
    return fn


@pytest.fixture(params=["uvloop", "asyncio"])
def runner(request: pytest.FixtureRequest) -> Runner:
    return uvloop.run if request.param == "uvloop" else asyncio.run  # type: ignore[return-value]


# -- lifecycle -------------------------------------------------------------------------------


def test_the_same_instance_serves_consecutive_requests(runner: Runner) -> None:
    async def main() -> None:
        async with _pool(_fn("counter", "counter")) as pool:
            fn = _get(pool, "counter")
            results = [await fn.invoke(b"{}", f"req-{i}") for i in range(3)]
            assert [_body(r)["calls"] for r in results] == [1, 2, 3]
            assert len({_body(r)["pid"] for r in results}) == 1
            assert [r.cold_start for r in results] == [True, False, False]
            assert [r.request_id for r in results] == ["req-0", "req-1", "req-2"]
            assert fn.stats()["cold_starts"] == 1 and fn.stats()["invocations"] == 3
    runner(main())


def test_cold_start_is_logged_with_function_and_request_id(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="proxy.function")

    async def main() -> None:
        async with _pool(_fn("counter", "counter")) as pool:
            await _get(pool, "counter").invoke(b"{}", "first-request")
            await _get(pool, "counter").invoke(b"{}", "second-request")
    uvloop.run(main())
    cold = [r.getMessage() for r in caplog.records if "cold start" in r.getMessage()]
    assert len(cold) == 1
    assert "function=default/counter" in cold[0] and "request_id=first-request" in cold[0]


def test_concurrent_invocations_run_in_parallel_and_the_fifth_waits() -> None:
    async def main() -> None:
        sleeps = _fn("sleeps", "sleeps", concurrency=4, min_instances=4, timeout=5)
        async with _pool(sleeps, start=True) as pool:
            fn = _get(pool, "sleeps")
            assert fn.stats()["idle"] == 4
            calls = [asyncio.ensure_future(fn.invoke(_event(seconds=0.6), f"r{i}"))
                     for i in range(5)]
            await _until(lambda: fn.stats()["queued"] == 1)
            assert fn.stats()["busy"] == 4 and fn.stats()["instances"] == 4
            runs = sorted((_body(r) for r in await asyncio.gather(*calls)),
                          key=lambda b: b["started"])
            first_four, fifth = runs[:4], runs[4]
            # the first four overlap: each started before any of them ended
            assert max(r["started"] for r in first_four) < min(r["ended"] for r in first_four)
            # the fifth started only once one of them had ended, on one of the same instances
            assert fifth["started"] >= min(r["ended"] for r in first_four) - 0.01
            assert len({r["pid"] for r in runs}) == 4
    uvloop.run(main())


def test_idle_instances_retire_after_idle_timeout() -> None:
    async def main() -> None:
        async with _pool(_fn("counter", "counter", idle_timeout=0.3)) as pool:
            fn = _get(pool, "counter")
            first = await fn.invoke(b"{}", "r1")
            assert fn.stats()["instances"] == 1
            await _until(lambda: fn.stats()["instances"] == 0)
            await _until(lambda: _children() == [])
            again = await fn.invoke(b"{}", "r2")
            assert again.cold_start and _body(again)["calls"] == 1
            assert _body(again)["pid"] != _body(first)["pid"]
    uvloop.run(main())


def test_min_instances_are_kept_warm_past_idle_timeout() -> None:
    async def main() -> None:
        fn_config = _fn("counter", "counter", min_instances=2, idle_timeout=0.1)
        async with _pool(fn_config, start=True) as pool:
            fn = _get(pool, "counter")
            assert fn.stats()["instances"] == 2 and fn.stats()["idle"] == 2
            await asyncio.sleep(0.5)  # several sweeps past idle_timeout
            assert fn.stats()["instances"] == 2
            assert not (await fn.invoke(b"{}", "r1")).cold_start
    uvloop.run(main())


def test_least_recently_used_instance_retires_first() -> None:
    async def main() -> None:
        async with _pool(_fn("sleeps", "sleeps", idle_timeout=0.4)) as pool:
            fn = _get(pool, "sleeps")
            both = await asyncio.gather(fn.invoke(_event(seconds=0.2), "a"),
                                        fn.invoke(_event(seconds=0.2), "b"))
            assert fn.stats()["idle"] == 2
            # keep one instance busy every 0.1 s: LIFO reuse always picks the same one, so
            # the other idles out and only it retires
            used = set()
            for i in range(8):
                used.add(_body(await fn.invoke(_event(seconds=0), f"k{i}"))["pid"])
                await asyncio.sleep(0.1)
            assert len(used) == 1
            assert fn.stats()["instances"] == 1
            assert used <= {_body(r)["pid"] for r in both}
    uvloop.run(main())


def test_hello_clb_code_runs_unchanged() -> None:
    async def main() -> None:
        async with _pool(_fn("hello", HELLO_CODE_DIR)) as pool:
            result = await _get(pool, "hello").invoke(b'{"path": "/"}', "hello-1")
            assert orjson.loads(result.result) == {
                "isBase64Encoded": False, "statusCode": 200,
                "headers": {"Content-Type": "text/html"},
                "body": "<html><body><h1>Hello CLB</h1></body></html>",
            }
    uvloop.run(main())


def test_sub_package_handler_is_found_in_its_module(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "mod.py").write_text("def func(event, context):\n    return event\n")

    async def main() -> None:
        async with _pool(_fn("sub", tmp_path, handler="pkg.mod.func")) as pool:
            result = await _get(pool, "sub").invoke(b'{"x": [1, 2]}', "r1")
            assert orjson.loads(result.result) == {"x": [1, 2]}
    uvloop.run(main())


def test_a_thousand_invocations_from_50_tasks_succeed_and_leave_no_process() -> None:
    async def main() -> None:
        async with _pool(_fn("echo", "echo", concurrency=8)) as pool:
            fn = _get(pool, "echo")

            async def client(n: int) -> int:
                ok = 0
                for i in range(20):
                    result = await fn.invoke(orjson.dumps({"client": n, "i": i}), f"{n}-{i}")
                    ok += _body(result) == {"client": n, "i": i}
                return ok

            assert sum(await asyncio.gather(*(client(n) for n in range(50)))) == 1000
            stats = fn.stats()
            assert stats["invocations"] == 1000 and stats["queued"] == 0
            assert stats["instances"] <= 8 and stats["busy"] == 0
            assert len(_children()) == stats["instances"]
    uvloop.run(main())


def test_update_keeps_unchanged_functions_warm_and_retires_changed_ones() -> None:
    async def main() -> None:
        counter = _fn("counter", "counter")
        sleeps = _fn("sleeps", "sleeps", timeout=5)
        async with _pool(counter, sleeps) as pool:
            warm = _get(pool, "counter")
            first = _body(await warm.invoke(b"{}", "r1"))
            old_sleeps = _get(pool, "sleeps")
            running = asyncio.ensure_future(old_sleeps.invoke(_event(seconds=0.5), "r2"))
            await _until(lambda: old_sleeps.stats()["busy"] == 1)
            # the reload changes sleeps' timeout, keeps counter, adds echo
            await pool.update([counter, _fn("sleeps", "sleeps", timeout=9),
                               _fn("echo", "echo")])
            assert _get(pool, "counter") is warm
            again = _body(await warm.invoke(b"{}", "r3"))
            assert (again["pid"], again["calls"]) == (first["pid"], 2)
            new_sleeps = _get(pool, "sleeps")
            assert new_sleeps is not old_sleeps and new_sleeps.config.timeout == 9
            assert _get(pool, "echo") is not None
            # the request routed before the reload finishes on the retired pool, whose
            # instance then goes away
            assert _body(await running)["pid"] > 0
            await _until(lambda: old_sleeps.finished)
            await pool.update([counter])
            assert pool.get("default", "sleeps") is None
    uvloop.run(main())


def test_close_kills_busy_instances_and_fails_their_callers() -> None:
    async def main() -> None:
        pool = LocalFunctions([_fn("sleeps", "sleeps", timeout=30)])
        fn = _get(pool, "sleeps")
        call = asyncio.ensure_future(fn.invoke(_event(seconds=20), "r1"))
        await _until(lambda: fn.stats()["busy"] == 1)
        began = time.monotonic()
        await pool.close()
        assert time.monotonic() - began < 2
        with pytest.raises(FunctionCrashed):
            await call
        assert _children() == []
        with pytest.raises(Overloaded):
            await fn.invoke(b"{}", "after-close")
    uvloop.run(main())


# -- failures ----------------------------------------------------------------------------------


def test_timeout_gives_function_timeout_and_the_next_invocation_succeeds() -> None:
    async def main() -> None:
        async with _pool(_fn("sleeps", "sleeps", timeout=1)) as pool:
            fn = _get(pool, "sleeps")
            began = time.monotonic()
            with pytest.raises(FunctionTimeout) as info:
                await fn.invoke(_event(seconds=5), "slow")
            assert 1 <= time.monotonic() - began < 2.5
            assert info.value.status_hint == 504
            after = await fn.invoke(_event(seconds=0), "fast")
            assert after.cold_start  # the timed-out instance was killed and replaced
            assert fn.stats()["instances"] == 1
    uvloop.run(main())


def test_timeout_also_kills_the_handlers_subprocesses(tmp_path: Path) -> None:
    (tmp_path / "index.py").write_text(
        "import subprocess, time\n"
        "def main_handler(event, context):\n"
        "    child = subprocess.Popen(['sleep', '30'])\n"
        "    open('child.pid', 'w').write(str(child.pid))\n"
        "    time.sleep(10)\n")

    async def main() -> None:
        async with _pool(_fn("spawner", tmp_path, timeout=1)) as pool:
            with pytest.raises(FunctionTimeout):
                await _get(pool, "spawner").invoke(b"{}", "r1")
        child = int((tmp_path / "child.pid").read_text())
        deadline = time.monotonic() + 5
        while _alive(child) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert not _alive(child)
    uvloop.run(main())


def test_memory_hog_gives_function_crashed_and_recovers() -> None:
    async def main() -> None:
        async with _pool(_fn("hog", "hog", memory=128)) as pool:
            fn = _get(pool, "hog")
            with pytest.raises(FunctionCrashed) as info:
                await fn.invoke(_event(mb=200), "hog-1")
            assert "memory limit of 128 MB" in info.value.log_detail
            after = await fn.invoke(_event(mb=1), "small")
            assert after.cold_start  # replaced
    uvloop.run(main())


def test_memory_setting_really_leaves_that_much_to_the_handler() -> None:
    async def main() -> None:
        async with _pool(_fn("hog", "hog", memory=128)) as pool:
            fn = _get(pool, "hog")
            result = await fn.invoke(_event(mb=110), "big-but-fits")
            assert orjson.loads(result.result)["body"] == "allocated 110 MB"
            with pytest.raises(FunctionCrashed):
                await fn.invoke(_event(mb=150), "too-big")
    uvloop.run(main())


def test_threads_in_the_handler_fit_in_the_memory_limit(tmp_path: Path) -> None:
    (tmp_path / "index.py").write_text(
        "import threading\n"
        "def work(out):\n"
        "    out.append(len([bytes(1000) for _ in range(5000)]))\n"
        "def main_handler(event, context):\n"
        "    out = []\n"
        "    threads = [threading.Thread(target=work, args=(out,)) for _ in range(6)]\n"
        "    for t in threads: t.start()\n"
        "    for t in threads: t.join()\n"
        "    return sum(out)\n")

    async def main() -> None:
        async with _pool(_fn("threads", tmp_path, memory=128)) as pool:
            result = await _get(pool, "threads").invoke(b"{}", "r1")
            assert orjson.loads(result.result) == 30000
    uvloop.run(main())


@pytest.mark.parametrize(("how", "ending"), [("exit", "exited with status 1"),
                                             ("segv", "killed by SIGSEGV")])
def test_crashing_instance_gives_function_crashed_and_recovers(runner: Runner, how: str,
                                                               ending: str) -> None:
    async def main() -> None:
        async with _pool(_fn("crash", "crash")) as pool:
            fn = _get(pool, "crash")
            with pytest.raises(FunctionCrashed) as info:
                await fn.invoke(_event(how=how), "boom")
            assert ending in info.value.log_detail and "boom" in info.value.log_detail
            assert info.value.status_hint == 502
            after = await fn.invoke(_event(how="none"), "fine")
            assert after.cold_start and fn.stats()["instances"] == 1
    runner(main())


def test_handler_exception_gives_function_error_and_logs_the_error_object(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="proxy.function")

    async def main() -> None:
        async with _pool(_fn("raises", "raises", debug=True)) as pool:
            fn = _get(pool, "raises")
            with pytest.raises(FunctionError) as info:
                await fn.invoke(b"{}", "req-raise")
            error = info.value.error
            assert error["errorCode"] == -1 and error["statusCode"] == 430
            assert error["errorMessage"] == "user code exception caught"
            assert error["requestId"] == "req-raise"
            trace = str(error["stackTrace"])
            assert trace.startswith("Traceback") and "in check" in trace
            assert trace.endswith("ValueError: raised on purpose")
            assert "runtime.py" not in trace  # only the user's frames
            assert info.value.debug and info.value.logged
            # the instance survives a handler exception
            with pytest.raises(FunctionError):
                await fn.invoke(b"{}", "req-raise-2")
            assert fn.stats()["cold_starts"] == 1
    uvloop.run(main())
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and errors[0].name == "proxy.function"
    message = errors[0].getMessage()
    assert "function=default/raises" in message and "request_id=req-raise" in message
    assert "raised on purpose" in message and "stackTrace" in message


BROKEN = {
    "syntax": ("index.main_handler", {"index.py": "def main_handler(:\n"}, 443, "SyntaxError"),
    "no_module": ("nosuch.main_handler", {"index.py": ""}, 437, "No module named 'nosuch'"),
    "no_function": ("index.main_handler", {"index.py": "x = 1\n"}, 437, "no function"),
    "bad_dependency": ("index.main_handler", {"index.py": "import not_installed_anywhere\n"},
                       443, "not_installed_anywhere"),
    "raises_at_import": ("index.main_handler", {"index.py": "raise RuntimeError('at import')\n"},
                         443, "RuntimeError: at import"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_handler_that_cannot_be_imported_warns_at_start_and_fails_each_call(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str) -> None:
    handler, files, status, text = BROKEN[kind]
    for name, source in files.items():
        (tmp_path / name).write_text(source)
    caplog.set_level(logging.INFO, logger="proxy.function")

    async def main() -> None:
        async with _pool(_fn("broken", tmp_path, handler=handler), start=True) as pool:
            # the checked instance stays, warm, however its import went
            assert _get(pool, "broken").stats()["idle"] == 1
            for request_id in ("first", "second"):
                with pytest.raises(FunctionError) as info:
                    await _get(pool, "broken").invoke(b"{}", request_id)
                assert info.value.error["statusCode"] == status
                assert text in str(info.value.error["errorMessage"]) + str(
                    info.value.error["stackTrace"])
            assert _get(pool, "broken").stats()["cold_starts"] == 0
    uvloop.run(main())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("default/broken" in w and handler in w and "cannot be imported" in w
               for w in warnings), warnings
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert "function=default/broken" in errors[0] and f"handler={handler}" in errors[0]
    assert "request_id=first" in errors[0] and "cannot import handler" in errors[0]


def test_fixed_handler_imports_at_the_next_call_without_a_restart(tmp_path: Path) -> None:
    (tmp_path / "index.py").write_text("def main_handler(:\n")

    async def main() -> None:
        async with _pool(_fn("fixme", tmp_path)) as pool:
            fn = _get(pool, "fixme")
            with pytest.raises(FunctionError):
                await fn.invoke(b"{}", "r1")
            (tmp_path / "index.py").write_text("def main_handler(e, c):\n    return 'fixed'\n")
            result = await fn.invoke(b"{}", "r2")
            assert orjson.loads(result.result) == "fixed" and not result.cold_start
    uvloop.run(main())


def test_instance_that_cannot_be_started_gives_function_crashed_and_frees_its_slot(
        tmp_path: Path) -> None:
    code = tmp_path / "vanished"
    code.mkdir()
    config = _fn("vanished", code, concurrency=1, queue_size=0)
    code.rmdir()  # the working directory is gone: the process cannot even start

    async def main() -> None:
        async with _pool(config) as pool:
            fn = _get(pool, "vanished")
            for request_id in ("r1", "r2"):  # a leaked slot would make the second Overloaded
                with pytest.raises(FunctionCrashed) as info:
                    await fn.invoke(b"{}", request_id)
                assert "cannot start an instance" in info.value.log_detail
            assert fn.stats()["instances"] == 0
    uvloop.run(main())


def test_result_over_6mb_gives_response_too_large_and_keeps_the_instance() -> None:
    async def main() -> None:
        async with _pool(_fn("malformed", "malformed")) as pool:
            fn = _get(pool, "malformed")
            with pytest.raises(FunctionResponseTooLarge):
                await fn.invoke(_event(kind="too_large"), "big")
            assert not (await fn.invoke(_event(kind="array"), "small")).cold_start
    uvloop.run(main())


def test_event_up_to_6mb_reaches_the_handler_and_a_larger_one_is_refused(
        tmp_path: Path) -> None:
    (tmp_path / "index.py").write_text(
        "def main_handler(event, context):\n    return len(event['data'])\n")
    limit = 6 * 1024 * 1024

    async def main() -> None:
        async with _pool(_fn("size", tmp_path, memory=256)) as pool:
            fn = _get(pool, "size")
            data = "x" * (limit - len('{"data":""}'))
            result = await fn.invoke(orjson.dumps({"data": data}), "at-limit")
            assert orjson.loads(result.result) == len(data)
            with pytest.raises(PayloadTooLarge):
                await fn.invoke(orjson.dumps({"data": data + "x"}), "over")
            assert fn.stats()["invocations"] == 1
    uvloop.run(main())


def test_result_that_is_not_json_gives_bad_function_response() -> None:
    async def main() -> None:
        async with _pool(_fn("malformed", "malformed")) as pool:
            with pytest.raises(BadFunctionResponse) as info:
                await _get(pool, "malformed").invoke(_event(kind="not_json"), "set")
            assert "not JSON-serialisable" in info.value.log_detail
    uvloop.run(main())


# -- queueing and cancellation ---------------------------------------------------------------


def test_full_queue_gives_overloaded_with_retry_after() -> None:
    async def main() -> None:
        config = _fn("sleeps", "sleeps", concurrency=1, queue_size=1, timeout=5)
        async with _pool(config) as pool:
            fn = _get(pool, "sleeps")
            running = asyncio.ensure_future(fn.invoke(_event(seconds=0.5), "running"))
            await _until(lambda: fn.stats()["busy"] == 1)
            queued = asyncio.ensure_future(fn.invoke(_event(seconds=0), "queued"))
            await _until(lambda: fn.stats()["queued"] == 1)
            with pytest.raises(Overloaded) as info:
                await fn.invoke(_event(seconds=0), "rejected")
            assert info.value.status_hint == 503 and info.value.retry_after
            await asyncio.gather(running, queued)
    uvloop.run(main())


def test_queue_wait_over_queue_timeout_gives_overloaded() -> None:
    async def main() -> None:
        config = _fn("sleeps", "sleeps", concurrency=1, queue_timeout=0.3, timeout=5)
        async with _pool(config) as pool:
            fn = _get(pool, "sleeps")
            running = asyncio.ensure_future(fn.invoke(_event(seconds=1.5), "running"))
            await _until(lambda: fn.stats()["busy"] == 1)
            began = time.monotonic()
            with pytest.raises(Overloaded):
                await fn.invoke(_event(seconds=0), "waits")
            assert 0.25 <= time.monotonic() - began < 1.2
            assert fn.stats()["queued"] == 0
            await running
    uvloop.run(main())


def test_cancelled_caller_in_the_queue_releases_its_place(runner: Runner) -> None:
    async def main() -> None:
        config = _fn("sleeps", "sleeps", concurrency=1, queue_size=1, timeout=5)
        async with _pool(config) as pool:
            fn = _get(pool, "sleeps")
            running = asyncio.ensure_future(fn.invoke(_event(seconds=0.5), "running"))
            await _until(lambda: fn.stats()["busy"] == 1)
            gone = asyncio.ensure_future(fn.invoke(_event(seconds=0), "gone"))
            await _until(lambda: fn.stats()["queued"] == 1)
            gone.cancel()
            with pytest.raises(asyncio.CancelledError):
                await gone
            assert fn.stats()["queued"] == 0
            # its place is free again: the next caller queues instead of being refused
            after = await fn.invoke(_event(seconds=0), "after")
            assert not after.cold_start
            await running
            assert fn.stats()["instances"] == 1
    runner(main())


def test_cancelled_caller_while_running_lets_the_instance_finish_and_return(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="proxy.function")

    async def main() -> None:
        async with _pool(_fn("sleeps", "sleeps", concurrency=1, timeout=5)) as pool:
            fn = _get(pool, "sleeps")
            first = await fn.invoke(_event(seconds=0), "warm")
            call = asyncio.ensure_future(fn.invoke(_event(seconds=0.3), "abandoned"))
            await _until(lambda: fn.stats()["busy"] == 1)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert fn.stats()["busy"] == 1  # still running in the worker
            await _until(lambda: fn.stats()["idle"] == 1)
            after = await fn.invoke(_event(seconds=0), "after")
            assert not after.cold_start and _body(after)["pid"] == _body(first)["pid"]
    uvloop.run(main())
    assert any("request_id=abandoned finished after its caller went away" in r.getMessage()
               for r in caplog.records)


def test_cancelled_caller_during_cold_start_leaves_the_instance_to_the_pool() -> None:
    async def main() -> None:
        async with _pool(_fn("counter", "counter")) as pool:
            fn = _get(pool, "counter")
            call = asyncio.ensure_future(fn.invoke(b"{}", "cancelled"))
            await _until(lambda: fn.stats()["starting"] == 1)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            await _until(lambda: fn.stats()["idle"] == 1)
            result = await fn.invoke(b"{}", "next")
            assert not result.cold_start and _body(result)["calls"] == 1
    uvloop.run(main())


# -- what the handler sees and says ----------------------------------------------------------


def test_print_output_is_logged_with_the_request_id(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="proxy.function")

    async def main() -> None:
        async with _pool(_fn("printer", "printer")) as pool:
            fn = _get(pool, "printer")
            for request_id in ("req-a", "req-b"):
                result = await fn.invoke(b"{}", request_id)
                assert orjson.loads(result.result)["body"] == "printed"
    uvloop.run(main())
    lines = [r.getMessage() for r in caplog.records
             if r.name == "proxy.function" and r.levelno == logging.INFO]
    for rid in ("req-a", "req-b"):
        prefix = f"function=default/printer request_id={rid} "
        assert prefix + f"stdout: print to stdout {rid}" in lines
        assert prefix + f"stderr: print to stderr {rid}" in lines
        assert prefix + f"stdout: fd write {rid}" in lines
        assert prefix + f"stdout: child process {rid}" in lines


ENV_HANDLER = """
import json, os, sys
def main_handler(event, context):
    return {"env": dict(os.environ), "context": context, "cwd": os.getcwd(),
            "path0": sys.path[0], "event": event}
"""


def test_environment_and_context_fields(tmp_path: Path) -> None:
    (tmp_path / "index.py").write_text(ENV_HANDLER)
    config = Function(namespace="ns1", name="envfn", handler="index.main_handler", code=tmp_path,
                      runtime="Python3.10", timeout=7, memory=256,
                      environment=(("GREETING", "hi"), ("OTHER", "x=y")))

    async def main() -> None:
        async with _pool(config, region="ap-shanghai", appid="1251234567",
                         uin="100000000042") as pool:
            fn = pool.get("ns1", "envfn")
            assert fn is not None
            result = orjson.loads((await fn.invoke(b'{"k": "v"}', "rid-7")).result)
            env, context = result["env"], result["context"]
            assert result["event"] == {"k": "v"}
            assert result["cwd"] == str(tmp_path) and result["path0"] == str(tmp_path)
            assert env["GREETING"] == "hi" and env["OTHER"] == "x=y"
            assert {k: env[k] for k in ("SCF_FUNCTIONNAME", "SCF_FUNCTIONVERSION",
                                        "SCF_NAMESPACE", "SCF_RUNTIME", "TENCENTCLOUD_RUNENV",
                                        "TENCENTCLOUD_REGION", "TENCENTCLOUD_APPID",
                                        "TENCENTCLOUD_UIN")} == {
                "SCF_FUNCTIONNAME": "envfn", "SCF_FUNCTIONVERSION": "$LATEST",
                "SCF_NAMESPACE": "ns1", "SCF_RUNTIME": "Python3.10",
                "TENCENTCLOUD_RUNENV": "SCF", "TENCENTCLOUD_REGION": "ap-shanghai",
                "TENCENTCLOUD_APPID": "1251234567", "TENCENTCLOUD_UIN": "100000000042"}
            assert context == {
                "request_id": "rid-7", "function_name": "envfn", "function_version": "$LATEST",
                "namespace": "ns1", "memory_limit_in_mb": 256, "time_limit_in_ms": 7000,
                "tencentcloud_region": "ap-shanghai", "tencentcloud_appid": "1251234567",
                "tencentcloud_uin": "100000000042",
                "environment": '{"GREETING":"hi","OTHER":"x=y","SCF_NAMESPACE":"ns1"}',
                "environ": "GREETING=hi;OTHER=x=y;SCF_NAMESPACE=ns1",
            }
    uvloop.run(main())


def test_proxy_secrets_and_other_variables_do_not_reach_functions(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "index.py").write_text(ENV_HANDLER)
    for name in ("TENCENTCLOUD_SECRETID", "TENCENTCLOUD_SECRETKEY", "TENCENTCLOUD_SESSIONTOKEN",
                 "ADMIN_TOKEN"):
        monkeypatch.setenv(name, "secret-value")

    async def main() -> None:
        async with _pool(_fn("envfn", tmp_path)) as pool:
            result = await _get(pool, "envfn").invoke(b"{}", "r1")
            env = orjson.loads(result.result)["env"]
            assert "secret-value" not in env.values()
            assert "PATH" in env
    uvloop.run(main())


def test_stats_count_instances_queue_cold_starts_and_invocations() -> None:
    async def main() -> None:
        async with _pool(_fn("sleeps", "sleeps", concurrency=1, timeout=5),
                         _fn("echo", "echo")) as pool:
            fn = _get(pool, "sleeps")
            running = asyncio.ensure_future(fn.invoke(_event(seconds=0.3), "r1"))
            waiting = asyncio.ensure_future(fn.invoke(_event(seconds=0), "r2"))
            await _until(lambda: fn.stats()["queued"] == 1 and fn.stats()["busy"] == 1)
            await asyncio.gather(running, waiting)
            assert pool.stats() == {
                "default/sleeps": {"instances": 1, "idle": 1, "busy": 0, "starting": 0,
                                   "queued": 0, "cold_starts": 1, "invocations": 2},
                "default/echo": {"instances": 0, "idle": 0, "busy": 0, "starting": 0,
                                 "queued": 0, "cold_starts": 0, "invocations": 0},
            }
    uvloop.run(main())


def test_worker_killed_from_outside_while_idle_is_replaced() -> None:
    async def main() -> None:
        async with _pool(_fn("counter", "counter")) as pool:
            fn = _get(pool, "counter")
            pid = _body(await fn.invoke(b"{}", "r1"))["pid"]
            os.kill(pid, signal.SIGKILL)
            await _until(lambda: fn.stats()["instances"] == 0)
            result = await fn.invoke(b"{}", "r2")
            assert result.cold_start and _body(result)["pid"] != pid
    uvloop.run(main())

