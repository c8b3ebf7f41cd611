"""Issue 16 item 5 through the real process: ``--reload`` (an edited function answers with its
new code, a call in flight when the file changed finishes on the old) with one process and
with two workers, and ``--debug`` (the function's instance listens for a debugpy attach: a
minimal DAP client gets its ``initialize`` answered; the function still answers, its timeout
lifted), and the bad values of both.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.configs import listener, scf_rule
from tests.proxyproc import ROOT, ProxyProcess, http_get

HANDLER = '''\
import json
import time


def main_handler(event, context):
    seconds = float((event.get("queryString") or {{}}).get("sleep", 0))
    if seconds:
        print("sleeping", flush=True)
        time.sleep(seconds)
    return {{"statusCode": 200, "headers": {{"Content-Type": "application/json"}},
            "body": json.dumps({{"version": {version!r},
                                "time_limit_in_ms": context["time_limit_in_ms"]}})}}
'''
DEBUGPY = re.compile(r"debugpy listening on (\S+):(\d+)")


def write_code(code: Path, version: str) -> None:
    code.mkdir(exist_ok=True)
    (code / "index.py").write_text(HANDLER.format(version=version))


def config(code: Path, timeout: int = 10) -> str:
    return (listener() + scf_rule("fn.test", "/", "live")
            + f'\n[[function]]\nname = "live"\nhandler = "index.main_handler"\n'
              f"code = {json.dumps(str(code))}\ntimeout = {timeout}\n")


def answer(port: int, path: str = "/", timeout: float = 30.0) -> dict[str, object]:
    status, body = http_get(port, "fn.test", path, timeout=timeout)
    assert status == 200, body
    return json.loads(body)  # type: ignore[no-any-return]


def wait_for_count(proc: ProxyProcess, needle: str, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while proc.stderr.count(needle) < count:
        assert time.monotonic() < deadline, f"{count} x {needle!r} not in:\n{proc.stderr}"
        time.sleep(0.05)


@pytest.mark.parametrize("workers", [1, 2], ids=["1-process", "2-workers"])
def test_reload_serves_the_edited_code_and_finishes_calls_in_flight_on_the_old(
        tmp_path: Path, workers: int) -> None:
    code = tmp_path / "live"
    write_code(code, "v1")
    with ProxyProcess.with_config(config(code), tmp_path, "--reload", "--workers",
                                  str(workers), start_timeout=60) as proc:
        port = proc.port()
        assert answer(port)["version"] == "v1"
        slow: dict[str, object] = {}
        caller = threading.Thread(target=lambda: slow.update(answer(port, "/?sleep=3")))
        caller.start()
        proc.wait_for_log("stdout: sleeping", timeout=30)  # the slow call is running
        write_code(code, "v2")
        wait_for_count(proc, "function=default/live code changed", workers)
        for _ in range(2 * workers):  # new connections: every worker answers with the new code
            assert answer(port)["version"] == "v2"
        caller.join(60)
        assert slow["version"] == "v1"  # started before the edit: finished on the old code


def test_reload_of_code_that_does_not_import_warns_and_the_fix_is_picked_up(
        tmp_path: Path) -> None:
    code = tmp_path / "live"
    write_code(code, "v1")
    with ProxyProcess.with_config(config(code), tmp_path, "--reload") as proc:
        port = proc.port()
        assert answer(port)["version"] == "v1"
        (code / "index.py").write_text("this is not python\n")
        proc.wait_for_log("cannot be imported after the change", timeout=30)
        assert http_get(port, "fn.test")[0] == 502
        write_code(code, "v3")
        wait_for_count(proc, "function=default/live code changed", 2)
        assert answer(port)["version"] == "v3"


def _dap_initialize(port: int) -> dict[str, object]:
    """A minimal Debug Adapter Protocol client: send ``initialize``, read its response."""
    message = json.dumps({"seq": 1, "type": "request", "command": "initialize",
                          "arguments": {"adapterID": "clbscf-test", "clientID": "pytest"}})
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"Content-Length: {len(message)}\r\n\r\n{message}".encode())
        buf = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            while b"\r\n\r\n" in buf:
                head, _, rest = buf.partition(b"\r\n\r\n")
                length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
                if len(rest) < length:
                    break
                body, buf = json.loads(rest[:length]), rest[length:]
                if body.get("type") == "response":
                    return body  # type: ignore[no-any-return]
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    raise AssertionError(f"no DAP response: {buf!r}")


def test_debug_runs_the_function_under_debugpy_with_its_timeout_lifted(tmp_path: Path) -> None:
    code = tmp_path / "live"
    write_code(code, "v1")
    with ProxyProcess.with_config(config(code, timeout=1), tmp_path, "--debug",
                                  "default/live:127.0.0.1:0", start_timeout=60) as proc:
        assert "debugging default/live under debugpy" in proc.stderr
        match = DEBUGPY.search(proc.wait_for_log("debugpy listening on", timeout=60))
        assert match and match.group(1) == "127.0.0.1"
        response = _dap_initialize(int(match.group(2)))
        assert response["command"] == "initialize" and response["success"] is True
        # 2 s is past the configured 1 s timeout: lifted while debugging, it answers
        body = answer(proc.port(), "/?sleep=2")
        assert body == {"version": "v1", "time_limit_in_ms": 86400 * 1000}


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy.cli", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


@pytest.mark.parametrize(("extra", "error"), [
    (["--debug", "default/nosuch"], "--debug: default/nosuch is not a local function"),
    (["--debug", "default/live:notaport"], "--debug: must be NAMESPACE/FUNCTION[:[HOST:]PORT]"),
    (["--debug", "a/b/c"], "--debug: must be NAMESPACE/FUNCTION[:[HOST:]PORT]"),
    (["--debug", "default/live", "--workers", "2"], "--debug runs the function in one instance"),
])
def test_bad_debug_values_exit_2(tmp_path: Path, extra: list[str], error: str) -> None:
    code = tmp_path / "live"
    write_code(code, "v1")
    (tmp_path / "rules.toml").write_text(config(code))
    done = _run_cli("--config", str(tmp_path / "rules.toml"), *extra)
    assert done.returncode == 2, done.stderr
    assert error in done.stderr


@pytest.mark.parametrize(("module", "flag", "error"), [
    ("debugpy", "--debug=default/live", "--debug needs debugpy, which is not installed"),
    ("watchfiles", "--reload", "--reload needs watchfiles, which is not installed"),
])
def test_a_missing_dependency_is_a_clear_exit_2(tmp_path: Path, module: str, flag: str,
                                               error: str) -> None:
    code = tmp_path / "live"
    write_code(code, "v1")
    (tmp_path / "rules.toml").write_text(config(code))
    # the module made unimportable in that process (a None in sys.modules: find_spec says
    # "not there"), as on an installation without the extra
    script = (f"import sys; sys.modules[{module!r}] = None; from proxy.cli import main; "
              f"sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", script, "--config",
                           str(tmp_path / "rules.toml"), flag], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == 2, done.stderr
    assert error in done.stderr
