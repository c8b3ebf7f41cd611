"""The one place that decides which hot-path pieces run native (Cython, ``proxy._speedups``).

Owns ``PROXY_NO_NATIVE`` (read once, at import), the table of swaps (``SWAPS``), and the
record of what is active (``ACTIVE``, ``describe()``, for ``clbscf-proxy --version``).

Strategy (aiohttp's habit, "swap the smallest thing"): a pure module defines its Python twins
first and, as its last statement, calls ``install(name, globals())``; that imports
``proxy._speedups.<name>`` unless disabled and rebinds the names ``SWAPS`` lists, all or none.
Because the hook runs while the pure module is being imported, every importer sees the chosen
implementation: ``from .event import encode_event`` binds the native function, and
``RuleTable.match`` is looked up on the class at each call. A native module that was not built
(no compiler, a pure install) or does not load leaves the pure twins in charge, and says why.

Must not import any ``proxy`` module at import time: it is a leaf that the hooked modules
import while they are still initialising. ``describe()`` imports the hooked modules, so it is
accurate whichever of them the caller had already imported.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

#: the raw value, for messages
NO_NATIVE_VALUE = os.environ.get("PROXY_NO_NATIVE", "")
#: PROXY_NO_NATIVE set, non-empty and not "0": the pure twins everywhere
DISABLED = NO_NATIVE_VALUE not in ("", "0")

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


def load(name: str) -> ModuleType | None:
    """``proxy._speedups.<name>`` when it is built and allowed, else None (see ``REASONS``)."""
    if DISABLED:
        REASONS[name] = f"PROXY_NO_NATIVE={NO_NATIVE_VALUE}"
        return None
    module = _LOADED.get(name)
    if module is not None:
        return module
    qualified = f"proxy._speedups.{name}"
    try:
        module = importlib.import_module(qualified)
    except ModuleNotFoundError as exc:
        REASONS[name] = "not built" if exc.name == qualified else f"failed to load: {exc}"
        return None
    except ImportError as exc:  # built for another interpreter, a missing symbol, ...
        REASONS[name] = f"failed to load: {exc}"
        return None
    _LOADED[name] = module
    return module


def install(name: str, namespace: dict[str, Any]) -> bool:
    """Rebind the ``SWAPS[name]`` names in a pure module's ``namespace`` (its ``globals()``)
    to the native twins, all or none; whether it did."""
    module = load(name)
    if module is None:
        return False
    values: dict[str, Any] = {}
    for target, source in SWAPS[name][1].items():
        value = getattr(module, source, None)
        if value is None:  # a stale build from older sources: keep the pure twins whole
            REASONS[name] = f"failed to load: {module.__name__} has no {source!r}"
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


__all__ = ["ACTIVE", "DISABLED", "REASONS", "SWAPS", "describe", "install", "load",
           "native_module"]
