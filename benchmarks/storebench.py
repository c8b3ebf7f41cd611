"""Store mode (issue 13): how fast a change reaches a fleet, and what durability costs an action.

1. Propagation: a real etcd (tests/etcd.py: a single member on loopback, data in a temporary
   folder) and ``--instances`` proxies (default 3) started with ``--store``. ``--changes``
   times (default 100) one ``ModifyTargetWeight`` is sent to the first instance, and the
   others are asked (``DescribeTargets``, every ``--poll-ms``) until each shows the new weight.
   One sample is the time from just before the call to the last instance showing it; a random
   pause of up to 0.3 s before each change keeps the changes out of step with the instances'
   polls. The instances read the store's revision every 0.25 s (store/table.py
   POLL_INTERVAL), so a sample is expected between a few ms and a little over 0.25 s.
2. One mutating action: ``--actions`` ``ModifyTargetWeight`` calls (default 50), one after
   another, on one instance in file mode (``--config``: written back into the file atomically,
   with fsync, before the answer) and on one in store mode (an etcd compare-and-swap before
   the answer). Time from the call to the answer.

Prints JSON: p50/p99/mean/max in ms of each. Not part of ``make test`` or ``run.py``.

    .venv/bin/python benchmarks/storebench.py --changes 100 --actions 50
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.clbcall import clb, targets  # noqa: E402
from tests.configs import listener, rule  # noqa: E402
from tests.etcd import Etcd  # noqa: E402
from tests.proxyproc import ProxyProcess  # noqa: E402

WHERE = {"ListenerId": "lbl-web", "Domain": "api.test", "Url": "/"}
TARGET_PORT = 9  # never connected to: the benchmark changes weights, it sends no traffic


def _table() -> str:
    return listener() + rule("api.test", "/", f'[{{ type = "CVM", address = '
                                              f'"127.0.0.1:{TARGET_PORT}", weight = 1 }}]')


def _set_weight(port: int, weight: int) -> None:
    answer = clb(port, "ModifyTargetWeight", {**WHERE, "Targets": [
        {"EniIp": "127.0.0.1", "Port": TARGET_PORT}], "Weight": weight})
    if "Error" in answer:
        raise RuntimeError(f"ModifyTargetWeight failed: {answer['Error']}")


def _weight(port: int) -> int:
    return targets(port)["api.test/"][0][1]


def _summary(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    ms = [s * 1000 for s in ordered]
    return {"count": len(ms), "p50_ms": round(statistics.median(ms), 2),
            "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 2),
            "mean_ms": round(statistics.fmean(ms), 2), "max_ms": round(ms[-1], 2)}


def _weights(count: int) -> list[int]:
    """2..100 and round again: never the same weight twice in a row."""
    return [2 + i % 99 for i in range(count)]


def propagation(url: str, instances: int, changes: int, poll: float) -> dict[str, Any]:
    procs = [ProxyProcess(["--store", url, "--admin", "127.0.0.1:0", "--no-access-log"])
             .start() for _ in range(instances)]
    try:
        first, others = procs[0], procs[1:]
        samples = []
        for weight in _weights(changes):
            # a random pause first, so the changes do not fall in step with the instances'
            # polls (every change just after a poll would measure the whole interval)
            time.sleep(random.uniform(0, 0.3))
            started = time.monotonic()
            _set_weight(first.admin_port, weight)
            waiting = list(others)
            deadline = started + 30
            while waiting:
                waiting = [p for p in waiting if _weight(p.admin_port) != weight]
                if waiting and time.monotonic() > deadline:
                    raise RuntimeError(f"weight {weight} did not reach every instance in 30 s")
                if waiting:
                    time.sleep(poll)
            samples.append(time.monotonic() - started)
        return {"instances": instances, **_summary(samples)}
    finally:
        for proc in procs:
            proc.stop()


def action_time(args: list[str], actions: int) -> dict[str, Any]:
    with ProxyProcess([*args, "--admin", "127.0.0.1:0", "--no-access-log"]) as proc:
        _set_weight(proc.admin_port, 100)  # warm: connections, imports
        samples = []
        for weight in _weights(actions):
            started = time.monotonic()
            _set_weight(proc.admin_port, weight)
            samples.append(time.monotonic() - started)
    return _summary(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--actions", type=int, default=50)
    parser.add_argument("--poll-ms", type=float, default=5.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="storebench-") as folder:
        work = Path(folder)
        table = work / "rules.toml"
        table.write_text(_table())
        with Etcd(work / "etcd") as etcd:
            version = subprocess.run([etcd.program, "--version"], capture_output=True,
                                     text=True).stdout.splitlines()[0]
            url = etcd.store_url("/bench")
            push = subprocess.run([sys.executable, "-m", "proxy.cli", "store", "push",
                                   str(table), "--store", url], capture_output=True, text=True,
                                  cwd=ROOT)
            if push.returncode != 0:
                raise SystemExit(push.stderr)
            result = {
                "etcd": version,
                "propagation": propagation(url, args.instances, args.changes,
                                           args.poll_ms / 1000),
                "action_store_mode": action_time(["--store", url], args.actions),
                "action_file_mode": action_time(["--config", str(table)], args.actions),
            }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
