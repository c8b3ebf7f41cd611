"""Issue 4 through the real proxy process: the local runtime's lifecycle and limits as a client
sees them (tests/integration/test_local_runtime.py drives LocalFunctions directly, in detail).
"""

from __future__ import annotations

import http.client
import json
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.configs import function, listener, scf_rule
from tests.proxyproc import ProxyProcess

HELLO = b"<html><body><h1>Hello CLB</h1></body></html>"


_PATHS = ("sleeps", "hog", "counter", "printer", "crash", "many", "ahead")
CONFIG = (listener() + "".join(scf_rule("rt.test", f"/{name}", name) for name in _PATHS)
          + function("sleeps", concurrency=4, timeout=10, queue_size=10)
          + function("hog", memory=128) + function("counter", concurrency=1)
          + function("printer") + function("crash") + function("many", "counter", concurrency=8)
          + function("ahead", "printer", concurrency=1, invocations_ahead=4))


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    with ProxyProcess.with_config(CONFIG, tmp_path_factory.mktemp("rt")) as proc:
        yield proc


def _get(port: int, path: str, conn: http.client.HTTPConnection | None = None
         ) -> tuple[int, bytes]:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Host": "rt.test"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        if own:
            conn.close()


def _descendants(pid: int) -> list[int]:
    """Live processes below ``pid`` (its function instances and their children), from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
        except OSError:
            continue
        if fields[0] != b"Z":
            parents[int(entry)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent]
        found.extend(children)
        frontier.extend(children)
    return found


def test_four_requests_run_in_parallel_and_the_fifth_waits(proxy: ProxyProcess) -> None:
    port = proxy.port()
    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda _: _get(port, "/sleeps?seconds=0.8"), range(5)))
    assert [status for status, _ in answers] == [200] * 5
    runs = sorted((json.loads(body) for _, body in answers), key=lambda r: r["started"])
    first_four, fifth = runs[:4], runs[4]
    assert max(r["started"] for r in first_four) < min(r["ended"] for r in first_four)
    assert fifth["started"] >= min(r["ended"] for r in first_four) - 0.01
    assert len({r["pid"] for r in runs}) == 4


def test_consecutive_requests_are_served_by_the_same_warm_instance(proxy: ProxyProcess) -> None:
    port = proxy.port()
    calls = [json.loads(_get(port, "/counter")[1]) for _ in range(3)]
    assert [c["calls"] for c in calls] == [1, 2, 3]
    assert len({c["pid"] for c in calls}) == 1
    records = proxy.access_records("/counter", 3)
    # the instance the start-up check started is the warm one: no request paid a cold start
    assert [r["cold_start"] for r in records] == [False, False, False]
    assert all(r["function_request_id"] for r in records)
    assert "cold start function=default/counter" not in proxy.stderr


def test_memory_hog_gives_502_and_the_function_recovers(proxy: ProxyProcess) -> None:
    port = proxy.port()
    assert _get(port, "/hog?mb=400")[0] == 502
    proxy.wait_for_log("memory limit of 128 MB exceeded")
    status, body = _get(port, "/hog?mb=16")
    assert (status, body) == (200, b"allocated 16 MB")


def test_crash_gives_502_and_the_next_request_gets_a_new_instance(proxy: ProxyProcess) -> None:
    port = proxy.port()
    assert _get(port, "/crash?how=exit")[0] == 502
    assert _get(port, "/crash?how=segv")[0] == 502
    assert _get(port, "/counter")[0] == 200


def test_print_output_reaches_the_log_with_the_request_id(proxy: ProxyProcess) -> None:
    assert _get(proxy.port(), "/printer") == (200, b"printed")
    [record] = proxy.access_records("/printer", 1)
    request_id = record["function_request_id"]
    for what in ("print to stdout", "print to stderr", "fd write", "child process"):
        log = proxy.wait_for_log(f"{what} {request_id}")
        line = next(l for l in log.splitlines() if f"{what} {request_id}" in l)
        assert "default/printer" in line and request_id in line.split(what)[0]
    # nothing a handler prints reaches the access log (stdout) or breaks the protocol
    assert all(line.startswith("{") for line in proxy.stdout_lines)
    assert _get(proxy.port(), "/printer")[0] == 200


def test_a_thousand_requests_over_50_connections_succeed_and_leak_no_instance(
        proxy: ProxyProcess) -> None:
    port = proxy.port()
    failures: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for _ in range(20):
                status, body = _get(port, "/many", conn)
                if status != 200:
                    with lock:
                        failures.append(f"{status} {body[:80]!r}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert failures == []
    # `many` starts at most its concurrency (8) instances; the OS sees no more processes than
    # the concurrency of every function of this proxy together (other tests left some warm)
    many = proxy.access_records("/many", 1000)
    assert len(many) == 1000
    assert sum(r["cold_start"] for r in many) <= 8
    assert len(_descendants(proxy.pid)) <= 8 + 4 + 1 + 1 + 1 + 1 + 1 + 1


def test_invocations_sent_ahead_keep_their_output_under_their_request_ids(
        proxy: ProxyProcess) -> None:
    port = proxy.port()

    def client(_: int) -> list[int]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            return [_get(port, "/ahead", conn)[0] for _ in range(10)]
        finally:
            conn.close()

    with ThreadPoolExecutor(12) as pool:
        statuses = [s for batch in pool.map(client, range(12)) for s in batch]
    assert statuses == [200] * 120
    records = proxy.access_records("/ahead", 120)
    # one instance ran them all, most of them sent ahead while it ran another
    assert sum(r["cold_start"] for r in records) <= 1
    proxy.wait_for_log(f"child process {records[-1]['function_request_id']}")
    lines = [line for line in proxy.stderr.splitlines() if "function=default/ahead " in line]
    for record in records:
        request_id = record["function_request_id"]
        for what in ("print to stdout", "print to stderr", "fd write", "child process"):
            [line] = [line for line in lines if f"{what} {request_id}" in line]
            assert f"request_id={request_id} " in line


def test_the_hello_clb_code_runs_unchanged(tmp_path: Path) -> None:
    with ProxyProcess(["--listen", "127.0.0.1:0"]) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port(), timeout=10)
        for _ in range(20):  # keep-alive, many in a row
            conn.request("GET", "/")
            resp = conn.getresponse()
            assert (resp.status, resp.getheader("Content-Type"), resp.read()) == \
                (200, "text/html", HELLO)
        conn.close()
