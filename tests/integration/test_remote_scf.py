"""Remote SCF against a fake SCF API of the tests' own (tests/fakescf.py).

The fake is an HTTPS server (trustme certificate) that parses requests with h11, checks the
TC3 signature independently (its own canonical request, the official SDK's key derivation),
the ±5 minute timestamp window, the SecretId and the session token, counts TCP connections, and
answers with realistic API 3.0 envelopes chosen by each test's script.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trustme
import uvloop

from proxy.config import RemoteScf, Target
from proxy.errors import (FunctionError, FunctionTimeout, Overloaded, RemoteInvokeError,
                          UpstreamTimeout)
from proxy.messages import Invocation
from proxy.scf.remote import (Credentials, InvokeUrlClient, RemoteFunctions, api_url,
                              classify_code)
from tests.fakescf import (INTEGRATION, REGION, SECRET_ID, SECRET_KEY, TOKEN, Call, FakeScfApi,
                           Reply, api_error, invoke_url_runtime, success)

EVENT = json.dumps({"httpMethod": "GET", "path": "/hi", "headers": {"Host": "a.test"},
                    "body": "未命名"}, ensure_ascii=False).encode()
TARGET = Target(type="SCF", namespace="prod", function="hello", qualifier="3")

Runner = Callable[[Coroutine[Any, Any, None]], None]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    runner: Runner = asyncio.run if request.param == "asyncio" else uvloop.run
    return runner


def client(api: FakeScfApi, ca_file: Path, *, action: str = "InvokeFunction",
           token: str | None = None, **kwargs: Any) -> RemoteFunctions:
    scf = RemoteScf(region=REGION, endpoint=api.endpoint, action=action, ca_file=ca_file)
    return RemoteFunctions(scf, Credentials(kwargs.pop("secret_id", SECRET_ID),
                                            kwargs.pop("secret_key", SECRET_KEY), token),
                           **kwargs)


def no_secret_logged(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        text = record.getMessage()
        assert SECRET_KEY not in text and TOKEN not in text and "Signature=" not in text


# --- success --------------------------------------------------------------------------------

def test_invoke_function_success_returns_retmsg_and_function_request_id(
        run: Runner, ca: trustme.CA, ca_file: Path) -> None:
    async def main() -> None:
        async with FakeScfApi(ca) as api:
            remote = client(api, ca_file)
            invocation = await remote.invoke(TARGET, EVENT, "proxy-req-1")
            # MemUsage, bytes, as the fake API (SCF's doc example) answers it
            assert invocation == Invocation(INTEGRATION.encode(), "fn-req-1", False, 12.5,
                                            mem_usage=3207168)
            (call,) = api.calls
            assert call.body == {"FunctionName": "hello", "Namespace": "prod", "Qualifier": "3",
                                 "Event": EVENT.decode()}
            assert call.headers["x-tc-action"] == "InvokeFunction"
            assert call.headers["x-tc-version"] == "2018-04-16"
            assert call.headers["x-tc-region"] == REGION
            assert call.headers["content-type"] == "application/json"
            assert call.headers["host"] == f"localhost:{api.port}"
            assert "x-tc-token" not in call.headers
            await remote.close()
    run(main())


def test_invoke_action_sends_client_context_and_request_response(
        run: Runner, ca: trustme.CA, ca_file: Path) -> None:
    async def main() -> None:
        async with FakeScfApi(ca) as api:
            remote = client(api, ca_file, action="Invoke")
            assert (await remote.invoke(TARGET, EVENT, "r")).result == INTEGRATION.encode()
            (call,) = api.calls
            assert call.headers["x-tc-action"] == "Invoke"
            assert call.body == {"FunctionName": "hello", "Namespace": "prod", "Qualifier": "3",
                                 "ClientContext": EVENT.decode(),
                                 "InvocationType": "RequestResponse"}
            await remote.close()
    run(main())


def test_session_token_is_sent_as_x_tc_token(run: Runner, ca: trustme.CA, ca_file: Path) -> None:
    async def main() -> None:
        async with FakeScfApi(ca, token=TOKEN) as api:
            remote = client(api, ca_file, token=TOKEN)
            await remote.invoke(TARGET, EVENT, "r")
            assert api.calls[0].headers["x-tc-token"] == TOKEN
            await remote.close()
    run(main())


def test_missing_token_is_refused_by_the_api(run: Runner, ca: trustme.CA,
                                             ca_file: Path) -> None:
    async def main() -> None:
        async with FakeScfApi(ca, token=TOKEN) as api:
            remote = client(api, ca_file)
            with pytest.raises(RemoteInvokeError) as info:
                await remote.invoke(TARGET, EVENT, "r")
            assert "AuthFailure.TokenFailure" in info.value.log_detail
            await remote.close()
    run(main())


def test_connection_is_reused_across_invocations(run: Runner, ca: trustme.CA,
                                                 ca_file: Path) -> None:
    async def main() -> None:
        async with FakeScfApi(ca) as api:
            remote = client(api, ca_file)
            for i in range(10):
                await remote.invoke(TARGET, EVENT, f"r{i}")
            assert len(api.calls) == 10 and api.connections == 1
            await remote.close()
    run(main())


# --- function failures ----------------------------------------------------------------------

def test_function_error_gives_function_error_with_the_scf_error_object(
        run: Runner, ca: trustme.CA, ca_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    error = {"errorCode": -1, "errorMessage": "user code exception caught",
             "requestId": "fn-req-9", "statusCode": 430,
             "stackTrace": "Traceback (most recent call last):\nException: err msg"}

    def script(call: Call) -> Reply:
        return Reply(response={"Result": {
            "RetMsg": json.dumps(error), "ErrMsg": "", "InvokeResult": 1, "Log": "",
            "FunctionRequestId": "fn-req-9", "Duration": 3.0, "BillDuration": 4,
            "MemUsage": 1}})

    async def main() -> None:
        async with FakeScfApi(ca, script) as api:
            remote = client(api, ca_file)
            with caplog.at_level(logging.WARNING, logger="proxy.error"):
                with pytest.raises(FunctionError) as info:
                    await remote.invoke(TARGET, EVENT, "r")
            assert info.value.status_hint == 502
            assert info.value.error == error
            assert "fn-req-9" in info.value.log_detail and "err msg" in info.value.log_detail
            assert any("err msg" in r.getMessage() for r in caplog.records)
            await remote.close()
    run(main())


def test_function_timeout_status_433_gives_504(run: Runner, ca: trustme.CA,
                                               ca_file: Path) -> None:
    def script(call: Call) -> Reply:
        return Reply(response={"Result": {
            "RetMsg": "", "InvokeResult": 433, "FunctionRequestId": "fn-t",
            "ErrMsg": json.dumps({"errorCode": -1, "statusCode": 433,
                                  "errorMessage": "Invoking task timed out after 3 seconds"})}})

    async def main() -> None:
        async with FakeScfApi(ca, script) as api:
            remote = client(api, ca_file)
            with pytest.raises(FunctionTimeout) as info:
                await remote.invoke(TARGET, EVENT, "r")
            assert info.value.status_hint == 504 and "fn-t" in info.value.log_detail
            await remote.close()
    run(main())


# --- throttling -----------------------------------------------------------------------------

def test_limit_exceeded_then_success_is_retried(run: Runner, ca: trustme.CA,
                                                ca_file: Path) -> None:
    def script(call: Call) -> Reply:
        if call.number == 1:
            return api_error("LimitExceeded.TotalConcurrencyMemory", "concurrency exceeded")
        return success()

    async def main() -> None:
        async with FakeScfApi(ca, script) as api:
            remote = client(api, ca_file, rng=random.Random(1))
            assert (await remote.invoke(TARGET, EVENT, "r")).request_id == "fn-req-1"
            assert len(api.calls) == 2
            await remote.close()
    run(main())


def test_http_429_from_the_api_is_retried(run: Runner, ca: trustme.CA, ca_file: Path) -> None:
    def script(call: Call) -> Reply:
        if call.number <= 2:
            return Reply(status=429, raw=b"Too Many Requests")
        return success()

    async def main() -> None:
        async with FakeScfApi(ca, script) as api:
            remote = client(api, ca_file)
            assert (await remote.invoke(TARGET, EVENT, "r")).result == INTEGRATION.encode()
            assert len(api.calls) == 3
            await remote.close()
    run(main())


def test_throttling_that_never_ends_gives_503_within_the_budget(
        run: Runner, ca: trustme.CA, ca_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    def script(call: Call) -> Reply:
        return api_error("RequestLimitExceeded", "too many requests")

    async def main() -> None:
        async with FakeScfApi(ca, script) as api:
            remote = client(api, ca_file, retry_budget=0.5)
            started = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="proxy.error"):
                with pytest.raises(Overloaded) as info:
                    await remote.invoke(TARGET, EVENT, "r")
            assert time.monotonic() - started < 0.5 + 0.3
            assert info.value.status_hint == 503 and info.value.retry_after
            assert len(api.calls) >= 3  # backed off and retried, then gave up
            assert any("RequestLimitExceeded" in r.getMessage() for r in caplog.records)
            await remote.close()
    run(main())


# --- API errors -----------------------------------------------------------------------------

def test_bad_signature_gives_502_with_the_code_logged_and_no_secret(
        run: Runner, ca: trustme.CA, ca_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with FakeScfApi(ca, token=TOKEN) as api:
            remote = client(api, ca_file, secret_key=SECRET_KEY + "x", token=TOKEN)
            with caplog.at_level(logging.DEBUG):
                with pytest.raises(RemoteInvokeError) as info:
                    await remote.invoke(TARGET, EVENT, "r")
            assert info.value.status_hint == 502
            assert "AuthFailure.SignatureFailure" in info.value.log_detail
            records = [r for r in caplog.records if r.name == "proxy.error"]
            assert records and records[0].levelno == logging.ERROR
            assert "AuthFailure.SignatureFailure" in records[0].getMessage()
            no_secret_logged(caplog)
            await remote.close()
    run(main())


def test_clock_skew_past_five_minutes_gives_signature_expire(
        run: Runner, ca: trustme.CA, ca_file: Path) -> None:
    async def main() -> None:
        async with FakeScfApi(ca) as api:
            remote = client(api, ca_file, clock=lambda: time.time() - 301)
            with pytest.raises(RemoteInvokeError) as info:
                await remote.invoke(TARGET, EVENT, "r")
            assert "AuthFailure.SignatureExpire" in info.value.log_detail
            await remote.close()
    run(main())


def test_unknown_function_gives_502(run: Runner, ca: trustme.CA, ca_file: Path,
                                    caplog: pytest.LogCaptureFixture) -> None:
    def script(call: Call) -> Reply:
        return api_error("ResourceNotFound.Function", "function hello not found")

    async def main() -> None:
        async with FakeScfApi(ca, script) as api:
            remote = client(api, ca_file)
            with caplog.at_level(logging.WARNING, logger="proxy.error"):
                with pytest.raises(RemoteInvokeError) as info:
                    await remote.invoke(TARGET, EVENT, "r")
            assert "ResourceNotFound.Function" in info.value.log_detail
            assert "RequestId" in info.value.log_detail
            assert len(api.calls) == 1  # not retried
            assert any("ResourceNotFound.Function" in r.getMessage() for r in caplog.records)
            await remote.close()
    run(main())


def test_internal_timeout_error_gives_504(run: Runner, ca: trustme.CA, ca_file: Path) -> None:
    def script(call: Call) -> Reply:
        return api_error("InternalError", "invoke timeout, please retry")

    async def main() -> None:
        async with FakeScfApi(ca, script) as api:
            remote = client(api, ca_file)
            with pytest.raises(UpstreamTimeout):
                await remote.invoke(TARGET, EVENT, "r")
            await remote.close()
    run(main())


def test_answer_without_an_envelope_gives_502(run: Runner, ca: trustme.CA,
                                              ca_file: Path) -> None:
    async def main() -> None:
        async with FakeScfApi(ca, lambda call: Reply(status=500, raw=b"<html>oops")) as api:
            remote = client(api, ca_file)
            with pytest.raises(RemoteInvokeError) as info:
                await remote.invoke(TARGET, EVENT, "r")
            assert "HTTP 500" in info.value.log_detail
            await remote.close()
    run(main())


# --- transport failures ---------------------------------------------------------------------

def test_slow_api_gives_504(run: Runner, ca: trustme.CA, ca_file: Path) -> None:
    async def main() -> None:
        async with FakeScfApi(ca, lambda call: replace(success(), delay=5)) as api:
            remote = client(api, ca_file, read_timeout=0.3)
            started = time.monotonic()
            with pytest.raises(UpstreamTimeout) as info:
                await remote.invoke(TARGET, EVENT, "r")
            assert info.value.status_hint == 504 and time.monotonic() - started < 2
            await remote.close()
    run(main())


def test_unreachable_endpoint_gives_502(run: Runner, ca_file: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        scf = RemoteScf(region=REGION, endpoint=f"https://127.0.0.1:{port}", ca_file=ca_file)
        remote = RemoteFunctions(scf, Credentials(SECRET_ID, SECRET_KEY))
        with caplog.at_level(logging.WARNING, logger="proxy.error"):
            with pytest.raises(RemoteInvokeError) as info:
                await remote.invoke(TARGET, EVENT, "r")
        assert "connect failed" in info.value.log_detail
        assert caplog.records
        await remote.close()
    run(main())


def test_untrusted_certificate_gives_502_with_a_clear_detail(
        run: Runner, ca: trustme.CA, tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))

    async def main() -> None:
        async with FakeScfApi(ca) as api:
            remote = client(api, other)
            with pytest.raises(RemoteInvokeError) as info:
                await remote.invoke(TARGET, EVENT, "r")
            assert "certificate verification failed" in info.value.log_detail
            assert api.calls == []
            await remote.close()
    run(main())


# --- invoke_url -----------------------------------------------------------------------------

def test_invoke_url_posts_the_event_and_returns_the_integration_response(run: Runner) -> None:
    async def main() -> None:
        server, seen = await invoke_url_runtime(200, INTEGRATION.encode())
        port = server.sockets[0].getsockname()[1]
        urls = InvokeUrlClient()
        invocation = await urls.invoke_url(f"http://127.0.0.1:{port}/invoke", EVENT, "req-7")
        assert invocation.result == INTEGRATION.encode()
        assert invocation.request_id == "runtime-1"
        headers, data = seen[0]
        assert data == EVENT and headers["content-type"] == "application/json"
        assert headers["x-scf-request-id"] == "req-7"
        await urls.close()
        server.close()
    run(main())


def test_invoke_url_non_2xx_gives_502(run: Runner, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        server, _ = await invoke_url_runtime(500, b"runtime exploded")
        port = server.sockets[0].getsockname()[1]
        urls = InvokeUrlClient()
        with caplog.at_level(logging.WARNING, logger="proxy.error"):
            with pytest.raises(RemoteInvokeError) as info:
                await urls.invoke_url(f"http://127.0.0.1:{port}/?key=s3cret", EVENT, "r")
        assert "HTTP 500" in info.value.log_detail and "s3cret" not in info.value.log_detail
        assert caplog.records
        await urls.close()
        server.close()
    run(main())


def test_invoke_url_timeout_gives_504(run: Runner) -> None:
    async def main() -> None:
        server, _ = await invoke_url_runtime(200, b"{}", delay=5)
        port = server.sockets[0].getsockname()[1]
        urls = InvokeUrlClient(read_timeout=0.2)
        with pytest.raises(UpstreamTimeout):
            await urls.invoke_url(f"http://127.0.0.1:{port}/", EVENT, "r")
        await urls.close()
        server.close()
    run(main())


# --- pure pieces ----------------------------------------------------------------------------

def test_default_endpoint_becomes_the_regional_host() -> None:
    regional = api_url(RemoteScf(region="ap-shanghai"))
    assert regional == "https://scf.ap-shanghai.tencentcloudapi.com/"
    assert api_url(RemoteScf(region="ap-shanghai", endpoint="https://scf.internal.test")) == (
        "https://scf.internal.test/")


def test_credentials_come_from_the_environment_and_hide_their_secrets() -> None:
    assert Credentials.from_environ({}) is None
    assert Credentials.from_environ({"TENCENTCLOUD_SECRETID": SECRET_ID}) is None
    creds = Credentials.from_environ({"TENCENTCLOUD_SECRETID": SECRET_ID,
                                      "TENCENTCLOUD_SECRETKEY": SECRET_KEY,
                                      "TENCENTCLOUD_SESSIONTOKEN": TOKEN})
    assert creds is not None and creds.token == TOKEN and creds.secret_key == SECRET_KEY
    for text in (repr(creds), str(creds), f"{creds}"):
        assert SECRET_KEY not in text and TOKEN not in text and SECRET_ID not in text


@pytest.mark.parametrize("code,message,kind", [
    ("LimitExceeded", "", "throttled"),
    ("LimitExceeded.UserTotalConcurrencyMemory", "", "throttled"),
    ("RequestLimitExceeded.UinLimitExceeded", "", "throttled"),
    ("RequestSizeLimitExceeded", "", "failed"),
    ("InternalError.System", "upstream timed out", "timeout"),
    ("FailedOperation.InvokeFunction", "function invoke timeout", "timeout"),
    ("FailedOperation.InvokeFunction", "function status error", "failed"),
    ("ResourceNotFound.Timeout", "", "failed"),
    ("AuthFailure.SignatureFailure", "", "failed"),
    ("UnauthorizedOperation.CAM", "", "failed"),
    ("InvalidParameterValue.Param", "", "failed"),
])
def test_api_error_codes_are_classified(code: str, message: str, kind: str) -> None:
    assert classify_code(code, message) == kind
