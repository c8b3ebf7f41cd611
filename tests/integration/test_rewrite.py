"""CLB's redirects between rules through the real process (issue 14), driven by the official
SDK: ManualRewrite (a rule to a rule of the HTTPS listener), AutoRewrite (HTTP to HTTPS for a
domain), DescribeRewrite, DeleteRewrite; traffic follows each change, curl follows the
redirect over TLS to the target rule's server, every change is written back to the file (and
reads back the same), and a rule a rewrite points at cannot be deleted from under it."""

from __future__ import annotations

import http.client
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from tencentcloud.clb.v20180317 import models
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

from proxy.config import Rewrite, load_config
from tests.clbsdk import client as sdk_client
from tests.clbsdk import request as sdk
from tests.configs import listener, rule
from tests.proxyproc import ProxyProcess
from tests.upstreams import Upstream

LB = "lb-local"


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Upstream, Upstream]]:
    with Upstream("A") as a, Upstream("B") as b:
        yield a, b


@pytest.fixture
def proxy(tmp_path: Path, ca: trustme.CA, servers: tuple[Upstream, Upstream]
          ) -> Iterator[ProxyProcess]:
    a, b = servers
    leaf = ca.issue_cert("a.test")
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    for blob in leaf.cert_chain_pems:
        blob.write_to_path(cert, append=True)
    leaf.private_key_pem.write_to_path(key)
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    to_a = f'[{{ type = "CVM", address = "{a.address}" }}]'
    to_b = f'[{{ type = "CVM", address = "{b.address}" }}]'
    config = (listener("web") + rule("a.test", "/old/", to_a) + rule("a.test", "/api/", to_a)
              + listener("tls", "HTTPS")
              + f'certificates = [{{ cert = "{cert}", key = "{key}" }}]\n'
              + rule("a.test", "/", to_a) + rule("a.test", "/new/", to_b))
    with ProxyProcess.with_config(config, tmp_path, "--admin", "127.0.0.1:0") as proc:
        yield proc


def _get(proxy: ProxyProcess, path: str) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port("web"), timeout=10)
    try:
        conn.request("GET", path, headers={"Host": "a.test"})
        resp = conn.getresponse()
        return resp.status, resp.headers.get("Location", ""), resp.read().decode()
    finally:
        conn.close()


def _locations(client: Any) -> dict[tuple[str, str], str]:
    out = {}
    for lst in client.DescribeListeners(sdk(models.DescribeListenersRequest,
                                            LoadBalancerId=LB)).Listeners:
        for r in lst.Rules:
            out[(lst.ListenerId, r.Url)] = r.LocationId
    return out


def _written(proxy: ProxyProcess, tmp_path: Path) -> dict[str, Rewrite | None]:
    config = load_config(tmp_path / "rules.toml")
    return {r.url: r.rewrite for r in config.listeners[0].rules}


def test_manual_then_auto_rewrite_and_traffic_follows(proxy: ProxyProcess, tmp_path: Path,
                                                     servers: tuple[Upstream, Upstream]
                                                     ) -> None:
    client = sdk_client(proxy.admin_port)
    locs = _locations(client)
    tls = proxy.port("tls")
    pair = {"LoadBalancerId": LB, "SourceListenerId": "lbl-web", "TargetListenerId": "lbl-tls"}
    client.ManualRewrite(sdk(models.ManualRewriteRequest, **pair, RewriteInfos=[{
        "SourceLocationId": locs[("lbl-web", "/old/")],
        "TargetLocationId": locs[("lbl-tls", "/new/")], "RewriteCode": 301, "TakeUrl": False,
        "SourceDomain": "a.test"}]))
    assert _get(proxy, "/old/page?x=1")[:2] == (301, f"https://a.test:{tls}/new/")
    assert _get(proxy, "/api/v")[0] == 200  # the other rule still serves
    # a real client follows it over TLS to the target rule's server (B)
    done = subprocess.run(["curl", "-sS", "-L", "--max-time", "20", "--cacert",
                           str(tmp_path / "ca.pem"), "--resolve", f"a.test:{tls}:127.0.0.1",
                           "--resolve", f"a.test:{proxy.port('web')}:127.0.0.1",
                           f"http://a.test:{proxy.port('web')}/old/page"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout == "B", (done.stdout, done.stderr)
    assert _written(proxy, tmp_path)["/old/"] == Rewrite("tls", "a.test", "/new/", 301, False)

    # AutoRewrite beside a ManualRewrite of the domain is refused, nothing changes
    with pytest.raises(TencentCloudSDKException) as caught:
        client.AutoRewrite(sdk(models.AutoRewriteRequest, LoadBalancerId=LB,
                               ListenerId="lbl-tls", Domains=["a.test"]))
    assert caught.value.code == "FailedOperation"
    described = client.DescribeRewrite(sdk(models.DescribeRewriteRequest, LoadBalancerId=LB))
    [manual] = described.RewriteSet
    assert (manual.Url, manual.RewriteTarget.RewriteType) == ("/old/", "Manual")
    assert manual.RewriteTarget.TargetLocationId == locs[("lbl-tls", "/new/")]

    client.DeleteRewrite(sdk(models.DeleteRewriteRequest, **pair, RewriteInfos=[{
        "SourceLocationId": locs[("lbl-web", "/old/")],
        "TargetLocationId": locs[("lbl-tls", "/new/")]}]))
    assert _get(proxy, "/old/page")[0] == 200
    client.AutoRewrite(sdk(models.AutoRewriteRequest, LoadBalancerId=LB, ListenerId="lbl-tls",
                           Domains=["a.test"], RewriteCodes=[307], TakeUrls=[True]))
    # every rule of the domain, and the rest of it through the made "/" rule
    for path in ("/old/p?q=1", "/api/v", "/elsewhere"):
        assert _get(proxy, path)[:2] == (307, f"https://a.test:{tls}{path}")
    described = client.DescribeRewrite(sdk(models.DescribeRewriteRequest, LoadBalancerId=LB,
                                           SourceListenerIds=["lbl-web"]))
    shown = {r.Url: (r.RewriteTarget.RewriteType, r.RewriteTarget.RewriteCode, r.BeAutoCreated)
             for r in described.RewriteSet}
    assert shown == {"/old/": ("Auto", 307, False), "/api/": ("Auto", 307, False),
                     "/": ("Auto", 307, True)}
    written = _written(proxy, tmp_path)
    assert written["/"] == Rewrite("tls", "a.test", "/", 307, True, auto=True)
    assert "rewrite = {" in (tmp_path / "rules.toml").read_text()

    # the rule the rewrites point at cannot go while they do; the file stays as it was
    before = (tmp_path / "rules.toml").read_text()
    with pytest.raises(TencentCloudSDKException) as caught:
        client.DeleteRule(sdk(models.DeleteRuleRequest, LoadBalancerId=LB, ListenerId="lbl-tls",
                              LocationIds=[locs[("lbl-tls", "/")]]))
    assert caught.value.code == "InvalidParameterValue" and "rewrite" in caught.value.message
    assert (tmp_path / "rules.toml").read_text() == before
    assert _get(proxy, "/api/v")[0] == 307
