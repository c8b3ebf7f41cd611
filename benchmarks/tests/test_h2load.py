"""h2load's report parser and the refusal of runs with any failure or without h2 (pure)."""

from __future__ import annotations

import pytest

from benchmarks import h2load
from benchmarks.wrk import LoadError

# h2load 1.52 (Debian nghttp2-client), -D 2 -c 10 -m 10, against nginx ssl http2
TIMED = """\
starting benchmark...
spawning thread #0: 10 total client(s). Timing-based test with 0s of warm-up time and 2s of \
main duration for measurements.
Warm-up started for thread #0.
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
TLS Protocol: TLSv1.2
Cipher: ECDHE-ECDSA-AES128-GCM-SHA256
Server Temp Key: X25519 253 bits
Application protocol: h2
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 2.00s, 100206.50 req/s, 6.79MB/s
requests: 200413 total, 200513 started, 200413 done, 200413 succeeded, 0 failed, 0 errored, \
0 timeout
status codes: 200413 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 13.57MB (14229813) total, 9.17MB (9619824) headers (space savings 51.02%), 978.58KB \
(1002065) data
                     min         max         mean         sd        +/- sd
time for request:       30us      9.67ms       854us       485us    87.25%
time for connect:     6.89ms      7.39ms      7.16ms       167us    60.00%
time to 1st byte:     7.86ms      8.75ms      8.29ms       302us    60.00%
req/s           :    9985.01    10060.83    10018.87       24.69    70.00%
"""

# the server closed each connection after 1,000 requests (nginx's default keepalive_requests)
FAILING = """\
Application protocol: h2
Process Request Failure:2
finished in 2.00s, 5000.00 req/s, 347.00KB/s
requests: 10038 total, 10090 started, 10038 done, 10000 succeeded, 38 failed, 38 errored, \
0 timeout
status codes: 9990 2xx, 0 3xx, 10 4xx, 0 5xx
"""

REFUSED = """\
starting benchmark...
spawning thread #0: 1 total client(s). 100 total requests

finished in 683us, 0.00 req/s, 0B/s
requests: 100 total, 0 started, 0 done, 0 succeeded, 100 failed, 100 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 0 4xx, 0 5xx
"""


def test_parse_reads_rate_successes_and_protocol() -> None:
    result = h2load.parse(TIMED)
    assert result.rps == pytest.approx(100206.50)
    assert result.requests == 200413
    assert result.protocol == "h2"
    assert (result.failed, result.errored, result.timeout, result.non_2xx) == (0, 0, 0, 0)
    assert result.p50_ms is None and result.p99_ms is None  # h2load has no percentiles
    assert result.notes() == ""
    assert h2load.check_usable(result) is result


def test_parse_reads_failures_and_non_2xx() -> None:
    result = h2load.parse(FAILING)
    assert (result.requests, result.failed, result.errored, result.non_2xx) == (10000, 38, 38, 10)
    assert result.notes() == "38 failed, 38 errored, 10 non-2xx"


def test_any_failure_is_refused() -> None:
    with pytest.raises(LoadError, match="38 failed, 38 errored, 10 non-2xx"):
        h2load.check_usable(h2load.parse(FAILING))


def test_a_run_that_never_connected_is_refused() -> None:
    result = h2load.parse(REFUSED)
    assert result.protocol == "none" and result.requests == 0
    with pytest.raises(LoadError, match="not h2"):
        h2load.check_usable(result)


def test_a_fallback_to_http1_is_refused() -> None:
    with pytest.raises(LoadError, match="'http/1.1', not h2"):
        h2load.check_usable(h2load.parse(TIMED.replace("protocol: h2", "protocol: http/1.1")))


def test_parse_without_a_result_raises_load_error() -> None:
    with pytest.raises(LoadError, match="no result"):
        h2load.parse("h2load: no URI given\n")


def test_command_is_one_thread_timed_with_connect_to() -> None:
    argv = h2load.command("https://bench.local:8443/", connect_to="127.0.0.1:8443",
                          connections=10, streams=10, duration=2.4)
    assert argv == ["h2load", "-t1", "-c10", "-m10", "-D2", "--connect-to=127.0.0.1:8443",
                    "https://bench.local:8443/"]
