"""Versions and aliases of a local function: which version runs one call.

Owns SCF's qualifier resolution and alias routing (``RoutingConfig``, clb-features.md §3.2):
a qualifier is ``$LATEST`` (the function's own ``code``), a published version (``"1"``,
``"2"``: a ``[[function.version]]`` with a code directory of its own), or an alias. An alias
names a main version and, at most one way, routes some calls elsewhere:

- ``additional_version_weights = { "2" = 0.1 }``: each call draws once; 10% run version 2,
  the rest the main version;
- ``additional_version_matches``: rules on a request key ``invoke.headers.NAME``, method
  ``exact`` (the value equals the expression) or ``range`` (the value is an integer inside
  ``[a,b]`` / ``(a,b)``, brackets inclusive, parentheses exclusive); the first rule that
  matches picks its version; no key, or no rule matching, runs the main version.

``$DEFAULT`` exists for every function and is ``$LATEST`` unless declared (config.py).

Strategy: compiled once per target at router build (``Routing``), so a call is one draw or a
few header reads; a qualifier without routing resolves to one version and the caller binds
that version's pool directly, at no cost per call.

Decisions (ours, where SCF is silent): the key's NAME is a request header for calls through
a listener (case-insensitive, the first value), and a key of the ``RoutingKey`` JSON object
for the local SCF API (exact spelling, as SCF's example ``{"User":"Bob"}``); several
additional versions may share the weights (their sum at most 1) and several match rules may
be given, where SCF's console takes one: a superset, so an SCF alias runs unchanged.

Must not know: pools, processes, HTTP beyond a header lookup.
"""

from __future__ import annotations

import bisect
import random
import re
from collections.abc import Callable

from ..config import LATEST, MATCH_KEY_PREFIX, Alias, Function

#: (name) -> the request's value of that key, or None
Lookup = Callable[[str], "str | None"]

_RANGE = re.compile(r"([\[(])\s*(-?[0-9]+)\s*,\s*(-?[0-9]+)\s*([\])])")


class _Match:
    __slots__ = ("version", "name", "exact", "low", "high")

    def __init__(self, version: str, key: str, method: str, expression: str) -> None:
        self.version = version
        self.name = key[len(MATCH_KEY_PREFIX):]
        self.exact: str | None = expression if method == "exact" else None
        self.low = self.high = 0
        if self.exact is None:
            bounds = _RANGE.fullmatch(expression)
            assert bounds is not None  # config.py checked it
            self.low = int(bounds[2]) + (bounds[1] == "(")
            self.high = int(bounds[3]) - (bounds[4] == ")")

    def matches(self, value: str) -> bool:
        if self.exact is not None:
            return value == self.exact
        try:
            number = int(value.strip())
        except ValueError:
            return False
        return self.low <= number <= self.high


class Routing:
    """Which version runs a call to one qualifier."""

    __slots__ = ("main", "versions", "_bounds", "_others", "_matches")

    def __init__(self, main: str, alias: Alias | None = None) -> None:
        self.main = main
        weights = alias.additional_version_weights if alias else ()
        matches = alias.additional_version_matches if alias else ()
        #: cumulative shares of the additional versions, for one draw in [0, 1)
        self._bounds: list[float] = []
        self._others: list[str] = []
        total = 0.0
        for version, weight in weights:
            if weight > 0:
                total += weight
                self._bounds.append(total)
                self._others.append(version)
        self._matches = tuple(_Match(m.version, m.key, m.method, m.expression)
                              for m in matches)
        #: every version a call may run, the main one first
        self.versions = tuple(dict.fromkeys([main, *self._others,
                                             *(m.version for m in self._matches)]))

    @property
    def fixed(self) -> str | None:
        """The one version every call runs, or None when calls are routed."""
        return self.main if len(self.versions) == 1 else None

    def pick(self, lookup: Lookup, draw: Callable[[], float] = random.random) -> str:
        """The version that runs a call whose keys ``lookup`` reads."""
        if self._bounds:
            i = bisect.bisect_right(self._bounds, draw())
            return self._others[i] if i < len(self._others) else self.main
        for match in self._matches:
            value = lookup(match.name)
            if value is not None and match.matches(value):
                return match.version
        return self.main


def resolve(fn: Function, qualifier: str) -> Routing | None:
    """The routing of ``fn:qualifier``; None when the function has no such qualifier."""
    if qualifier == LATEST or any(v.version == qualifier for v in fn.versions):
        return Routing(qualifier)
    alias = fn.alias(qualifier)
    if alias is None:
        return None
    return Routing(alias.version, alias)
