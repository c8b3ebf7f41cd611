"""Process trees and their CPU time, read from /proc/PID/stat.

Owns reading one process's stat line (command name, parent, utime + stime and stime alone,
start time), the tree under a root pid (walked through every process's parent), a snapshot of
the CPU time of named trees and the CPU time per request between two snapshots. A process is
known by its pid and its start time, so a pid reused during a run is a new process; one absent
from the first snapshot (started during the run) counts from zero. Knows nothing of servers or
wrk.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


@dataclass(frozen=True)
class Stat:
    pid: int
    comm: str
    ppid: int
    ticks: int  # utime + stime: this process's own CPU time, all its threads
    start: int  # start time after boot, in ticks: tells a reused pid from the old process
    #: stime alone: the part of ``ticks`` spent in the kernel (system calls, and the network
    #: stack's work done on the process's behalf)
    system: int = 0


@dataclass(frozen=True)
class ProcCpu:
    """One process's CPU time per request over a measured run."""

    name: str  # the server whose tree it belongs to
    comm: str
    pid: int
    us_per_request: float
    #: the part of ``us_per_request`` spent in the kernel (stime)
    system_us_per_request: float = 0.0

    def as_json(self) -> dict[str, object]:
        return {"name": self.name, "comm": self.comm, "pid": self.pid,
                "us_per_request": round(self.us_per_request, 2),
                "system_us_per_request": round(self.system_us_per_request, 2)}


def parse_stat(pid: int, text: str) -> Stat:
    """One /proc/PID/stat line; the command name may hold spaces and parentheses."""
    comm = text[text.index("(") + 1: text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()  # fields[0] is field 3 (state) of proc(5)
    return Stat(pid=pid, comm=comm, ppid=int(fields[1]), ticks=int(fields[11]) + int(fields[12]),
                start=int(fields[19]), system=int(fields[12]))


def all_stats() -> dict[int, Stat]:
    found: dict[int, Stat] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = parse_stat(int(entry.name), (entry / "stat").read_text())
            except (OSError, ValueError, IndexError):
                continue  # it exited between listing and reading
    return found


def descendants(root: int, stats: dict[int, Stat] | None = None) -> list[int]:
    """Every process under ``root`` (children, their children, ...), not ``root`` itself."""
    children: dict[int, list[int]] = {}
    for stat in (all_stats() if stats is None else stats).values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    found, todo = [], [root]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


#: (pid, start time) -> (owning tree's name, stat)
Snapshot = dict[tuple[int, int], tuple[str, Stat]]


def snapshot(roots: Sequence[tuple[str, int]]) -> Snapshot:
    """The CPU time of every process in the trees of ``roots`` (name, pid), now."""
    stats = all_stats()
    found: Snapshot = {}
    for name, root in roots:
        for pid in [root, *descendants(root, stats)]:
            stat = stats.get(pid)
            if stat is not None:
                found.setdefault((pid, stat.start), (name, stat))
    return found


def per_request(before: Snapshot, after: Snapshot, requests: int) -> list[ProcCpu]:
    """CPU µs per request of each process seen after the run, heaviest first.

    A process that exited during the run is not in ``after``: its time is lost (it is small
    next to a server's); one that started during the run counts from zero.
    """
    us_per_tick = 1e6 / TICKS_PER_S
    found = []
    for key, (name, stat) in after.items():
        earlier = before.get(key)
        ticks = stat.ticks - (earlier[1].ticks if earlier else 0)
        system = stat.system - (earlier[1].system if earlier else 0)
        found.append(ProcCpu(name, stat.comm, stat.pid, ticks * us_per_tick / max(1, requests),
                             system * us_per_tick / max(1, requests)))
    return sorted(found, key=lambda p: (-p.us_per_request, p.pid))


def total(processes: Sequence[ProcCpu]) -> float:
    return sum(p.us_per_request for p in processes)


def system_total(processes: Sequence[ProcCpu]) -> float:
    """The kernel's part of ``total``."""
    return sum(p.system_us_per_request for p in processes)
