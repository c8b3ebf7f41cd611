"""``--reload`` turnaround: how long from saving a function's file to the first answer that
comes from the new code (issue 16, item 5).

Strategy: write a function whose answer names its version into a temporary directory, start
the real proxy on it with ``--reload`` (``--workers N`` optional), warm it up, then ``--edits``
times: write version k (the clock starts just before the write), and ask the proxy again and
again on new connections, ``--poll-ms`` apart, until an answer says version k; that time is
one sample. The proxy's own log says when it saw the change (``code changed``), so each sample
is also split into *noticed* (the write to the proxy's log line, read as it arrives) and the
rest (the recycle and the warm instance answering). Prints the samples and a summary as JSON.

Knows nothing of the proxy's internals: only its command line, its port line and its log.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on http://\S+:(\d+) ")
HANDLER = '''\
def main_handler(event, context):
    return {{"statusCode": 200, "headers": {{"Content-Type": "text/plain"}},
            "body": "version {version}"}}
'''
CONFIG = '''\
[[listener]]
name = "web"
protocol = "HTTP"
host = "127.0.0.1"
port = 0

  [[listener.rule]]
  domain = "reload.test"
  url = "/"
  targets = [{{ type = "SCF", function = "live" }}]

[[function]]
name = "live"
handler = "index.main_handler"
code = {code}
'''


def summarize(samples: list[float]) -> dict[str, float]:
    """Median, 90th percentile (nearest rank), min and max of ``samples`` (ms)."""
    ordered = sorted(samples)
    rank = max(0, math.ceil(0.9 * len(ordered)) - 1)
    return {"median_ms": round(statistics.median(ordered), 1),
            "p90_ms": round(ordered[rank], 1),
            "min_ms": round(ordered[0], 1), "max_ms": round(ordered[-1], 1)}


class Proxy:
    """The proxy process, its port and its error log lines with their arrival times."""

    def __init__(self, config: Path, workers: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", "--config", str(config), "--reload",
             "--workers", str(workers), "--no-access-log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            cwd=ROOT)
        self.lines: list[tuple[float, str]] = []
        self.port = 0
        self._ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._ready.wait(60):
            self.stop()
            raise SystemExit("the proxy did not start:\n" + "\n".join(l for _, l in self.lines))

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for raw in iter(self.proc.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append((time.perf_counter(), line))
            match = LISTENING.search(line)
            if match:
                self.port = int(match.group(1))
            if "clbscf-proxy: ready" in line:
                self._ready.set()

    def noticed_after(self, since: float, count: int) -> float | None:
        """When the ``count``-th ``code changed`` line after ``since`` arrived, if it has."""
        times = [t for t, line in list(self.lines) if t >= since and "code changed" in line]
        return times[count - 1] if len(times) >= count else None

    def get(self) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/", headers={"Host": "reload.test"})
            response = conn.getresponse()
            return response.read().decode("utf-8", "replace")
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def measure(edits: int, workers: int, poll_ms: float, settle_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="reload-bench-") as tmp:
        code = Path(tmp) / "live"
        code.mkdir()
        (code / "index.py").write_text(HANDLER.format(version=0))
        config = Path(tmp) / "rules.toml"
        config.write_text(CONFIG.format(code=json.dumps(str(code))))
        proxy = Proxy(config, workers)
        try:
            while proxy.get() != "version 0":
                time.sleep(0.05)
            samples, noticed = [], []
            for k in range(1, edits + 1):
                time.sleep(settle_s)  # let the previous recycle finish: one edit at a time
                started = time.perf_counter()
                (code / "index.py").write_text(HANDLER.format(version=k))
                while proxy.get() != f"version {k}":
                    if time.perf_counter() - started > 30:
                        raise SystemExit(f"edit {k}: no new answer within 30 s")
                    time.sleep(poll_ms / 1000.0)
                samples.append((time.perf_counter() - started) * 1000.0)
                seen = proxy.noticed_after(started, workers)
                if seen is not None:
                    noticed.append((seen - started) * 1000.0)
        finally:
            proxy.stop()
    return {"edits": edits, "workers": workers, "poll_ms": poll_ms,
            "turnaround_ms": [round(s, 1) for s in samples], "turnaround": summarize(samples),
            "noticed": summarize(noticed) if noticed else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edits", type=int, default=10, help="edits measured (default 10)")
    parser.add_argument("--workers", type=int, default=1, help="proxy worker processes")
    parser.add_argument("--poll-ms", type=float, default=5.0,
                        help="pause between two requests while waiting (default 5 ms)")
    parser.add_argument("--settle", type=float, default=0.5,
                        help="seconds between two edits (default 0.5)")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.edits, args.workers, args.poll_ms, args.settle), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
