"""The HTTP/2 load generator: run nghttp2's ``h2load`` for a duration and read its report.

Owns the h2load command line (one thread, ``-c`` connections with ``-m`` concurrent streams
each, timing-based with ``-D``, optionally pinned to a CPU like wrk) and the parser of its
text report: the rate of the ``finished in ...`` line, the ``requests:`` counts, the ``status
codes:`` line and the ALPN protocol agreed. Any failed, errored or timed-out request, any
non-2xx answer, or a protocol other than h2 refuses the run (``wrk.LoadError``): HTTP/2 has no
``Connection: close`` noise to forgive, and a server that fell back to HTTP/1.1 must not pass
for an HTTP/2 one. In timing-based mode, requests still in flight when the time is up are
neither done nor failed, so they need no tolerance. h2load prints no latency percentiles, so
p50/p99 are None. Knows nothing of what is behind the URL.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from benchmarks import procs
from benchmarks.wrk import LoadError

_FINISHED = re.compile(r"^finished in [\d.]+(?:us|ms|s), ([\d.]+) req/s", re.M)
_REQUESTS = re.compile(
    r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout", re.M)
_STATUS = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.M)
_PROTOCOL = re.compile(r"^Application protocol: (\S+)", re.M)


@dataclass(frozen=True)
class H2loadResult:
    requests: int  # succeeded
    rps: float
    failed: int = 0
    errored: int = 0
    timeout: int = 0
    non_2xx: int = 0
    protocol: str = "h2"
    #: h2load reports no percentiles (the same fields as wrk.WrkResult for the harness)
    p50_ms: float | None = None
    p99_ms: float | None = None

    def notes(self) -> str:
        counts = (("failed", self.failed), ("errored", self.errored),
                  ("timed out", self.timeout), ("non-2xx", self.non_2xx))
        return ", ".join(f"{n} {name}" for name, n in counts if n)


def parse(output: str) -> H2loadResult:
    """Read h2load's report; raises LoadError when it has no measurement."""
    finished = _FINISHED.search(output)
    requests = _REQUESTS.search(output)
    status = _STATUS.search(output)
    if finished is None or requests is None or status is None:
        raise LoadError("h2load printed no result: " + " ".join(output.split())[-300:])
    succeeded, failed, errored, timeout = (int(g) for g in requests.groups()[3:])
    two_xx, *others = (int(g) for g in status.groups())
    protocol = _PROTOCOL.search(output)
    return H2loadResult(requests=succeeded, rps=float(finished.group(1)), failed=failed,
                        errored=errored, timeout=timeout, non_2xx=sum(others),
                        protocol=protocol.group(1) if protocol else "none")


def check_usable(result: H2loadResult) -> H2loadResult:
    """Refuse a run with any failure, or one not spoken in h2."""
    if result.protocol != "h2":
        raise LoadError(f"h2load negotiated {result.protocol!r}, not h2 (ALPN)")
    if result.requests == 0:
        raise LoadError("no request completed")
    if result.notes():
        raise LoadError(f"h2load: {result.notes()} (of {result.requests} succeeded)")
    return result


def command(url: str, *, connect_to: str, connections: int, streams: int,
            duration: float) -> list[str]:
    """One thread; ``url``'s host is the :authority and the SNI name, ``connect_to`` the
    address dialled (h2load sends no SNI to an IP address)."""
    return ["h2load", "-t1", f"-c{connections}", f"-m{streams}",
            f"-D{max(1, round(duration))}", f"--connect-to={connect_to}", url]


def run(url: str, *, connect_to: str, connections: int, streams: int, duration: float,
        cpus: set[int] | None = None) -> H2loadResult:
    """Run h2load against ``url`` and return its checked result."""
    argv = command(url, connect_to=connect_to, connections=connections, streams=streams,
                   duration=duration)
    try:
        done = subprocess.run(argv, capture_output=True, text=True,
                              preexec_fn=procs.pinner(cpus), timeout=duration + 60)
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"h2load did not finish within {duration + 60:.0f}s") from exc
    if done.returncode != 0:
        raise LoadError(f"h2load exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return check_usable(parse(done.stdout))
