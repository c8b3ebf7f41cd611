"""The cost of proxy_request_buffering: uploads through the proxy to a CVM target with
buffering on and off, for a few body sizes and both client framings.

For each mode a fresh proxy (one process, access log off) fronts tests/upstreams.py (which reads
Content-Length and chunked bodies and answers with what it got); one client connection sends
``--count`` uploads of each size, one after another, and the script prints the mean time per
upload (client's first byte to the answer) and the proxy's peak RSS growth over its start
(VmHWM - VmRSS at start). With buffering on, bodies over 64 KiB go through an unlinked temp
file in the proxy's state dir, so the time includes writing and reading it (page cache).

    .venv/bin/python benchmarks/uploadbench.py --count 5 --sizes 16k 1m 32m
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.upstreams import Upstream  # noqa: E402

_LISTENING = re.compile(r"listening on http://\S+:(\d+)")
_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "": 1}


def _size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([kmg]?)", text.lower())
    if m is None:
        raise argparse.ArgumentTypeError(f"a size such as 16k or 32m, got {text!r}")
    return int(m[1]) * _UNITS[m[2]]


def _kb(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(m[1]) if m else 0


def _start_proxy(workdir: Path, upstream: str, buffering: bool) -> tuple[subprocess.Popen[bytes],
                                                                           int]:
    conf = workdir / f"upload-{buffering}.toml"
    conf.write_text(f"""
[[listener]]
name = "web"
protocol = "HTTP"
host = "127.0.0.1"
port = 0
client_max_body_size = 1073741824
proxy_request_buffering = {"true" if buffering else "false"}

  [[listener.rule]]
  domain = "up.test"
  url = "/"
  health_check = {{ enabled = false }}
  targets = [{{ type = "CVM", address = "{upstream}" }}]
""")
    log = workdir / f"upload-{buffering}.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", "--config", str(conf), "--no-access-log",
             "--state-dir", str(workdir / "state")], stdout=subprocess.DEVNULL, stderr=err,
            stdin=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log.read_text()
        m = _LISTENING.search(text)
        if m and "clbscf-proxy: ready" in text:
            return proc, int(m[1])
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"the proxy did not start:\n{log.read_text()}")


def _upload(sock: socket.socket, size: int, chunked: bool) -> None:
    block = b"u" * min(size, 1 << 20)
    if chunked:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: up.test\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
    else:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: up.test\r\nContent-Length: %d\r\n\r\n"
                     % size)
    sent = 0
    while sent < size:
        piece = block[:size - sent]
        sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        sent += len(piece)
    if chunked:
        sock.sendall(b"0\r\n\r\n")
    data = b""
    while not (b"\r\n\r\n" in data and data.endswith(b"}")):
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit(f"closed after {data!r}")
        data += chunk
    if not data.startswith(b"HTTP/1.1 200") or b'"received": %d' % size not in data:
        raise SystemExit(f"bad answer: {data[:300]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=5, help="uploads per size and framing")
    parser.add_argument("--sizes", type=_size, nargs="+", default=[16 << 10, 1 << 20, 32 << 20])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="uploadbench-") as tmp:
        upstream = Upstream("U").start()
        try:
            for buffering in (True, False):
                proc, port = _start_proxy(Path(tmp), upstream.address, buffering)
                try:
                    rss0 = _kb(proc.pid, "VmRSS")
                    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
                        # the head and the body are separate writes: no Nagle delay between
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        for size in args.sizes:
                            for chunked in (False, True):
                                start = time.perf_counter()
                                for _ in range(args.count):
                                    _upload(sock, size, chunked)
                                mean = (time.perf_counter() - start) / args.count
                                rows.append((buffering, size, chunked, mean))
                    peak = _kb(proc.pid, "VmHWM") - rss0
                finally:
                    proc.terminate()
                    proc.wait(10)
                rows.append((buffering, -1, False, peak))
        finally:
            upstream.stop()
    print("| buffering | body | framing | mean ms/upload |")
    print("|---|---|---|---|")
    for buffering, size, chunked, value in rows:
        if size >= 0:
            print(f"| {'on' if buffering else 'off'} | {size >> 10} KiB | "
                  f"{'chunked' if chunked else 'Content-Length'} | {value * 1000:.1f} |")
    for buffering, size, _, value in rows:
        if size < 0:
            print(f"peak RSS growth, buffering {'on' if buffering else 'off'}: {value} kB")


if __name__ == "__main__":
    main()
