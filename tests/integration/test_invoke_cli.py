"""``clbscf-proxy invoke``: the installed console command, run as a user would run it.

Each test runs the real executable in a subprocess and checks its three outputs: stdout (only
JSON: the result or the SCF error object), stderr (logs, the handler's output, the summary or
the reason) and the exit status (0 ok, 1 the function failed, 2 usage, config or event).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

FUNCTIONS = Path(__file__).resolve().parent.parent / "functions"
#: the console script installed next to the interpreter running the tests
CLI = Path(sys.executable).with_name("clbscf-proxy")
HELLO_RESULT = {"isBase64Encoded": False, "statusCode": 200,
                "headers": {"Content-Type": "text/html"},
                "body": "<html><body><h1>Hello CLB</h1></body></html>"}
SUMMARY = re.compile(r"clbscf-proxy invoke: (\S+) request_id=(\S+) [0-9.]+ ms")


def invoke(*args: str, stdin: bytes | None = None, cwd: Path | None = None
           ) -> subprocess.CompletedProcess[bytes]:
    """Run ``clbscf-proxy invoke ARGS``; stdin is /dev/null unless ``stdin`` is given."""
    return subprocess.run([str(CLI), "invoke", *args], input=stdin,
                          stdin=subprocess.DEVNULL if stdin is None else None,
                          capture_output=True, timeout=60, cwd=cwd)


def result_of(proc: subprocess.CompletedProcess[bytes]) -> Any:
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def echoed_event(proc: subprocess.CompletedProcess[bytes]) -> Any:
    """The event the echo function received (it answers with it as its body)."""
    return json.loads(result_of(proc)["body"])


def test_hello_with_an_event_file_prints_the_result_as_indented_json(tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"httpMethod": "GET", "path": "/", "headers": {}}))
    proc = invoke("default/hello", "--event", str(event))
    assert result_of(proc) == HELLO_RESULT
    assert proc.stdout.startswith(b'{\n  "isBase64Encoded": false,\n')
    summary = SUMMARY.search(proc.stderr.decode())
    assert summary is not None and summary.group(1) == "default/hello"


def test_a_bare_function_name_means_the_default_namespace() -> None:
    assert result_of(invoke("hello")) == HELLO_RESULT


def test_event_on_stdin_reaches_the_handler_unchanged() -> None:
    event = {"httpMethod": "POST", "path": "/upload", "body": "未命名 ✓", "n": [1, 2.5, None]}
    proc = invoke("e/echo", "--code", str(FUNCTIONS / "echo"),
                  stdin=json.dumps(event, ensure_ascii=False).encode())
    assert echoed_event(proc) == event


def test_event_dash_reads_stdin() -> None:
    proc = invoke("echo", "--code", str(FUNCTIONS / "echo"), "--event", "-",
                  stdin=b'\xef\xbb\xbf{"from": "stdin"}')  # a UTF-8 BOM is allowed
    assert echoed_event(proc) == {"from": "stdin"}


def test_no_event_at_all_gives_the_clb_event_of_get_slash() -> None:
    proc = invoke("echo", "--code", str(FUNCTIONS / "echo"))
    event = echoed_event(proc)
    assert (event["httpMethod"], event["path"], event["body"]) == ("GET", "/", "")
    assert event["isBase64Encoded"] is False and event["queryString"] == {}
    assert event["headers"]["Host"] == "localhost"
    assert {"X-Stgw-Time", "X-Client-Proto", "X-Real-IP", "X-Forwarded-For"} <= set(
        event["headers"])
    context = event["requestContext"]
    assert (context["domain"], context["url"], context["protocol"]) == ("localhost", "/", "http")
    summary = SUMMARY.search(proc.stderr.decode())
    assert summary is not None and summary.group(2) == context["requestId"]


def test_handler_output_goes_to_stderr_and_stdout_holds_only_the_result() -> None:
    proc = invoke("printer", "--code", str(FUNCTIONS / "printer"))
    assert result_of(proc) == {"isBase64Encoded": False, "statusCode": 200, "headers": {},
                               "body": "printed"}
    stderr = proc.stderr.decode()
    summary = SUMMARY.search(stderr)
    assert summary is not None
    request_id = summary.group(2)
    for line in ("print to stdout", "print to stderr", "fd write", "child process"):
        assert f"{line} {request_id}" in stderr
        assert line.encode() not in proc.stdout


def test_function_from_a_config_file_runs_with_its_settings(tmp_path: Path) -> None:
    config = tmp_path / "rules.toml"
    config.write_text(f"""
[[function]]
namespace = "team"
name = "who"
code = "{FUNCTIONS / 'whoami'}"
timeout = 5
""")
    proc = invoke("team/who", "--config", str(config))
    assert json.loads(result_of(proc)["body"]) == {"function": "who"}


def test_raising_function_exits_1_with_the_scf_error_object() -> None:
    proc = invoke("default/raiser", "--code", str(FUNCTIONS / "raises"))
    assert proc.returncode == 1
    error = json.loads(proc.stdout)
    assert error["statusCode"] == 430 and error["errorCode"] == -1
    assert error["errorMessage"] == "user code exception caught"
    assert "ValueError: raised on purpose" in error["stackTrace"]
    stderr = proc.stderr.decode()
    assert error["requestId"] in stderr
    assert "default/raiser failed (FunctionError, the proxy would answer 502)" in stderr


def test_function_timeout_exits_1_saying_so() -> None:
    proc = invoke("sleepy", "--code", str(FUNCTIONS / "sleeps"), "--timeout", "1",
                  stdin=b'{"queryString": {"seconds": "5"}}')
    assert proc.returncode == 1 and proc.stdout == b""
    assert "FunctionTimeout, the proxy would answer 504" in proc.stderr.decode()


def test_unknown_function_exits_2_naming_it_and_the_known_ones() -> None:
    proc = invoke("default/nope")
    assert proc.returncode == 2 and proc.stdout == b""
    assert ("function default/nope is not defined in the embedded default "
            "(functions: default/hello)") in proc.stderr.decode()


def test_event_file_that_is_not_json_exits_2_naming_the_file(tmp_path: Path) -> None:
    event = tmp_path / "bad.json"
    event.write_text('{"httpMethod": "GET",')
    proc = invoke("hello", "--event", str(event))
    assert proc.returncode == 2 and proc.stdout == b""
    assert f"{event}: the event is not valid JSON" in proc.stderr.decode()


def test_event_that_is_not_an_object_exits_2() -> None:
    proc = invoke("hello", "--event", "-", stdin=b"[1, 2]")
    assert proc.returncode == 2
    assert "stdin: the event must be a JSON object, got list" in proc.stderr.decode()


def test_event_over_six_megabytes_exits_2_without_running() -> None:
    event = json.dumps({"body": "x" * (6 * 1024 * 1024)}).encode()
    proc = invoke("hello", stdin=event)
    assert proc.returncode == 2 and proc.stdout == b""
    stderr = proc.stderr.decode()
    assert f"stdin: the event is {len(event)} bytes, over SCF's limit" in stderr
    assert "cold start" not in stderr


def test_empty_stdin_with_event_dash_exits_2() -> None:
    proc = invoke("hello", "--event", "-", stdin=b"")
    assert proc.returncode == 2 and "stdin is empty" in proc.stderr.decode()


def test_missing_event_file_exits_2(tmp_path: Path) -> None:
    proc = invoke("hello", "--event", str(tmp_path / "absent.json"))
    assert proc.returncode == 2
    assert "cannot read it: No such file or directory" in proc.stderr.decode()


def test_function_settings_without_code_exit_2() -> None:
    proc = invoke("hello", "--timeout", "5", "--memory", "256")
    assert proc.returncode == 2
    assert "--timeout, --memory: only with --code" in proc.stderr.decode()


def test_out_of_range_ad_hoc_setting_exits_2_with_the_config_check() -> None:
    proc = invoke("echo", "--code", str(FUNCTIONS / "echo"), "--memory", "5")
    assert proc.returncode == 2
    assert "function[0].memory: must be 64..3072, got 5" in proc.stderr.decode()


def test_config_and_code_together_are_a_usage_error(tmp_path: Path) -> None:
    proc = invoke("echo", "--code", str(FUNCTIONS / "echo"), "--config", str(tmp_path / "x"))
    assert proc.returncode == 2 and b"not allowed with argument" in proc.stderr
