"""Issue 16 item 7 through the real process: ``init_timeout`` bounds a cold start (the code
before the handler), apart from the invocation's ``timeout``. An import slower than it is a
failed cold start (504, its own log line), retried by the next call; an import slower than the
execution timeout but within init_timeout is fine."""

from __future__ import annotations

import json
from pathlib import Path

from tests.configs import listener, scf_rule
from tests.integration.test_scf_api import ENV, api_port, invoke
from tests.proxyproc import ProxyProcess, http_get

SLOW_IMPORT = '''import time

time.sleep({seconds})


def main_handler(event, context):
    return {{"isBase64Encoded": False, "statusCode": 200, "headers": {{}}, "body": "ready"}}
'''


def _function(root: Path, name: str, seconds: float, **settings: object) -> str:
    folder = root / name
    folder.mkdir()
    (folder / "index.py").write_text(SLOW_IMPORT.format(seconds=seconds))
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
    return f'\n[[function]]\nname = "{name}"\ncode = {json.dumps(str(folder))}\n{extra}'


def test_an_import_over_init_timeout_is_a_failed_cold_start(tmp_path: Path) -> None:
    config = (listener() + scf_rule("fn.test", "/", "stuck")
              + _function(tmp_path, "stuck", 120, init_timeout=2, timeout=30))
    with ProxyProcess.with_config(config, tmp_path, "--scf-api", "127.0.0.1:0",
                                  env=ENV) as proc:
        # the start-up check's instance was killed at 2 s, so this call cold-starts again
        for _ in range(2):
            status, _body = http_get(proc.port(), "fn.test", "/", timeout=60)
            assert status == 504
        text = proc.wait_for_log("init timed out: not initialized within init_timeout 2s "
                                 "(cold start failed); killed", timeout=10)
        # start-up check + two calls: three cold starts, each failed on its own
        assert text.count("init timed out") >= 3, text
        result = invoke(api_port(proc), FunctionName="stuck")
        error = json.loads(result.ErrMsg)
        assert result.InvokeResult == 1 and error["statusCode"] == 433
        assert error["errorMessage"].startswith("init timeout")


def test_an_import_longer_than_the_execution_timeout_is_fine(tmp_path: Path) -> None:
    config = (listener() + scf_rule("fn.test", "/", "slow")
              + _function(tmp_path, "slow", 2, timeout=1, init_timeout=60))
    with ProxyProcess.with_config(config, tmp_path) as proc:
        assert http_get(proc.port(), "fn.test", "/", timeout=60) == (200, b"ready")
        assert "init timed out" not in proc.stderr
