"""A real etcd for the store tests: installed when missing, run on loopback, stopped by PID.

``ensure_etcd()`` finds ``etcd`` and ``etcdctl``, installing Debian's ``etcd-server`` and
``etcd-client`` when they are missing (tests/debian.py).

``Etcd`` is one single-member cluster: a data folder under the test's tmp path, client and
peer URLs on free loopback ports, started with ``start()``, stopped (SIGTERM, then SIGKILL)
with ``stop()`` and started again on the same ports and data with ``start()`` (the restart
tests), ``kill()`` for a hard stop. ``put``/``get`` go through etcd's v3 JSON gateway (what a
person would do with etcdctl or curl); ``etcdctl(...)`` runs the real etcdctl against it.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests import debian
from tests.proxyproc import free_port

def ensure_etcd() -> tuple[str, str]:
    """(etcd, etcdctl) programs, installed from Debian's packages when missing."""
    etcd, etcdctl = debian.ensure(("etcd", "etcdctl"), ("etcd-server", "etcd-client"),
                                  "the store tests")
    return etcd, etcdctl


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Etcd:
    def __init__(self, data_dir: Path, *, extra: tuple[str, ...] = (),
                 scheme: str = "http") -> None:
        self.program, self.etcdctl_program = ensure_etcd()
        self.data_dir = data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.client_port = free_port()
        self.peer_port = free_port()
        self.extra = extra
        self.scheme = scheme
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}.log"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.endpoint}"

    def store_url(self, prefix: str = "/clbscf") -> str:
        return f"{'etcds' if self.scheme == 'https' else 'etcd'}://{self.endpoint}{prefix}"

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Etcd:
        peer = f"http://127.0.0.1:{self.peer_port}"
        argv = [self.program, "--name", "test", "--data-dir", str(self.data_dir / "data"),
                "--listen-client-urls", self.client_url, "--advertise-client-urls",
                self.client_url, "--listen-peer-urls", peer, "--initial-advertise-peer-urls",
                peer, "--initial-cluster", f"test={peer}", "--initial-cluster-state", "new",
                "--log-level", "warn", *self.extra]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}:\n"
                                   f"{self.log_path.read_text()[-2000:]}")
            if self.healthy():
                return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"etcd did not start in {timeout}s:\n"
                           f"{self.log_path.read_text()[-2000:]}")

    def healthy(self) -> bool:
        if self.scheme != "http":
            return self.proc is not None and self.proc.poll() is None and _tcp_open(
                self.client_port)
        try:
            with urllib.request.urlopen(f"{self.client_url}/health", timeout=2) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def stop(self, timeout: float = 15.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)

    def __enter__(self) -> Etcd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the data, as an operator would touch it --------------------------------------------

    def _gateway(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(f"{self.client_url}/v3/{path}",
                                         data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            answer: dict[str, Any] = json.loads(resp.read())
        return answer

    def put(self, key: str, value: str) -> int:
        """Write ``key`` directly (as ``etcdctl put`` would); etcd's new revision."""
        answer = self._gateway("kv/put", {"key": _b64(key), "value": _b64(value)})
        return int(answer["header"]["revision"])

    def get(self, key: str) -> tuple[str | None, int]:
        """(value or None, mod_revision)."""
        answer = self._gateway("kv/range", {"key": _b64(key)})
        kvs = answer.get("kvs") or []
        if not kvs:
            return None, 0
        return (base64.b64decode(kvs[0].get("value", "")).decode(),
                int(kvs[0]["mod_revision"]))

    def etcdctl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "ETCDCTL_API": "3"}
        return subprocess.run([self.etcdctl_program, "--endpoints", self.client_url, *args],
                              input=stdin, capture_output=True, text=True, timeout=30, env=env)


def _tcp_open(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
