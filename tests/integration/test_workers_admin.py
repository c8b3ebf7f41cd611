"""Issue 7 through the real process: ``--workers N`` supervision and the admin API on
``--admin`` (the official Tencent Cloud SDK driving it, /metrics, /healthz, the token rule).

Every test runs with one process and with a supervisor and two workers where it matters: the
admin API and /metrics must present the whole, not one worker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tencentcloud.clb.v20180317 import models

from tests.clbsdk import client as sdk_client
from tests.clbsdk import request as sdk
from tests.configs import function, listener, rule, scf_rule
from tests.proxyproc import ROOT, ProxyProcess, http_get
from tests.upstreams import Upstream

LB = "lb-local"
TOKEN = "s3cret-admin-token"


def _config(cvm_address: str) -> str:
    return (listener()
            + rule("ops.test", "/", f'[{{ type = "CVM", address = "{cvm_address}", weight = 10 }}]')
            + scf_rule("fn.test", "/", "echo") + function("echo", "whoami", concurrency=2))


@pytest.fixture(params=[1, 2], ids=["1-process", "2-workers"])
def proxy(request: pytest.FixtureRequest, tmp_path: Path,
          cvm: Upstream) -> Iterator[ProxyProcess]:
    with ProxyProcess.with_config(_config(cvm.address), tmp_path, "--admin", "127.0.0.1:0",
                                  "--workers", str(request.param)) as proc:
        assert proc.admin_port
        yield proc


def _who(port: int, n: int) -> dict[str, int]:
    """n requests to ops.test, each on a new connection: how many the CVM and echo served."""
    counts = {"cvm": 0, "echo": 0, "error": 0}
    for _ in range(n):
        status, body = http_get(port, "ops.test")
        if status != 200:
            counts["error"] += 1
        else:
            counts["cvm" if body == b"cvm" else json.loads(body)["function"]] += 1
    return counts


def _admin(proc: ProxyProcess, path: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{proc.admin_port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()




@pytest.mark.filterwarnings("ignore:EniIp fileds are useless")
def test_official_sdk_binds_a_function_moves_weights_and_traffic_follows(
        proxy: ProxyProcess, cvm: Upstream) -> None:
    client = sdk_client(proxy.admin_port)
    port = proxy.port()
    listener = client.DescribeListeners(sdk(models.DescribeListenersRequest,
                                             LoadBalancerId=LB)).Listeners[0]
    [location] = [r.LocationId for r in listener.Rules if r.Domain == "ops.test"]
    where = {"LoadBalancerId": LB, "ListenerId": listener.ListenerId, "LocationId": location}
    assert _who(port, 6) == {"cvm": 6, "echo": 0, "error": 0}

    client.RegisterFunctionTargets(sdk(models.RegisterFunctionTargetsRequest, **where,
                                        FunctionTargets=[{"Function": {
                                            "FunctionNamespace": "default",
                                            "FunctionName": "echo"}, "Weight": 10}]))
    split = _who(port, 20)  # 10:10 by weighted round robin in each process
    assert split["error"] == 0 and split["cvm"] >= 4 and split["echo"] >= 4, split

    # CVM -> SCF switch-over: the server drained, the function takes everything
    client.ModifyTargetWeight(sdk(models.ModifyTargetWeightRequest, **where, Weight=0,
                                   Targets=[{"EniIp": "127.0.0.1", "Port": cvm.port}]))
    assert _who(port, 10) == {"cvm": 0, "echo": 10, "error": 0}

    described = client.DescribeTargets(sdk(
        models.DescribeTargetsRequest, LoadBalancerId=LB, ListenerIds=[listener.ListenerId],
        Filters=[{"Name": "location-id", "Values": [location]}]))
    [rule] = described.Listeners[0].Rules
    assert [(b.Port, b.Weight) for b in rule.Targets] == [(cvm.port, 0)]
    assert [(f.Function.FunctionName, f.Weight) for f in rule.FunctionTargets] == [("echo", 10)]

    # and back: the function unbound, the server weighted again
    client.DeregisterFunctionTargets(sdk(models.DeregisterFunctionTargetsRequest, **where,
                                          FunctionTargets=[{"Function": {
                                              "FunctionName": "echo"}}]))
    assert http_get(port, "ops.test")[0] == 503  # only a weight-0 server is left
    client.ModifyTargetWeight(sdk(models.ModifyTargetWeightRequest, **where, Weight=10,
                                   Targets=[{"EniIp": "127.0.0.1", "Port": cvm.port}]))
    assert _who(port, 6) == {"cvm": 6, "echo": 0, "error": 0}


def test_metrics_parse_and_count_the_requests_sent(proxy: ProxyProcess) -> None:
    port = proxy.port()
    for _ in range(7):
        assert http_get(port, "fn.test")[0] == 200
    for _ in range(3):
        assert http_get(port, "ops.test")[0] == 200
    assert http_get(port, "nowhere.test", "/x")[0] == 200  # the first rule's domain is the default
    status, text = _admin(proxy, "/metrics")
    assert status == 200
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text.decode())
               for s in family.samples}

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    fn = {"listener": "web", "rule": "fn.test/", "target": "SCF:default/echo"}
    assert value("clbscf_requests_total", **fn, status="200") == 7
    assert value("clbscf_request_duration_seconds_count", **fn) == 7
    assert value("clbscf_function_invocations_total", function="default/echo",
                 outcome="ok") == 7
    cold = value("clbscf_function_cold_starts_total", function="default/echo")
    assert cold == 0  # one request at a time: each process's checked instance serves it warm
    assert value("clbscf_response_bytes_total", **fn) > 0
    cvm_rule = {k: v for k, v in samples.items() if k[0] == "clbscf_requests_total"
                and ("rule", "ops.test/") in k[1]}
    assert sum(cvm_rule.values()) == 4
    assert any(k[0] == "clbscf_function_instances" for k in samples)
    assert any(k[0] == "clbscf_upstream_connections" for k in samples)


def test_healthz_reports_the_processes(proxy: ProxyProcess) -> None:
    status, body = _admin(proxy, "/healthz")
    assert status == 200
    health = json.loads(body)
    assert health["status"] == "ok"
    if "workers" in health:
        assert [w["serving"] for w in health["workers"]] == [True, True]


def test_a_worker_killed_with_sigkill_is_replaced_and_service_continues(
        tmp_path: Path, cvm: Upstream) -> None:
    with ProxyProcess.with_config(_config(cvm.address), tmp_path, "--admin", "127.0.0.1:0",
                                  "--workers", "2") as proxy:
        before = json.loads(_admin(proxy, "/healthz")[1])["workers"]
        victim = before[0]["pid"]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 15
        workers = before
        while time.monotonic() < deadline:
            workers = json.loads(_admin(proxy, "/healthz")[1])["workers"]
            if workers[0]["pid"] != victim and workers[0]["serving"]:
                break
            time.sleep(0.05)
        assert workers[0]["pid"] != victim and workers[0]["restarts"] == 1
        assert workers[1]["pid"] == before[1]["pid"]
        assert _who(proxy.port(), 20) == {"cvm": 20, "echo": 0, "error": 0}
        assert all(http_get(proxy.port(), "fn.test")[0] == 200 for _ in range(10))
        proxy.wait_for_log("restarting")
        assert proxy.stop() == 0


def test_admin_off_loopback_needs_a_token_and_the_token_guards_it(tmp_path: Path,
                                                                  cvm: Upstream) -> None:
    config = tmp_path / "rules.toml"
    config.write_text(_config(cvm.address))
    env = {k: v for k, v in os.environ.items() if k != "CLBSCF_ADMIN_TOKEN"}
    refused = subprocess.run([sys.executable, "-m", "proxy.cli", "--config", str(config),
                              "--admin", "0.0.0.0:0"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2
    assert "CLBSCF_ADMIN_TOKEN" in refused.stderr
    with ProxyProcess.with_config(_config(cvm.address), tmp_path, "--admin", "0.0.0.0:0",
                                  env={"CLBSCF_ADMIN_TOKEN": TOKEN}) as proxy:
        assert _admin(proxy, "/metrics")[0] == 401
        assert _admin(proxy, "/metrics", "wrong")[0] == 401
        assert _admin(proxy, "/metrics", TOKEN)[0] == 200
        status, body = _admin(proxy, "/healthz")  # probes carry no token
        assert status == 200 and json.loads(body) == {"status": "ok"}


def test_reload_that_rebinds_a_listener_is_refused(tmp_path: Path, cvm: Upstream) -> None:
    with ProxyProcess.with_config(_config(cvm.address), tmp_path) as proxy:
        (tmp_path / "rules.toml").write_text(_config(cvm.address).replace("port = 0",
                                                                          "port = 1"))
        assert proxy.proc is not None
        proxy.proc.send_signal(signal.SIGHUP)
        proxy.wait_for_log("reload refused")
        assert "cannot add, remove or rebind listeners" in proxy.stderr
        assert http_get(proxy.port(), "fn.test")[0] == 200
