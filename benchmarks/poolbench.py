"""The local function pool alone: invocations per second of one Hello CLB instance, in process.

Drives scf/local.py's ``LocalFunction.start`` (the hot path's callbacks) with ``--callers``
invocations always in flight against one warm instance of the built-in function, for
``--count`` invocations, with ``invocations_ahead`` = ``--ahead``, and prints invocations per
second and this process's CPU per invocation (the worker's is not in it). No HTTP, no sockets
but the instance's. ``--cpus 0`` pins this process (and so the worker it starts) to CPU 0:
both then share one CPU, as in run.py's SCF scenarios; unpinned, the worker may run beside it.

    .venv/bin/python benchmarks/poolbench.py --ahead 0
    .venv/bin/python benchmarks/poolbench.py --ahead 4 --cpus 0
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import uvloop

from proxy.builtin import HELLO_CODE_DIR
from proxy.config import Function
from proxy.scf.local import LocalFunctions

EVENT = b'{"path":"/","httpMethod":"GET","headers":{},"queryString":{},"body":""}'


async def _run(count: int, callers: int, ahead: int) -> tuple[float, float]:
    config = Function(namespace="default", name="hello", code=HELLO_CODE_DIR,
                      handler="index.main_handler", concurrency=1, min_instances=1,
                      queue_size=callers, invocations_ahead=ahead)
    pool = LocalFunctions([config])
    await pool.start()
    fn = pool.get("default", "hello")
    assert fn is not None
    finished = asyncio.get_running_loop().create_future()
    sent = answered = 0

    def call() -> None:
        nonlocal sent
        sent += 1
        fn.start(EVENT, f"r{sent}", done)

    def done(result: object) -> None:
        nonlocal answered
        if isinstance(result, BaseException):
            finished.set_exception(result)
            return
        answered += 1
        if sent < count:
            call()
        elif answered == count and not finished.done():
            finished.set_result(None)

    began, cpu = time.perf_counter(), time.process_time()
    for _ in range(min(callers, count)):
        call()
    await finished
    wall, used = time.perf_counter() - began, time.process_time() - cpu
    await pool.close()
    return count / wall, used / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--callers", type=int, default=50)
    parser.add_argument("--ahead", type=int, default=0, help="invocations_ahead (0..16)")
    parser.add_argument("--cpus", type=str, default="",
                        help="pin to these CPUs first (comma-separated), e.g. 0")
    args = parser.parse_args()
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    rate, cpu_us = uvloop.run(_run(args.count, args.callers, args.ahead))
    print(f"invocations_ahead={args.ahead} cpus={args.cpus or 'all'}: {rate:,.0f} "
          f"invocations/s, {cpu_us:.1f} µs of this process's CPU per invocation")


if __name__ == "__main__":
    main()
