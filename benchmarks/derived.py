"""Rows computed from other rows of the same run, with issue 12's targets.

- ``cvm-cpu``: our proxy's CPU µs per request on the CVM path against the floor relay's
  (``cvm`` ours vs ``cvm-floor`` ours, the same rounds): ours ≤ 1.3× the floor.
- ``cvm-log-vs-cvm``: the ``cvm-log`` ratio (ours ÷ nginx, both logging) against the ``cvm``
  ratio: the access log may cost us at most 10 % more than it costs nginx.

A derived row is added only when every row it reads is in the run. Pure: reads rows, makes
rows; knows nothing of how they were measured.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from benchmarks.report import Check, Row, Side


def cvm_cpu(rows: dict[str, Row]) -> Row:
    ours, floor = rows["cvm"].ours, rows["cvm-floor"].ours
    return Row("cvm-cpu", "CPU time per request on the CVM path: our proxy vs the floor relay",
               "µs/req", Side(ours.label, ours.cpu_us_per_request),
               Side(floor.label, floor.cpu_us_per_request), checks=(Check("value", "<=", 1.3),))


def cvm_log_vs_cvm(rows: dict[str, Row]) -> Row:
    logged, plain = rows["cvm-log"], rows["cvm"]
    return Row("cvm-log-vs-cvm", "ratio with access logs on (cvm-log) vs without (cvm)",
               "ratio", Side("cvm-log ratio", logged.ratio), Side("cvm ratio", plain.ratio),
               checks=(Check("value", ">=", 0.9), Check("value", "<=", 1.1)))


#: derived row -> (the rows it reads, how it is made)
DERIVED: dict[str, tuple[tuple[str, ...], Callable[[dict[str, Row]], Row]]] = {
    "cvm-cpu": (("cvm", "cvm-floor"), cvm_cpu),
    "cvm-log-vs-cvm": (("cvm", "cvm-log"), cvm_log_vs_cvm),
}


def derive(rows: Sequence[Row]) -> list[Row]:
    by_name = {row.scenario: row for row in rows}
    return [make(by_name) for needs, make in DERIVED.values()
            if all(name in by_name for name in needs)]
