"""Issue 14, API 3.0 signature v1 on the admin API through the real process: the official SDK
signing HmacSHA1 and HmacSHA256 (POST form and GET query) with the admin token as SecretKey,
traffic following the change; hand-made requests (no SignatureMethod means HmacSHA1, as the
Serverless toolkit sends); a wrong signature, a stale Timestamp and another SecretId refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from tencentcloud.clb.v20180317 import clb_client, models
from tencentcloud.common.credential import Credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile

from tests.clbsdk import request as sdk
from tests.configs import function, listener, scf_rule
from tests.proxyproc import ProxyProcess, http_get
from tests.upstreams import Upstream

TOKEN = "v1-admin-token"
LB = "lb-local"


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    config = listener() + scf_rule("fn.test", "/", "echo") + function("echo", "whoami")
    with ProxyProcess.with_config(config, tmp_path_factory.mktemp("v1"), "--admin",
                                  "127.0.0.1:0", env={"CLBSCF_ADMIN_TOKEN": TOKEN}) as proc:
        yield proc


def _client(port: int, method: str, http_method: str = "POST",
            key: str = TOKEN) -> clb_client.ClbClient:
    profile = ClientProfile(signMethod=method, httpProfile=HttpProfile(
        protocol="http", endpoint=f"127.0.0.1:{port}", reqTimeout=10, reqMethod=http_method))
    return clb_client.ClbClient(Credential("admin", key), "ap-guangzhou", profile)



@pytest.mark.parametrize(("method", "http_method"), [
    ("HmacSHA1", "POST"), ("HmacSHA256", "POST"), ("HmacSHA1", "GET"), ("HmacSHA256", "GET")])
def test_the_sdk_signs_v1_and_traffic_follows(proxy: ProxyProcess, cvm: Upstream,
                                              method: str, http_method: str) -> None:
    client = _client(proxy.admin_port, method, http_method)
    listener_id = client.DescribeListeners(sdk(models.DescribeListenersRequest,
                                                LoadBalancerId=LB)).Listeners[0].ListenerId
    domain = f"{method.lower()}-{http_method.lower()}.test"
    created = client.CreateRule(sdk(models.CreateRuleRequest, LoadBalancerId=LB,
                                     ListenerId=listener_id, Rules=[{
                                         "Domain": domain, "Url": "/", "SessionExpireTime": 30,
                                         "HealthCheck": {"HealthSwitch": 0}}]))
    [location] = created.LocationIds
    client.RegisterTargets(sdk(models.RegisterTargetsRequest, LoadBalancerId=LB,
                                ListenerId=listener_id, LocationId=location, Targets=[
                                    {"EniIp": "127.0.0.1", "Port": cvm.port, "Weight": 7}]))
    assert http_get(proxy.port(), domain) == (200, b"cvm")
    described = client.DescribeListeners(sdk(models.DescribeListenersRequest,
                                              LoadBalancerId=LB)).Listeners[0]
    [rule] = [r for r in described.Rules if r.LocationId == location]
    assert (rule.SessionExpireTime, rule.HealthCheck.HealthSwitch) == (30, 0)
    status = client.DescribeTaskStatus(sdk(models.DescribeTaskStatusRequest,
                                            TaskId=created.RequestId))
    assert status.Status == 0


def test_a_wrong_key_is_a_signature_failure(proxy: ProxyProcess) -> None:
    for method in ("HmacSHA1", "HmacSHA256"):
        client = _client(proxy.admin_port, method, key="not-the-token")
        with pytest.raises(TencentCloudSDKException) as caught:
            client.DescribeListeners(sdk(models.DescribeListenersRequest, LoadBalancerId=LB))
        assert caught.value.code == "AuthFailure.SignatureFailure"


def _signed(port: int, params: dict[str, Any], method: str | None = None,
            key: str = TOKEN) -> dict[str, str]:
    form = {"Action": "DescribeListeners", "Version": "2018-03-17", "Region": "ap-guangzhou",
            "Timestamp": str(int(time.time())), "Nonce": "4711", "SecretId": "admin",
            **params}
    if method:
        form["SignatureMethod"] = method
    text = "POST" + f"127.0.0.1:{port}" + "/?" + "&".join(
        f"{k}={form[k]}" for k in sorted(form))
    digest = hashlib.sha256 if method == "HmacSHA256" else hashlib.sha1
    form["Signature"] = base64.b64encode(hmac.new(key.encode(), text.encode(),
                                                  digest).digest()).decode()
    return form


def _post(port: int, form: dict[str, str]) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/", urlencode(form), {
            "Content-Type": "application/x-www-form-urlencoded"})
        resp = conn.getresponse()
        assert resp.status == 200
        answer: dict[str, Any] = json.loads(resp.read())["Response"]
        return answer
    finally:
        conn.close()


def test_hand_made_requests(proxy: ProxyProcess) -> None:
    port = proxy.admin_port
    where = {"LoadBalancerId": LB}
    # no SignatureMethod: HmacSHA1, as @tencent-sdk/capi sends it
    answer = _post(port, _signed(port, where))
    assert "Error" not in answer and answer["Listeners"][0]["Rules"]
    assert "Error" not in _post(port, _signed(port, where, "HmacSHA256"))
    # a nested, flattened parameter with an integer in it
    answer = _post(port, _signed(port, {**where, "ListenerIds.0": "lbl-web", "Port": "0"}))
    assert "Error" not in answer and answer["TotalCount"] == 1
    tampered = _signed(port, where)
    tampered["LoadBalancerId"] = "lb-other"
    assert _post(port, tampered)["Error"]["Code"] == "AuthFailure.SignatureFailure"
    assert _post(port, _signed(port, where, "HmacMD5"))["Error"]["Code"] == \
        "AuthFailure.SignatureFailure"
    stale = _signed(port, {**where, "Timestamp": str(int(time.time()) - 301)})
    assert _post(port, stale)["Error"]["Code"] == "AuthFailure.SignatureExpire"
    other = _signed(port, {**where, "SecretId": "AKIDother"})
    assert _post(port, other)["Error"]["Code"] == "AuthFailure.SecretIdNotFound"
    # a form without a signature, and without the token, is not let in
    unsigned = {k: v for k, v in _signed(port, where).items() if k != "Signature"}
    assert _post(port, unsigned)["Error"]["Code"] == "AuthFailure.SignatureFailure"
