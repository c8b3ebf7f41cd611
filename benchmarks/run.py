"""Run the side-by-side benchmarks (issue 12's targets) and print/save one table.

``python benchmarks/run.py [--duration S] [--connections N] [--only SCENARIO ...] [--out F]
[--markdown] [--proxy-root DIR]`` installs what it needs (nginx, wrk, uvicorn), starts an
origin nginx, runs each scenario (ours, its peer and, where there is one, the floor relay in
turn, the same wrk load for all), adds the rows derived from them, prints the table and writes
it as JSON to ``benchmarks/results/<timestamp>.json`` and ``benchmarks/results/latest.json``.
Owns the command line, the CPU plan and the run's metadata; the scenarios own the rest.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``proxy`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import checkout, derived, install, procs  # noqa: E402
from benchmarks.harness import STATISTICS, Bench, Load  # noqa: E402
from benchmarks.report import Row, Side, render_markdown, render_text, write_json  # noqa: E402
from benchmarks.scenarios import ORIGIN, SCENARIOS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ORIGIN_USERS = {"cvm", "cvm-log", "https", "https-resume", "h2", "rules"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description="clbscf-proxy side by side with nginx (and nginx + uvicorn), one worker "
                    "process each, the same wrk load for both sides.")
    parser.add_argument("--duration", type=float, default=10.0, metavar="S",
                        help="seconds of each measured wrk run (default 10)")
    parser.add_argument("--connections", type=int, default=50, metavar="N",
                        help="wrk connections (default 50)")
    parser.add_argument("--only", nargs="+", choices=list(SCENARIOS), metavar="SCENARIO",
                        help="run only these: " + ", ".join(SCENARIOS))
    parser.add_argument("--out", type=Path, metavar="FILE",
                        help="JSON result file (default benchmarks/results/<timestamp>.json; "
                             "latest.json is always written beside it)")
    parser.add_argument("--markdown", action="store_true",
                        help="also print the table as Markdown, ready for the README")
    parser.add_argument("--rounds", type=int, default=2, metavar="R",
                        help="measure each side R times, alternating, and keep one run by "
                             "--statistic (default 2; steadier on a shared machine)")
    parser.add_argument("--statistic", choices=STATISTICS, default="median",
                        help="which round each side keeps: the median (default: issue 12's "
                             "targets are medians; of an even count the lower middle) or the "
                             "best")
    parser.add_argument("--idle-connections", type=int, default=10_000, metavar="N",
                        help="idle keep-alive connections for the memory scenario (10000)")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin the server under test and the load generator to "
                             "separate CPUs")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="put the generated configs and the servers' logs in DIR and keep "
                             "them (default: a temporary directory, removed)")
    parser.add_argument("--no-install", action="store_true",
                        help="do not install missing tools (scenarios needing them fail)")
    parser.add_argument("--invocations-ahead", type=int, default=0, metavar="N",
                        help="the SCF scenarios' function's invocations_ahead (default 0, the "
                             "config's default: the key is left out, so an older checkout "
                             "runs too)")
    parser.add_argument("--proxy-root", type=Path, metavar="DIR",
                        help="run the proxy from this other checkout of the repo (python -m "
                             "proxy.cli, cwd and PYTHONPATH = DIR, this interpreter; its native "
                             "modules are built in place when missing), for before/after tables")
    return parser


def cpu_plan(no_pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(server under test, wrk + origin): one CPU each when there are two or more."""
    cpus = sorted(os.sched_getaffinity(0))
    if no_pin or len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def origin_baseline(bench: Bench) -> dict[str, object]:
    """wrk straight at the origin: it must be far faster than any proxied path."""
    row = Row("origin", "", "req/s", Side("origin"), Side(""))
    try:
        measured = bench.load(bench.origin(), Load(row, ORIGIN))
    except Exception as exc:  # noqa: BLE001 - the run goes on; the JSON says why
        return {"error": str(exc)}
    result = measured.wrk
    bench.log(f"origin direct: {result.rps:,.0f} req/s (wrk and origin on the same CPUs)")
    measured.fill(row.ours)
    return {"rps": result.rps, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms,
            "cpu_us_per_request": row.ours.cpu_us_per_request}


def run_scenarios(bench: Bench, names: list[str]) -> tuple[dict[str, object], list[Row]]:
    """The origin baseline (when a scenario uses the origin) and every scenario's rows."""
    rows: list[Row] = []
    with bench.stack:
        baseline = origin_baseline(bench) if set(names) & ORIGIN_USERS else {}
        for name in names:
            bench.log(f"== {name}")
            try:
                rows += SCENARIOS[name](bench)
            except Exception as exc:  # noqa: BLE001 - one broken scenario, not the run
                rows.append(Row(name, "", "-", Side("clbscf-proxy"), Side("-"),
                                error=f"{type(exc).__name__}: {exc}"))
    return baseline, rows + derived.derive(rows)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = args.only or list(SCENARIOS)
    tools = {} if args.no_install else install.ensure(list(install.RUN_TOOLS))
    try:
        code = (checkout.this_checkout() if args.proxy_root is None
                else checkout.other_checkout(args.proxy_root, _log))
    except (checkout.CheckoutError, OSError) as exc:
        print(f"run.py: --proxy-root: {exc}", file=sys.stderr)
        return 2
    procs.raise_nofile()  # the idle scenario holds 10,000 client sockets in this process
    sut, load = cpu_plan(args.no_pin)
    load_before = [round(x, 2) for x in os.getloadavg()]
    if load_before[0] > 0.5:
        print(f"note: load average {load_before[0]} before the run: other processes are busy "
              "and the numbers will be noisier", flush=True)
    started = time.time()
    with _workdir(args.keep) as workdir:
        bench = Bench(workdir, args.duration, args.connections, sut, load,
                      args.idle_connections, max(1, args.rounds), args.statistic, log=_log,
                      code=code, invocations_ahead=args.invocations_ahead)
        baseline, rows = run_scenarios(bench, names)
    meta = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "settings": {"duration": args.duration, "connections": args.connections,
                     "rounds": bench.rounds, "statistic": bench.statistic, "wrk_threads": 1,
                     "scenarios": names,
                     "idle_connections": args.idle_connections,
                     "invocations_ahead": args.invocations_ahead,
                     "pinning": _pinning_text(sut, load)},
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "cpu": _cpu_model(), "load_average_at_start": load_before},
        "tools": {**install.versions(), **{f"install_{k}": v for k, v in tools.items()}},
        "proxy": code.describe(),
        "origin_direct": baseline,
    }
    out = args.out or RESULTS / time.strftime("%Y%m%d-%H%M%S.json", time.localtime(started))
    write_json(out, meta, rows)
    if out.resolve() != (RESULTS / "latest.json").resolve():
        write_json(RESULTS / "latest.json", meta, rows)
    print("\n" + render_text(rows))
    if args.markdown:
        print("\n" + render_markdown(rows))
    print(f"\nwritten: {out} and {RESULTS / 'latest.json'}")
    return 0


def _log(text: str) -> None:
    print(text, flush=True)


@contextmanager
def _workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="clbscf-bench-") as tmp:
        yield Path(tmp)


def _pinning_text(sut: set[int] | None, load: set[int] | None) -> str:
    if sut is None or load is None:
        return "none"
    return f"server under test on CPU {sorted(sut)}, wrk + origin on CPU {sorted(load)}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
