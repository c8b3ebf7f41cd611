"""py-spy's raw output (collapsed stacks) read into the top functions by self and inclusive time.

A line is ``frame;frame;...;frame COUNT``, outermost first, a frame ``function (file:line)``;
with ``--subprocesses`` it starts with ``process PID:"command line";`` frames, one per
process from the recorded one down to the one sampled (a command line may hold ``;``).
Functions are counted without their line number; a function counts once per stack for
inclusive time (recursion does not count it twice); samples are also counted per process
(the innermost process frame).
Pure: text in, tables out.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

_LINE_NO = re.compile(r":\d+\)$")
_COUNT = re.compile(r"^(.*) (\d+)$")
_PROCESS = re.compile(r'process (\d+):"(.*?)";')
PROCESS_TEXT = 80  # characters of a command line kept in the per-process table


@dataclass
class Profile:
    samples: int = 0
    own: Counter[str] = field(default_factory=Counter)  # self time: the innermost frame
    inclusive: Counter[str] = field(default_factory=Counter)  # anywhere on the stack
    processes: Counter[str] = field(default_factory=Counter)  # samples per process frame


def function(frame: str) -> str:
    """``handle (proxy/http1.py:120)`` -> ``handle (proxy/http1.py)``."""
    return _LINE_NO.sub(")", frame.strip())


def parse(lines: Iterable[str]) -> Profile:
    found = Profile()
    for line in lines:
        match = _COUNT.match(line.rstrip("\n"))
        if match is None:
            continue
        stack, count = match.group(1), int(match.group(2))
        process = None
        while (frame := _PROCESS.match(stack)) is not None:
            process = f"{frame.group(1)} {frame.group(2)[:PROCESS_TEXT]}"
            stack = stack[frame.end():]
        names = [function(f) for f in stack.split(";") if f and not f.startswith("thread ")]
        found.samples += count
        if process is not None:
            found.processes[process] += count
        if names:
            found.own[names[-1]] += count
        for name in set(names):
            found.inclusive[name] += count
    return found


def table(title: str, counts: Counter[str], samples: int, top: int,
          what: str = "function") -> list[str]:
    lines = [f"  {title}", f"  {'%':>6}  {'samples':>8}  {what}"]
    for name, count in counts.most_common(top):
        lines.append(f"  {100 * count / max(1, samples):6.1f}  {count:8d}  {name}")
    return lines


def summary(profile: Profile, top: int = 15) -> list[str]:
    """The tables; % are of all samples (py-spy takes none of a thread waiting idle)."""
    lines = [f"  {profile.samples} samples"]
    if len(profile.processes) > 1:
        lines += table("by process", profile.processes, profile.samples, top, "process") + [""]
    lines += table(f"top {top} by self time", profile.own, profile.samples, top) + [""]
    return lines + table(f"top {top} by inclusive time", profile.inclusive, profile.samples,
                         top)
