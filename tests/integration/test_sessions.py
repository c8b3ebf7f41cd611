"""Issue 14, session persistence through the real process: CLB's cookie insertion on a rule
that mixes a CVM and an SCF target, driven by the config file and by the official SDK
(CreateRule / ModifyRule ``SessionExpireTime``, ``CookieName``), with the re-pick of a target
that is drained or removed and of a forged cookie, and the Terraform-style update sequence.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tencentcloud.clb.v20180317 import clb_client, models
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

from tests.clbsdk import client as sdk_client
from tests.clbsdk import request as sdk
from tests.configs import function, listener, rule
from tests.proxyproc import ProxyProcess
from tests.upstreams import Upstream

LB = "lb-local"
COOKIE = "tgw_l7_route"


def _get(port: int, host: str, cookie: str | None = None) -> tuple[str, str | None]:
    """One GET: (who answered, the Set-Cookie line or None)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/", headers={"Host": host, **({"Cookie": cookie} if cookie else {})})
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, (resp.status, body)
        who = "cvm" if body == b"cvm" else json.loads(body)["function"]
        return who, resp.getheader("Set-Cookie")
    finally:
        conn.close()


def _pair(set_cookie: str | None) -> str:
    assert set_cookie is not None
    return set_cookie.split(";", 1)[0]


def _mixed(cvm: Upstream, **settings: object) -> str:
    targets = (f'[{{ type = "CVM", address = "{cvm.address}", weight = 10 }}, '
               f'{{ type = "SCF", function = "echo", weight = 10 }}]')
    return (listener() + rule("shop.test", "/", targets, **settings)
            + rule("plain.test", "/", targets) + function("echo", "whoami", concurrency=2))




@pytest.fixture
def proxy(tmp_path: Path, cvm: Upstream) -> Iterator[ProxyProcess]:
    config = _mixed(cvm, session_expire_time=60)
    with ProxyProcess.with_config(config, tmp_path, "--admin", "127.0.0.1:0") as proc:
        yield proc


def _where(client: clb_client.ClbClient, domain: str) -> dict[str, str]:
    listener = client.DescribeListeners(sdk(models.DescribeListenersRequest,
                                             LoadBalancerId=LB)).Listeners[0]
    [location] = [r.LocationId for r in listener.Rules if r.Domain == domain]
    return {"LoadBalancerId": LB, "ListenerId": listener.ListenerId, "LocationId": location}


def test_the_cookie_keeps_a_client_on_its_target_cvm_or_scf(proxy: ProxyProcess) -> None:
    port = proxy.port()
    # without a cookie, WRR alternates between the server and the function, each answer
    # carrying the cookie that names its target
    firsts = [_get(port, "shop.test") for _ in range(4)]
    assert sorted(who for who, _ in firsts) == ["cvm", "cvm", "echo", "echo"]
    for _, line in firsts:
        assert line is not None and line.startswith(COOKIE + "=")
        assert "Max-Age=60" in line and "Path=/" in line and "HttpOnly" in line
    cookies = {who: _pair(line) for who, line in firsts}
    assert cookies["cvm"] != cookies["echo"]
    for who, cookie in cookies.items():
        answers = [_get(port, "shop.test", f"other=1; {cookie}") for _ in range(5)]
        assert [w for w, _ in answers] == [who] * 5
        assert all(_pair(line) == cookie for _, line in answers)  # re-issued every answer
    # a rule without session persistence sets no cookie and ignores one
    assert _get(port, "plain.test", cookies["cvm"])[1] is None


def test_a_forged_cookie_is_balanced_as_new_and_gets_a_real_one(proxy: ProxyProcess,
                                                               cvm: Upstream) -> None:
    port = proxy.port()
    genuine = {who: _pair(line) for who, line in (_get(port, "shop.test") for _ in range(2))}
    forged = [f"{COOKIE}={cvm.address}", f"{COOKIE}=0000000000000000", f"{COOKIE}="]
    for cookie in forged:
        who, line = _get(port, "shop.test", cookie)
        assert _pair(line) == genuine[who]


def test_drained_or_removed_targets_are_repicked_and_the_cookie_reissued(
        proxy: ProxyProcess, cvm: Upstream) -> None:
    client = sdk_client(proxy.admin_port)
    where = _where(client, "shop.test")
    port = proxy.port()
    cookies = {who: _pair(line) for who, line in (_get(port, "shop.test") for _ in range(2))}
    # the server drained (weight 0): its clients go to the function, with the function's cookie
    client.ModifyTargetWeight(sdk(models.ModifyTargetWeightRequest, **where, Weight=0,
                                   Targets=[{"EniIp": "127.0.0.1", "Port": cvm.port}]))
    who, line = _get(port, "shop.test", cookies["cvm"])
    assert (who, _pair(line)) == ("echo", cookies["echo"])
    client.ModifyTargetWeight(sdk(models.ModifyTargetWeightRequest, **where, Weight=10,
                                   Targets=[{"EniIp": "127.0.0.1", "Port": cvm.port}]))
    assert _get(port, "shop.test", cookies["cvm"])[0] == "cvm"  # the id outlives the change
    # the function unbound: its cookie names nothing any more
    client.DeregisterFunctionTargets(sdk(models.DeregisterFunctionTargetsRequest, **where,
                                          FunctionTargets=[{"Function": {
                                              "FunctionName": "echo"}}]))
    who, line = _get(port, "shop.test", cookies["echo"])
    assert (who, _pair(line)) == ("cvm", cookies["cvm"])


def test_session_time_and_cookie_name_through_thesdk(proxy: ProxyProcess) -> None:
    client = sdk_client(proxy.admin_port)
    where = _where(client, "plain.test")
    port = proxy.port()
    client.ModifyRule(sdk(models.ModifyRuleRequest, **where, SessionExpireTime=30,
                           CookieName="cart"))
    who, line = _get(port, "plain.test")
    assert line is not None and line.startswith("cart=") and "Max-Age=30" in line
    assert [_get(port, "plain.test", _pair(line))[0] for _ in range(4)] == [who] * 4
    described = client.DescribeListeners(sdk(models.DescribeListenersRequest,
                                              LoadBalancerId=LB)).Listeners[0]
    [shown] = [r for r in described.Rules if r.LocationId == where["LocationId"]]
    assert (shown.SessionExpireTime, shown.CookieName) == (30, "cart")
    for bad in ({"SessionExpireTime": 29}, {"SessionExpireTime": 86401},
                {"SessionExpireTime": 60, "Scheduler": "LEAST_CONN"}):
        with pytest.raises(TencentCloudSDKException) as caught:
            client.ModifyRule(sdk(models.ModifyRuleRequest, **where, **bad))
        assert caught.value.code.startswith("InvalidParameterValue"), bad
    client.ModifyRule(sdk(models.ModifyRuleRequest, **where, SessionExpireTime=0))
    assert _get(port, "plain.test")[1] is None


def test_terraform_style_sequence(proxy: ProxyProcess, cvm: Upstream) -> None:
    """CreateRule, ModifyRule (scheduler, session time, health check), ModifyDomainAttributes
    (default server), each waited on with DescribeTaskStatus as the provider does."""
    client = sdk_client(proxy.admin_port)
    listener_id = _where(client, "shop.test")["ListenerId"]
    port = proxy.port()

    def wait(response: Any) -> None:
        status = client.DescribeTaskStatus(sdk(models.DescribeTaskStatusRequest,
                                                TaskId=response.RequestId))
        assert status.Status == 0

    created = client.CreateRule(sdk(models.CreateRuleRequest, LoadBalancerId=LB,
                                     ListenerId=listener_id, Rules=[{
                                         "Domain": "tf.test", "Url": "/",
                                         "Scheduler": "LEAST_CONN"}]))
    wait(created)
    [location] = created.LocationIds
    where = {"LoadBalancerId": LB, "ListenerId": listener_id, "LocationId": location}
    wait(client.RegisterTargets(sdk(models.RegisterTargetsRequest, **where, Targets=[
        {"EniIp": "127.0.0.1", "Port": cvm.port, "Weight": 10}])))
    wait(client.RegisterFunctionTargets(sdk(models.RegisterFunctionTargetsRequest, **where,
                                             FunctionTargets=[{"Function": {
                                                 "FunctionName": "echo"}, "Weight": 10}])))
    assert _get(port, "tf.test")[1] is None
    wait(client.ModifyRule(sdk(models.ModifyRuleRequest, **where, Scheduler="WRR",
                                SessionExpireTime=3600,
                                HealthCheck={"HealthSwitch": 1, "IntervalTime": 10,
                                             "HttpCheckPath": "/"})))
    who, line = _get(port, "tf.test")
    assert line is not None and "Max-Age=3600" in line
    assert {_get(port, "tf.test", _pair(line))[0] for _ in range(4)} == {who}
    described = client.DescribeListeners(sdk(models.DescribeListenersRequest,
                                              LoadBalancerId=LB)).Listeners[0]
    [shown] = [r for r in described.Rules if r.LocationId == location]
    assert (shown.Scheduler, shown.HealthCheck.IntervalTime) == ("WRR", 10)
    # before: an unknown Host goes to the first rule's domain (shop.test, with a cookie)
    assert _get(port, "elsewhere.test")[1] is not None
    wait(client.ModifyDomainAttributes(sdk(models.ModifyDomainAttributesRequest,
                                            LoadBalancerId=LB, ListenerId=listener_id,
                                            Domain="tf.test", DefaultServer=True)))
    described = client.DescribeListeners(sdk(models.DescribeListenersRequest,
                                              LoadBalancerId=LB)).Listeners[0]
    assert [r.Domain for r in described.Rules if r.DefaultServer] == ["tf.test"]
    _, line = _get(port, "elsewhere.test")
    assert line is not None and "Max-Age=3600" in line  # now served by tf.test's rule
    with pytest.raises(TencentCloudSDKException) as caught:
        client.DescribeTaskStatus(sdk(models.DescribeTaskStatusRequest, TaskId="nope"))
    assert caught.value.code == "ResourceNotFound"
