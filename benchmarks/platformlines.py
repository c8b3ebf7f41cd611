"""The per-invocation cost of SCF's log lines (issue 16 item 6) on this machine.

Writes an invocation's START, END and Report lines to the error log the way scf/instance.py
does (``logs.PlatformLines``: the lines built with f-strings, one write), and the way plain
``logging`` would (three records), with stderr on /dev/null, and prints microseconds per
invocation for each. A micro benchmark, in one process: it says what the lines add to a local
function's invocation, not a request rate.

    .venv/bin/python benchmarks/platformlines.py --count 20000
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from proxy.logs import PlatformLines, setup_logging


def _fast(count: int) -> float:
    lines = PlatformLines("proxy.function")
    key, rid, began = "default/hello", "8d30b554-1e15-42f0-9eaf-000000000001", time.perf_counter()
    start = time.perf_counter()
    for _ in range(count):
        lines.write(f"function={key} START RequestId:{rid}",
                    f"function={key} END RequestId:{rid}",
                    f"function={key} Report RequestId:{rid} Duration:"
                    f"{(time.perf_counter() - began) * 1000.0:.0f}ms Memory:128MB "
                    f"MemUsage:{18688 / 1024}MB")
    return (time.perf_counter() - start) / count * 1e6


def _records(count: int) -> float:
    log = logging.getLogger("proxy.function")
    key, rid, began = "default/hello", "8d30b554-1e15-42f0-9eaf-000000000001", time.perf_counter()
    start = time.perf_counter()
    for _ in range(count):
        log.info("function=%s START RequestId:%s", key, rid)
        log.info("function=%s END RequestId:%s", key, rid)
        log.info("function=%s Report RequestId:%s Duration:%.0fms Memory:%dMB MemUsage:%sMB",
                 key, rid, (time.perf_counter() - began) * 1000.0, 128, 18688 / 1024)
    return (time.perf_counter() - start) / count * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000, help="invocations per variant")
    args = parser.parse_args(argv)
    out = sys.stdout
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the error log's stream for the run
    setup_logging("info")
    fast, records = _fast(args.count), _records(args.count)
    print(f"PlatformLines (one write):  {fast:7.2f} us per invocation", file=out)
    print(f"logging (three records):    {records:7.2f} us per invocation", file=out)
    print(f"ratio: {records / fast:.1f}x", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
