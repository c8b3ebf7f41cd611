"""The one place that decides which hot-path pieces run native (Cython, ``proxy._speedups``).

Owns ``PROXY_NO_NATIVE`` and ``PROXY_REQUIRE_NATIVE`` (read once, at import), the table of
swaps (``SWAPS``), the check that a built module is not older than its sources (``stale()``),
and the record of what is active (``ACTIVE``, ``describe()``, for ``clbscf-proxy --version``).

Strategy (aiohttp's habit, "swap the smallest thing"): a pure module defines its Python twins
first and, as its last statement, calls ``install(name, globals())``; that imports
``proxy._speedups.<name>`` unless disabled and rebinds the names ``SWAPS`` lists, all or none.
Because the hook runs while the pure module is being imported, every importer sees the chosen
implementation: ``from .event import encode_event`` binds the native function, and
``RuleTable.match`` is looked up on the class at each call. A native module that was not built
(no compiler, a pure install) or does not load leaves the pure twins in charge, and says why.

Stale modules: setup.py writes beside each extension it builds a manifest,
``<extension stem>.sha256`` (``rules.cpython-311-x86_64-linux-gnu.sha256``), with the SHA-256
of each of its sources as they were when it was built: the file Cython compiled (native/*.pyx,
or a module compiled as it is, setup.py ``COMPILED_AS_IS``) and the ``.pxd`` of the same stem
("absent" if there was none); setup.py's ``native_sources()`` is the one table of them, and
the manifest carries it here. Before importing a module, ``load()`` hashes those files (paths
relative to the directory holding ``proxy/``; two or three small files, once per module per
process) and compares. A changed, added or removed source, or no manifest (a build that failed
or predates manifests, a hand-run ``cythonize``), makes the module stale: it is not imported,
a ``StaleNativeWarning`` names it and the pure twin runs. Decision: when the compiled source
itself is not there, nothing can be stale against it and the module is used: an installed
wheel ships no native/*.pyx (its manifest still lists them); the ``.py`` compiled as it is is
in the wheel, so an edit to the installed proxy/scf/event.py is still caught.

``PROXY_REQUIRE_NATIVE`` (set, non-empty, not "0") turns a module that is not active (not
built, stale, failed to load) into ``NativeRequiredError`` when its pure module is imported,
i.e. at start; CI's native pass and the Docker build set it. Decision: ``PROXY_NO_NATIVE``
wins over it (the pure twins, no error): it is the switch an operator reaches for to rule the
native code out, and an image or CI default of ``PROXY_REQUIRE_NATIVE`` must not block that.

Must not import any ``proxy`` module at import time: it is a leaf that the hooked modules
import while they are still initialising. ``describe()`` imports the hooked modules, so it is
accurate whichever of them the caller had already imported. ``python -m proxy._native`` says
which built modules are stale, exit status 1 if any (``make`` rebuilds them then).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings
from types import ModuleType
from typing import Any

#: the raw value, for messages
NO_NATIVE_VALUE = os.environ.get("PROXY_NO_NATIVE", "")
#: PROXY_NO_NATIVE set, non-empty and not "0": the pure twins everywhere
DISABLED = NO_NATIVE_VALUE not in ("", "0")
#: the raw value, for messages
REQUIRE_VALUE = os.environ.get("PROXY_REQUIRE_NATIVE", "")
#: PROXY_REQUIRE_NATIVE set, non-empty and not "0", and PROXY_NO_NATIVE not: a module that is
#: not active is an error
REQUIRED = REQUIRE_VALUE not in ("", "0") and not DISABLED

#: the manifest of ``<stem>.so`` is ``<stem>.sha256`` (written by setup.py, same name there)
MANIFEST_SUFFIX = ".sha256"
#: the manifest's word for a source that did not exist at build time
ABSENT = "absent"
#: the manifest's paths are relative to the directory that holds the ``proxy`` package (the
#: source tree, or site-packages for an installed wheel)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: what rebuilds a module, for messages
REBUILD = "rebuild it with `make` (or `pip install -e .` in the source tree)"


class StaleNativeWarning(RuntimeWarning):
    """A built native module is older than its sources; its pure twin runs instead."""


class NativeRequiredError(RuntimeError):
    """PROXY_REQUIRE_NATIVE is set and a native module is not active (not built, stale, ...)."""

#: native module (``proxy._speedups.<key>``) -> (the pure module it serves, {name there: name
#: in the native module}); a dotted name is an attribute of a class of the pure module
SWAPS: dict[str, tuple[str, dict[str, str]]] = {
    "rules": ("proxy.rules", {"RuleTable.match": "match", "RuleTable.build_accel": "build"}),
    "event": ("proxy.scf.event", {"encode_event": "encode_event_py",
                                  "decode_response": "decode_response_py"}),
}

#: native module -> whether its twins are installed
ACTIVE: dict[str, bool] = dict.fromkeys(SWAPS, False)
#: native module -> why it is not active ("not built", the import error, ...)
REASONS: dict[str, str] = {}
_LOADED: dict[str, ModuleType] = {}


def stale(origin: str) -> str | None:
    """Why the built extension file ``origin`` is older than its sources ("native/rules.pyx
    changed since it was built", ...), or None when it is not (see the module docstring)."""
    manifest = os.path.splitext(origin)[0] + MANIFEST_SUFFIX
    try:
        with open(manifest, encoding="utf-8") as file:
            lines = [line.split(None, 1) for line in file if not line.startswith("#")]
    except FileNotFoundError:
        return f"no {os.path.basename(manifest)} beside it (an unfinished or older build)"
    except (OSError, UnicodeDecodeError) as exc:
        return f"its manifest is unreadable: {exc}"
    if not lines or any(len(line) != 2 for line in lines):
        return f"its manifest {os.path.basename(manifest)} is malformed"
    entries = [(digest, rel.strip()) for digest, rel in lines]
    if not os.path.exists(os.path.join(ROOT, entries[0][1])):
        return None  # the compiled source is not here (an installed wheel): nothing to compare
    import hashlib  # not at import time; cheap anyway (proxy.config imports it at start)

    for digest, rel in entries:
        try:
            with open(os.path.join(ROOT, rel), "rb") as file:
                content: bytes | None = file.read()
        except FileNotFoundError:
            content = None
        except OSError as exc:
            return f"{rel} is unreadable: {exc}"
        if content is None:
            if digest != ABSENT:
                return f"{rel} was removed since it was built"
        elif digest == ABSENT:
            return f"{rel} was added since it was built"
        elif hashlib.sha256(content).hexdigest() != digest:
            return f"{rel} changed since it was built"
    return None


def load(name: str) -> ModuleType | None:
    """``proxy._speedups.<name>`` when it is built, fresh and allowed, else None (see
    ``REASONS``); a stale one is not imported, and warns."""
    if DISABLED:
        REASONS[name] = f"PROXY_NO_NATIVE={NO_NATIVE_VALUE}"
        return None
    module = _LOADED.get(name)
    if module is not None:
        return module
    qualified = f"proxy._speedups.{name}"
    try:
        spec = importlib.util.find_spec(qualified)
    except ImportError as exc:  # proxy._speedups itself is missing or broken
        REASONS[name] = f"failed to load: {exc}"
        return None
    if spec is None:
        REASONS[name] = "not built"
        return None
    why = stale(spec.origin) if spec.origin else None
    if why is not None:
        REASONS[name] = f"stale: {why}"
        if not REQUIRED:  # else install() raises, with the same words
            warnings.warn(f"clbscf-proxy: native module {qualified} is stale ({why}); using its "
                          f"pure-Python twin; {REBUILD}", StaleNativeWarning, stacklevel=3)
        return None
    try:
        module = importlib.import_module(qualified)
    except ImportError as exc:  # built for another interpreter, a missing symbol, ...
        REASONS[name] = f"failed to load: {exc}"
        return None
    _LOADED[name] = module
    return module


def _required(name: str) -> NativeRequiredError:
    return NativeRequiredError(
        f"PROXY_REQUIRE_NATIVE={REQUIRE_VALUE}: native module proxy._speedups.{name} is "
        f"{REASONS.get(name, 'not active')}; {REBUILD} (it needs Cython and a C compiler), "
        "or unset PROXY_REQUIRE_NATIVE to run its pure-Python twin")


def install(name: str, namespace: dict[str, Any]) -> bool:
    """Rebind the ``SWAPS[name]`` names in a pure module's ``namespace`` (its ``globals()``)
    to the native twins, all or none; whether it did. Raises ``NativeRequiredError`` instead
    of returning False under PROXY_REQUIRE_NATIVE."""
    module = load(name)
    if module is None:
        if REQUIRED:
            raise _required(name)
        return False
    values: dict[str, Any] = {}
    for target, source in SWAPS[name][1].items():
        value = getattr(module, source, None)
        if value is None:  # a build from other sources: keep the pure twins whole
            REASONS[name] = f"failed to load: {module.__name__} has no {source!r}"
            if REQUIRED:
                raise _required(name)
            return False
        values[target] = value
    for target, value in values.items():
        owner, _, attr = target.rpartition(".")
        if owner:
            setattr(namespace[owner], attr, value)
        else:
            namespace[attr] = value
    ACTIVE[name] = True
    REASONS.pop(name, None)
    return True


def native_module(name: str) -> ModuleType | None:
    """The loaded native module ``name`` (for parity tests and benchmarks), or None."""
    return _LOADED.get(name) if ACTIVE.get(name) else None


def describe() -> str:
    """Which pieces run native: "native: rules, event", "native: rules (pure: event not
    built)", "native: none (not built)" or "native: none (PROXY_NO_NATIVE=1)"."""
    for pure_module, _ in SWAPS.values():
        importlib.import_module(pure_module)  # runs its install hook if nobody had yet
    if DISABLED:
        return f"native: none (PROXY_NO_NATIVE={NO_NATIVE_VALUE})"
    active = [name for name, on in ACTIVE.items() if on]
    pure = [name for name, on in ACTIVE.items() if not on]
    if not active:
        reasons = {REASONS.get(name, "not installed") for name in pure}
        if len(reasons) == 1:
            return f"native: none ({reasons.pop()})"
        return "native: none (" + "; ".join(
            f"{name} {REASONS.get(name, 'not installed')}" for name in pure) + ")"
    text = "native: " + ", ".join(active)
    if pure:
        text += " (pure: " + "; ".join(
            f"{name} {REASONS.get(name, 'not installed')}" for name in pure) + ")"
    return text


def _main(argv: list[str]) -> int:
    """``python -m proxy._native [-q]``: each built module's state; 1 if one is stale."""
    found_stale = False
    for name in SWAPS:
        spec = importlib.util.find_spec(f"proxy._speedups.{name}")
        why = stale(spec.origin) if spec is not None and spec.origin else None
        state = "not built" if spec is None else "fresh" if why is None else f"stale: {why}"
        found_stale = found_stale or why is not None
        if "-q" not in argv or why is not None:
            print(f"proxy._speedups.{name}: {state}")
    return 1 if found_stale else 0


__all__ = ["ACTIVE", "DISABLED", "REASONS", "REQUIRED", "SWAPS", "NativeRequiredError",
           "StaleNativeWarning", "describe", "install", "load", "native_module", "stale"]

if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
