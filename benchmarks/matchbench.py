"""Match time per request on the 10,000-rule table: the pure-Python matcher vs the native one.

Strategy: build the listener from the same TOML the throughput run serves (through the real
config loader), compile it with ``proxy.rules.RuleTablePy`` and, when the native swap is active,
``proxy.rules.RuleTable``; check both give the same answer on every probe (and the expected rule
for the throughput run's request), then time each over all probes with ``timeit`` (best of
several repeats, so a busy neighbour does not count). In-process: no server is started.
Knows nothing of wrk or nginx.
"""

from __future__ import annotations

import importlib
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPEATS = 5
TARGET_S = 0.2  # each repeat runs about this long

Matcher = Callable[[str, str], Any]


class MatchBenchError(Exception):
    """The matcher is missing, or its answers are not the expected ones."""


@dataclass(frozen=True)
class MatchResult:
    py_ns: float  # per match
    native_ns: float | None  # None: native not built / not active
    native_status: str  # "active", "not built", "disabled by PROXY_NO_NATIVE"
    build_s: float  # compiling the pure-Python table once
    probes: int


def native_status(rules: Any) -> str:
    from proxy import _native

    if _native.DISABLED:
        return "disabled by PROXY_NO_NATIVE"
    # The native swap rebinds ``RuleTable.match`` (or ``RuleTable`` itself) to the compiled
    # twin only when the extension imported; otherwise RuleTable matches with RuleTablePy's.
    table = getattr(rules, "RuleTable", None)
    if table is None or getattr(table, "match", None) is rules.RuleTablePy.match:
        return "not built"
    return "active"


def per_match_ns(match: Matcher, probes: list[tuple[str, str]]) -> float:
    def one_pass() -> None:
        for host, path in probes:
            match(host, path)

    timer = timeit.Timer(one_pass)
    number, elapsed = timer.autorange()  # passes that take >= 0.2 s together
    number = max(1, int(number * TARGET_S / max(elapsed, 1e-9)))
    best = min(timer.repeat(repeat=REPEATS, number=number))
    return best / (number * len(probes)) * 1e9


def run(toml_path: Path, probes: list[tuple[str, str]], expected: tuple[str, str, int]) -> \
        MatchResult:
    """Time both matchers on ``probes``; ``expected`` is (host, path, rule index) to verify."""
    try:
        config_module = importlib.import_module("proxy.config")
        rules = importlib.import_module("proxy.rules")
    except ImportError as exc:
        raise MatchBenchError(f"proxy.rules is not importable: {exc}") from exc
    listener = config_module.load_config(toml_path).listeners[0]
    started = time.perf_counter()
    py_table = rules.RuleTablePy(listener)
    build_s = time.perf_counter() - started
    status = native_status(rules)
    tables = {"py": py_table}
    if status == "active":
        tables["native"] = rules.RuleTable(listener)
    host, path, index = expected
    for name, table in tables.items():
        got = table.match(host, path)
        if tuple(got) != (index, False):
            raise MatchBenchError(f"{name} matcher: {host}{path} -> {got}, expected rule "
                                  f"{index} ({listener.rules[index].domain} "
                                  f"{listener.rules[index].url})")
    if "native" in tables:
        for probe in probes:
            if tuple(tables["py"].match(*probe)) != tuple(tables["native"].match(*probe)):
                raise MatchBenchError(f"py and native disagree on {probe}")
    timings = {name: per_match_ns(table.match, probes) for name, table in tables.items()}
    return MatchResult(py_ns=timings["py"], native_ns=timings.get("native"),
                       native_status=status, build_s=build_s, probes=len(probes))
