"""The load generator: run ``wrk --latency`` and read its report.

Owns the wrk command line (one thread, the same connections and duration for both sides of a
comparison, optionally pinned to a CPU) and the parser of its text report (requests/s, the
50th/99th latency percentiles, socket errors, non-2xx answers). A run whose answers were mostly
errors is refused (``LoadError``): a proxy that fails fast must not look fast. Knows nothing
of what is behind the URL.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks import procs

#: wrk prints latencies with these units
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_PERCENTILE = re.compile(r"^\s*(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.M)
_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")

#: more than this share of failed answers makes a run unusable
MAX_ERROR_SHARE = 0.01


class LoadError(Exception):
    """wrk could not measure the target (it failed, or most answers were errors)."""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int = 0
    socket_errors: tuple[int, int, int, int] = (0, 0, 0, 0)  # connect, read, write, timeout

    def notes(self) -> str:
        parts = []
        if self.non_2xx:
            parts.append(f"{self.non_2xx} non-2xx/3xx")
        names = ("connect", "read", "write", "timeout")
        parts += [f"{n} {name} errors" for n, name in zip(self.socket_errors, names) if n]
        return ", ".join(parts)


def parse(output: str) -> WrkResult:
    """Read wrk's ``--latency`` report; raises LoadError when it has no measurement."""
    rate = _RATE.search(output)
    total = _TOTAL.search(output)
    percentiles = {p: float(v) * _UNITS[u] for p, v, u in _PERCENTILE.findall(output)}
    if rate is None or total is None or "50" not in percentiles or "99" not in percentiles:
        raise LoadError("wrk printed no result: " + " ".join(output.split())[-300:])
    errors = (0, 0, 0, 0)
    sockets = _SOCKET_ERRORS.search(output)  # printed only when there were some
    if sockets:
        connect, read, write, timeout = (int(g) for g in sockets.groups())
        errors = (connect, read, write, timeout)
    non_2xx = _NON_2XX.search(output)
    return WrkResult(requests=int(total.group(1)), rps=float(rate.group(1)),
                     p50_ms=percentiles["50"], p99_ms=percentiles["99"],
                     non_2xx=int(non_2xx.group(1)) if non_2xx else 0, socket_errors=errors)


def check_usable(result: WrkResult, *, closing: bool = False) -> WrkResult:
    """Refuse a run whose answers were mostly failures.

    With ``closing`` (``Connection: close``, one request per connection) wrk counts the
    server's close after each answer as a read error on some builds; those are not failures.
    """
    connect, read, write, timeout = result.socket_errors
    failed = result.non_2xx + connect + write + timeout + (0 if closing else read)
    if result.requests == 0:
        raise LoadError("no request completed")
    if failed > MAX_ERROR_SHARE * result.requests:
        raise LoadError(f"{failed} of {result.requests} requests failed ({result.notes()})")
    return result


def command(url: str, *, connections: int, duration: float,
            headers: Sequence[str] = (), timeout_s: int = 5) -> list[str]:
    """The wrk command line: one thread (the machine has few cores), ``--latency`` for p99."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
            f"--timeout={timeout_s}s"]
    for header in headers:
        argv += ["-H", header]
    return argv + [url]


def run(url: str, *, connections: int, duration: float, headers: Sequence[str] = (),
        cpus: set[int] | None = None, closing: bool = False) -> WrkResult:
    """Run wrk against ``url`` and return its checked result."""
    argv = command(url, connections=connections, duration=duration, headers=headers)
    try:
        done = subprocess.run(argv, capture_output=True, text=True,
                              preexec_fn=procs.pinner(cpus), timeout=duration + 60)
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"wrk did not finish within {duration + 60:.0f}s") from exc
    if done.returncode != 0:
        raise LoadError(f"wrk exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return check_usable(parse(done.stdout), closing=closing)
