"""The result table: one ``Row`` per scenario, its targets, and how it is printed and saved.

Owns the value model (``Side`` = one measured system, its CPU time per request included,
``Row`` = ours vs a peer with the issue's targets), the verdicts (ratio against target, tables
of operators and metrics rather than branches), the plain-text and Markdown renderings and the
JSON file. Knows nothing of processes, wrk or nginx: scenarios fill rows in, this module only
judges and shows them.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Side:
    """One measured system: a rate (higher is better) or a size (lower is better)."""

    label: str
    value: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    #: what went wrong for the load generator (socket errors, non-2xx) when it was tolerable
    notes: str = ""
    #: CPU time of all its processes per request served, in the run kept (the round
    #: ``Bench.statistic`` chose)
    cpu_us_per_request: float | None = None
    #: the kernel's part of it (stime: system calls and the network stack's work for them)
    cpu_system_us_per_request: float | None = None
    #: each process of that figure: {name, comm, pid, us_per_request, system_us_per_request}
    cpu_processes: list[dict[str, object]] = field(default_factory=list)
    #: the shared origin's CPU time per request in that run (in neither side's total)
    origin_cpu_us_per_request: float | None = None


@dataclass(frozen=True)
class Check:
    """A target from issue 12: ``metric`` ("value" or "p99") ratio ``op`` ``bound``."""

    metric: str
    op: str
    bound: float

    def text(self) -> str:
        prefix = {"value": "", "p99": "p99 "}[self.metric]
        return f"{prefix}{self.op}{self.bound:g}x"


@dataclass
class Row:
    scenario: str
    description: str
    unit: str  # "req/s", "match/s", "B/conn", "µs/req" (CPU) or "ratio" (of two rows)
    ours: Side
    peer: Side
    checks: tuple[Check, ...] = ()
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        return _ratio(self.ours.value, self.peer.value)

    @property
    def p99_ratio(self) -> float | None:
        return _ratio(self.ours.p99_ms, self.peer.p99_ms)

    @property
    def met(self) -> bool | None:
        """True/False when every target could be judged; None when there is none or no data."""
        if not self.checks or self.error:
            return None
        verdicts = [_judge(self, check) for check in self.checks]
        if any(v is None for v in verdicts):
            return None
        return all(verdicts)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["checks"] = [check.text() for check in self.checks]
        data.update(ratio=_rounded(self.ratio), p99_ratio=_rounded(self.p99_ratio), met=self.met)
        return data


_OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le}
_METRICS: dict[str, Callable[[Row], float | None]] = {
    "value": lambda row: row.ratio,
    "p99": lambda row: row.p99_ratio,
}


def _judge(row: Row, check: Check) -> bool | None:
    ratio = _METRICS[check.metric](row)
    return None if ratio is None else _OPS[check.op](ratio, check.bound)


def _ratio(ours: float | None, peer: float | None) -> float | None:
    if ours is None or peer is None or peer == 0:
        return None
    return ours / peer


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# --- rendering ------------------------------------------------------------------------------

HEADERS = ("scenario", "unit", "ours", "peer", "ratio", "p50 ours/peer ms",
           "p99 ours/peer ms", "CPU µs/req ours / peer", "target", "met")
_VERDICTS = {True: "yes", False: "NO", None: "-"}


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _pair(ours: float | None, peer: float | None) -> str:
    if ours is None and peer is None:
        return "-"
    return f"{_number(ours)} / {_number(peer)}"


def cells(row: Row) -> list[str]:
    """The row as the table's cells (also used for Markdown)."""
    ours = f"error: {row.error}" if row.error else _number(row.ours.value)
    peer = f"{_number(row.peer.value)} ({row.peer.label})"
    ratio = "-" if row.ratio is None else f"{row.ratio:.2f}x"
    return [row.scenario, row.unit, ours, peer, ratio,
            _pair(row.ours.p50_ms, row.peer.p50_ms), _pair(row.ours.p99_ms, row.peer.p99_ms),
            _pair(row.ours.cpu_us_per_request, row.peer.cpu_us_per_request),
            ", ".join(c.text() for c in row.checks) or "-", _VERDICTS[row.met]]


_CELL_WIDTH = 60


def _short(text: str, width: int = _CELL_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def render_text(rows: Sequence[Row]) -> str:
    table = [list(HEADERS)] + [[_short(c) for c in cells(row)] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  {row.scenario}: {note}" for row in rows for note in _notes(row)]
    return "\n".join(lines + (["", "notes:"] + notes if notes else []))


def render_markdown(rows: Sequence[Row]) -> str:
    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    out = [line(HEADERS), line(["---"] * len(HEADERS))]
    out += [line([_short(c, 80) for c in cells(row)]) for row in rows]
    notes = [f"- `{row.scenario}`: {note}" for row in rows for note in _notes(row)]
    return "\n".join(out + ([""] + notes if notes else []))


def _notes(row: Row) -> list[str]:
    found = [f"{side.label}: {side.notes}" for side in (row.ours, row.peer) if side.notes]
    if row.error and len(row.error) > _CELL_WIDTH:
        found.append(f"error: {_short(row.error, 400)}")
    return found


def write_json(path: Path, meta: dict[str, Any], rows: Sequence[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {**meta, "rows": [row.as_json() for row in rows]}
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
