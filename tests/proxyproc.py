"""Start the real ``clbscf-proxy`` process for integration tests, and talk to it.

``ProxyProcess`` writes a config, starts ``python -m proxy.cli`` with it, waits for the
``listening on`` lines on stderr (the real ports, since test configs use port 0), collects
stdout (the access log) and stderr (the error log) in background threads, and stops the process
with SIGTERM (SIGKILL if it does not go). Use it as a context manager.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r'listening on (https?)://(\S+):(\d+) \(listener "([^"]+)"\)')
ADMIN = re.compile(r"clbscf-proxy: admin on http://(\S+):(\d+)")


class ProxyProcess:
    def __init__(self, args: list[str], *, env: dict[str, str] | None = None,
                 cwd: Path | None = None, start_timeout: float = 20.0) -> None:
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.cwd = cwd
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self.ports: dict[str, int] = {}
        self.schemes: dict[str, str] = {}
        #: the admin API's port (with --admin HOST:0), once announced
        self.admin_port = 0
        self._ready = threading.Event()
        self._lock = threading.Lock()

    @classmethod
    def with_config(cls, config_text: str, tmp_path: Path, *extra: str,
                    **kwargs: Any) -> ProxyProcess:
        path = tmp_path / "rules.toml"
        path.write_text(config_text)
        return cls(["--config", str(path), *extra], **kwargs)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> ProxyProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", *self.args], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=self.env,
            cwd=self.cwd or ROOT,
        )
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout_lines),
                         daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr_lines),
                         daemon=True).start()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                time.sleep(0.1)
                raise RuntimeError(f"proxy exited with {self.proc.returncode}:\n{self.stderr}")
            if self._ready.wait(0.05):
                return self
        self.stop()
        raise RuntimeError(f"proxy did not start in {self.start_timeout}s:\n{self.stderr}")

    def _pump(self, stream: Any, sink: list[str]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                sink.append(line)
            m = LISTENING.search(line)
            if m and sink is self.stderr_lines:
                self.schemes[m.group(4)] = m.group(1)
                self.ports[m.group(4)] = int(m.group(3))
            admin = ADMIN.search(line)
            if admin and sink is self.stderr_lines:
                self.admin_port = int(admin.group(2))
            if sink is self.stderr_lines and "clbscf-proxy: ready" in line:
                self._ready.set()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return proc.returncode

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what it said -----------------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def stderr(self) -> str:
        with self._lock:
            return "\n".join(self.stderr_lines)

    def access_log(self) -> list[dict[str, Any]]:
        with self._lock:
            lines = list(self.stdout_lines)
        return [json.loads(line) for line in lines if line.startswith("{")]

    def access_records(self, path: str, count: int, timeout: float = 5.0
                       ) -> list[dict[str, Any]]:
        """The access-log records of ``path``, once there are ``count`` of them (or what
        there is after ``timeout``: the log is written a little after the response)."""
        deadline = time.monotonic() + timeout
        while True:
            records = [r for r in self.access_log() if r["path"] == path]
            if len(records) >= count or time.monotonic() > deadline:
                return records
            time.sleep(0.05)

    def wait_for_log(self, needle: str, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.stderr
            if needle in text:
                return text
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not in the error log:\n{self.stderr}")

    def port(self, listener: str | None = None) -> int:
        if listener is None:
            return next(iter(self.ports.values()))
        return self.ports[listener]

    def url(self, path: str = "/", listener: str | None = None) -> str:
        name = listener or next(iter(self.ports))
        return f"{self.schemes[name]}://127.0.0.1:{self.ports[name]}{path}"


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of ``pid`` in kB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmHWM", "VmRSS")):
            name, value = line.split(":")
            fields[name] = int(value.split()[0])
    return fields


def http_get(port: int, host: str, path: str = "/", timeout: float = 10.0
             ) -> tuple[int, bytes]:
    """One GET on a fresh connection to the proxy on ``port``: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raw_exchange(port: int, data: bytes, *, timeout: float = 5.0, host: str = "127.0.0.1",
                 until_close: bool = True) -> bytes:
    """Send raw bytes, read until the server closes (or the timeout); the bytes received."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not until_close:
                break
        return b"".join(chunks)
