"""What compiling the CVM path's modules with Cython *as they are* would save: a measurement.

Issue 12 allows compiling hot modules unchanged (as ``proxy/scf/event.py`` is). Before doing
that for the request path, this measures it. ``python benchmarks/asis.py`` exports the
checkout's HEAD twice into a temporary directory, compiles ``MODULES`` in place in the second
copy (Cython, ``language_level=3``, ``-O2``, the extensions beside their ``.py`` so that the
import system prefers them), and runs ``benchmarks/inproc.py`` in both. ``--measure
callgrind`` (the default) counts instructions per request with ``valgrind --tool=callgrind``
at two sizes (``--requests`` and three times that) and divides the difference, as
benchmarks/README.md describes; ``--measure cpu`` takes the process CPU per request that
inproc.py prints (noisy; for a machine without valgrind). ``--modules`` measures another set.

Both copies use this interpreter and the native modules of this checkout (``proxy/_speedups``
copied in), so the compiled request path is the only difference. A measuring tool, not part
of the product or of ``make test`` (its own test runs it briefly).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: the modules a CVM request runs through (cProfile of inproc.py: every module with a
#: function called per request)
MODULES = (
    "proxy/connection.py", "proxy/http1.py", "proxy/router.py", "proxy/headers.py",
    "proxy/recording.py", "proxy/metrics.py", "proxy/writer.py", "proxy/streams.py",
    "proxy/messages.py", "proxy/traffic.py", "proxy/balancer.py", "proxy/logs.py",
    "proxy/deadlines.py", "proxy/backends/cvm.py", "proxy/backends/upstream.py",
    "proxy/backends/pool.py",
)

_BUILD = """
import sys
from Cython.Build import cythonize
from setuptools import Extension, setup
modules = sys.argv[1:]
exts = [Extension(m[:-3].replace("/", "."), [m], extra_compile_args=["-O2"]) for m in modules]
setup(ext_modules=cythonize(exts, language_level=3, quiet=True),
      script_args=["build_ext", "--inplace", "-q"])
"""


def export(into: Path) -> None:
    """HEAD's tree (``git archive``) in ``into``, with this checkout's built native modules."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "HEAD"],
                             check=True, capture_output=True).stdout
    into.mkdir(parents=True)
    tar = into / "head.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as file:
        file.extractall(into, filter="data")
    tar.unlink()
    for built in (ROOT / "proxy" / "_speedups").iterdir():
        if built.suffix in (".so", ".sha256"):
            shutil.copy2(built, into / "proxy" / "_speedups" / built.name)


def compile_in_place(tree: Path, modules: list[str]) -> None:
    done = subprocess.run([sys.executable, "-c", _BUILD, *modules], cwd=tree,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the Cython build failed:\n{done.stderr[-3000:]}")
    missing = [m for m in modules if not list((tree / m).parent.glob(Path(m).stem + ".*.so"))]
    if missing:
        raise SystemExit(f"not compiled: {', '.join(missing)}")


def _inproc(tree: Path, requests: int, valgrind: bool) -> str:
    command = [sys.executable, "benchmarks/inproc.py", "--requests", str(requests)]
    if valgrind:
        command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *command]
    env = {k: v for k, v in os.environ.items() if k not in ("PROXY_NO_NATIVE", "PYTHONPATH")}
    done = subprocess.run(command, cwd=tree, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"inproc.py failed in {tree}:\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def per_request(tree: Path, requests: int, measure: str) -> float:
    """Instructions (callgrind) or CPU µs (cpu) per request of the CVM path in ``tree``."""
    if measure == "cpu":
        found = re.search(r"([0-9.]+) us of CPU per request", _inproc(tree, requests, False))
        assert found is not None
        return float(found.group(1))
    counts = []
    for size in (requests, 3 * requests):
        found = re.search(r"Collected : (\d+)", _inproc(tree, size, True))
        if found is None:
            raise SystemExit("valgrind printed no instruction count")
        counts.append(int(found.group(1)))
    return (counts[1] - counts[0]) / (2 * requests)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", choices=("callgrind", "cpu"), default="callgrind",
                        help="instructions under valgrind (default), or process CPU")
    parser.add_argument("--requests", type=int, default=500,
                        help="requests of the smaller callgrind run (default 500), or of "
                             "the cpu run")
    parser.add_argument("--modules", nargs="+", default=list(MODULES),
                        help="the modules to compile (default: the CVM path's)")
    args = parser.parse_args(argv)
    if args.measure == "callgrind" and shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (or use --measure cpu)")
    with tempfile.TemporaryDirectory() as scratch:
        pure, compiled = Path(scratch) / "pure", Path(scratch) / "compiled"
        export(pure)
        export(compiled)
        compile_in_place(compiled, args.modules)
        before = per_request(pure, args.requests, args.measure)
        after = per_request(compiled, args.requests, args.measure)
    unit = "instructions" if args.measure == "callgrind" else "us of CPU"
    print(f"CVM path, {unit} per request: pure {before:,.1f}, {len(args.modules)} modules "
          f"compiled as they are {after:,.1f} ({(after - before) / before:+.1%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
