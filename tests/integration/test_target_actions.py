"""Issue 14, the operators' target actions through the real process, driven by the official
SDK, traffic following each change: BatchRegisterTargets, BatchModifyTargetWeight,
ModifyTargetPort, BatchDeregisterTargets, DescribeTargetHealth (Alive, Dead, Close)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from tencentcloud.clb.v20180317 import clb_client, models
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

from tests.clbsdk import client as sdk_client
from tests.clbsdk import request as sdk
from tests.configs import listener, rule
from tests.proxyproc import ProxyProcess, free_port, http_get
from tests.upstreams import Upstream

LB = "lb-local"
FAST_CHECK = '{ interval = 2, timeout = 1, healthy_threshold = 2, unhealthy_threshold = 2 }'


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Upstream, Upstream]]:
    with Upstream("A") as a, Upstream("B") as b:
        yield a, b


@pytest.fixture
def proxy(tmp_path: Path, servers: tuple[Upstream, Upstream]) -> Iterator[ProxyProcess]:
    a, _ = servers
    dead = free_port()
    config = (listener() + rule("one.test", "/", "[]")
              + rule("two.test", "/", f'[{{ type = "CVM", address = "{a.address}" }}]')
              + rule("checked.test", "/", f'[{{ type = "CVM", address = "{a.address}" }}, '
                     f'{{ type = "CVM", address = "127.0.0.1:{dead}" }}]',
                     health_check=None)  # replaced below
              + rule("unchecked.test", "/", f'[{{ type = "CVM", address = "{a.address}" }}]'))
    config = config.replace("health_check = null\n", f"health_check = {FAST_CHECK}\n")
    config += '  health_check = { enabled = false }\n'
    with ProxyProcess.with_config(config, tmp_path, "--admin", "127.0.0.1:0") as proc:
        yield proc




def _who(port: int, host: str, n: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _ in range(n):
        status, body = http_get(port, host)
        counts[body.decode() if status == 200 else str(status)] += 1
    return counts


def _locations(client: clb_client.ClbClient) -> tuple[str, dict[str, str]]:
    lst = client.DescribeListeners(sdk(models.DescribeListenersRequest,
                                        LoadBalancerId=LB)).Listeners[0]
    return lst.ListenerId, {r.Domain: r.LocationId for r in lst.Rules}


def test_batch_register_weight_port_deregister_and_traffic_follows(
        proxy: ProxyProcess, servers: tuple[Upstream, Upstream]) -> None:
    a, b = servers
    client = sdk_client(proxy.admin_port)
    port = proxy.port()
    lid, loc = _locations(client)
    answer = client.BatchRegisterTargets(sdk(models.BatchRegisterTargetsRequest,
                                              LoadBalancerId=LB, Targets=[
        {"ListenerId": lid, "LocationId": loc["one.test"], "EniIp": "127.0.0.1",
         "Port": a.port},
        {"ListenerId": lid, "LocationId": loc["one.test"], "EniIp": "127.0.0.1",
         "Port": b.port, "Weight": 10},
        {"ListenerId": lid, "LocationId": loc["unchecked.test"], "EniIp": "127.0.0.1",
         "Port": b.port, "Weight": 0}]))
    assert answer.FailListenerIdSet == []
    assert _who(port, "one.test", 8) == {"A": 4, "B": 4}

    client.BatchModifyTargetWeight(sdk(models.BatchModifyTargetWeightRequest,
                                        LoadBalancerId=LB, ModifyList=[
        {"ListenerId": lid, "LocationId": loc["one.test"], "Weight": 0,
         "Targets": [{"EniIp": "127.0.0.1", "Port": a.port}]},
        {"ListenerId": lid, "LocationId": loc["unchecked.test"], "Weight": 0,
         "Targets": [{"EniIp": "127.0.0.1", "Port": a.port},
                     {"EniIp": "127.0.0.1", "Port": b.port, "Weight": 5}]}]))
    assert _who(port, "one.test", 4) == {"B": 4}
    assert _who(port, "unchecked.test", 4) == {"B": 4}  # Target.Weight wins over Weight

    client.ModifyTargetPort(sdk(models.ModifyTargetPortRequest, LoadBalancerId=LB,
                                 ListenerId=lid, LocationId=loc["two.test"], NewPort=b.port,
                                 Targets=[{"EniIp": "127.0.0.1", "Port": a.port}]))
    assert _who(port, "two.test", 3) == {"B": 3}
    described = client.DescribeTargets(sdk(models.DescribeTargetsRequest, LoadBalancerId=LB,
                                            Filters=[{"Name": "location-id",
                                                      "Values": [loc["two.test"]]}]))
    assert [t.Port for t in described.Listeners[0].Rules[0].Targets] == [b.port]

    client.BatchDeregisterTargets(sdk(models.BatchDeregisterTargetsRequest,
                                       LoadBalancerId=LB, Targets=[
        {"ListenerId": lid, "LocationId": loc["one.test"], "EniIp": "127.0.0.1",
         "Port": b.port}]))
    assert _who(port, "one.test", 2) == {"503": 2}  # only the drained A is left

    # all or nothing: one unknown target fails the whole batch, and nothing changed
    with pytest.raises(TencentCloudSDKException) as caught:
        client.BatchDeregisterTargets(sdk(models.BatchDeregisterTargetsRequest,
                                           LoadBalancerId=LB, Targets=[
            {"ListenerId": lid, "LocationId": loc["two.test"], "EniIp": "127.0.0.1",
             "Port": b.port},
            {"ListenerId": lid, "LocationId": loc["one.test"], "EniIp": "127.0.0.1",
             "Port": 1}]))
    assert caught.value.code == "InvalidParameterValue"
    assert _who(port, "two.test", 2) == {"B": 2}


def test_describe_target_health(proxy: ProxyProcess, servers: tuple[Upstream, Upstream]
                                ) -> None:
    a, _ = servers
    client = sdk_client(proxy.admin_port)
    _, loc = _locations(client)
    deadline = time.monotonic() + 30
    while True:
        answer = client.DescribeTargetHealth(sdk(models.DescribeTargetHealthRequest,
                                                  LoadBalancerIds=[LB], LocationIds=[
                                                      loc["checked.test"],
                                                      loc["unchecked.test"]]))
        [balancer] = answer.LoadBalancers
        rules = {r.Domain: r for r in balancer.Listeners[0].Rules}
        shown = {(t.Port, t.HealthStatusDetail, t.HealthStatus)
                 for t in rules["checked.test"].Targets}
        if all(detail != "Unknown" for _, detail, _ in shown) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    dead = next(t.Port for t in rules["checked.test"].Targets if t.Port != a.port)
    assert shown == {(a.port, "Alive", True), (dead, "Dead", False)}
    assert [(t.Port, t.HealthStatusDetail) for t in rules["unchecked.test"].Targets] == [
        (a.port, "Close")]
    assert set(rules) == {"checked.test", "unchecked.test"}
    other = client.DescribeTargetHealth(sdk(models.DescribeTargetHealthRequest,
                                             LoadBalancerIds=["lb-other"]))
    assert other.LoadBalancers == []
