"""benchmarks/soak.py end to end: a short, low-rate soak of the real proxy process.

Not a soak (that is minutes, by hand: benchmarks/README.md), only a check that the tool's
report is sane against the real thing: the rate it was asked for, no errors, and the proxy's
memory and open files read from /proc at the start and the end.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from benchmarks import soak
from tests.proxyproc import ProxyProcess

RATE, DURATION = 50, 2


def _report(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict[str, Any]]:
    status = soak.main(argv)
    return status, json.loads(capsys.readouterr().out)


def _assert_sane(summary: dict[str, Any], rate: float, duration: float) -> None:
    count = int(rate * duration)
    assert summary["scheduled"] == summary["done"] == summary["ok"] == count
    assert summary["errors"] == 0 and summary["errors_by_kind"] == {}
    assert 0.85 * rate <= summary["achieved_rate"] <= 1.02 * rate
    latency = summary["latency_ms"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"] < 5000
    assert len(summary["intervals"]) >= duration  # --interval 1
    for when in ("start", "end"):
        sample = summary["process"][when]
        assert sample["rss_bytes"] >= sample["main_rss_bytes"] > 10 * 2**20
        assert sample["fds"] >= sample["main_fds"] > 3
    assert summary["process"]["alive_at_end"] is True
    # the function instances started during the run are part of the measured tree
    assert summary["process"]["end"]["processes"] > 1


def test_soak_of_a_running_proxy_reports_rate_errors_latency_rss_and_fds(
        capsys: pytest.CaptureFixture[str]) -> None:
    with ProxyProcess(["--listen", "127.0.0.1:0", "--no-access-log"]) as proxy:
        status, summary = _report(capsys, [
            "--url", proxy.url("/"), "--pid", str(proxy.pid), "--rate", str(RATE),
            "--duration", str(DURATION), "--interval", "1", "--connections", "4", "--json"])
    assert status == 0
    _assert_sane(summary, RATE, DURATION)
    assert summary["process"]["pid"] == proxy.pid


def test_soak_starts_and_stops_its_own_proxy(capsys: pytest.CaptureFixture[str]) -> None:
    status, summary = _report(capsys, [
        "--start-proxy", "--rate", "40", "--duration", "2", "--interval", "1",
        "--connections", "2", "--json"])
    assert status == 0
    _assert_sane(summary, 40, 2)
    assert summary["url"].startswith("http://127.0.0.1:")
