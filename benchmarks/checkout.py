"""Which proxy code a run measures: this checkout, or another one (``--proxy-root DIR``).

This checkout runs through the ``clbscf-proxy`` entry point installed next to the
interpreter. Another checkout (an older commit, for a before/after table in one harness) runs
as ``python -m proxy.cli`` with this interpreter, its directory as cwd and PYTHONPATH; when it
has no native modules built (``proxy/_speedups/*.so``, one per ``native/*.pyx`` at least, the
names setup.py gives them), or one is stale (newer checkouts write a manifest of its sources'
SHA-256 beside it, which the proxy checks), they are built in place first. Knows nothing of
configs or load.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT_S = 900
#: the manifest setup.py writes beside ``<stem>.so`` (in checkouts that write one): a
#: ``<sha256 or "absent">  <source path>`` line per source, ``#`` comments
MANIFEST_SUFFIX = ".sha256"


class CheckoutError(Exception):
    """The other checkout cannot be run: not a checkout, or its proxy does not import."""


@dataclass(frozen=True)
class ProxyCode:
    root: Path
    argv: list[str]  # the command, before the proxy's own arguments
    env: dict[str, str] = field(default_factory=dict)  # added to the environment

    @property
    def hello_code(self) -> Path:
        """The built-in Hello CLB function of this checkout."""
        return self.root / "proxy" / "builtin" / "hello"

    def describe(self) -> dict[str, object]:
        """For the run's JSON: where, which commit, which native modules."""
        commit = subprocess.run(["git", "-C", str(self.root), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True)
        return {"root": str(self.root), "commit": commit.stdout.strip() or "unknown",
                "native": sorted(native_built(self.root)),
                "native_stale": sorted(native_stale(self.root)), "command": " ".join(self.argv)}


def native_built(root: Path) -> set[str]:
    return {so.name.split(".")[0] for so in (root / "proxy" / "_speedups").glob("*.so")}


def native_expected(root: Path) -> set[str]:
    return {pyx.stem for pyx in (root / "native").glob("*.pyx")}


def native_stale(root: Path) -> set[str]:
    """Built modules whose manifest no longer matches their sources (the proxy would not use
    them); a checkout without manifests has none."""
    stale = set()
    for manifest in (root / "proxy" / "_speedups").glob("*" + MANIFEST_SUFFIX):
        for line in manifest.read_text().splitlines():
            digest, _, rel = line.partition("  ")
            if line.startswith("#") or not rel:
                continue
            source = root / rel
            found = hashlib.sha256(source.read_bytes()).hexdigest() if source.exists() else "absent"
            if found != digest:
                stale.add(manifest.name.split(".")[0])
    return stale


def this_checkout() -> ProxyCode:
    script = Path(sys.executable).with_name("clbscf-proxy")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "proxy.cli"]
    return ProxyCode(ROOT, argv)


def other_checkout(root: Path, log: Callable[[str], None] = print) -> ProxyCode:
    """``root``'s proxy with this interpreter; native modules built in place when missing."""
    root = root.resolve()
    if not (root / "proxy" / "cli.py").is_file():
        raise CheckoutError(f"{root}: no proxy/cli.py, not a checkout of this project")
    code = ProxyCode(root, [sys.executable, "-m", "proxy.cli"], {"PYTHONPATH": str(root)})
    built = native_built(root)
    if not built or not native_expected(root) <= built or native_stale(root):
        log(f"building native modules in {root} (setup.py build_ext --inplace) ...")
        done = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                              cwd=root, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        last = (done.stderr.strip().splitlines() or [""])[-1]
        log(f"  exit {done.returncode}, native: {sorted(native_built(root)) or 'none'} {last}")
    where = subprocess.run([sys.executable, "-c", "import proxy; print(proxy.__file__)"],
                           cwd=root, env={**os.environ, **code.env}, capture_output=True,
                           text=True)
    if not where.stdout.strip().startswith(str(root)):
        raise CheckoutError(f"{root}: `import proxy` loads {where.stdout.strip() or 'nothing'} "
                            f"{where.stderr.strip()[-300:]}")
    return code
