"""Soak: fixed-rate HTTP/1.1 load for a long time, watching how the server ages.

    .venv/bin/python benchmarks/soak.py --start-proxy --rate 200 --duration 600
    .venv/bin/python benchmarks/soak.py --url http://127.0.0.1:8080/ --pid 1234 --json

Owns an open-loop load generator of its own and the report. Strategy:

- **Open loop.** Request k is due at ``start + k / rate`` whatever happened before it; a
  dispatcher queues each request when it falls due and a pool of keep-alive connections takes
  them in order. Latency runs from the *due* time, not the send time, so a server stall counts
  against every request that waited behind it. A closed loop (send, wait, send) records one
  slow request and then nothing for the length of the stall: coordinated omission.
- A request not answered ``--timeout`` seconds after it fell due is an error (``timeout``),
  whether it was still waiting for a connection or for its answer; so a server that falls
  behind cannot build an unbounded backlog here.
- **Every ``--interval`` seconds** one line (stderr): requests completed, achieved rate,
  errors, p50/p99 of that interval, and the server's RSS and open file descriptors (its whole
  process tree, from /proc: the proxy, its workers, its function instances).
- **At the end** a summary on stdout (``--json``: one JSON object) with RSS and fds at the
  start and the end. Exit status 1 when any request failed or the server process went away.

The server is ``--pid`` (a running one) or ``--start-proxy``: ``clbscf-proxy --listen
127.0.0.1:0`` (the built-in Hello CLB) started and stopped here, its port read from its
``listening on`` line. Knows nothing of the proxy's internals: HTTP and /proc only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import ssl
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import checkout, procs  # noqa: E402

HEAD_LIMIT = 64 * 1024  # the longest response head read; a longer one is an error
#: the clock of due times and latencies: uvloop's loop.time() counts whole milliseconds
now = time.monotonic


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    tls: bool
    request: bytes  # the whole request, sent as is on every exchange

    @classmethod
    def from_url(cls, url: str, method: str = "GET", body: bytes = b"",
                 host_header: str = "") -> Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--url must be http:// or https://, got {url!r}")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = host_header or parts.netloc
        head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: clbscf-soak\r\n"
        if body or method in ("POST", "PUT", "PATCH"):
            head += f"Content-Length: {len(body)}\r\n"
        return cls(parts.hostname, port, tls, (head + "\r\n").encode() + body)


# --- /proc: the server's memory and open files ----------------------------------------------


@dataclass(frozen=True)
class ProcSample:
    """The process tree rooted at a pid: the process itself and all its descendants."""

    processes: int
    rss_bytes: int
    fds: int
    main_rss_bytes: int  # the root process alone: where a leak in the proxy itself shows
    main_fds: int


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass  # it exited between listing and reading
    return 0


def _fds(pid: int) -> int:
    try:
        return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return 0


def _children() -> dict[int, list[int]]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # the command name may hold spaces and ")": the ppid follows the last ")"
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    return parents


def sample_process(pid: int) -> ProcSample | None:
    """None when the process no longer exists."""
    if not Path(f"/proc/{pid}").exists():
        return None
    children, tree, todo = _children(), [pid], [pid]
    while todo:
        found = children.get(todo.pop(), [])
        tree += found
        todo += found
    return ProcSample(len(tree), sum(map(_rss, tree)), sum(map(_fds, tree)), _rss(pid), _fds(pid))


# --- one keep-alive connection ----------------------------------------------------------------


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   request: bytes, head_only: bool = False) -> tuple[int, bool]:
    """Send one request, read its whole response: (status, connection still usable)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    version, status_text = lines[0].split(b" ", 2)[:2]
    status = int(status_text)
    fields: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name:
            fields[name.strip().lower()] = value.strip().lower()
    keep = fields.get(b"connection") != b"close" and version == b"HTTP/1.1"
    # RFC 9112 §6.3: no body after HEAD, 1xx, 204 and 304; then chunked; then Content-Length;
    # otherwise the body runs to the end of the connection.
    if head_only or status < 200 or status in (204, 304):
        return status, keep
    if b"chunked" in fields.get(b"transfer-encoding", b""):
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailer fields
                return status, keep
            await reader.readexactly(size + 2)
    if b"content-length" in fields:
        await reader.readexactly(int(fields[b"content-length"]))
        return status, keep
    await reader.read()
    return status, False


# --- the run ----------------------------------------------------------------------------------


@dataclass
class Window:
    """What completed in one interval (or the whole run)."""

    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: array[float] = field(default_factory=lambda: array("d"))

    @property
    def done(self) -> int:
        return self.ok + sum(self.errors.values())

    def add(self, latency: float, error: str | None) -> None:
        self.latencies.append(latency)
        if error is None:
            self.ok += 1
        else:
            self.errors[error] += 1

    def merged(self, other: Window) -> Window:
        return Window(self.ok + other.ok, self.errors + other.errors,
                      self.latencies + other.latencies)

    def percentiles_ms(self, *qs: float) -> dict[str, float | None]:
        ordered = sorted(self.latencies)
        return {f"p{q:g}": percentile(ordered, q) for q in qs}


def percentile(ordered: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted seconds, in milliseconds (None for no data)."""
    if not ordered:
        return None
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100), at least 1
    return round(ordered[min(len(ordered), int(rank)) - 1] * 1000, 3)


@dataclass(frozen=True)
class Settings:
    target: Target
    rate: float
    duration: float
    connections: int
    interval: float
    timeout: float
    expect_status: int
    insecure: bool


class Soak:
    """One run: the dispatcher, ``connections`` connection tasks and the interval reporter."""

    def __init__(self, settings: Settings, pid: int | None,
                 log: Callable[[str], None] = lambda text: print(text, file=sys.stderr,
                                                                 flush=True)) -> None:
        self.s = settings
        self.pid = pid
        self.log = log
        self.total = Window()
        self.window = Window()
        self.intervals: list[dict[str, Any]] = []
        self._last: tuple[Window, float] | None = None  # the last interval and its length
        self.stopping = asyncio.Event()
        self.scheduled = 0
        self.loop = asyncio.get_running_loop()
        self.start = 0.0
        self.ssl: ssl.SSLContext | None = None
        if settings.target.tls:
            self.ssl = ssl.create_default_context()
            if settings.insecure:  # a self-signed development certificate
                self.ssl.check_hostname = False
                self.ssl.verify_mode = ssl.CERT_NONE

    def record(self, due: float, error: str | None) -> None:
        latency = now() - due
        self.total.add(latency, error)
        self.window.add(latency, error)

    async def _dispatch(self, queue: asyncio.Queue[float | None]) -> None:
        count = int(self.s.rate * self.s.duration)
        while self.scheduled < count and not self.stopping.is_set():
            due = self.start + self.scheduled / self.s.rate
            wait = due - now()
            if wait > 0:
                # at most 0.1 s at a time, so that a low rate still stops soon on SIGINT
                await asyncio.sleep(min(wait, 0.1))
                continue
            queue.put_nowait(due)
            self.scheduled += 1
        for _ in range(self.s.connections):
            queue.put_nowait(None)

    async def _connection(self, queue: asyncio.Queue[float | None]) -> None:
        t = self.s.target
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        head_only = t.request.startswith(b"HEAD ")
        while (due := await queue.get()) is not None:
            deadline = due + self.s.timeout
            if now() >= deadline:
                # waited its whole timeout for a connection: not sent, and the connection,
                # which did nothing wrong, is kept
                self.record(due, "timeout")
                continue
            try:
                if reader is None or writer is None or reader.at_eof():
                    if writer is not None:  # the server closed an idle keep-alive connection
                        writer.close()
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(
                        t.host, t.port, ssl=self.ssl, limit=HEAD_LIMIT),
                        deadline - now())
                assert reader is not None and writer is not None
                status, keep = await asyncio.wait_for(
                    exchange(reader, writer, t.request, head_only),
                    deadline - now())
                self.record(due, None if status == self.s.expect_status else f"status {status}")
            except asyncio.TimeoutError:
                self.record(due, "timeout")
                keep = False
            except (OSError, EOFError, ValueError, asyncio.LimitOverrunError) as exc:
                self.record(due, type(exc).__name__)
                keep = False
            if not keep and writer is not None:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    def _sample(self) -> dict[str, Any] | None:
        if self.pid is None:
            return None
        found = sample_process(self.pid)
        return asdict(found) if found is not None else None

    async def _report(self) -> None:
        last = self.start
        while not self.stopping.is_set():
            try:
                await asyncio.wait_for(self.stopping.wait(), last + self.s.interval - now())
            except asyncio.TimeoutError:
                pass
            at = now()
            self._close_window(at - last, at - self.start)
            last = at

    def _close_window(self, length: float, at: float) -> None:
        window, self.window = self.window, Window()
        tail = self.stopping.is_set() and length < self.s.interval / 2
        if tail and window.done == 0:
            return
        if tail and self._last is not None:
            # the last answers, after the last full interval: counted with that interval, as a
            # rate over a sliver of a second would say nothing (the line is printed again)
            previous, previous_length = self._last
            window, length = previous.merged(window), length + previous_length
            self.intervals.pop()
        self._last = (window, length)
        row = {"t": round(at, 3), "done": window.done, "rate": round(window.done / length, 2),
               "errors": sum(window.errors.values()),
               **{f"{k}_ms": v for k, v in window.percentiles_ms(50, 99).items()},
               "process": self._sample()}
        self.intervals.append(row)
        proc = cast("dict[str, Any]", row["process"] or {})
        self.log(f"[{at:7.1f}s] {row['done']:7d} done  {row['rate']:9.1f} req/s  "
                 f"{row['errors']:5d} errors  p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  "
                 f"rss {proc.get('rss_bytes', 0) / 2**20:.1f} MiB  fds {proc.get('fds', '-')}")

    async def run(self) -> dict[str, Any]:
        queue: asyncio.Queue[float | None] = asyncio.Queue()
        for sig in (signal.SIGINT, signal.SIGTERM):  # stop early, still report
            self.loop.add_signal_handler(sig, self.stopping.set)
        before = self._sample()
        self.start = now()
        workers = [asyncio.create_task(self._connection(queue))
                   for _ in range(self.s.connections)]
        reporter = asyncio.create_task(self._report())
        try:
            await self._dispatch(queue)
            await asyncio.gather(*workers)
        finally:
            self.stopping.set()
            await reporter
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.loop.remove_signal_handler(sig)
        return self.summary(before, self._sample(), now() - self.start)

    def summary(self, before: dict[str, Any] | None, after: dict[str, Any] | None,
                elapsed: float) -> dict[str, Any]:
        total = self.total
        out: dict[str, Any] = {
            "target_rate": self.s.rate, "duration_s": round(elapsed, 3),
            "connections": self.s.connections, "scheduled": self.scheduled,
            "done": total.done, "ok": total.ok, "errors": sum(total.errors.values()),
            "errors_by_kind": dict(total.errors),
            "achieved_rate": round(total.done / elapsed, 2) if elapsed > 0 else 0.0,
            "latency_ms": {**total.percentiles_ms(50, 90, 99, 99.9),
                           "max": round(max(total.latencies, default=0.0) * 1000, 3)},
            "p99_over_time_ms": [row["p99_ms"] for row in self.intervals],
            "intervals": self.intervals,
        }
        if self.pid is not None:
            out["process"] = {"pid": self.pid, "start": before, "end": after,
                              "alive_at_end": after is not None}
        return out


# --- the command line -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="soak.py", description=__doc__.split("\n")[0])
    p.add_argument("--url", help="where to send the load (http:// or https://)")
    p.add_argument("--start-proxy", action="store_true",
                   help="start clbscf-proxy --listen 127.0.0.1:0 here (Hello CLB) and load it")
    p.add_argument("--proxy-arg", action="append", default=[], metavar="ARG",
                   help="with --start-proxy: one more proxy argument (repeatable), "
                        "e.g. --proxy-arg=--workers --proxy-arg=2")
    p.add_argument("--path", default="/", help="with --start-proxy: the path requested")
    p.add_argument("--rate", type=float, default=100.0, help="requests per second (100)")
    p.add_argument("--duration", type=float, default=600.0, help="seconds (600)")
    p.add_argument("--connections", type=int, default=16, help="keep-alive connections (16)")
    p.add_argument("--interval", type=float, default=10.0, help="seconds per report line (10)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds from a request's due time to its answer (10)")
    p.add_argument("--pid", type=int, help="the server's pid, for RSS and fds from /proc")
    p.add_argument("--method", default="GET")
    p.add_argument("--data", default="", help="request body")
    p.add_argument("--host-header", default="", help="Host header (default: from the URL)")
    p.add_argument("--expect-status", type=int, default=200,
                   help="any other status is an error (200)")
    p.add_argument("--insecure", action="store_true", help="https: skip certificate checks")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def render(summary: dict[str, Any]) -> str:
    lat = summary["latency_ms"]
    lines = [f"{summary['done']} requests in {summary['duration_s']} s at "
             f"{summary['achieved_rate']} req/s (target {summary['target_rate']}), "
             f"{summary['errors']} errors {summary['errors_by_kind'] or ''}".rstrip(),
             "latency ms: " + "  ".join(f"{k} {v}" for k, v in lat.items()),
             f"p99 over time (ms): {summary['p99_over_time_ms']}"]
    proc = summary.get("process")
    if proc:
        for when in ("start", "end"):
            s = proc[when]
            lines.append(f"process {when}: " + ("gone" if s is None else
                         f"{s['processes']} processes, rss {s['rss_bytes'] / 2**20:.1f} MiB "
                         f"(main {s['main_rss_bytes'] / 2**20:.1f}), fds {s['fds']} "
                         f"(main {s['main_fds']})"))
    return "\n".join(lines)


async def _soak(settings: Settings, pid: int | None) -> dict[str, Any]:
    return await Soak(settings, pid).run()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if bool(args.url) == args.start_proxy:
        print("soak.py: give exactly one of --url and --start-proxy", file=sys.stderr)
        return 2
    if args.rate <= 0 or args.duration <= 0 or args.connections < 1 or args.interval <= 0:
        print("soak.py: --rate, --duration, --interval must be > 0, --connections >= 1",
              file=sys.stderr)
        return 2
    if args.url:
        try:
            Target.from_url(args.url)
        except ValueError as exc:
            print(f"soak.py: {exc}", file=sys.stderr)
            return 2
    import uvloop

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        server: procs.ProxyServer | None = None
        url, pid = args.url, args.pid
        if args.start_proxy:
            argv_proxy = [*checkout.this_checkout().argv, "--listen", "127.0.0.1:0",
                          "--no-access-log",
                          "--log-level", "warning", "--state-dir", str(Path(tmp) / "state"),
                          *args.proxy_arg]
            server = procs.ProxyServer("clbscf-proxy", argv_proxy, Path(tmp) / "proxy.log",
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                       cwd=procs.ROOT)
            server.start().wait_ready()
            url, pid = f"http://127.0.0.1:{server.port}{args.path}", server.pid
        try:
            target = Target.from_url(url, args.method.upper(), args.data.encode(),
                                     args.host_header)
            settings = Settings(target, args.rate, args.duration, args.connections,
                                args.interval, args.timeout, args.expect_status, args.insecure)
            summary = uvloop.run(_soak(settings, pid))
        finally:
            if server is not None:
                server.stop()
    summary["url"] = url
    print(json.dumps(summary, indent=2) if args.json else render(summary))
    gone = summary.get("process", {}).get("alive_at_end") is False
    return 1 if summary["errors"] or gone else 0


if __name__ == "__main__":
    sys.exit(main())
