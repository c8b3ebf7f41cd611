"""Operating the proxy: graceful drain on SIGTERM, zero-drop reload on SIGHUP (issue 7)."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.configs import function, listener, rule, scf_rule
from tests.proxyproc import ProxyProcess, http_get
from tests.upstreams import Upstream

def _config(weights: tuple[int, int], cvm_address: str) -> str:
    """A rule split between the function "echo" and a CVM server by ``weights``."""
    split = (f'[{{ type = "SCF", function = "echo", weight = {weights[0]} }}, '
             f'{{ type = "CVM", address = "{cvm_address}", weight = {weights[1]} }}]')
    return (listener() + rule("ops.test", "/", split) + scf_rule("ops.test", "/sleep", "sleeps")
            + function("echo", "whoami", concurrency=4)
            + function("sleeps", concurrency=20, timeout=10))


def test_sigterm_finishes_in_flight_requests_then_exits_0(tmp_path: Path,
                                                         cvm: Upstream) -> None:
    with ProxyProcess.with_config(_config((10, 10), cvm.address), tmp_path) as proxy:
        port = proxy.port()
        results: list[int] = []
        lock = threading.Lock()

        def slow() -> None:
            status = http_get(port, "ops.test", "/sleep?seconds=1.5", 20)[0]
            with lock:
                results.append(status)

        threads = [threading.Thread(target=slow) for _ in range(20)]
        for t in threads:
            t.start()
        # all 20 are in flight once 20 instances are busy: wait for their cold starts
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proxy.stderr.count("cold start") < 20:
            time.sleep(0.05)
        assert proxy.proc is not None
        proxy.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        for t in threads:
            t.join(20)
        assert results == [200] * 20
        assert proxy.proc.wait(20) == 0


def _split(port: int, n: int) -> dict[str, int]:
    """n requests on one keep-alive connection; how many the function and the CVM served."""
    counts = {"echo": 0, "cvm": 0}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    for _ in range(n):
        conn.request("GET", "/", headers={"Host": "ops.test"})
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, body
        counts["cvm" if body == b"cvm" else json.loads(body)["function"]] += 1
    conn.close()
    return counts


@pytest.mark.parametrize("workers", [1, 2])
def test_reload_under_load_drops_nothing_and_follows_weights(tmp_path: Path, cvm: Upstream,
                                                             workers: int) -> None:
    """20 reloads moving a rule between a function and a CVM server while 4 keep-alive
    clients keep sending: nothing fails, and each new split follows the new weights.

    The split is measured while the 4 clients hold their next request: the balancer is
    deterministic (smooth WRR), so a client sharing it with others sees a share that depends
    on how their requests interleave with its own (a slow function answer lets the others take
    the picks that follow), not only on the weights."""
    config_path = tmp_path / "rules.toml"
    weights_cycle = [(100, 0), (0, 100), (30, 70)]
    marker = "config reloaded" if workers == 1 else f"config applied to {workers} workers"
    with ProxyProcess.with_config(_config(weights_cycle[0], cvm.address), tmp_path,
                                  "--workers", str(workers)) as proxy:
        port = proxy.port()
        stop = threading.Event()
        hold = threading.Event()  # set: the clients send nothing new
        busy = threading.Semaphore(4)  # one for each client with a request in flight
        failures: list[str] = []
        served = [0]

        def load() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            while not stop.is_set():
                if hold.is_set():
                    time.sleep(0.002)
                    continue
                busy.acquire()
                try:
                    conn.request("GET", "/", headers={"Host": "ops.test"})
                    resp = conn.getresponse()
                    resp.read()
                    if resp.status != 200:
                        failures.append(f"status {resp.status}")
                    served[0] += 1
                except Exception as exc:  # noqa: BLE001 - any failure counts
                    failures.append(repr(exc))
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
                finally:
                    busy.release()
            conn.close()

        clients = [threading.Thread(target=load) for _ in range(4)]
        for c in clients:
            c.start()
        assert proxy.proc is not None
        for i in range(20):
            weights = weights_cycle[(i + 1) % len(weights_cycle)]
            config_path.write_text(_config(weights, cvm.address))
            proxy.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while proxy.stderr.count(marker) < i + 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert proxy.stderr.count(marker) == i + 1
            hold.set()
            for _ in range(4):  # every client's request in flight has been answered
                busy.acquire()
            counts = _split(port, 100)
            for _ in range(4):
                busy.release()
            hold.clear()
            # one connection reaches one worker: its balancer alone decides, give or take
            # the picks a request that raced the hold made
            assert abs(counts["echo"] - weights[0]) <= 5, (i, weights, counts)
        stop.set()
        for c in clients:
            c.join(20)
        assert failures == []
        assert served[0] > 100


def test_bad_config_on_reload_keeps_the_running_one(tmp_path: Path, cvm: Upstream) -> None:
    with ProxyProcess.with_config(_config((100, 0), cvm.address), tmp_path) as proxy:
        (tmp_path / "rules.toml").write_text(
            _config((100, 0), cvm.address).replace("weight = 100", "weight = 150"))
        assert proxy.proc is not None
        proxy.proc.send_signal(signal.SIGHUP)
        proxy.wait_for_log("reload refused")
        assert "weight: must be 0..100, got 150" in proxy.stderr
        assert http_get(proxy.port(), "ops.test", "/", 20)[0] == 200
