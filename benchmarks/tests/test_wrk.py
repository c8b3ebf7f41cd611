"""wrk's report parser and the refusal of runs whose answers were mostly errors."""

from __future__ import annotations

import pytest

from benchmarks import wrk

KEEPALIVE = """\
Running 2s test @ http://127.0.0.1:18555/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   375.82us  169.30us   3.72ms   68.39%
    Req/Sec   111.44k    12.55k  135.81k    66.67%
  Latency Distribution
     50%  386.00us
     75%  502.00us
     90%  537.00us
     99%    1.93ms
  232380 requests in 2.10s, 33.91MB read
Requests/sec: 110633.54
Transfer/sec:     16.14MB
"""

FAILING = """\
Running 2s test @ http://127.0.0.1:8080/
  1 threads and 50 connections
  Latency Distribution
     50%    1.50s
     75%    1.60s
     90%    1.70s
     99%    2.00s
  1000 requests in 2.00s, 100.00KB read
  Socket errors: connect 3, read 7, write 0, timeout 2
  Non-2xx or 3xx responses: 40
Requests/sec:    500.00
Transfer/sec:     50.00KB
"""


def test_parse_reads_rate_and_percentiles_in_milliseconds() -> None:
    result = wrk.parse(KEEPALIVE)
    assert result.requests == 232380
    assert result.rps == pytest.approx(110633.54)
    assert result.p50_ms == pytest.approx(0.386)
    assert result.p99_ms == pytest.approx(1.93)
    assert result.non_2xx == 0 and result.socket_errors == (0, 0, 0, 0)
    assert result.notes() == ""


def test_parse_reads_seconds_socket_errors_and_non_2xx() -> None:
    result = wrk.parse(FAILING)
    assert result.p50_ms == pytest.approx(1500.0)
    assert result.p99_ms == pytest.approx(2000.0)
    assert result.socket_errors == (3, 7, 0, 2)
    assert result.non_2xx == 40
    assert result.notes() == "40 non-2xx/3xx, 3 connect errors, 7 read errors, 2 timeout errors"


def test_parse_without_a_result_raises_load_error() -> None:
    with pytest.raises(wrk.LoadError, match="no result"):
        wrk.parse("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_mostly_failed_run_is_refused() -> None:
    with pytest.raises(wrk.LoadError, match="52 of 1000 requests failed"):
        wrk.check_usable(wrk.parse(FAILING))


def test_read_errors_of_closing_connections_are_not_failures() -> None:
    result = wrk.WrkResult(requests=10000, rps=5000.0, p50_ms=1.0, p99_ms=2.0,
                           socket_errors=(0, 900, 0, 0))
    assert wrk.check_usable(result, closing=True) is result
    with pytest.raises(wrk.LoadError):
        wrk.check_usable(result, closing=False)


def test_run_with_no_completed_request_is_refused() -> None:
    with pytest.raises(wrk.LoadError, match="no request completed"):
        wrk.check_usable(wrk.WrkResult(requests=0, rps=0.0, p50_ms=0.0, p99_ms=0.0))


def test_command_uses_one_thread_latency_and_given_headers() -> None:
    argv = wrk.command("http://127.0.0.1:1/x", connections=50, duration=4.6,
                       headers=["Host: a.example", "Connection: close"])
    assert argv[:5] == ["wrk", "-t1", "-c50", "-d5s", "--latency"]
    assert argv[-5:] == ["-H", "Host: a.example", "-H", "Connection: close",
                         "http://127.0.0.1:1/x"]
