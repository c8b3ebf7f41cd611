"""Starting, pinning, weighing and stopping servers; ``compare`` filling rows (the floor
relay's too, and the CPU time per request) or failing them softly (the row says why, the run
goes on); the proxy's access log to a file."""

from __future__ import annotations

import http.client
import http.server
from contextlib import AbstractContextManager
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from benchmarks.tests.servers import serving
from benchmarks import confs, procs, proctree
from benchmarks.harness import FLOOR, OURS, PEER, Bench, Load, compare, pick_round
from benchmarks.report import Row, Side

FAKE_PROXY = """\
import sys, time
print('clbscf-proxy: listening on http://127.0.0.1:4321 (listener "bench")', file=sys.stderr)
print('clbscf-proxy: ready', file=sys.stderr, flush=True)
time.sleep(60)
"""
# a parent whose child holds 64 MB and exits once its parent is gone
TREE = """\
import subprocess, sys, time
child = ("import os, time\\nb = bytearray(64 << 20)\\nb[::4096] = b'x' * len(b[::4096])\\n"
         "p = os.getppid()\\nprint('child ready', flush=True)\\n"
         "while os.getppid() == p: time.sleep(0.05)\\n")
subprocess.Popen([sys.executable, "-c", child])
time.sleep(60)
"""


def python_server(tmp_path: Path, code: str, cls: type[procs.Server] = procs.Server,
                  cpus: set[int] | None = None) -> procs.Server:
    return cls("fake", [sys.executable, "-c", code], tmp_path / "fake.log", cpus=cpus).start()


def test_proxy_port_is_read_from_its_listening_line(tmp_path: Path) -> None:
    server = python_server(tmp_path, FAKE_PROXY, procs.ProxyServer)
    try:
        assert isinstance(server, procs.ProxyServer)
        assert server.wait_ready(10).port == 4321
    finally:
        server.stop()
    assert server.proc is not None and server.proc.returncode is not None


def test_crashed_server_error_names_its_last_log_line(tmp_path: Path) -> None:
    code = "import sys\nprint('starting')\nraise SystemExit('boom: no module named x')"
    server = python_server(tmp_path, code, procs.ProxyServer)
    assert isinstance(server, procs.ProxyServer)
    with pytest.raises(procs.StartError, match="fake exited with 1: boom: no module") as info:
        server.wait_ready(10)
    assert "starting" in info.value.log


def test_server_runs_pinned_with_a_raised_open_file_limit(tmp_path: Path) -> None:
    expected = procs.raise_nofile()
    cpu = min(os.sched_getaffinity(0))
    server = python_server(tmp_path, "import time; time.sleep(60)", cpus={cpu})
    try:
        assert os.sched_getaffinity(server.pid) == {cpu}
        limits = Path(f"/proc/{server.pid}/limits").read_text()
        line = next(li for li in limits.splitlines() if li.startswith("Max open files"))
        assert int(line.split()[3]) == expected
    finally:
        server.stop()


def test_memory_counts_the_children_too(tmp_path: Path) -> None:
    server = python_server(tmp_path, TREE)
    try:
        deadline = time.monotonic() + 10
        while "child ready" not in server.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        own = procs._rss(server.pid)
        assert own < 32 << 20
        assert server.rss_bytes() >= own + (60 << 20)
    finally:
        children = proctree.descendants(server.pid)
        server.stop()
        for pid in children:  # they exit by themselves once the parent is gone; make sure
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def bench(tmp_path: Path, rounds: int = 1, statistic: str = "median") -> Bench:
    return Bench(tmp_path, duration=1, connections=4, sut_cpus=None, load_cpus=None,
                 idle_connections=10, rounds=rounds, statistic=statistic, log=lambda text: None)


def row() -> Row:
    return Row("cvm", "", "req/s", Side("clbscf-proxy"), Side("nginx"))


def origin(tmp_path: Path) -> procs.Server:
    port = procs.free_port()
    return procs.start_nginx("origin", confs.nginx_conf(tmp_path / "origin",
                                                        confs.origin_server(port)),
                             port, tmp_path, None)


def crashed() -> procs.Server:
    raise procs.StartError("proxy-cvm exited with 1", "Traceback\nImportError: nope")


def test_side_that_does_not_start_fails_every_row(tmp_path: Path) -> None:
    rows = [row(), row()]
    compare(bench(tmp_path), [Load(r, b"hello") for r in rows], {OURS: crashed})
    for r in rows:
        assert r.error == "ours: proxy-cvm exited with 1: ImportError: nope"
        assert r.extra["ours_log"].endswith("ImportError: nope")
        assert r.ours.value is None


def test_peer_is_still_measured_when_ours_does_not_start(tmp_path: Path) -> None:
    r = row()
    compare(bench(tmp_path), [Load(r, confs.ORIGIN_BODY.encode())],
            {OURS: crashed, PEER: lambda: origin(tmp_path)})
    assert r.error.startswith("ours: ")
    assert r.peer.value is not None and r.peer.value > 100


class _BadGateway(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.send_response(502)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"bad")

    def log_message(self, *args: object) -> None:
        pass


def bad_gateway() -> AbstractContextManager[int]:
    return serving(_BadGateway)


def test_wrong_answer_fails_the_row_before_any_load(tmp_path: Path) -> None:
    r = row()
    with bad_gateway() as port:
        fake = procs.Server("proxy-cvm", [], tmp_path / "none.log")
        fake.port = port
        compare(bench(tmp_path), [Load(r, b"hello")], {OURS: lambda: fake})
    assert r.error.startswith("ours: GET / (Host bench.local) answered 502 b'bad'")
    assert r.ours.value is None


@pytest.mark.parametrize(("rates", "median", "best"), [
    ([5.0], 0, 0),
    ([3.0, 9.0, 6.0], 2, 1),
    ([9.0, 3.0], 1, 0),  # even: the lower of the middle two
    ([4.0, 8.0, 1.0, 6.0], 0, 1),
    ([2.0, 2.0, 2.0], 1, 2),  # ties: by round order
])
def test_pick_round_keeps_the_median_or_the_best(rates: list[float], median: int,
                                                 best: int) -> None:
    assert pick_round(rates, "median") == median
    assert pick_round(rates, "best") == best


def test_pick_round_refuses_an_unknown_statistic() -> None:
    with pytest.raises(ValueError, match="unknown statistic 'mean'"):
        pick_round([1.0], "mean")


@pytest.mark.parametrize("statistic", ["median", "best"])
def test_each_side_keeps_the_round_its_statistic_picks_of_real_wrk_runs(
        tmp_path: Path, statistic: str) -> None:
    r = row()
    compare(bench(tmp_path, rounds=3, statistic=statistic),
            [Load(r, confs.ORIGIN_BODY.encode())], {PEER: lambda: origin(tmp_path)})
    assert not r.error, r.error
    rounds = r.extra["rounds"]["peer"]
    assert len(rounds) == 3 and "ours" not in r.extra["rounds"]
    kept = pick_round(rounds, statistic)
    assert r.peer.value is not None and round(r.peer.value) == rounds[kept]
    assert r.peer.cpu_us_per_request == r.extra["cpu_rounds"]["peer"][kept]
    assert r.peer.p50_ms is not None and r.peer.p99_ms is not None
    assert 0 < r.peer.p50_ms <= r.peer.p99_ms


def test_floor_fills_its_row_beside_the_same_peer_runs_with_cpu_per_request(
        tmp_path: Path) -> None:
    b = bench(tmp_path)
    main, floor = row(), Row("cvm-floor", "", "req/s", Side("floor relay"), Side("-"))
    floor.peer = main.peer
    with b.stack:
        compare(b, [Load(main, confs.ORIGIN_BODY.encode(), floor=floor)],
                {PEER: lambda: b.nginx_proxy("nginx-cvm", b.origin_port()),
                 FLOOR: lambda: b.floor("floor-cvm")})
    assert not main.error and not floor.error, (main.error, floor.error)
    assert main.ours.value is None and floor.ours.value is not None and floor.ours.value > 100
    assert floor.extra["rounds"].keys() == {"ours", "peer"}
    assert main.extra["rounds"].keys() == {"peer"}
    peer_cpu, floor_cpu = main.peer.cpu_processes, floor.ours.cpu_processes
    assert [(p["name"], p["comm"]) for p in peer_cpu] == [("nginx-cvm", "nginx")]
    assert floor_cpu[0]["name"] == "floor-cvm" and floor_cpu[0]["pid"] != peer_cpu[0]["pid"]
    for side in (main.peer, floor.ours):
        assert side.cpu_us_per_request is not None and side.cpu_us_per_request > 0
        assert side.cpu_us_per_request == round(sum(
            float(str(p["us_per_request"])) for p in side.cpu_processes), 2)
        # the kernel's part: loopback networking is system time, and never more than the whole
        assert side.cpu_system_us_per_request is not None
        assert 0 < side.cpu_system_us_per_request <= side.cpu_us_per_request
        assert side.cpu_system_us_per_request == round(sum(
            float(str(p["system_us_per_request"])) for p in side.cpu_processes), 2)
        # the origin is in neither side's figure but measured in the same runs
        assert side.origin_cpu_us_per_request is not None and side.origin_cpu_us_per_request > 0


def test_proxy_access_log_goes_to_a_file_of_its_own(tmp_path: Path) -> None:
    from benchmarks.scenarios import cvm_toml

    b = bench(tmp_path)
    with b.stack:
        server = b.proxy("proxy-log", cvm_toml(b), access_log=True)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.request("GET", "/logged", headers={"Host": confs.BENCH_DOMAIN})
            assert conn.getresponse().read() == confs.ORIGIN_BODY.encode()
            conn.close()
            access = tmp_path / "proxy-log-access.log"
            deadline = time.monotonic() + 5
            while not access.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)  # the proxy flushes its buffer within FLUSH_INTERVAL
        finally:
            server.stop()
    (line,) = access.read_text().splitlines()
    record = json.loads(line)
    assert (record["path"], record["status"]) == ("/logged", 200)
    assert "listening on" in server.log.read_text()  # stderr stays in the server's log
