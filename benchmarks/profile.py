"""Where our proxy spends its time: py-spy on the cvm, scf and https paths under wrk load.

``python benchmarks/profile.py [--duration S] [--paths cvm scf https] [--proxy-root DIR]``
starts the proxy for each path with the same config as its scenario in run.py (pinned as
there: the proxy on one CPU, wrk, the origin and py-spy on the other), checks one answer,
warms it up, then records it with ``py-spy record --format raw --rate 200 --nonblocking`` for
S seconds while wrk loads it (scf: ``--subprocesses``, the function instances too). Prints per
path the top functions by self and by inclusive time, and writes that summary to
``benchmarks/results/profile-<timestamp>.txt``. Owns the command line and the recording; the
stacks are read by stacks.py.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repo root, not benchmarks/, on sys.path
    # (benchmarks/profile.py would otherwise shadow the standard library's ``profile``)
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks import checkout, install, procs, scenarios, stacks, wrk  # noqa: E402
from benchmarks.harness import Bench, Load  # noqa: E402
from benchmarks.report import Row, Side  # noqa: E402
from benchmarks.run import RESULTS, cpu_plan  # noqa: E402

RATE = 200  # py-spy samples per second

#: path -> (its scenario's config of our proxy, the request and the answer to expect,
#: whether py-spy follows child processes)
PATHS: dict[str, tuple[Callable[[Bench], str], Load, bool]] = {
    "cvm": (scenarios.cvm_toml, Load(Row("cvm", "", "", Side(""), Side("")), scenarios.ORIGIN),
            False),
    "scf": (lambda bench: scenarios.scf_toml(bench, 1),
            Load(Row("scf", "", "", Side(""), Side("")), scenarios.HELLO), True),
    "https": (scenarios.https_toml,
              Load(Row("https", "", "", Side(""), Side("")), scenarios.ORIGIN, scheme="https"),
              False),
    "https-handshake": (scenarios.https_toml,
                        Load(Row("https-handshake", "", "", Side(""), Side("")),
                             scenarios.ORIGIN, scheme="https", closing=True), False),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmarks/profile.py",
                                     description="py-spy profiles of our proxy under wrk load")
    parser.add_argument("--duration", type=float, default=15.0, metavar="S",
                        help="seconds py-spy records each path (default 15)")
    parser.add_argument("--connections", type=int, default=50, metavar="N",
                        help="wrk connections (default 50)")
    parser.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS),
                        metavar="PATH", help="which: " + ", ".join(PATHS))
    parser.add_argument("--top", type=int, default=15, metavar="N",
                        help="functions per table (default 15)")
    parser.add_argument("--proxy-root", type=Path, metavar="DIR",
                        help="profile the proxy of this other checkout (as run.py does)")
    parser.add_argument("--out", type=Path, metavar="FILE",
                        help="summary file (default benchmarks/results/profile-<timestamp>.txt)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep the configs, logs and py-spy's raw stacks in DIR")
    parser.add_argument("--no-pin", action="store_true", help="do not pin (see run.py)")
    return parser


def record(bench: Bench, server: procs.Server, load: Load, raw: Path,
           subprocesses: bool) -> tuple[stacks.Profile, str]:
    """py-spy on ``server`` while wrk loads it; the stacks, and what wrk and the CPU time
    showed in a measured run without py-spy, then with it."""
    # checked, warmed up and measured as run.py does, without py-spy
    plain = bench.load(server, load)
    cpu = sum(p.us_per_request for p in plain.cpu)
    url = f"{load.scheme}://127.0.0.1:{server.port}{load.path}"
    loaded: dict[str, object] = {}

    def generate() -> None:
        try:
            loaded["result"] = wrk.run(
                url, connections=bench.connections, duration=bench.duration + 2,
                cpus=bench.load_cpus, closing=load.closing,
                headers=[f"Host: {load.host}"] + (["Connection: close"] if load.closing
                                                  else []))
        except wrk.LoadError as exc:
            loaded["error"] = exc

    thread = threading.Thread(target=generate)
    thread.start()
    time.sleep(1)  # wrk's connections open before the first sample
    argv = [install.py_spy(), "record", "--format", "raw", "--rate", str(RATE), "--duration",
            str(max(1, round(bench.duration))), "--pid", str(server.pid), "--nonblocking",
            "--output", str(raw), *(["--subprocesses"] if subprocesses else [])]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=bench.duration + 60,
                          preexec_fn=procs.pinner(bench.load_cpus))
    thread.join()
    if done.returncode != 0 or not raw.exists():
        raise RuntimeError(f"py-spy failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    result = loaded.get("result")
    rate = (f"{plain.wrk.rps:,.0f} req/s and {cpu:.1f} CPU µs/req without py-spy, "
            + (f"{result.rps:,.0f} req/s with it" if isinstance(result, wrk.WrkResult)
               else f"wrk with it: {loaded.get('error')}"))
    return stacks.parse(raw.read_text(errors="replace").splitlines()), rate


def profile_path(bench: Bench, name: str, top: int) -> list[str]:
    make_toml, load, subprocesses = PATHS[name]
    bench.log(f"== {name}")
    try:
        server = bench.proxy(f"profile-{name}", make_toml(bench))
    except Exception as exc:  # noqa: BLE001 - the other paths are still profiled
        return [f"{name}: error: {exc}"]
    try:
        found, rate = record(bench, server, load, bench.workdir / f"profile-{name}.raw.txt",
                             subprocesses)
    except Exception as exc:  # noqa: BLE001
        return [f"{name}: error: {exc}"]
    finally:
        server.stop()
    return [f"{name}: {rate}, {bench.duration:g} s at {RATE} Hz"
            + (" (proxy and function instances)" if subprocesses else ""),
            *stacks.summary(found, top)]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    install.ensure([*install.RUN_TOOLS, "py-spy"])
    code = (checkout.this_checkout() if args.proxy_root is None
            else checkout.other_checkout(args.proxy_root))
    sut, load = cpu_plan(args.no_pin)
    started = time.localtime()
    with tempfile.TemporaryDirectory(prefix="clbscf-profile-") as tmp:
        workdir = args.keep.resolve() if args.keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        bench = Bench(workdir, args.duration, args.connections, sut, load, 0, code=code,
                      log=lambda text: print(text, flush=True))
        header = [f"profile {time.strftime('%Y-%m-%d %H:%M:%S', started)}, proxy "
                  f"{code.describe()}, wrk -c{args.connections}, pinning "
                  f"{'off' if sut is None else f'proxy CPU {sorted(sut)}'}", ""]
        with bench.stack:
            sections = [profile_path(bench, name, args.top) + [""] for name in args.paths]
    text = "\n".join(header + [line for section in sections for line in section])
    out = args.out or RESULTS / time.strftime("profile-%Y%m%d-%H%M%S.txt", started)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print("\n" + text + f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
