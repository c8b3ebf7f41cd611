"""Issue 16 item 6 through the real process: SCF's own lines on the error log for every
invocation, in order (``START RequestId:``, the function's output tagged as before, ``END
RequestId:``, ``Report RequestId:… Duration:…ms Memory:…MB MemUsage:…MB``), an ``Init Report``
with SCF's phases after a cold start's START, the lines of a timed-out invocation too; the
access log's function duration, memory and version; the local SCF API's MemUsage and
``LogType: Tail`` Log."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest

from tests.configs import function, listener, scf_rule
from tests.integration.test_scf_api import ENV, api_port, invoke
from tests.proxyproc import ProxyProcess, http_get

CONFIG = (listener() + scf_rule("fn.test", "/print", "printer")
          + scf_rule("fn.test", "/sleep", "sleeps", qualifier="$DEFAULT")
          + function("printer") + function("sleeps", timeout=1, idle_timeout=0.3)
          + function("apiecho"))
REPORT = re.compile(r"Report RequestId:(\S+) Duration:(\d+)ms Memory:128MB "
                    r"MemUsage:([0-9.]+)MB$")
INIT = re.compile(r"Init Report RequestId:(\S+) Coldstart: (\d+)ms \(PullCode: 0ms "
                  r"InitRuntime: (\d+)ms InitFunction: (\d+)ms\) Memory: 128MB "
                  r"MemUsage: ([0-9.]+)MB$")


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    with ProxyProcess.with_config(CONFIG, tmp_path_factory.mktemp("scflog"), "--scf-api",
                                  "127.0.0.1:0", env=ENV) as proc:
        yield proc


def _lines_of(proc: ProxyProcess, request_id: str, last: str = "Report RequestId:") -> list[str]:
    """The proxy.function lines of one invocation, once its ``last`` line is there."""
    proc.wait_for_log(f"{last}{request_id}", timeout=15)
    lines = [line.split("proxy.function: ", 1)[1] for line in proc.stderr.splitlines()
             if "proxy.function: " in line and request_id in line]
    return [line for line in lines if not line.startswith("cold start ")]  # the older line


def test_an_invocation_logs_start_output_end_and_report(proxy: ProxyProcess) -> None:
    assert http_get(proxy.port(), "fn.test", "/print") == (200, b"printed")
    [record] = proxy.access_records("/print", 1)
    rid = record["function_request_id"]
    lines = _lines_of(proxy, rid)
    key = "function=default/printer "
    assert lines[0] == f"{key}START RequestId:{rid}"
    assert lines[-2] == f"{key}END RequestId:{rid}"
    report = REPORT.search(lines[-1])
    assert report and lines[-1].startswith(key + "Report") and report[1] == rid, lines
    assert float(report[3]) > 1.0  # a Python interpreter holds more than a megabyte
    output = lines[1:-2]  # the function's own lines, tagged as before, between the two
    assert f"{key}request_id={rid} stdout: print to stdout {rid}" in output
    assert f"{key}request_id={rid} stderr: print to stderr {rid}" in output
    assert len(output) == 4, lines
    # the access log has what the Report says
    assert record["function_mem_usage"] == round(float(report[3]) * 1048576)
    assert record["function_duration_ms"] > 0 and record["function_version"] == "$LATEST"


def test_a_cold_start_adds_an_init_report_with_scfs_phases(proxy: ProxyProcess) -> None:
    # the start-up check's instance retires after 0.3 s idle: a later call starts a new one
    for calls in range(1, 21):
        time.sleep(0.5)
        assert http_get(proxy.port(), "fn.test", "/sleep")[0] == 200
        record = proxy.access_records("/sleep", calls)[calls - 1]
        if record["cold_start"]:
            break
    else:
        raise AssertionError("no cold start")
    rid = record["function_request_id"]
    lines = _lines_of(proxy, rid)
    assert lines[0] == f"function=default/sleeps START RequestId:{rid}"
    init = INIT.search(lines[1])
    assert init and init[1] == rid, lines
    coldstart, runtime, handler = int(init[2]), int(init[3]), int(init[4])
    assert abs(coldstart - runtime - handler) <= 1  # the phases add up (rounding)
    assert float(init[5]) > 1.0
    # a warm call has none
    assert http_get(proxy.port(), "fn.test", "/sleep")[0] == 200
    warm = proxy.access_records("/sleep", calls + 1)[calls]
    assert not warm["cold_start"]
    assert not any("Init Report" in line for line in _lines_of(proxy,
                                                               warm["function_request_id"]))


def test_a_timed_out_invocation_still_logs_end_and_report(proxy: ProxyProcess) -> None:
    assert http_get(proxy.port(), "fn.test", "/sleep?seconds=5", timeout=30)[0] == 504
    text = proxy.wait_for_log("timed out after 1s (SCF 433)", timeout=10)
    timed_out = re.search(r"function=default/sleeps request_id=(\S+) timed out after 1s", text)
    assert timed_out, text
    lines = _lines_of(proxy, timed_out[1])
    assert [line.split(" RequestId:")[0] for line in lines if "RequestId:" in line][-2:] == [
        "function=default/sleeps END", "function=default/sleeps Report"], lines
    assert int(REPORT.search(lines[-1])[2]) >= 1000  # type: ignore[index]


def test_the_scf_api_answers_mem_usage_and_a_tail_log(proxy: ProxyProcess) -> None:
    port = api_port(proxy)
    plain = invoke(port, FunctionName="apiecho", ClientContext=json.dumps({"say": "hi there"}))
    assert plain.MemUsage > 1024 * 1024 and plain.Log == ""
    tail = invoke(port, FunctionName="apiecho", LogType="Tail",
                  ClientContext=json.dumps({"say": "hello tail"}))
    rid = tail.FunctionRequestId
    lines = tail.Log.splitlines()
    assert lines[:3] == [f"START RequestId:{rid}", "hello tail", f"END RequestId:{rid}"]
    assert REPORT.match(lines[3]) and tail.MemUsage > 1024 * 1024
