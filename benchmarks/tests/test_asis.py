"""The as-is Cython measurement compiles what it is asked to in its own copy, runs the real CVM
path in both copies and leaves this checkout alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import asis

ROOT = Path(__file__).resolve().parents[2]


def _built_beside_sources() -> list[Path]:
    return [p for p in (ROOT / "proxy").rglob("*.so") if p.parent.name != "_speedups"]


def test_compiles_a_module_and_measures_both_copies(capsys: pytest.CaptureFixture[str]) -> None:
    before = _built_beside_sources()
    assert asis.main(["--measure", "cpu", "--requests", "50",
                      "--modules", "proxy/deadlines.py"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("CVM path, us of CPU per request: pure ")
    assert "1 modules compiled as they are" in out
    assert _built_beside_sources() == before  # the checkout itself is untouched


def test_a_module_that_does_not_compile_stops_it(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    asis.export(tree)
    (tree / "proxy" / "broken.py").write_text("def f(:\n")
    with pytest.raises(SystemExit, match="Cython build failed"):
        asis.compile_in_place(tree, ["proxy/broken.py"])
