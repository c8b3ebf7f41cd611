"""The shared machinery of the scenarios: the run's settings, its origin, and "start this
server, check it answers correctly, load it with wrk, stop it" as one call.

Owns ``Bench`` (settings, the temporary directory, CPU pinning, which proxy code runs, the
origin nginx shared by every CVM path, the certificate for every HTTPS server, the CPU time of
each server's processes around each measured wrk run) and ``compare``, which runs the same
loads on each side (ours, the peer, and the floor relay where a row asks for it) in
alternating rounds and turns any failure into that row's ``error`` instead of stopping the run
(fail soft: a scenario whose server is not finished yet reports why, the others go on).
Knows nothing of particular scenarios.
"""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import confs, h2load, procs, proctree, wrk
from benchmarks.checkout import ProxyCode, this_checkout
from benchmarks.report import Row, Side

#: the servers of a comparison: the two sides of a row, and the floor relay (which fills the
#: ours side of a row of its own, beside the same peer measurement)
OURS, PEER, FLOOR = "ours", "peer", "floor"
ERROR_TEXT_LIMIT = 2000


@dataclass(frozen=True)
class Load:
    """One wrk run (or h2load's, with ``h2_streams``): which row it fills, the Host header and
    path, and what a good answer holds."""

    row: Row
    expect: bytes
    path: str = "/"
    host: str = confs.BENCH_DOMAIN
    scheme: str = "http"
    closing: bool = False  # Connection: close, a new connection (TLS handshake) per request
    #: the row the floor relay fills (its ours side; its peer side is ``row.peer``, the same
    #: measurement); None: the floor relay does not run this load
    floor: Row | None = None
    #: > 0: HTTP/2 (h2load, TLS with ALPN h2) with this many concurrent streams per connection
    #: in place of wrk; ``connections`` then overrides the run's wrk connection count
    h2_streams: int = 0
    connections: int | None = None

    def targets(self, which: str) -> list[tuple[Row, str]]:
        """(row, "ours" | "peer") that a run of server ``which`` fills; [] for none."""
        floor = [] if self.floor is None else [self.floor]
        return {OURS: [(self.row, OURS)], PEER: [(row, PEER) for row in [self.row, *floor]],
                FLOOR: [(row, OURS) for row in floor]}[which]


@dataclass(frozen=True)
class Measured:
    """One measured wrk (or h2load) run and the CPU time spent in it."""

    wrk: wrk.WrkResult | h2load.H2loadResult
    cpu: list[proctree.ProcCpu]  # the server's processes (its tree and its companions')
    origin_cpu_us: float | None  # the shared origin's, per request (None: not involved)

    def fill(self, side: Side) -> None:
        result = self.wrk
        side.value, side.p50_ms, side.p99_ms = result.rps, result.p50_ms, result.p99_ms
        side.notes = result.notes()
        side.cpu_us_per_request = round(proctree.total(self.cpu), 2)
        side.cpu_system_us_per_request = round(proctree.system_total(self.cpu), 2)
        side.cpu_processes = [p.as_json() for p in self.cpu]
        side.origin_cpu_us_per_request = (None if self.origin_cpu_us is None
                                          else round(self.origin_cpu_us, 2))


@dataclass
class Bench:
    workdir: Path
    duration: float
    connections: int
    #: the server under test runs on these CPUs; wrk and the origin on ``load_cpus``
    sut_cpus: set[int] | None
    load_cpus: set[int] | None
    idle_connections: int
    rounds: int = 1  # each side is measured this many times, alternating
    #: which round a side keeps (``pick_round``): "median" (issue 12's targets) or "best"
    statistic: str = "median"
    #: the SCF scenarios' function's ``invocations_ahead`` (0: not written, as before the key)
    invocations_ahead: int = 0
    log: Callable[[str], None] = print
    code: ProxyCode = field(default_factory=this_checkout)  # the proxy measured as "ours"
    stack: ExitStack = field(default_factory=ExitStack)
    _origin: procs.Server | None = None
    _cert: tuple[Path, Path] | None = None

    @property
    def warmup(self) -> float:
        return min(2.0, max(1.0, self.duration / 5))

    def origin(self) -> procs.Server:
        """The origin nginx of every CVM path, started once per run (on the load CPUs)."""
        if self._origin is None:
            port = procs.free_port()
            conf = confs.nginx_conf(self.workdir / "origin", confs.origin_server(port))
            self._origin = procs.start_nginx("origin", conf, port, self.workdir, self.load_cpus)
            self.stack.callback(self._origin.stop)
        return self._origin

    def origin_port(self) -> int:
        return self.origin().port

    def certificate(self) -> tuple[Path, Path]:
        """One ECDSA P-256 certificate (trustme) for both HTTPS servers."""
        if self._cert is None:
            import trustme

            leaf = trustme.CA().issue_cert("localhost", "127.0.0.1", confs.BENCH_DOMAIN)
            cert, key = self.workdir / "cert.pem", self.workdir / "key.pem"
            leaf.cert_chain_pems[0].write_to_path(str(cert))
            leaf.private_key_pem.write_to_path(str(key))
            self._cert = (cert, key)
        return self._cert

    # -- starting servers ----------------------------------------------------------------------

    def proxy(self, name: str, toml_text: str, *, access_log: bool = False) -> procs.Server:
        return procs.start_proxy(name, toml_text, self.workdir, self.sut_cpus, self.code,
                                 access_log=access_log)

    def floor(self, name: str, *, tls: bool = False) -> procs.Server:
        """The floor relay (benchmarks/floor_relay.py) in front of the origin."""
        return procs.start_floor(name, self.origin_port(), self.workdir, self.sut_cpus,
                                 self.certificate() if tls else None)

    def nginx_proxy(self, name: str, upstream_port: int, *, tls: bool = False,
                    worker_connections: int = 4096, access_log: bool = False,
                    http2: bool = False) -> procs.Server:
        """nginx as a reverse proxy to ``upstream_port`` (keep-alive pool), like our CVM path;
        ``access_log``: JSON lines to ``access.log`` in its prefix; ``http2`` (with ``tls``):
        ``listen ... ssl http2``."""
        port = procs.free_port()
        log = self.workdir / name / "access.log" if access_log else None
        body = "\n".join([*([confs.JSON_LOG_FORMAT] if log else []),
                          confs.upstream("backend", upstream_port),
                          confs.proxy_server(port, "backend", access_log=log,
                                             tls=self.certificate() if tls else None,
                                             http2=http2)])
        conf = confs.nginx_conf(self.workdir / name, body,
                                worker_connections=worker_connections,
                                nofile=max(8192, 2 * worker_connections + 1024))
        return procs.start_nginx(name, conf, port, self.workdir, self.sut_cpus)

    def uvicorn(self, workers: int) -> procs.Server:
        return procs.start_uvicorn(procs.free_port(), self.workdir, self.sut_cpus, workers)

    # -- load ----------------------------------------------------------------------------------

    def load(self, server: procs.Server, load: Load, *, first: bool = True) -> Measured:
        """Check one answer and warm up (the first time), then the measured wrk run, with the
        CPU time of ``server``'s processes (and the origin's) read right before and after."""
        url = f"{load.scheme}://127.0.0.1:{server.port}{load.path}"
        headers = [f"Host: {load.host}"] + (["Connection: close"] if load.closing else [])
        connections = load.connections or self.connections

        def run(duration: float) -> wrk.WrkResult | h2load.H2loadResult:
            if load.h2_streams:  # the Host is the :authority and the SNI name
                return h2load.run(f"https://{load.host}:{server.port}{load.path}",
                                  connect_to=f"127.0.0.1:{server.port}",
                                  connections=connections, streams=load.h2_streams,
                                  duration=duration, cpus=self.load_cpus)
            return wrk.run(url, connections=connections, duration=duration,
                           headers=headers, cpus=self.load_cpus, closing=load.closing)

        if first:
            preflight(load, server.port)
            run(self.warmup)  # pools filled, instances warm, caches hot: not measured
        watched = server.roots()
        origin = self._origin.roots() if self._origin not in (None, server) else []
        before = proctree.snapshot(watched), proctree.snapshot(origin)
        result = run(self.duration)
        after = proctree.snapshot(watched), proctree.snapshot(origin)
        origin_cpu = proctree.per_request(before[1], after[1], result.requests)
        return Measured(result, proctree.per_request(before[0], after[0], result.requests),
                        proctree.total(origin_cpu) if origin else None)


def preflight(load: Load, port: int, timeout: float = 30.0) -> None:
    """One request must get 200 and the expected body before its numbers mean anything."""
    if load.scheme == "https":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the run's own throw-away certificate
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", load.path, headers={"Host": load.host})
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise wrk.LoadError(f"GET {load.path} (Host {load.host}) failed: {exc!r}") from exc
    finally:
        conn.close()
    if response.status != 200 or load.expect not in body:
        raise wrk.LoadError(f"GET {load.path} (Host {load.host}) answered {response.status} "
                            f"{body[:200]!r}, expected 200 with {load.expect!r}")


def fail(rows: Sequence[Row], which: str, exc: BaseException,
         server: procs.Server | None = None) -> None:
    """Record why ``which`` side of ``rows`` has no number; the server's log goes to the JSON."""
    log = getattr(exc, "log", "") or (server.log_tail() if server is not None else "")
    for row in rows:
        if row.error:  # the first failure explains the row best
            continue
        row.error = f"{which}: {exc}"[:ERROR_TEXT_LIMIT]
        if log:
            row.extra[f"{which}_log"] = log


#: the statistics a side's kept round can be chosen by (``pick_round``)
STATISTICS = ("median", "best")


def pick_round(rates: Sequence[float], statistic: str) -> int:
    """The index of the round a side keeps: "median", the round whose rate is the median (of
    an even count, the lower of the middle two: a real run, never a mean of two, and the
    conservative one); "best", the highest rate."""
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r} (choose from {', '.join(STATISTICS)})")
    order = sorted(range(len(rates)), key=lambda i: (rates[i], i))
    return order[-1] if statistic == "best" else order[(len(rates) - 1) // 2]


def compare(bench: Bench, loads: Sequence[Load],
            starters: Mapping[str, Callable[[], procs.Server]]) -> None:
    """Start every server (OURS, PEER, FLOOR), run each load it fills on each in turn,
    ``bench.rounds`` times, stop them all.

    Each side keeps one round, chosen by ``bench.statistic`` (``pick_round``): by default the
    median of the alternating rounds, as issue 12's targets are stated; "best" keeps the
    highest rate (a neighbour's burst on a shared machine only ever slows a run down). The
    kept round gives every figure of the side (rate, latencies, CPU), and every round's rate
    and CPU are kept in the row's ``extra``.
    Fail soft: a side that does not start fails its side of every row; a load that fails
    fails its row for that side, and the other side is still measured.
    """
    servers: dict[str, procs.Server] = {}
    measured: dict[tuple[int, str], tuple[Side, list[Measured]]] = {}
    try:
        for which, start in starters.items():
            row, side = next(t for load in loads for t in load.targets(which))
            bench.log(f"  {which}: {getattr(row, side).label}")
            try:
                servers[which] = start()
            except Exception as exc:  # noqa: BLE001 - any failure becomes the rows' error
                fail(_rows(loads, which), which, exc)
        failed: set[tuple[str, int]] = set()
        for round_no in range(bench.rounds):
            for which, server in servers.items():
                for i, load in enumerate(loads):
                    if load.targets(which) and (which, i) not in failed:
                        if not _run_one(bench, which, server, load, round_no, measured):
                            failed.add((which, i))
        for side, runs in measured.values():
            runs[pick_round([run.wrk.rps for run in runs], bench.statistic)].fill(side)
    finally:
        for server in servers.values():
            server.stop()


def _rows(loads: Sequence[Load], which: str) -> list[Row]:
    return [row for load in loads for row, _ in load.targets(which)]


def _run_one(bench: Bench, which: str, server: procs.Server, load: Load, round_no: int,
             kept: dict[tuple[int, str], tuple[Side, list[Measured]]]) -> bool:
    try:
        measured = bench.load(server, load, first=round_no == 0)
    except Exception as exc:  # noqa: BLE001
        fail(_rows([load], which), which, exc, server)
        return False
    result = measured.wrk
    for row, side_name in load.targets(which):
        rounds = row.extra.setdefault("rounds", {})
        rounds.setdefault(side_name, []).append(round(result.rps))
        row.extra.setdefault("cpu_rounds", {}).setdefault(side_name, []).append(
            round(proctree.total(measured.cpu), 2))
        side: Side = getattr(row, side_name)
        kept.setdefault((id(row), side_name), (side, []))[1].append(measured)
    latency = ("" if result.p50_ms is None or result.p99_ms is None else
               f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, ")
    bench.log(f"    {load.row.scenario} {which} round {round_no + 1}: {result.rps:,.0f} req/s, "
              f"{latency}CPU {proctree.total(measured.cpu):.1f} µs/req "
              f"(kernel {proctree.system_total(measured.cpu):.1f})")
    return True
