"""A real etcd for the store tests: installed when missing, run on loopback, stopped by PID.

``ensure_etcd()`` finds the ``etcd`` program (PATH, then /usr/bin and /usr/local/bin) and, when
it is missing, installs Debian's ``etcd-server`` (and ``etcd-client`` for etcdctl) with
apt-get, running ``apt-get update`` once first if the first attempt fails (a fresh machine has
no package lists). CI runs as root, so ``make test`` needs nothing installed by hand; without
root and without etcd the error says what to install.

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
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.proxyproc import free_port

_APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
_PLACES = ("/usr/bin", "/usr/local/bin")


def _which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in _PLACES:
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def ensure_etcd() -> tuple[str, str]:
    """(etcd, etcdctl) programs, installed from Debian's packages when missing."""
    etcd, etcdctl = _which("etcd"), _which("etcdctl")
    if etcd and etcdctl:
        return etcd, etcdctl
    if os.geteuid() != 0:
        raise RuntimeError("the store tests need etcd and etcdctl: apt-get install etcd-server "
                           "etcd-client (make test installs them itself when run as root)")
    argv = ["apt-get", "install", "-y", "--no-install-recommends", "etcd-server", "etcd-client"]
    if subprocess.run(argv, capture_output=True, env=_APT_ENV).returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, env=_APT_ENV)
        done = subprocess.run(argv, capture_output=True, text=True, env=_APT_ENV)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()[-600:]}")
    etcd, etcdctl = _which("etcd"), _which("etcdctl")
    if not (etcd and etcdctl):
        raise RuntimeError("etcd-server and etcd-client installed, but etcd/etcdctl not found")
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
