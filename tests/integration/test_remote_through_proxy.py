"""Remote SCF end to end: the real proxy process, its SCF targets invoked through a fake SCF API.

The fake API (tests/fakescf.py: HTTPS with a trustme certificate, TC3 signature and timestamp
window checked, API 3.0 envelopes) and a fake invoke-URL runtime serve on an event loop in a
background thread. The proxy is a separate process whose config has one rule per behaviour,
each bound to a function that is *not* defined locally, so it is invoked through ``[scf]``
(``endpoint`` = the fake, ``ca_file`` = the trustme CA) with temporary credentials from its
environment. The fake answers by function name (``SCRIPTS``), so one proxy and one fake show
every mapping of SPEC §6's remote row over real HTTP.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.fakescf import (REGION, SECRET_ID, SECRET_KEY, TOKEN, BackgroundLoop, Call,
                           FakeScfApi, Reply, api_error, api_in_thread, function_failed,
                           invoke_url_runtime, server_context, success)
from tests.configs import listener, rule, scf_rule
from tests.proxyproc import ProxyProcess

#: the integration response the fake's functions return (two Set-Cookie: a list, SPEC §6)
RESULT = {"isBase64Encoded": False, "statusCode": 201,
          "headers": {"Content-Type": "text/plain; charset=utf-8",
                      "Set-Cookie": ["a=1; Path=/", "b=2; Path=/"], "X-From": "scf"},
          "body": "远程 Hello CLB"}
RUNTIME_RESULT = {"isBase64Encoded": False, "statusCode": 200,
                  "headers": {"Content-Type": "application/json"}, "body": '{"via":"url"}'}
ERROR = {"errorCode": -1, "errorMessage": "user code exception caught", "statusCode": 430,
         "stackTrace": "Traceback (most recent call last):\nValueError: secret stack"}
#: longer than the listener's proxy_read_timeout (1 s), so the slow API gives 504
SLOW_SECONDS = 4.0
WRONG_KEY = "wrongSecretKey+AlsoNeverLogged/0987"


def _succeed(call: Call) -> Reply:
    # A fresh FunctionRequestId per invocation, as SCF gives: the access log must show it.
    return success(json.dumps(RESULT, ensure_ascii=False), f"fn-{uuid.uuid4()}")


def _throttled_once(call: Call) -> Reply:
    """Throttled on the first attempt of each proxy request, then served (the proxy retries
    with the same event, so its requestId tells the attempts apart)."""
    request_id = call.event["requestContext"]["requestId"]
    _seen_flaky.append(request_id)
    if _seen_flaky.count(request_id) == 1:
        return api_error("LimitExceeded.TotalConcurrencyMemory", "concurrency limit exceeded")
    return _succeed(call)


_seen_flaky: list[str] = []

#: FunctionName -> how the fake API answers its invocations
SCRIPTS: dict[str, Callable[[Call], Reply]] = {
    "hello": _succeed,
    "again": _succeed,  # the connection reuse test's own function, so its calls are its own
    "raiser": lambda call: function_failed({**ERROR, "requestId": "fn-raiser"}, "fn-raiser"),
    "busy": lambda call: api_error("RequestLimitExceeded", "request limit exceeded"),
    "flaky": _throttled_once,
    "slow": lambda call: replace(_succeed(call), delay=SLOW_SECONDS),
    "gone": lambda call: api_error("ResourceNotFound.Function", "function gone not found"),
}


def _script(call: Call) -> Reply:
    return SCRIPTS[call.body["FunctionName"]](call)


def config_text(api_port: int, runtime_port: int, ca_file: Path) -> str:
    return (listener(proxy_read_timeout=1)
            + "".join(scf_rule("api.test", f"/{name}", name, namespace="prod", qualifier="3")
                      for name in SCRIPTS)
            + rule("api.test", "/url", '[{ type = "SCF", invoke_url = '
                   f'"https://localhost:{runtime_port}/invoke" }}]')
            + f'\n[scf]\nregion = "{REGION}"\nendpoint = "https://localhost:{api_port}"\n'
            f"ca_file = {json.dumps(str(ca_file))}\n")


@dataclass
class Fakes:
    api: FakeScfApi
    runtime_port: int
    runtime_seen: list[tuple[dict[str, str], bytes]]

    def calls(self, function: str) -> list[Call]:
        return [c for c in list(self.api.calls) if c.body["FunctionName"] == function]


@pytest.fixture(scope="module")
def fakes(ca: trustme.CA) -> Iterator[Fakes]:
    with BackgroundLoop() as background:
        server, seen = background.run(invoke_url_runtime(
            200, json.dumps(RUNTIME_RESULT).encode(), ssl_context=server_context(ca)))
        try:
            with api_in_thread(background, FakeScfApi(ca, _script, token=TOKEN)) as api:
                yield Fakes(api, server.sockets[0].getsockname()[1], seen)
        finally:
            background.loop.call_soon_threadsafe(server.close)  # the server is the loop's


def _credentials(secret_key: str) -> dict[str, str]:
    return {"TENCENTCLOUD_SECRETID": SECRET_ID, "TENCENTCLOUD_SECRETKEY": secret_key,
            "TENCENTCLOUD_SESSIONTOKEN": TOKEN}


def _start(fakes: Fakes, ca_file: Path, tmp_path_factory: pytest.TempPathFactory,
           secret_key: str) -> ProxyProcess:
    text = config_text(fakes.api.port, fakes.runtime_port, ca_file)
    return ProxyProcess.with_config(text, tmp_path_factory.mktemp("proxy"),
                                    env=_credentials(secret_key))


@pytest.fixture(scope="module")
def proxy(fakes: Fakes, ca_file: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    with _start(fakes, ca_file, tmp_path_factory, SECRET_KEY) as proc:
        yield proc


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def get(proxy: ProxyProcess, path: str, *, conn: http.client.HTTPConnection | None = None,
        timeout: float = 15.0) -> Answer:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", proxy.port(), timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": "api.test", "User-Agent": "remote-e2e"})
        response = conn.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        if own:
            conn.close()


def access_record(proxy: ProxyProcess, path: str, timeout: float = 5.0) -> dict[str, Any]:
    """The access log line of the (one) request for ``path``, once it has been flushed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = [r for r in proxy.access_log() if r["path"] == path]
        if records:
            return records[-1]
        time.sleep(0.05)
    raise AssertionError(f"no access log line for {path}: {proxy.access_log()}")


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in (SECRET_KEY, WRONG_KEY, TOKEN, "Signature="):
            assert secret not in text


# --- success --------------------------------------------------------------------------------

def test_success_returns_the_integration_response_and_logs_the_function_request_id(
        proxy: ProxyProcess, fakes: Fakes) -> None:
    answer = get(proxy, "/hello/success?x=1")
    assert answer.status == 201
    assert answer.body.decode() == "远程 Hello CLB"
    assert answer.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert answer.headers.get_all("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
    assert answer.headers["X-From"] == "scf"
    assert answer.headers["Content-Length"] == str(len(answer.body))

    (call,) = [c for c in fakes.calls("hello") if c.event["path"] == "/hello/success"]
    assert call.body["Namespace"] == "prod" and call.body["Qualifier"] == "3"
    assert call.headers["x-tc-action"] == "InvokeFunction"
    assert call.headers["x-tc-region"] == REGION and call.headers["x-tc-token"] == TOKEN
    event = call.event
    assert (event["httpMethod"], event["queryString"]) == ("GET", {"x": "1"})
    assert event["headers"]["Host"] == "api.test"
    assert event["headers"]["User-Agent"] == "remote-e2e"
    assert event["headers"]["X-Real-IP"] == "127.0.0.1" and "X-Stgw-Time" in event["headers"]
    assert event["requestContext"]["url"] == "/hello"

    assert call.reply is not None and call.reply.response is not None
    record = access_record(proxy, "/hello/success")
    assert record["status"] == 201 and record["target"] == "SCF:prod/hello"
    assert record["function_request_id"] == call.reply.response["Result"]["FunctionRequestId"]


def test_connection_to_the_api_is_reused_across_requests(proxy: ProxyProcess,
                                                         fakes: Fakes) -> None:
    before = fakes.api.connections
    for _ in range(8):
        assert get(proxy, "/again").status == 201
    calls = fakes.calls("again")
    assert len(calls) == 8
    assert len({c.connection for c in calls}) == 1  # one TLS connection carried all eight
    assert fakes.api.connections - before <= 1  # at most that one was new


def test_invoke_url_target_posts_the_event_over_verified_tls(proxy: ProxyProcess,
                                                             fakes: Fakes) -> None:
    answer = get(proxy, "/url/thing")
    assert (answer.status, answer.body) == (200, b'{"via":"url"}')
    headers, body = fakes.runtime_seen[-1]
    event = json.loads(body)
    assert event["path"] == "/url/thing" and event["headers"]["Host"] == "api.test"
    assert headers["content-type"] == "application/json"
    assert headers["x-scf-request-id"] == event["requestContext"]["requestId"]
    assert "authorization" not in headers  # an invoke URL gets no cloud credentials
    record = access_record(proxy, "/url/thing")
    assert record["function_request_id"] == "runtime-1"


# --- failures -------------------------------------------------------------------------------

def test_function_error_gives_502_without_the_trace_and_logs_it(proxy: ProxyProcess,
                                                                 fakes: Fakes) -> None:
    answer = get(proxy, "/raiser")
    assert answer.status == 502
    assert b"secret stack" not in answer.body  # the function is not debug: no trace
    log = proxy.wait_for_log("fn-raiser")
    assert "secret stack" in log  # the error object, trace included, is in the error log
    assert access_record(proxy, "/raiser")["status"] == 502


def test_throttling_that_never_ends_gives_503_with_retry_after(proxy: ProxyProcess,
                                                               fakes: Fakes) -> None:
    started = time.monotonic()
    answer = get(proxy, "/busy")
    assert answer.status == 503 and answer.headers["Retry-After"]
    assert time.monotonic() - started < 5  # gave up within the retry budget
    assert len(fakes.calls("busy")) >= 3  # backed off and retried before giving up
    proxy.wait_for_log("RequestLimitExceeded")


def test_throttled_then_ok_gives_200_after_a_retry(proxy: ProxyProcess, fakes: Fakes) -> None:
    answer = get(proxy, "/flaky")
    assert answer.status == 201 and answer.body.decode() == "远程 Hello CLB"
    first, second = fakes.calls("flaky")
    assert first.event == second.event  # the same event, sent again
    assert first.reply is not None and first.reply.response is not None
    assert first.reply.response["Error"]["Code"] == "LimitExceeded.TotalConcurrencyMemory"


def test_slow_api_gives_504_at_the_listeners_read_timeout(proxy: ProxyProcess,
                                                          fakes: Fakes) -> None:
    started = time.monotonic()
    answer = get(proxy, "/slow")
    elapsed = time.monotonic() - started
    assert answer.status == 504
    assert 0.9 < elapsed < SLOW_SECONDS  # proxy_read_timeout = 1, not the API's answer
    assert access_record(proxy, "/slow")["status"] == 504


def test_api_error_gives_502_with_the_code_in_the_error_log(proxy: ProxyProcess) -> None:
    assert get(proxy, "/gone").status == 502
    proxy.wait_for_log("API error ResourceNotFound.Function")


def test_no_secret_reaches_any_log(proxy: ProxyProcess) -> None:
    for path in ("/hello/secrets", "/raiser/secrets", "/gone/secrets"):
        get(proxy, path)
    access_record(proxy, "/gone/secrets")  # everything up to here is in the logs
    assert_no_secret(proxy.stderr, "\n".join(proxy.stdout_lines))


def test_auth_failure_gives_502_with_the_code_logged_and_not_the_secret(
        fakes: Fakes, ca_file: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    with _start(fakes, ca_file, tmp_path_factory, WRONG_KEY) as proxy:
        answer = get(proxy, "/hello")
        assert answer.status == 502
        assert b"AuthFailure" not in answer.body  # the client is not told why
        log = proxy.wait_for_log("AuthFailure.SignatureFailure")
        assert "ERROR" in next(line for line in log.splitlines()
                               if "AuthFailure.SignatureFailure" in line)
        assert access_record(proxy, "/hello")["status"] == 502
        assert_no_secret(proxy.stderr, "\n".join(proxy.stdout_lines))


# --- config ---------------------------------------------------------------------------------

def test_missing_credentials_are_a_config_error_naming_the_rule(
        fakes: Fakes, ca_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(config_text(fakes.api.port, fakes.runtime_port, ca_file))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENCENTCLOUD_")}
    proc = subprocess.run([sys.executable, "-m", "proxy.cli", "--check-config", str(path)],
                          env=env, capture_output=True, text=True, timeout=30,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 2
    assert ('rules.toml: listener[0].rule[0].target[0]: remote invocation of "prod/hello" '
            "needs TENCENTCLOUD_SECRETID and TENCENTCLOUD_SECRETKEY") in proc.stderr
    assert "got no TENCENTCLOUD_SECRETID, TENCENTCLOUD_SECRETKEY" in proc.stderr


def test_the_same_config_with_credentials_checks_ok(fakes: Fakes, ca_file: Path,
                                                    tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(config_text(fakes.api.port, fakes.runtime_port, ca_file))
    env = {**os.environ, **_credentials(SECRET_KEY)}
    proc = subprocess.run([sys.executable, "-m", "proxy.cli", "--check-config", str(path)],
                          env=env, capture_output=True, text=True, timeout=30,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr
    assert f"OK (1 listeners, {len(SCRIPTS) + 1} rules, 0 functions)" in proc.stdout
