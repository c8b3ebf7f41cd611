"""benchmarks/soak.py: response framing, percentiles, /proc sampling and the open loop.

The open-loop tests run the real ``Soak`` against a small in-process server on port 0 that
stalls or never answers on purpose; the end-to-end run against the real proxy is in
tests/integration/test_soak.py.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from benchmarks import soak

# --- framing ----------------------------------------------------------------------------------


class _Sink:
    """Stands in for the StreamWriter: exchange() only writes the request."""

    def __init__(self) -> None:
        self.sent = b""

    def write(self, data: bytes) -> None:
        self.sent += data


def _exchanges(wire: bytes, count: int, head_only: bool = False) -> list[tuple[int, bool]]:
    async def go() -> list[tuple[int, bool]]:
        reader = asyncio.StreamReader()
        reader.feed_data(wire)
        reader.feed_eof()
        sink = _Sink()
        out = [await soak.exchange(reader, sink, b"GET / HTTP/1.1\r\n\r\n",  # type: ignore[arg-type]
                                   head_only) for _ in range(count)]
        assert reader.at_eof(), "bytes left over: the framing was misread"
        return out
    return asyncio.run(go())


def test_exchange_reads_length_chunked_and_close_delimited_bodies_in_turn() -> None:
    wire = (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
            b"HTTP/1.1 502 Bad Gateway\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;ext=1\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n"
            b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
    assert _exchanges(wire, 3) == [(200, True), (502, True), (200, False)]


def test_exchange_reads_no_body_after_head_204_and_1xx() -> None:
    wire = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    assert _exchanges(wire, 1, head_only=True) == [(200, True)]
    wire = (b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
    assert _exchanges(wire, 2) == [(204, True), (200, False)]


def test_http_1_0_response_is_not_kept_alive() -> None:
    assert _exchanges(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", 1) == [(200, False)]


def test_target_request_has_path_query_host_and_body_length() -> None:
    t = soak.Target.from_url("http://127.0.0.1:8080/a/b?x=1", "POST", b"{}")
    assert (t.host, t.port, t.tls) == ("127.0.0.1", 8080, False)
    assert t.request.startswith(b"POST /a/b?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n")
    assert t.request.endswith(b"Content-Length: 2\r\n\r\n{}")
    assert soak.Target.from_url("https://example.com", host_header="h").request.startswith(
        b"GET / HTTP/1.1\r\nHost: h\r\n")
    assert soak.Target.from_url("https://example.com").port == 443
    with pytest.raises(ValueError):
        soak.Target.from_url("ftp://example.com/")


def test_percentile_is_nearest_rank_in_milliseconds() -> None:
    ordered = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert soak.percentile(ordered, 50) == 50.0
    assert soak.percentile(ordered, 99) == 99.0
    assert soak.percentile(ordered, 99.9) == 100.0
    assert soak.percentile([0.007], 50) == 7.0
    assert soak.percentile([], 99) is None


# --- /proc ------------------------------------------------------------------------------------


def test_sample_process_counts_the_tree_memory_and_open_files(tmp_path: Any) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        before = soak.sample_process(os.getpid())
        assert before is not None
        assert before.processes >= 2  # this process and the child
        assert before.rss_bytes > before.main_rss_bytes > 0
        with open(tmp_path / "held", "w"):
            during = soak.sample_process(os.getpid())
        assert during is not None and during.main_fds == before.main_fds + 1
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
    assert soak.sample_process(child.pid) is None  # gone


# --- the open loop against a server that misbehaves on purpose --------------------------------

Handler = Callable[[int], Awaitable[bytes]]


async def _run_against(handler: Handler, **settings: Any) -> tuple[soak.Soak, dict[str, Any],
                                                                   list[int]]:
    """Run a Soak against a server answering request n (0-based) with ``await handler(n)``.
    Returns the soak, its summary and the request numbers the server received."""
    received: list[int] = []
    handlers: set[asyncio.Task[Any]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                received.append(len(received))
                writer.write(await handler(received[-1]))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    defaults: dict[str, Any] = dict(rate=40.0, duration=1.0, connections=1, interval=0.5,
                                    timeout=5.0, expect_status=200, insecure=False)
    config = soak.Settings(soak.Target.from_url(f"http://127.0.0.1:{port}/"),
                           **{**defaults, **settings})
    run = soak.Soak(config, pid=None, log=lambda text: None)
    async with server:
        summary = await run.run()
        # the soak closed its connections: let each handler see that and end by itself
        await asyncio.wait(handlers, timeout=5)
    return run, summary, received


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_a_stall_is_charged_to_every_request_due_while_it_lasts() -> None:
    stall = 0.5

    async def handler(n: int) -> bytes:
        if n == 10:
            await asyncio.sleep(stall)
        return OK

    run, summary, _ = asyncio.run(_run_against(handler, rate=40.0, duration=1.5))
    assert summary["scheduled"] == summary["done"] == summary["ok"] == 60
    slow = [lat for lat in run.total.latencies if lat >= 0.2]
    # Requests fall due every 25 ms; those due in the first 300 ms of the stall waited at
    # least 200 ms behind it (a closed loop would have recorded one slow request).
    assert len(slow) >= 10, sorted(run.total.latencies)[-15:]
    assert summary["latency_ms"]["max"] >= stall * 1000 * 0.9


def test_an_overloaded_server_gets_timeouts_and_no_request_outlives_its_deadline() -> None:
    timeout = 0.3

    async def handler(n: int) -> bytes:
        await asyncio.sleep(0.1)  # 10 answers a second on the one connection; 40 fall due
        return OK

    run, summary, _ = asyncio.run(_run_against(handler, rate=40.0, duration=1.0,
                                               timeout=timeout))
    assert summary["scheduled"] == summary["done"] == 40
    assert summary["errors_by_kind"]["timeout"] == summary["errors"] > 0
    assert summary["ok"] > 0
    # the backlog is bounded: every request ends by its due time + timeout (+ scheduling)
    assert max(run.total.latencies) < timeout + 0.25  # unbounded, it would reach seconds


def test_wrong_status_is_counted_by_kind() -> None:
    async def handler(n: int) -> bytes:
        return OK if n % 2 else b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"

    _, summary, _ = asyncio.run(_run_against(handler, rate=40.0, duration=0.5))
    assert summary["errors_by_kind"] == {"status 503": 10}
    assert summary["ok"] == 10


def test_intervals_report_rate_and_percentiles() -> None:
    async def handler(n: int) -> bytes:
        return OK

    _, summary, _ = asyncio.run(_run_against(handler, rate=40.0, duration=1.0, interval=0.5,
                                             connections=2))
    rows = summary["intervals"]
    assert len(rows) >= 2
    assert sum(row["done"] for row in rows) == 40
    for row in rows:  # the last answers are folded into the last row, not a sliver of their own
        assert 30 <= row["rate"] <= 50
        assert 0 < row["p50_ms"] <= row["p99_ms"]
    assert summary["p99_over_time_ms"] == [row["p99_ms"] for row in rows]


def test_main_refuses_bad_arguments_with_status_2(capsys: Any) -> None:
    assert soak.main(["--duration", "1"]) == 2
    assert soak.main(["--url", "http://127.0.0.1:1/", "--start-proxy"]) == 2
    assert "exactly one" in capsys.readouterr().err
    assert soak.main(["--url", "ftp://127.0.0.1/"]) == 2
    assert "http:// or https://" in capsys.readouterr().err
