"""Issue 16 item 4 through the real process: the local SCF API (``--scf-api``) driven by the
official tencentcloud-sdk-python SCF client, unchanged but for its endpoint (HttpProfile
endpoint + protocol http): Invoke and InvokeFunction, the TC3 check (AuthFailure), SCF's error
shapes (ResourceNotFound.Function, a timeout and a raised exception in ``Result``), Event
invocations, and bad ``--scf-api`` values (exit 2).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tencentcloud.common.credential import Credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.scf.v20180416 import models, scf_client

from tests.configs import function, listener, scf_rule
from tests.proxyproc import ROOT, ProxyProcess, http_get

SECRET_ID = "AKIDlocalscfapi"
SECRET_KEY = "local-scf-api-secret-key"
ENV = {"CLBSCF_SCF_API_SECRET_ID": SECRET_ID, "CLBSCF_SCF_API_SECRET_KEY": SECRET_KEY}
SCF_API = re.compile(r"clbscf-proxy: scf-api on http://(\S+):(\d+)")
CONFIG = (listener() + scf_rule("fn.test", "/", "echo") + function("echo")
          + function("apiecho", timeout=2, concurrency=2)
          + function("other", "apiecho", namespace="team") + function("raises")
          + function("sleeps", timeout=1))


def api_port(proc: ProxyProcess) -> int:
    match = SCF_API.search(proc.stderr)
    assert match, proc.stderr
    return int(match.group(2))


def client(port: int, secret_id: str = SECRET_ID, secret_key: str = SECRET_KEY,
           method: str = "POST") -> scf_client.ScfClient:
    profile = ClientProfile(httpProfile=HttpProfile(protocol="http", endpoint=f"127.0.0.1:{port}",
                                                    reqTimeout=30, reqMethod=method))
    return scf_client.ScfClient(Credential(secret_id, secret_key), "ap-guangzhou", profile)


def request(kind: type[Any], **fields: Any) -> Any:
    req = kind()
    req.from_json_string(json.dumps(fields))
    return req


def invoke(port: int, **fields: Any) -> Any:
    return client(port).Invoke(request(models.InvokeRequest, **fields)).Result


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    with ProxyProcess.with_config(CONFIG, tmp_path_factory.mktemp("scfapi"), "--scf-api",
                                  "127.0.0.1:0", env=ENV) as proc:
        yield proc


def test_official_sdk_invoke_runs_the_local_function(proxy: ProxyProcess) -> None:
    result = invoke(api_port(proxy), FunctionName="apiecho",
                    ClientContext=json.dumps({"hello": "scf"}))
    assert result.InvokeResult == 0 and result.ErrMsg == ""
    ret = json.loads(result.RetMsg)
    assert ret["got"] == {"hello": "scf"}
    assert ret["request_id"] == result.FunctionRequestId  # the function's own request id
    assert isinstance(result.Duration, float) and result.BillDuration >= 1
    assert result.MemUsage > 0 and result.Log == ""  # the instance's peak memory, bytes


def test_official_sdk_invoke_function_with_namespace_and_default_qualifier(
        proxy: ProxyProcess) -> None:
    api = client(api_port(proxy))
    result = api.InvokeFunction(request(models.InvokeFunctionRequest, FunctionName="other",
                                        Namespace="team", Event='{"n": 1}')).Result
    assert result.InvokeResult == 0 and json.loads(result.RetMsg)["got"] == {"n": 1}
    latest = api.InvokeFunction(request(models.InvokeFunctionRequest, FunctionName="apiecho",
                                        Qualifier="$LATEST")).Result
    assert json.loads(latest.RetMsg)["got"] == {}  # no Event: an empty one


def test_official_sdk_with_get_requests(proxy: ProxyProcess) -> None:
    api = client(api_port(proxy), method="GET")
    result = api.Invoke(request(models.InvokeRequest, FunctionName="apiecho",
                                ClientContext=json.dumps({"via": "GET & query?"}))).Result
    assert json.loads(result.RetMsg)["got"] == {"via": "GET & query?"}
    wrong = client(api_port(proxy), secret_key="the-wrong-key", method="GET")
    with pytest.raises(TencentCloudSDKException) as info:
        wrong.Invoke(request(models.InvokeRequest, FunctionName="apiecho"))
    assert info.value.code == "AuthFailure.SignatureFailure"


def test_an_unknown_function_is_resource_not_found(proxy: ProxyProcess) -> None:
    with pytest.raises(TencentCloudSDKException) as info:
        invoke(api_port(proxy), FunctionName="nosuch", ClientContext="{}")
    assert info.value.code == "ResourceNotFound.Function"
    assert "default/nosuch" in info.value.message
    with pytest.raises(TencentCloudSDKException) as info:  # right name, other namespace
        invoke(api_port(proxy), FunctionName="other", ClientContext="{}")
    assert info.value.code == "ResourceNotFound.Function"


def test_an_unknown_qualifier_is_resource_not_found(proxy: ProxyProcess) -> None:
    with pytest.raises(TencentCloudSDKException) as info:
        invoke(api_port(proxy), FunctionName="apiecho", Qualifier="7")
    assert info.value.code == "ResourceNotFound.Qualifier"


@pytest.mark.parametrize(("secret_id", "secret_key", "code"), [
    (SECRET_ID, "the-wrong-key", "AuthFailure.SignatureFailure"),
    ("AKIDsomebodyelse", SECRET_KEY, "AuthFailure.SecretIdNotFound"),
])
def test_a_wrong_secret_is_an_auth_failure(proxy: ProxyProcess, secret_id: str,
                                           secret_key: str, code: str) -> None:
    api = client(api_port(proxy), secret_id, secret_key)
    with pytest.raises(TencentCloudSDKException) as info:
        api.Invoke(request(models.InvokeRequest, FunctionName="apiecho", ClientContext="{}"))
    assert info.value.code == code


def test_a_raised_exception_is_in_the_result(proxy: ProxyProcess) -> None:
    result = invoke(api_port(proxy), FunctionName="apiecho",
                    ClientContext=json.dumps({"raise": "on purpose"}))
    assert result.InvokeResult == 1
    error = json.loads(result.RetMsg)
    assert error == json.loads(result.ErrMsg)
    assert error["statusCode"] == 430 and error["errorMessage"] == "user code exception caught"
    assert "ValueError: on purpose" in error["stackTrace"]
    assert error["requestId"] == result.FunctionRequestId


def test_a_timeout_is_in_the_result(proxy: ProxyProcess) -> None:
    result = invoke(api_port(proxy), FunctionName="apiecho",
                    ClientContext=json.dumps({"sleep": 5}))
    assert result.InvokeResult == 1
    assert json.loads(result.RetMsg)["statusCode"] == 433
    # the instance was replaced: the next call answers
    assert invoke(api_port(proxy), FunctionName="apiecho", ClientContext="{}").InvokeResult == 0


def test_an_event_invocation_answers_at_once_and_runs(proxy: ProxyProcess) -> None:
    marker = "event-invocation-ran-42"
    result = invoke(api_port(proxy), FunctionName="apiecho", InvocationType="Event",
                    ClientContext=json.dumps({"say": marker}))
    assert result.FunctionRequestId and result.RetMsg == "" and result.InvokeResult == 0
    proxy.wait_for_log(f"request_id={result.FunctionRequestId} stdout: {marker}", timeout=30)


def test_bad_parameters_get_scf_error_codes(proxy: ProxyProcess) -> None:
    with pytest.raises(TencentCloudSDKException) as info:
        invoke(api_port(proxy), FunctionName="apiecho", ClientContext="not json")
    assert info.value.code == "InvalidParameterValue.ClientContext"
    with pytest.raises(TencentCloudSDKException) as info:
        invoke(api_port(proxy), FunctionName="apiecho", InvocationType="Later")
    assert info.value.code == "InvalidParameterValue.InvokeType"


def test_the_api_is_served_by_workers_too(tmp_path: Path) -> None:
    with ProxyProcess.with_config(CONFIG, tmp_path, "--scf-api", "127.0.0.1:0",
                                  "--workers", "2", env=ENV) as proc:
        port = api_port(proc)
        for n in range(4):  # new connections: spread over both workers
            result = invoke(port, FunctionName="apiecho", ClientContext=json.dumps({"n": n}))
            assert json.loads(result.RetMsg)["got"] == {"n": n}
        assert http_get(proc.port(), "fn.test")[0] == 200  # the listeners still serve


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy.cli", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", **(env or {})})


@pytest.mark.parametrize("value", ["nonsense", "127.0.0.1:99999", "", "host:port"])
def test_a_bad_scf_api_value_exits_2(value: str) -> None:
    done = _run_cli("--listen", "127.0.0.1:0", "--scf-api", value, env=ENV)
    assert done.returncode == 2
    assert "--scf-api: must be [HOST]:PORT" in done.stderr


def test_the_scf_api_needs_its_credentials() -> None:
    done = _run_cli("--listen", "127.0.0.1:0", "--scf-api", "127.0.0.1:0")
    assert done.returncode == 2
    assert "CLBSCF_SCF_API_SECRET_ID" in done.stderr


@pytest.mark.parametrize("action", ["InvokeFunction", "Invoke"])
def test_a_proxy_invokes_remote_functions_through_another_proxys_scf_api(
        proxy: ProxyProcess, tmp_path: Path, action: str) -> None:
    """scf/remote.py (our own client of the real API) against the local one: a rule whose
    functions are not local goes through ``[scf]`` to the first proxy's --scf-api."""
    front = (listener()
             + scf_rule("ok.test", "/", "echo") + scf_rule("raise.test", "/", "raises")
             + scf_rule("slow.test", "/", "sleeps") + scf_rule("missing.test", "/", "nosuch")
             + f'\n[scf]\nregion = "ap-guangzhou"\n'
               f'endpoint = "http://127.0.0.1:{api_port(proxy)}"\naction = "{action}"\n')
    env = {"TENCENTCLOUD_SECRETID": SECRET_ID, "TENCENTCLOUD_SECRETKEY": SECRET_KEY}
    with ProxyProcess.with_config(front, tmp_path, env=env) as proc:
        status, body = http_get(proc.port(), "ok.test", "/via/remote")
        assert status == 200 and json.loads(body)["path"] == "/via/remote"
        # the SCF error object in Result is read back as the function's failure
        assert http_get(proc.port(), "raise.test")[0] == 502
        proc.wait_for_log("raised on purpose")
        assert http_get(proc.port(), "slow.test", "/?seconds=3")[0] == 504  # 433: timeout
        assert http_get(proc.port(), "missing.test")[0] == 502
        proc.wait_for_log("API error ResourceNotFound.Function")
