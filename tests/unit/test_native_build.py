"""Native build hygiene: a compiled module older than its sources is never used.

The build (setup.py) writes beside each extension a manifest of its sources' SHA-256;
``proxy._native`` compares it with the sources before importing the module. The first tests
check that comparison (``stale()``) on hand-written manifests, in this process. The others run
a real build: a copy of the source tree in a temporary directory holding the extensions and
manifests of this checkout's build (``make``), or, when those are missing or stale, built
there (``setup.py build_ext --inplace``, once per session); each test copies that tree, edits
it and imports the proxy from it in a fresh interpreter, where ``PROXY_NO_NATIVE`` and
``PROXY_REQUIRE_NATIVE`` are read.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy import _native

ROOT = Path(__file__).resolve().parents[2]
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]  # ".cpython-311-x86_64-linux-gnu.so"
#: module -> the source Cython compiles (setup.py native_sources())
PRIMARY = {"rules": "native/rules.pyx", "event": "proxy/scf/event.py"}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- stale(): the comparison, on hand-written manifests ---------------------------------------


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake install root: native/m.pyx and an extension file with a fresh manifest."""
    monkeypatch.setattr(_native, "ROOT", str(tmp_path))
    (tmp_path / "native").mkdir()
    (tmp_path / "native" / "m.pyx").write_bytes(b"def f(): pass\n")
    (tmp_path / "m.so").write_bytes(b"\x7fELF")
    _manifest(tmp_path, [(_sha(b"def f(): pass\n"), "native/m.pyx"),
                         ("absent", "native/m.pxd")])
    return tmp_path


def _manifest(root: Path, entries: list[tuple[str, str]]) -> None:
    lines = ["# proxy._speedups.m was built from"] + [f"{d}  {p}" for d, p in entries]
    (root / "m.sha256").write_text("\n".join(lines) + "\n")


def test_sources_as_built_are_fresh(tree: Path) -> None:
    assert _native.stale(str(tree / "m.so")) is None


def test_changed_source_is_stale(tree: Path) -> None:
    (tree / "native" / "m.pyx").write_bytes(b"def f(): return 1\n")
    assert _native.stale(str(tree / "m.so")) == "native/m.pyx changed since it was built"


def test_pxd_added_after_the_build_is_stale(tree: Path) -> None:
    (tree / "native" / "m.pxd").write_bytes(b"")
    assert _native.stale(str(tree / "m.so")) == "native/m.pxd was added since it was built"


def test_pxd_removed_after_the_build_is_stale(tree: Path) -> None:
    (tree / "native" / "m.pxd").write_bytes(b"cdef int x\n")
    _manifest(tree, [(_sha(b"def f(): pass\n"), "native/m.pyx"),
                     (_sha(b"cdef int x\n"), "native/m.pxd")])
    assert _native.stale(str(tree / "m.so")) is None
    (tree / "native" / "m.pxd").unlink()
    assert _native.stale(str(tree / "m.so")) == "native/m.pxd was removed since it was built"


def test_no_compiled_source_here_is_an_install_and_not_stale(tree: Path) -> None:
    # a wheel ships the extension and its manifest but no native/*.pyx
    shutil.rmtree(tree / "native")
    assert _native.stale(str(tree / "m.so")) is None


def test_extension_without_manifest_is_stale(tree: Path) -> None:
    (tree / "m.sha256").unlink()
    assert _native.stale(str(tree / "m.so")) == (
        "no m.sha256 beside it (an unfinished or older build)")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "deadbeef\n"])
def test_malformed_manifest_is_stale(tree: Path, text: str) -> None:
    (tree / "m.sha256").write_text(text)
    assert _native.stale(str(tree / "m.so")) == "its manifest m.sha256 is malformed"


def test_manifest_is_read_by_the_extension_stem(tree: Path) -> None:
    # one manifest per extension file: builds for two interpreters side by side keep theirs
    (tree / "m.sha256").rename(tree / f"m{SUFFIX}".replace(".so", ".sha256"))
    assert _native.stale(str(tree / f"m{SUFFIX}")) is None
    assert _native.stale(str(tree / "m.so")) is not None


# --- a real build -----------------------------------------------------------------------------


def _copy_sources(dest: Path) -> None:
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    skip = shutil.ignore_patterns("__pycache__", "*.c", "*.so", "*.sha256", "*.pyc")
    shutil.copytree(ROOT / "native", dest / "native", ignore=skip)
    shutil.copytree(ROOT / "proxy", dest / "proxy", ignore=skip)


def _extension(root: Path, name: str) -> Path:
    return root / "proxy" / "_speedups" / f"{name}{SUFFIX}"


def _manifest_of(extension: Path) -> Path:
    return extension.with_suffix(".sha256")  # rules.cpython-311-x86_64-linux-gnu.sha256


def _all_fresh(root: Path) -> bool:
    """Every swapped module of ``root`` built, with a manifest that matches ``root``'s
    sources (checked in a fresh interpreter, whose proxy._native reads ``root``)."""
    done = _run(root, "from proxy import _native; import sys; sys.exit(_native._main([]))")
    return done.returncode == 0 and "not built" not in done.stdout


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PROXY_NO_NATIVE", "PROXY_REQUIRE_NATIVE", "PYTHONPATH")}
    env.update(extra)
    return env


def _run(root: Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=root, env=_env(**env),
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def built_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A source tree with fresh extensions: this checkout's, else built here once."""
    root = tmp_path_factory.mktemp("built")
    _copy_sources(root)
    for name in _native.SWAPS:
        extension = _extension(ROOT, name)
        if extension.exists() and _manifest_of(extension).exists():
            shutil.copy2(extension, _extension(root, name))
            shutil.copy2(_manifest_of(extension), _manifest_of(_extension(root, name)))
    if not _all_fresh(root):
        if importlib.util.find_spec("Cython") is None or shutil.which("cc") is None:
            pytest.skip("no fresh native build here and no Cython or C compiler to make one")
        done = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                              cwd=root, env=_env(), capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        assert _all_fresh(root), "a fresh build is not fresh"
    return root


@pytest.fixture
def copy(built_tree: Path, tmp_path: Path) -> Iterator[Path]:
    """A copy of the built tree, for one test to edit."""
    root = tmp_path / "tree"
    shutil.copytree(built_tree, root)
    yield root


_STATE = """
import json, sys, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    from proxy import _native, rules
    from proxy.scf import event
import proxy
print(json.dumps({
    "file": proxy.__file__,
    "describe": _native.describe(),
    "rules": rules.RuleTable.match is not rules.RuleTablePy.match,
    "event": event.encode_event is not event.encode_event_py,
    "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
}))
"""


def _state(root: Path, **env: str) -> dict[str, Any]:
    """Which twins the proxy imported from ``root`` runs (True: native), and what it said."""
    done = _run(root, _STATE, **env)
    assert done.returncode == 0, done.stderr[-3000:]
    state: dict[str, Any] = orjson.loads(done.stdout)
    assert str(state["file"]).startswith(str(root))  # the copy's proxy, not this checkout's
    return state


def test_build_records_the_sha256_of_each_module_source(built_tree: Path) -> None:
    for name, primary in PRIMARY.items():
        lines = _manifest_of(_extension(built_tree, name)).read_text().splitlines()
        assert lines[0].startswith(f"# proxy._speedups.{name} ")
        pxd = primary.rpartition(".")[0] + ".pxd"
        assert lines[1:] == [f"{_sha((built_tree / primary).read_bytes())}  {primary}",
                             f"absent  {pxd}"]


def test_fresh_build_is_used_without_warnings(copy: Path) -> None:
    state = _state(copy)
    assert state["describe"] == "native: rules, event"
    assert state["rules"] is True and state["event"] is True
    assert state["warnings"] == []


@pytest.mark.parametrize("name,path,edit", [
    ("rules", "native/rules.pyx", "changed"),
    ("rules", "native/rules.pxd", "added"),
    ("event", "proxy/scf/event.py", "changed"),
])
def test_module_older_than_its_source_is_not_used_and_warns(copy: Path, name: str, path: str,
                                                            edit: str) -> None:
    with open(copy / path, "a") as file:
        file.write("\n# edited after the build\n")
    state = _state(copy)
    other = "event" if name == "rules" else "rules"
    assert state[name] is False and state[other] is True  # the pure twin, only there
    why = f"{path} was {edit} since it was built" if edit == "added" else (
        f"{path} changed since it was built")
    assert state["warnings"] == [
        f"StaleNativeWarning: clbscf-proxy: native module proxy._speedups.{name} is stale "
        f"({why}); using its pure-Python twin; rebuild it with `make` (or `pip install -e .` "
        "in the source tree)"]
    assert state["describe"] == f"native: {other} (pure: {name} stale: {why})"
    done = _run(copy, "import sys; from proxy import _native; sys.exit(_native._main(['-q']))")
    assert (done.returncode, done.stdout) == (1, f"proxy._speedups.{name}: stale: {why}\n")


def test_edited_module_runs_the_edit(copy: Path) -> None:
    # the point of it all: a fix to the event codec takes effect before anyone rebuilds
    path = copy / "proxy" / "scf" / "event.py"
    path.write_text(path.read_text() + "\nEDITED = True\n")
    done = _run(copy, "from proxy.scf import event; print(event.decode_response.__module__, "
                      "event.EDITED)")
    assert done.stdout.split() == ["proxy.scf.event", "True"]


def test_extension_without_its_manifest_is_not_used(copy: Path) -> None:
    _manifest_of(_extension(copy, "rules")).unlink()
    state = _state(copy)
    assert state["rules"] is False and state["event"] is True
    assert "no rules" in state["describe"] and len(state["warnings"]) == 1


def test_installed_without_native_sources_is_used(copy: Path) -> None:
    # as from a wheel: no native/ (the .pyx are not shipped); event.py is, and is checked
    shutil.rmtree(copy / "native")
    assert _state(copy, PROXY_REQUIRE_NATIVE="1")["describe"] == "native: rules, event"
    with open(copy / "proxy" / "scf" / "event.py", "a") as file:
        file.write("\n# patched in place\n")
    state = _state(copy)
    assert (state["rules"], state["event"]) == (True, False)


# --- PROXY_REQUIRE_NATIVE ---------------------------------------------------------------------

_START = "import proxy.router"  # what the server imports on the way to serving


def test_require_native_passes_with_a_fresh_build(copy: Path) -> None:
    assert _state(copy, PROXY_REQUIRE_NATIVE="1")["describe"] == "native: rules, event"
    assert _run(copy, _START, PROXY_REQUIRE_NATIVE="1").returncode == 0


def test_require_native_with_a_stale_module_fails_at_start(copy: Path) -> None:
    with open(copy / "native" / "rules.pyx", "a") as file:
        file.write("\n# edited after the build\n")
    done = _run(copy, _START, PROXY_REQUIRE_NATIVE="1")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        "proxy._native.NativeRequiredError: PROXY_REQUIRE_NATIVE=1: native module "
        "proxy._speedups.rules is stale: native/rules.pyx changed since it was built; rebuild "
        "it with `make` (or `pip install -e .` in the source tree) (it needs Cython and a C "
        "compiler), or unset PROXY_REQUIRE_NATIVE to run its pure-Python twin")
    assert "StaleNativeWarning" not in done.stderr  # said once, as the error


def test_require_native_with_a_missing_module_fails_at_start(copy: Path) -> None:
    _extension(copy, "event").unlink()
    done = _run(copy, _START, PROXY_REQUIRE_NATIVE="1")
    assert done.returncode != 0
    assert ("NativeRequiredError: PROXY_REQUIRE_NATIVE=1: native module proxy._speedups.event "
            "is not built; rebuild it with `make`") in done.stderr
    # without it, the same tree runs on the pure event codec
    assert _state(copy)["describe"] == "native: rules (pure: event not built)"


def test_no_native_wins_over_require_native(copy: Path) -> None:
    _extension(copy, "event").unlink()
    state = _state(copy, PROXY_REQUIRE_NATIVE="1", PROXY_NO_NATIVE="1")
    assert state["describe"] == "native: none (PROXY_NO_NATIVE=1)"
    assert state["warnings"] == []


@pytest.mark.parametrize("value", ["", "0"])
def test_require_native_empty_or_0_is_unset(copy: Path, value: str) -> None:
    _extension(copy, "event").unlink()
    assert _run(copy, _START, PROXY_REQUIRE_NATIVE=value).returncode == 0


# --- a failed build ---------------------------------------------------------------------------


def test_failed_build_leaves_the_old_extensions_stale(copy: Path) -> None:
    # both sources broken: Cython refuses them before any C compile, so this is quick
    for path in ("native/rules.pyx", "proxy/scf/event.py"):
        with open(copy / path, "a") as file:
            file.write("\ndef broken(:\n")
    build = [sys.executable, "setup.py", "-q", "build_ext", "--inplace"]
    required = subprocess.run(build, cwd=copy, env=_env(PROXY_REQUIRE_NATIVE="1"),
                              capture_output=True, text=True, timeout=300)
    assert required.returncode != 0  # asked for native: the build fails
    done = subprocess.run(build, cwd=copy, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]  # else a pure build, never a failure
    assert "not built" in done.stderr
    for name in PRIMARY:
        assert _extension(copy, name).exists()  # the old one, left in place ...
        assert not _manifest_of(_extension(copy, name)).exists()  # ... and no longer claimed
    check = _run(copy, "import sys; from proxy import _native; sys.exit(_native._main([]))")
    assert check.returncode == 1
    assert check.stdout.count("stale: no ") == 2


# --- where it is wired ------------------------------------------------------------------------


def test_ci_requires_native_in_the_native_pass_and_lints() -> None:
    steps = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
             if line and not line.startswith("#")]
    assert steps[-3:] == ["PROXY_REQUIRE_NATIVE=1 make test", "PROXY_NO_NATIVE=1 make test",
                          "make lint"]


def test_docker_build_requires_native_for_its_build_and_check_steps() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("ARG PROXY_REQUIRE_NATIVE=1") == 2  # build stage and runtime stage
    assert "ENV PROXY_REQUIRE_NATIVE" not in text  # not for the server the image runs
