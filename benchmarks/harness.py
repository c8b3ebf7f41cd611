"""The shared machinery of the scenarios: the run's settings, its origin, and "start this
server, check it answers correctly, load it with wrk, stop it" as one call.

Owns ``Bench`` (settings, the temporary directory, CPU pinning, the origin nginx shared by
every CVM path, the certificate for both HTTPS servers) and ``compare``, which runs the same
loads on both sides in alternating rounds and turns any failure into that row's ``error``
instead of stopping the run (fail soft: a scenario whose server is not finished yet reports
why, the others go on).
Knows nothing of particular scenarios.
"""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import confs, procs, wrk
from benchmarks.report import Row, Side

#: the two sides of a row
OURS, PEER = "ours", "peer"
ERROR_TEXT_LIMIT = 2000


@dataclass(frozen=True)
class Load:
    """One wrk run: which row it fills, the Host header and path, and what a good answer holds."""

    row: Row
    expect: bytes
    path: str = "/"
    host: str = confs.BENCH_DOMAIN
    scheme: str = "http"
    closing: bool = False  # Connection: close, a new connection (TLS handshake) per request


@dataclass
class Bench:
    workdir: Path
    duration: float
    connections: int
    #: the server under test runs on these CPUs; wrk and the origin on ``load_cpus``
    sut_cpus: set[int] | None
    load_cpus: set[int] | None
    idle_connections: int
    rounds: int = 1  # each side is measured this many times, alternating; the best is kept
    log: Callable[[str], None] = print
    stack: ExitStack = field(default_factory=ExitStack)
    _origin: procs.Server | None = None
    _cert: tuple[Path, Path] | None = None

    @property
    def warmup(self) -> float:
        return min(2.0, max(1.0, self.duration / 5))

    def origin_port(self) -> int:
        """The origin nginx of every CVM path, started once per run (on the load CPUs)."""
        if self._origin is None:
            port = procs.free_port()
            conf = confs.nginx_conf(self.workdir / "origin", confs.origin_server(port))
            self._origin = procs.start_nginx("origin", conf, port, self.workdir, self.load_cpus)
            self.stack.callback(self._origin.stop)
        return self._origin.port

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

    def proxy(self, name: str, toml_text: str) -> procs.Server:
        return procs.start_proxy(name, toml_text, self.workdir, self.sut_cpus)

    def nginx_proxy(self, name: str, upstream_port: int, *, tls: bool = False,
                    worker_connections: int = 4096) -> procs.Server:
        """nginx as a reverse proxy to ``upstream_port`` (keep-alive pool), like our CVM path."""
        port = procs.free_port()
        body = "\n".join([confs.upstream("backend", upstream_port),
                          confs.proxy_server(port, "backend",
                                             tls=self.certificate() if tls else None)])
        conf = confs.nginx_conf(self.workdir / name, body,
                                worker_connections=worker_connections,
                                nofile=max(8192, 2 * worker_connections + 1024))
        return procs.start_nginx(name, conf, port, self.workdir, self.sut_cpus)

    def uvicorn(self, workers: int) -> procs.Server:
        return procs.start_uvicorn(procs.free_port(), self.workdir, self.sut_cpus, workers)

    # -- load ----------------------------------------------------------------------------------

    def load(self, port: int, load: Load, *, first: bool = True) -> wrk.WrkResult:
        """Check one answer and warm up (the first time), then the measured wrk run."""
        url = f"{load.scheme}://127.0.0.1:{port}{load.path}"
        headers = [f"Host: {load.host}"] + (["Connection: close"] if load.closing else [])

        def run(duration: float) -> wrk.WrkResult:
            return wrk.run(url, connections=self.connections, duration=duration,
                           headers=headers, cpus=self.load_cpus, closing=load.closing)

        if first:
            preflight(load, port)
            run(self.warmup)  # pools filled, instances warm, caches hot: not measured
        return run(self.duration)


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


def _side(row: Row, which: str) -> Side:
    return {OURS: row.ours, PEER: row.peer}[which]


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


def compare(bench: Bench, loads: Sequence[Load],
            starters: Mapping[str, Callable[[], procs.Server]]) -> None:
    """Start both sides, run every load on each in turn, ``bench.rounds`` times, stop both.

    Each side keeps its best round (highest requests/s): on a shared two-core machine a
    neighbour's burst only ever slows a run down, so the best of alternating rounds is the
    fairest single number; every round's rate is kept in the row's ``extra``.
    Fail soft: a side that does not start fails its side of every row; a load that fails
    fails its row for that side, and the other side is still measured.
    """
    servers: dict[str, procs.Server] = {}
    try:
        for which, start in starters.items():
            bench.log(f"  {which}: {_side(loads[0].row, which).label}")
            try:
                servers[which] = start()
            except Exception as exc:  # noqa: BLE001 - any failure becomes the rows' error
                fail([load.row for load in loads], which, exc)
        failed: set[tuple[str, int]] = set()
        for round_no in range(bench.rounds):
            for which, server in servers.items():
                for i, load in enumerate(loads):
                    if (which, i) not in failed:
                        if not _run_one(bench, which, server, load, round_no):
                            failed.add((which, i))
    finally:
        for server in servers.values():
            server.stop()


def _run_one(bench: Bench, which: str, server: procs.Server, load: Load, round_no: int) -> bool:
    try:
        result = bench.load(server.port, load, first=round_no == 0)
    except Exception as exc:  # noqa: BLE001
        fail([load.row], which, exc, server)
        return False
    load.row.extra.setdefault("rounds", {}).setdefault(which, []).append(round(result.rps))
    side = _side(load.row, which)
    if side.value is None or result.rps > side.value:
        side.value, side.p50_ms, side.p99_ms = result.rps, result.p50_ms, result.p99_ms
        side.notes = result.notes()
    bench.log(f"    {load.row.scenario} round {round_no + 1}: {result.rps:,.0f} req/s, p50 "
              f"{result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms")
    return True
