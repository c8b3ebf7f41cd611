"""--proxy-root: another checkout's proxy, run with this interpreter."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from benchmarks import checkout


def test_not_a_checkout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(checkout.CheckoutError, match="no proxy/cli.py"):
        checkout.other_checkout(tmp_path, log=lambda text: None)


def test_a_checkout_with_its_native_modules_runs_as_a_module_without_a_build() -> None:
    root = checkout.ROOT
    if not checkout.native_expected(root) <= checkout.native_built(root) \
            or checkout.native_stale(root):
        pytest.skip("this checkout's native modules are not built or stale (never built here)")
    said: list[str] = []
    code = checkout.other_checkout(checkout.ROOT, log=said.append)
    assert said == []  # nothing to build
    assert code.argv == [sys.executable, "-m", "proxy.cli"]
    assert code.env == {"PYTHONPATH": str(checkout.ROOT)}
    assert code.hello_code == checkout.ROOT / "proxy" / "builtin" / "hello"
    info = code.describe()
    assert info["root"] == str(checkout.ROOT) and info["commit"] != "unknown"
    assert set(checkout.native_expected(checkout.ROOT)) <= set(info["native"])  # type: ignore


def test_a_manifest_that_no_longer_matches_its_sources_is_stale(tmp_path: Path) -> None:
    speedups = tmp_path / "proxy" / "_speedups"
    speedups.mkdir(parents=True)
    (tmp_path / "native").mkdir()
    source = tmp_path / "native" / "rules.pyx"
    source.write_text("# v1\n")
    (speedups / "rules.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    manifest = speedups / f"rules.cpython-311-x86_64-linux-gnu{checkout.MANIFEST_SUFFIX}"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    manifest.write_text(f"# built from\n{digest}  native/rules.pyx\nabsent  native/rules.pxd\n")
    assert checkout.native_built(tmp_path) == checkout.native_expected(tmp_path) == {"rules"}
    assert checkout.native_stale(tmp_path) == set()
    source.write_text("# v2\n")
    assert checkout.native_stale(tmp_path) == {"rules"}
