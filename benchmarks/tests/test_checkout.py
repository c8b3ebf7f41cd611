"""--proxy-root: another checkout's proxy, run with this interpreter."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from benchmarks import checkout


def test_not_a_checkout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(checkout.CheckoutError, match="no proxy/cli.py"):
        checkout.other_checkout(tmp_path, log=lambda text: None)


def test_a_checkout_with_its_native_modules_runs_as_a_module_without_a_build() -> None:
    if not checkout.native_expected(checkout.ROOT) <= checkout.native_built(checkout.ROOT):
        pytest.skip("this checkout's native modules are not built")
    said: list[str] = []
    code = checkout.other_checkout(checkout.ROOT, log=said.append)
    assert said == []  # nothing to build
    assert code.argv == [sys.executable, "-m", "proxy.cli"]
    assert code.env == {"PYTHONPATH": str(checkout.ROOT)}
    assert code.hello_code == checkout.ROOT / "proxy" / "builtin" / "hello"
    info = code.describe()
    assert info["root"] == str(checkout.ROOT) and info["commit"] != "unknown"
    assert set(checkout.native_expected(checkout.ROOT)) <= set(info["native"])  # type: ignore
