"""The servers of a run as child processes: nginx, clbscf-proxy, the floor relay, uvicorn.

Owns starting a server (pinned to its CPUs, with a raised open-file limit, output to a log file
in the run's directory; the proxy's access log, on stdout, to a file of its own), knowing when
it is ready (nginx/uvicorn/floor relay: the port accepts; the proxy: its ``listening on`` and
``ready`` lines), its processes (its own tree and its companions'), its memory (VmRSS of the
process and its children, from /proc) and stopping it (SIGTERM, then SIGKILL). Every process
started here is stopped by its own id. Knows nothing of what the servers are configured to do.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

from benchmarks import proctree
from benchmarks.checkout import ProxyCode

ROOT = Path(__file__).resolve().parent.parent
#: open files a server may hold: 10,000 idle clients plus upstream sockets and margin
NOFILE = 65536
_LISTENING = re.compile(r'listening on (https?)://(\S+):(\d+) \(listener "([^"]+)"\)')


class StartError(Exception):
    """A server did not come up; ``log`` holds the tail of its log, the message its last line
    (which, for a Python server, is the exception that stopped it)."""

    def __init__(self, message: str, log: str = "") -> None:
        last = next((line.strip() for line in reversed(log.splitlines()) if line.strip()), "")
        super().__init__(f"{message}: {last}" if last else message)
        self.log = log


def raise_nofile(want: int = NOFILE) -> int:
    """Raise this process's open-file limit as far as allowed; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limit in (want, hard):
        try:
            # root may raise the hard limit too (up to fs.nr_open)
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, max(limit, hard)))
            return limit
        except (ValueError, OSError):
            continue
    return soft


def pinner(cpus: set[int] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` pinning a load generator's process to ``cpus`` (None: not pinned)."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, alive: Server) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive.check_alive()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise StartError(f"{alive.name}: port {port} not open after {timeout:.0f}s", alive.log_tail())


class Server:
    """One child process: ``start()`` launches it (the ``start_*`` functions then wait until it
    answers), ``stop()`` ends it and its companions."""

    def __init__(self, name: str, argv: list[str], log: Path, *, cpus: set[int] | None = None,
                 env: dict[str, str] | None = None, cwd: Path | None = None,
                 stdout: Path | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self.stdout = stdout  # None: stdout goes to ``log`` with stderr
        self.cpus = cpus
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0  # where it answers, once started
        self.companions: list[Server] = []  # processes it needs, stopped after it

    def _child_setup(self) -> None:
        # runs in the child between fork and exec: the limits and the CPUs it inherits
        raise_nofile()
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)

    def start(self) -> Self:
        with self.log.open("ab") as err, (self.stdout or self.log).open("ab") as out:
            # a file, never a pipe: a pipe nobody drains would stall a server that writes
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, env=self.env, cwd=self.cwd,
                                         preexec_fn=self._child_setup)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise StartError(f"{self.name} exited with {self.proc.returncode}", self.log_tail())

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of its output (stdout and stderr together)."""
        try:
            return "\n".join(self.log.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return ""

    def roots(self) -> list[tuple[str, int]]:
        """(name, pid) of this process and of its companions': the trees doing its work."""
        found = [(self.name, self.pid)] if self.proc is not None else []
        return found + [root for companion in self.companions for root in companion.roots()]

    def rss_bytes(self) -> int:
        """Resident memory of the process and all its descendants (worker processes too)."""
        return sum(_rss(pid) for pid in [self.pid, *proctree.descendants(self.pid)])

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for companion in self.companions:
            companion.stop(timeout)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _rss(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0  # it exited between listing and reading
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(match.group(1)) * 1024 if match else 0


# --- the kinds of server ----------------------------------------------------------------


def _listening(server: Server, port: int, timeout: float) -> Server:
    """``server`` (started) once ``port`` accepts; stopped if it never does."""
    server.port = port
    try:
        wait_port(port, timeout, server)
    except BaseException:
        server.stop()
        raise
    return server


def start_nginx(name: str, conf_text: str, port: int, workdir: Path,
                cpus: set[int] | None) -> Server:
    """nginx with its own prefix directory and generated config; the system's is not read."""
    prefix = workdir / name
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(conf_text)
    # -e: the error log before the config is read (else the compiled-in default is opened)
    argv = ["nginx", "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)]
    return _listening(Server(name, argv, prefix / "stdout.log", cpus=cpus).start(), port, 10)


class ProxyServer(Server):
    """clbscf-proxy with a generated config; ``port`` is the one it reports for listener 0."""

    def wait_ready(self, timeout: float = 60.0) -> ProxyServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            text = self.log.read_text(errors="replace") if self.log.exists() else ""
            match = _LISTENING.search(text)
            if match and "clbscf-proxy: ready" in text:
                self.port = int(match.group(3))
                return self
            time.sleep(0.05)
        raise StartError(f"{self.name}: not ready after {timeout:.0f}s", self.log_tail())


def start_proxy(name: str, toml_text: str, workdir: Path, cpus: set[int] | None,
                code: ProxyCode, *, access_log: bool = False) -> ProxyServer:
    """``code``'s proxy; with ``access_log`` its JSON lines go to ``<name>-access.log``."""
    conf = workdir / f"{name}.toml"
    conf.write_text(toml_text)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **code.env}
    argv = [*code.argv, "--config", str(conf), "--log-level", "warning",
            "--state-dir", str(workdir / f"{name}-state")]
    argv += [] if access_log else ["--no-access-log"]
    server = ProxyServer(name, argv, workdir / f"{name}.log", cpus=cpus, env=env, cwd=code.root,
                         stdout=workdir / f"{name}-access.log" if access_log else None)
    server.start()
    try:
        return server.wait_ready()
    except BaseException:
        server.stop()
        raise


def start_floor(name: str, upstream_port: int, workdir: Path, cpus: set[int] | None,
                tls: tuple[Path, Path] | None = None) -> Server:
    """benchmarks/floor_relay.py in front of ``upstream_port`` (HTTPS with ``tls``)."""
    port = free_port()
    argv = [sys.executable, str(ROOT / "benchmarks" / "floor_relay.py"),
            "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{upstream_port}"]
    argv += ["--tls", str(tls[0]), str(tls[1])] if tls else []
    return _listening(Server(name, argv, workdir / f"{name}.log", cpus=cpus).start(), port, 30)


def start_uvicorn(port: int, workdir: Path, cpus: set[int] | None, workers: int = 1) -> Server:
    """uvicorn serving benchmarks/asgi_hello.py (uvloop + httptools, as it picks by default)."""
    argv = [sys.executable, "-m", "uvicorn", "benchmarks.asgi_hello:app", "--host", "127.0.0.1",
            "--port", str(port), "--workers", str(workers), "--no-access-log",
            "--log-level", "warning", "--loop", "uvloop", "--http", "httptools",
            "--backlog", "4096"]
    server = Server(f"uvicorn-{workers}", argv, workdir / f"uvicorn-{workers}.log", cpus=cpus,
                    cwd=ROOT).start()
    return _listening(server, port, 30)
