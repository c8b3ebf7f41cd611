"""Resumed TLS handshakes per second (issue 15): ``openssl s_time -reuse`` against a server.

Owns one measurement: ``clients`` ``openssl s_time -reuse -www /`` processes in parallel,
pinned to the load CPUs like wrk, for ``seconds``. Each makes one full handshake, then
connection after connection resuming that session, each sending ``GET / HTTP/1.0`` and
reading the answer to its close (so a TLS 1.3 client also gets its tickets). s_time prints
``r`` for a connection that resumed and ``*`` for one that did not; the count of both is kept
so that a server that stopped resuming cannot pass for a fast one. The rate is all their
connections over the wall time of the run (s_time's own "real seconds" are whole seconds).
The CPU time of the server's processes around the run is read as harness.Bench.load does.

Knows nothing of rows or of which server it measures.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass

from benchmarks import procs, proctree

_CONNECTIONS = re.compile(r"(\d+) connections in [\d.]+s;")
#: s_time's progress line: one character per connection
_PROGRESS = re.compile(r"^[r*]+$", re.M)


class ResumeError(RuntimeError):
    """s_time failed, or the server did not resume."""


@dataclass(frozen=True)
class Resumed:
    rate: float  # connections per second, all clients together
    connections: int
    resumed: int  # of them, those s_time saw resume ("r")
    cpu_us: float | None  # the server's CPU µs per connection

    @property
    def resumed_share(self) -> float:
        return self.resumed / self.connections if self.connections else 0.0


def measure(server: procs.Server, *, seconds: float, clients: int, version: str,
            cpus: set[int] | None) -> Resumed:
    """``version``: ``-tls1_2`` or ``-tls1_3`` (s_time's flags)."""
    argv = ["openssl", "s_time", "-connect", f"127.0.0.1:{server.port}", "-reuse",
            "-www", "/", "-time", str(max(1, round(seconds))), version]

    watched = server.roots()
    before = proctree.snapshot(watched)
    started = time.monotonic()
    runs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, preexec_fn=procs.pinner(cpus))
            for _ in range(clients)]
    outputs = []
    for run in runs:
        out, _ = run.communicate(timeout=seconds + 60)
        if run.returncode != 0:
            raise ResumeError(f"openssl s_time exited {run.returncode}: {out[-500:]!r}")
        outputs.append(out.decode("latin-1"))
    wall = time.monotonic() - started
    after = proctree.snapshot(watched)
    total = resumed = 0
    for out in outputs:
        counts = _CONNECTIONS.findall(out)
        if not counts:
            raise ResumeError(f"no connection count in s_time's output: {out[-500:]!r}")
        total += int(counts[-1])
        resumed += sum(line.count("r") for line in _PROGRESS.findall(out))
    if not total or resumed < 0.9 * total:
        raise ResumeError(f"only {resumed} of {total} connections resumed")
    cpu = proctree.per_request(before, after, total)
    return Resumed(total / wall, total, resumed, proctree.total(cpu) if cpu else None)
