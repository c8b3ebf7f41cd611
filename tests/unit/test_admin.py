"""The admin API: every CLB API 3.0 action and its errors through AdminApp.handle, the bearer
token and TC3 authentication, /healthz and /metrics, and the official Tencent Cloud SDK's
ClbClient against the admin over a real loopback socket."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tencentcloud.clb.v20180317 import clb_client, models
from tencentcloud.common.credential import Credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile

from proxy import writer
from proxy.admin import TASKS_KEPT, AdminApp
from proxy.config import Config, Target, location_id, parse_config
from proxy.errors import ConfigError
from proxy.messages import Request
from proxy.metrics import Registry
from proxy.scf import tc3
from proxy.streams import RequestBody

FUNCTIONS = Path(__file__).resolve().parents[1] / "functions"
LB = "lb-test"
SECRETS = {"TENCENTCLOUD_SECRETID": "AKIDexample", "TENCENTCLOUD_SECRETKEY": "example-key"}
ROOT = location_id("web", "example.com", "/")
API = location_id("web", "example.com", "/api/")
WEB = {"LoadBalancerId": LB, "ListenerId": "lbl-web"}


def make_config(scf: bool = False) -> Config:
    data: dict[str, Any] = {
        "load_balancer_id": LB,
        "listener": [
            {"name": "web", "protocol": "HTTP", "port": 8080, "rule": [
                {"domain": "example.com", "url": "/",
                 "targets": [{"type": "SCF", "function": "whoami", "weight": 30}]},
                {"domain": "example.com", "url": "/api/", "scheduler": "LEAST_CONN",
                 "targets": [{"type": "CVM", "address": "10.0.0.7:8080"}]},
                {"domain": "other.com", "url": "/", "targets": []},
            ]},
            {"name": "alt", "protocol": "HTTP", "port": 8081,
             "rule": [{"domain": "*.example.org", "url": "/"}]},
        ],
        "function": [{"name": "whoami", "code": "whoami"}, {"name": "binary", "code": "binary"}],
    }
    if scf:
        data["scf"] = {"region": "ap-guangzhou"}
    return parse_config(data, None, FUNCTIONS, environ=SECRETS)


class Admin:
    """An AdminApp over a config held here; ``commit`` runs a change on it and ``apply``
    records what it was handed (the durable store's part is store/table.py's, tested there)."""

    def __init__(self, config: Config | None = None, *, token: str | None = None,
                 environ: dict[str, str] | None = None, clock: Any = time.time,
                 health: Any = None) -> None:
        self.config = config or make_config()
        self.applied: list[Config] = []
        self.fail_with: Exception | None = None
        self.registry = Registry()
        self.app = AdminApp(lambda: self.config, self.commit, self.registry, token=token,
                            environ={} if environ is None else environ, clock=clock,
                            health=health)

    async def commit(self, change: Any) -> Any:
        new, answer = change(self.config)
        await self.apply(new)
        return answer

    async def apply(self, config: Config) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.applied.append(config)
        self.config = config

    def send(self, method: str, path: str, body: bytes = b"",
             headers: tuple[tuple[str, str], ...] = (),
             stream: RequestBody | None = None) -> Any:
        request = Request(method, path, "", (("Host", "127.0.0.1:9000"),) + headers, body,
                          "1.1", "127.0.0.1", 40000, "http", "admin", time.time(),
                          stream=stream)
        return asyncio.run(self.app.handle(request)).response

    def call(self, action: str, params: dict[str, Any] | None = None, *,
             raw: bytes | None = None, headers: tuple[tuple[str, str], ...] = ()) -> Any:
        body = raw if raw is not None else json.dumps(params or {}).encode()
        response = self.send("POST", "/", body, (("Content-Type", "application/json"),
                                                 ("X-TC-Action", action),
                                                 ("X-TC-Version", "2018-03-17")) + headers)
        assert response.status == 200
        assert ("Content-Type", "application/json") in response.headers
        return json.loads(response.body)["Response"]

    def rule(self, loc: str, listener: int = 0) -> Any:
        return next(r for r in self.config.listeners[listener].rules if r.location_id == loc)


def error_code(answer: dict[str, Any]) -> str:
    assert answer["RequestId"]
    return str(answer["Error"]["Code"])


@pytest.fixture
def admin() -> Admin:
    return Admin()


# --- DescribeListeners / DescribeTargets -----------------------------------------------------


def test_describe_listeners_shows_listener_ids_rules_and_location_ids(admin: Admin) -> None:
    answer = admin.call("DescribeListeners", {"LoadBalancerId": LB})
    assert answer["TotalCount"] == 2
    web, alt = answer["Listeners"]
    assert (web["ListenerId"], web["ListenerName"], web["Protocol"], web["Port"]) == \
        ("lbl-web", "web", "HTTP", 8080)
    assert [r["LocationId"] for r in web["Rules"]] == \
        [ROOT, API, location_id("web", "other.com", "/")]
    root, api = web["Rules"][0], web["Rules"][1]
    assert (root["Domain"], root["Url"], root["DefaultServer"]) == ("example.com", "/", True)
    assert api["Scheduler"] == "LEAST_CONN" and api["ListenerId"] == "lbl-web"
    assert api["HealthCheck"] == {"HealthSwitch": 1, "IntervalTime": 5, "HealthNum": 3,
                                  "UnHealthNum": 3, "TimeOut": 2, "HttpCode": 31,
                                  "HttpCheckPath": "/", "HttpCheckDomain": "",
                                  "HttpCheckMethod": "HEAD"}
    assert alt["Rules"][0]["Domain"] == "*.example.org"


def test_describe_listeners_filters_by_id_protocol_and_port(admin: Admin) -> None:
    by_id = admin.call("DescribeListeners", {"LoadBalancerId": LB, "ListenerIds": ["lbl-alt"]})
    assert [lst["ListenerId"] for lst in by_id["Listeners"]] == ["lbl-alt"]
    by_port = admin.call("DescribeListeners", {"LoadBalancerId": LB, "Port": 8080,
                                               "Protocol": "http"})
    assert [lst["ListenerId"] for lst in by_port["Listeners"]] == ["lbl-web"]
    none = admin.call("DescribeListeners", {"LoadBalancerId": LB, "Protocol": "HTTPS"})
    assert none["TotalCount"] == 0


def test_a_foreign_load_balancer_id_is_not_found(admin: Admin) -> None:
    answer = admin.call("DescribeListeners", {"LoadBalancerId": "lb-other"})
    assert error_code(answer) == "InvalidParameter.LBIdNotFound"
    assert error_code(admin.call("DescribeTargets", {})) == "MissingParameter"


def test_describe_targets_shows_function_and_cvm_targets(admin: Admin) -> None:
    answer = admin.call("DescribeTargets", {"LoadBalancerId": LB, "ListenerIds": ["lbl-web"]})
    [web] = answer["Listeners"]
    root, api, other = web["Rules"]
    assert root["LocationId"] == ROOT and root["Targets"] == []
    assert root["FunctionTargets"] == [{"Function": {
        "FunctionNamespace": "default", "FunctionName": "whoami", "FunctionQualifier": "$LATEST",
        "FunctionQualifierType": "VERSION"}, "Weight": 30}]
    assert api["Targets"] == [{"Type": "ENI", "InstanceId": "", "EniIp": "10.0.0.7",
                               "Port": 8080, "Weight": 10,
                               "PrivateIpAddresses": ["10.0.0.7"]}]
    assert other["Targets"] == [] and other["FunctionTargets"] == []


def test_describe_targets_filters_by_location_and_private_ip(admin: Admin) -> None:
    by_location = admin.call("DescribeTargets", {"LoadBalancerId": LB, "Filters": [
        {"Name": "location-id", "Values": [API]}]})
    web, alt = by_location["Listeners"]
    assert [r["LocationId"] for r in web["Rules"]] == [API] and alt["Rules"] == []
    by_ip = admin.call("DescribeTargets", {"LoadBalancerId": LB, "Filters": [
        {"Name": "private-ip-address", "Values": ["10.0.0.7"]}]})
    assert [r["LocationId"] for r in by_ip["Listeners"][0]["Rules"]] == [API]
    by_tag = admin.call("DescribeTargets", {"LoadBalancerId": LB, "Filters": [
        {"Name": "tag", "Values": ["blue"]}]})
    assert all(lst["Rules"] == [] for lst in by_tag["Listeners"])


def test_describe_targets_rejects_an_unknown_filter(admin: Admin) -> None:
    answer = admin.call("DescribeTargets", {"LoadBalancerId": LB, "Filters": [
        {"Name": "zone", "Values": ["x"]}]})
    assert error_code(answer) == "InvalidParameterValue.InvalidFilter"


# --- CreateRule / DeleteRule ------------------------------------------------------------------


def test_create_rule_answers_location_ids_and_applies_the_rules(admin: Admin) -> None:
    answer = admin.call("CreateRule", {**WEB, "Rules": [
        {"Domain": "Shop.Example.com", "Url": "/cart", "Scheduler": "IP_HASH",
         "HealthCheck": {"HealthSwitch": 0, "IntervalTime": 10, "HttpCheckPath": "/ping",
                         "HttpCheckMethod": "GET"}},
        {"Domains": ["shop.example.com"], "Url": "~* \\.png$"}]})
    assert "Error" not in answer
    expected = [location_id("web", "shop.example.com", "/cart"),
                location_id("web", "shop.example.com", "~*\\.png$")]
    assert answer["LocationIds"] == expected
    assert len(admin.applied) == 1
    cart = admin.rule(expected[0])
    assert (cart.domain, cart.scheduler, cart.targets) == ("shop.example.com", "IP_HASH", ())
    assert (cart.health_check.enabled, cart.health_check.interval, cart.health_check.path,
            cart.health_check.method) == (False, 10, "/ping", "GET")
    assert admin.config.listeners[0].default_domain == "example.com"  # unchanged


def test_create_rule_with_default_server_moves_the_default_domain(admin: Admin) -> None:
    admin.call("CreateRule", {**WEB, "Rules": [
        {"Domain": "new.example.com", "Url": "/", "DefaultServer": True}]})
    assert admin.config.listeners[0].default_domain == "new.example.com"


@pytest.mark.parametrize("rule, code", [
    ({"Domain": "example.com", "Url": "/"}, "InvalidParameterValue.Duplicate"),
    ({"Domain": "example.com", "Url": "no-slash"}, "InvalidParameterValue"),
    ({"Domain": "bad domain", "Url": "/"}, "InvalidParameterValue"),
    ({"Url": "/x"}, "MissingParameter"),
    ({"Domain": "a.com", "Url": "/", "Scheduler": "RANDOM"}, "InvalidParameterValue"),
    ({"Domain": "a.com", "Url": "/", "HealthCheck": {"IntervalTime": 500}},
     "InvalidParameterValue.Range"),
    ({"Domain": "a.com", "Url": "/", "HealthCheck": {"IntervalTime": 3, "TimeOut": 5}},
     "InvalidParameterValue"),
    ({"Domain": "a.com", "Url": "/", "Certificate": {"CertId": "x"}}, "UnsupportedOperation"),
    ({"Domain": "a.com", "Url": "/", "ForwardType": "TRPC"}, "InvalidParameterValue"),
    ({"Domain": "a.com", "Domains": ["b.com"], "Url": "/"}, "InvalidParameter"),
    ({"Domains": ["a.com", "A.com"], "Url": "/"}, "InvalidParameterValue.Duplicate"),
    ({"Domain": 5, "Url": "/"}, "InvalidParameter.FormatError"),
])
def test_create_rule_refuses_bad_input_and_changes_nothing(admin: Admin, rule: dict[str, Any],
                                                           code: str) -> None:
    before = admin.config
    answer = admin.call("CreateRule", {**WEB, "Rules": [rule]})
    assert error_code(answer) == code, answer
    assert answer["Error"]["Message"]
    assert admin.config is before and not admin.applied


def test_create_rule_in_an_unknown_listener_is_not_found(admin: Admin) -> None:
    answer = admin.call("CreateRule", {"LoadBalancerId": LB, "ListenerId": "lbl-nope",
                                       "Rules": [{"Domain": "a.com", "Url": "/"}]})
    assert error_code(answer) == "InvalidParameter.ListenerIdNotFound"


def test_delete_rule_by_location_ids(admin: Admin) -> None:
    answer = admin.call("DeleteRule", {**WEB, "LocationIds": [API]})
    assert "Error" not in answer
    assert [r.location_id for r in admin.config.listeners[0].rules] == \
        [ROOT, location_id("web", "other.com", "/")]


def test_delete_rule_by_domain_and_url_moves_the_default_to_the_earliest_left(
        admin: Admin) -> None:
    admin.call("DeleteRule", {**WEB, "Domain": "EXAMPLE.com", "Url": "/"})
    admin.call("DeleteRule", {**WEB, "Domain": "example.com", "Url": "/api/"})
    listener = admin.config.listeners[0]
    assert [r.domain for r in listener.rules] == ["other.com"]
    assert listener.default_domain == "other.com"


def test_delete_rule_with_a_new_default_server_domain(admin: Admin) -> None:
    admin.call("DeleteRule", {**WEB, "LocationIds": [ROOT, API],
                              "NewDefaultServerDomain": "other.com"})
    assert admin.config.listeners[0].default_domain == "other.com"
    bad = admin.call("DeleteRule", {**WEB, "LocationIds": [location_id("web", "other.com", "/")],
                                    "NewDefaultServerDomain": "gone.com"})
    assert error_code(bad) == "InvalidParameterValue"


def test_delete_rule_of_an_unknown_location_is_not_found(admin: Admin) -> None:
    answer = admin.call("DeleteRule", {**WEB, "LocationIds": [ROOT, "loc-00000000"]})
    assert error_code(answer) == "InvalidParameter.LocationNotFound"
    assert not admin.applied


# --- function targets -------------------------------------------------------------------------


def fn(name: str, weight: int | None = None, **more: str) -> dict[str, Any]:
    target: dict[str, Any] = {"Function": {"FunctionName": name, **more}}
    if weight is not None:
        target["Weight"] = weight
    return target


def test_register_function_targets_by_location_id(admin: Admin) -> None:
    answer = admin.call("RegisterFunctionTargets", {**WEB, "LocationId": API,
                                                    "FunctionTargets": [fn("binary", 90)]})
    assert "Error" not in answer
    assert admin.rule(API).targets == (
        Target(type="CVM", address="10.0.0.7:8080", weight=10),
        Target(type="SCF", namespace="default", function="binary", weight=90))


def test_register_function_targets_by_domain_and_url_with_defaults(admin: Admin) -> None:
    admin.call("RegisterFunctionTargets", {**WEB, "Domain": "other.com", "Url": "/",
                                           "FunctionTargets": [fn("whoami")]})
    [target] = admin.rule(location_id("web", "other.com", "/")).targets
    assert (target.namespace, target.qualifier, target.weight) == ("default", "$LATEST", 10)


def test_registering_a_bound_function_again_is_a_duplicate(admin: Admin) -> None:
    answer = admin.call("RegisterFunctionTargets", {**WEB, "LocationId": ROOT,
                                                    "FunctionTargets": [fn("whoami")]})
    assert error_code(answer) == "InvalidParameterValue.Duplicate"
    # another qualifier of the same function is another target
    other = admin.call("RegisterFunctionTargets", {**WEB, "LocationId": ROOT, "FunctionTargets": [
        fn("whoami", FunctionQualifier="$DEFAULT", FunctionQualifierType="ALIAS")]})
    assert "Error" not in other


def test_a_function_that_resolves_nowhere_is_not_found(admin: Admin) -> None:
    answer = admin.call("RegisterFunctionTargets", {**WEB, "LocationId": ROOT,
                                                    "FunctionTargets": [fn("elsewhere")]})
    assert error_code(answer) == "ResourceNotFound"
    assert "[scf]" in answer["Error"]["Message"]


def test_a_remote_function_needs_scf_section_and_credentials() -> None:
    with_secrets = Admin(make_config(scf=True), environ=SECRETS)
    answer = with_secrets.call("RegisterFunctionTargets", {**WEB, "LocationId": ROOT,
                                                           "FunctionTargets": [fn("remote")]})
    assert "Error" not in answer
    without = Admin(make_config(scf=True), environ={})
    answer = without.call("RegisterFunctionTargets", {**WEB, "LocationId": ROOT,
                                                      "FunctionTargets": [fn("remote")]})
    assert error_code(answer) == "FailedOperation"
    assert "TENCENTCLOUD_SECRETID" in answer["Error"]["Message"]


@pytest.mark.parametrize("target, code", [
    (fn("binary", 101), "InvalidParameterValue.Range"),
    (fn("binary", -1), "InvalidParameterValue.Range"),
    (fn("bad name!"), "InvalidParameterValue"),
    (fn("binary", FunctionQualifierType="TAG"), "InvalidParameterValue"),
    ({"Weight": 10}, "MissingParameter"),
    ({"Function": {"FunctionName": "binary", "Memory": 128}}, "UnsupportedOperation"),
    ({"Function": "binary"}, "InvalidParameter.FormatError"),
])
def test_register_function_targets_validates_each_target(admin: Admin, target: dict[str, Any],
                                                         code: str) -> None:
    answer = admin.call("RegisterFunctionTargets", {**WEB, "LocationId": ROOT,
                                                    "FunctionTargets": [target]})
    assert error_code(answer) == code
    assert not admin.applied


def test_register_needs_a_rule_by_location_or_domain_and_url(admin: Admin) -> None:
    answer = admin.call("RegisterFunctionTargets", {**WEB, "Domain": "example.com",
                                                    "FunctionTargets": [fn("binary")]})
    assert error_code(answer) == "MissingParameter"
    unknown = admin.call("RegisterFunctionTargets", {**WEB, "Domain": "example.com",
                                                     "Url": "/nope",
                                                     "FunctionTargets": [fn("binary")]})
    assert error_code(unknown) == "InvalidParameter.LocationNotFound"
    empty = admin.call("RegisterFunctionTargets", {**WEB, "LocationId": ROOT,
                                                   "FunctionTargets": []})
    assert error_code(empty) == "InvalidParameterValue.Length"


def test_deregister_function_targets(admin: Admin) -> None:
    answer = admin.call("DeregisterFunctionTargets", {**WEB, "LocationId": ROOT,
                                                      "FunctionTargets": [fn("whoami")]})
    assert "Error" not in answer
    assert admin.rule(ROOT).targets == ()
    again = admin.call("DeregisterFunctionTargets", {**WEB, "LocationId": ROOT,
                                                     "FunctionTargets": [fn("whoami")]})
    assert error_code(again) == "InvalidParameterValue"


def test_modify_function_targets_moves_weights_between_functions(admin: Admin) -> None:
    admin.call("RegisterFunctionTargets", {**WEB, "LocationId": ROOT,
                                           "FunctionTargets": [fn("binary", 0)]})
    admin.call("ModifyFunctionTargets", {**WEB, "LocationId": ROOT, "FunctionTargets": [
        fn("whoami", 10), fn("binary", 90)]})
    assert [(t.function, t.weight) for t in admin.rule(ROOT).targets] == \
        [("whoami", 10), ("binary", 90)]


# --- CVM targets ------------------------------------------------------------------------------


def test_register_and_deregister_cvm_targets(admin: Admin) -> None:
    answer = admin.call("RegisterTargets", {**WEB, "LocationId": API, "Targets": [
        {"EniIp": "10.0.0.8", "Port": 8080, "Weight": 40, "Type": "ENI"},
        {"EniIp": "2001:DB8::1", "Port": 80}]})
    assert "Error" not in answer
    assert [(t.address, t.weight) for t in admin.rule(API).targets] == \
        [("10.0.0.7:8080", 10), ("10.0.0.8:8080", 40), ("[2001:db8::1]:80", 10)]
    admin.call("DeregisterTargets", {**WEB, "LocationId": API, "Targets": [
        {"EniIp": "10.0.0.7", "Port": 8080}, {"EniIp": "2001:db8:0::1", "Port": 80}]})
    assert [t.address for t in admin.rule(API).targets] == ["10.0.0.8:8080"]


@pytest.mark.parametrize("target, code", [
    ({"EniIp": "10.0.0.7", "Port": 8080}, "InvalidParameterValue.Duplicate"),
    ({"InstanceId": "ins-123", "Port": 80}, "UnsupportedOperation"),
    ({"EniIp": "10.0.0.9"}, "MissingParameter"),
    ({"EniIp": "10.0.0.9", "Port": 70000}, "InvalidParameterValue.Range"),
    ({"EniIp": "not a host!", "Port": 80}, "InvalidParameterValue"),
    ({"EniIp": "10.0.0.9", "Port": "80"}, "InvalidParameter.FormatError"),
    ({"EniIp": "10.0.0.9", "Port": True}, "InvalidParameter.FormatError"),
])
def test_register_targets_validates_each_target(admin: Admin, target: dict[str, Any],
                                                code: str) -> None:
    answer = admin.call("RegisterTargets", {**WEB, "LocationId": API, "Targets": [target]})
    assert error_code(answer) == code
    assert not admin.applied


def test_deregistering_an_unbound_cvm_target_fails(admin: Admin) -> None:
    answer = admin.call("DeregisterTargets", {**WEB, "LocationId": API, "Targets": [
        {"EniIp": "10.9.9.9", "Port": 80}]})
    assert error_code(answer) == "InvalidParameterValue"


def test_modify_target_weight_per_target_wins_over_the_request_weight(admin: Admin) -> None:
    admin.call("RegisterTargets", {**WEB, "LocationId": API, "Targets": [
        {"EniIp": "10.0.0.8", "Port": 8080}]})
    admin.call("ModifyTargetWeight", {**WEB, "LocationId": API, "Weight": 0, "Targets": [
        {"EniIp": "10.0.0.7", "Port": 8080}, {"EniIp": "10.0.0.8", "Port": 8080, "Weight": 70}]})
    assert [t.weight for t in admin.rule(API).targets] == [0, 70]
    admin.call("ModifyTargetWeight", {**WEB, "LocationId": API, "Targets": [
        {"EniIp": "10.0.0.7", "Port": 8080}]})
    assert admin.rule(API).targets[0].weight == 10  # CLB's default weight


def test_modify_target_weight_of_an_unbound_target_fails(admin: Admin) -> None:
    answer = admin.call("ModifyTargetWeight", {**WEB, "LocationId": API, "Weight": 5,
                                               "Targets": [{"EniIp": "10.0.0.9", "Port": 1}]})
    assert error_code(answer) == "InvalidParameterValue"
    ranged = admin.call("ModifyTargetWeight", {**WEB, "LocationId": API, "Weight": 500,
                                               "Targets": [{"EniIp": "10.0.0.7", "Port": 8080}]})
    assert error_code(ranged) == "InvalidParameterValue.Range"


# --- DescribeTaskStatus, the envelope and failures --------------------------------------------


def test_describe_task_status_answers_for_a_change(admin: Admin) -> None:
    change = admin.call("RegisterTargets", {**WEB, "LocationId": API, "Targets": [
        {"EniIp": "10.0.0.8", "Port": 8080}]})
    status = admin.call("DescribeTaskStatus", {"TaskId": change["RequestId"]})
    assert status["Status"] == 0 and status["LoadBalancerIds"] == [LB]
    assert "stored (config file or etcd) and applied" in status["Message"]
    assert status["RequestId"] != change["RequestId"]
    missing = admin.call("DescribeTaskStatus", {"TaskId": "nope"})
    assert error_code(missing) == "ResourceNotFound"
    assert error_code(admin.call("DescribeTaskStatus", {})) == "MissingParameter"


def test_task_ids_are_kept_for_a_bounded_number_of_changes(admin: Admin) -> None:
    async def many() -> list[str]:
        ids = []
        for i in range(TASKS_KEPT + 1):
            weight = i % 100
            request = Request("POST", "/", "", (
                ("X-TC-Action", "ModifyTargetWeight"),), json.dumps(
                {**WEB, "LocationId": API, "Weight": weight,
                 "Targets": [{"EniIp": "10.0.0.7", "Port": 8080}]}).encode(),
                "1.1", "127.0.0.1", 1, "http", "admin", 0.0)
            ids.append(json.loads((await admin.app.handle(request)).response.body)
                       ["Response"]["RequestId"])
        return ids
    ids = asyncio.run(many())
    assert error_code(admin.call("DescribeTaskStatus", {"TaskId": ids[0]})) == "ResourceNotFound"
    assert admin.call("DescribeTaskStatus", {"TaskId": ids[-1]})["Status"] == 0


@pytest.mark.parametrize("action, raw, code", [
    ("NoSuchThing", b"{}", "InvalidAction"),
    ("DescribeListeners", b"{not json", "InvalidParameter"),
    ("DescribeListeners", b"[1, 2]", "InvalidParameter"),
    ("DescribeListeners", b'{"LoadBalancerId": "lb-test", "Colour": "red"}', "UnknownParameter"),
    ("DescribeListeners", b'{"LoadBalancerId": 7}', "InvalidParameter.FormatError"),
    ("", b"{}", "MissingParameter"),
])
def test_bad_requests_get_tencent_error_codes_with_http_200(admin: Admin, action: str,
                                                            raw: bytes, code: str) -> None:
    answer = admin.call(action, raw=raw)
    assert error_code(answer) == code
    assert set(answer) == {"Error", "RequestId"}


def test_a_foreign_api_version_is_refused(admin: Admin) -> None:
    response = admin.send("POST", "/", b"{}", (("X-TC-Action", "DescribeListeners"),
                                               ("X-TC-Version", "2017-01-01")))
    assert json.loads(response.body)["Response"]["Error"]["Code"] == "NoSuchVersion"


def test_a_change_the_server_refuses_is_a_failed_operation(admin: Admin) -> None:
    admin.fail_with = ConfigError("CVM targets are not available")
    answer = admin.call("RegisterTargets", {**WEB, "LocationId": API, "Targets": [
        {"EniIp": "10.0.0.8", "Port": 8080}]})
    assert error_code(answer) == "FailedOperation"
    assert "CVM targets are not available" in answer["Error"]["Message"]
    status = admin.call("DescribeTaskStatus", {"TaskId": answer["RequestId"]})
    assert error_code(status) == "ResourceNotFound"
    admin.fail_with = RuntimeError("bug")
    answer = admin.call("RegisterTargets", {**WEB, "LocationId": API, "Targets": [
        {"EniIp": "10.0.0.8", "Port": 8080}]})
    assert error_code(answer) == "InternalError"


def test_concurrent_changes_are_applied_one_on_top_of_the_other() -> None:
    admin = Admin()

    async def slow_apply(config: Config) -> None:
        await asyncio.sleep(0)  # let the other change start while this one is applying
        admin.config = config
    admin.apply = slow_apply  # type: ignore[method-assign]

    async def both() -> None:
        def register(ip: str) -> Request:
            body = json.dumps({**WEB, "LocationId": API,
                               "Targets": [{"EniIp": ip, "Port": 80}]}).encode()
            return Request("POST", "/", "", (("X-TC-Action", "RegisterTargets"),), body,
                           "1.1", "127.0.0.1", 1, "http", "admin", 0.0)
        await asyncio.gather(admin.app.handle(register("10.1.0.1")),
                             admin.app.handle(register("10.1.0.2")))
    asyncio.run(both())
    assert {t.address for t in admin.rule(API).targets} >= {"10.1.0.1:80", "10.1.0.2:80"}


def test_the_body_is_read_from_the_request_stream(admin: Admin) -> None:
    async def streamed(payload: bytes) -> Any:
        body = RequestBody(len(payload), lambda: None, lambda: None)
        body.feed(payload)
        body.end()
        request = Request("POST", "/", "", (("X-TC-Action", "DescribeListeners"),), b"", "1.1",
                          "127.0.0.1", 1, "http", "admin", 0.0, stream=body)
        return json.loads((await admin.app.handle(request)).response.body)["Response"]
    assert asyncio.run(streamed(json.dumps({"LoadBalancerId": LB}).encode()))["TotalCount"] == 2
    big = asyncio.run(streamed(b" " * (2 << 20)))
    assert big["Error"]["Code"] == "RequestSizeLimitExceeded"


# --- /healthz, /metrics, paths and methods ----------------------------------------------------


def test_healthz_answers_ok_and_reports_health_details() -> None:
    response = Admin(health=lambda: {"workers": 2}).send("GET", "/healthz")
    assert response.status == 200
    assert json.loads(response.body) == {"status": "ok", "workers": 2}
    draining = Admin(health=lambda: {"status": "draining"}).send("GET", "/healthz")
    assert draining.status == 503


def test_metrics_page_is_prometheus_text_and_counts_admin_calls(admin: Admin) -> None:
    admin.call("DescribeListeners", {"LoadBalancerId": LB})
    admin.call("DescribeListeners", {"LoadBalancerId": "lb-x"})
    admin.call("Bogus")
    response = admin.send("GET", "/metrics")
    assert response.status == 200
    assert ("Content-Type", "text/plain; version=0.0.4; charset=utf-8") in response.headers
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(response.body.decode())
               for s in f.samples}
    name = "clbscf_admin_requests_total"
    assert samples[(name, (("action", "DescribeListeners"), ("code", "ok")))] == 1
    assert samples[(name, (("action", "DescribeListeners"),
                           ("code", "InvalidParameter.LBIdNotFound")))] == 1
    assert samples[(name, (("action", "unknown"), ("code", "InvalidAction")))] == 1


def test_metrics_page_can_serve_a_merged_scrape() -> None:
    admin = Admin()

    async def scrape() -> bytes:
        return b"# HELP x_total X.\n# TYPE x_total counter\nx_total 3\n"
    admin.app._scrape = scrape
    assert admin.send("GET", "/metrics").body.endswith(b"x_total 3\n")


def test_unknown_paths_are_404_and_wrong_methods_405(admin: Admin) -> None:
    assert admin.send("GET", "/nope").status == 404
    response = admin.send("PUT", "/")  # GET / is a signature-v1 call
    assert response.status == 405 and ("Allow", "GET, POST") in response.headers
    assert ("Allow", "GET, HEAD") in admin.send("POST", "/metrics").headers


# --- authentication ---------------------------------------------------------------------------

TOKEN = "s3cret-token"


def signed_headers(body: bytes, key: str = TOKEN, secret_id: str = "admin",
                   timestamp: int | None = None) -> tuple[tuple[str, str], ...]:
    headers = tc3.sign(secret_id, key, "clb", "127.0.0.1:9000", "DescribeListeners",
                       "2018-03-17", "ap-guangzhou", timestamp or int(time.time()), body)
    return tuple((k, v) for k, v in headers.items() if k != "Host")


def test_without_a_token_every_request_gets_401_with_a_bearer_challenge() -> None:
    admin = Admin(token=TOKEN)
    for path, method in (("/metrics", "GET"), ("/", "POST")):
        response = admin.send(method, path, b"{}", (("X-TC-Action", "DescribeListeners"),))
        assert response.status == 401
        assert ("WWW-Authenticate", 'Bearer realm="clbscf-proxy admin"') in response.headers
    wrong = admin.send("GET", "/metrics", headers=(("Authorization", "Bearer nope"),))
    assert wrong.status == 401
    assert dict(wrong.headers)["WWW-Authenticate"].endswith('error="invalid_token"')
    assert not admin.applied


def test_healthz_is_open_to_probes_but_shows_details_only_with_the_token() -> None:
    admin = Admin(token=TOKEN, health=lambda: {"workers": 2})
    probe = admin.send("GET", "/healthz")
    assert probe.status == 200 and json.loads(probe.body) == {"status": "ok"}
    auth = (("Authorization", f"Bearer {TOKEN}"),)
    assert json.loads(admin.send("GET", "/healthz", headers=auth).body)["workers"] == 2
    draining = Admin(token=TOKEN, health=lambda: {"status": "draining"}).send("GET", "/healthz")
    assert draining.status == 503 and json.loads(draining.body) == {"status": "draining"}


def test_the_bearer_token_opens_every_endpoint() -> None:
    admin = Admin(token=TOKEN)
    auth = (("Authorization", f"bearer {TOKEN}"),)  # the scheme is case-insensitive
    assert admin.send("GET", "/healthz", headers=auth).status == 200
    assert admin.send("GET", "/metrics", headers=auth).status == 200
    assert admin.call("DescribeListeners", {"LoadBalancerId": LB}, headers=auth)["TotalCount"]


def test_a_tc3_signature_made_with_the_token_is_accepted() -> None:
    admin = Admin(token=TOKEN)
    body = json.dumps({"LoadBalancerId": LB}).encode()
    answer = admin.call("DescribeListeners", raw=body, headers=signed_headers(body))
    assert answer["TotalCount"] == 2


@pytest.mark.parametrize("change, code", [
    ({"key": "wrong-key"}, "AuthFailure.SignatureFailure"),
    ({"secret_id": "AKIDother"}, "AuthFailure.SecretIdNotFound"),
    ({"timestamp": 1_000_000_000}, "AuthFailure.SignatureExpire"),
])
def test_a_bad_tc3_signature_gets_auth_failure(change: dict[str, Any], code: str) -> None:
    admin = Admin(token=TOKEN)
    body = json.dumps({"LoadBalancerId": LB}).encode()
    answer = admin.call("DescribeListeners", raw=body, headers=signed_headers(body, **change))
    assert error_code(answer) == code


def test_a_tc3_signature_over_another_body_or_unsigned_is_refused() -> None:
    admin = Admin(token=TOKEN)
    body = json.dumps({"LoadBalancerId": LB}).encode()
    tampered = admin.call("DescribeListeners", raw=body.replace(b"}", b" }"),
                          headers=signed_headers(body))
    assert error_code(tampered) == "AuthFailure.SignatureFailure"
    unsigned = admin.call("DescribeListeners", raw=body, headers=signed_headers(body) + (
        ("X-TC-Content-SHA256", "UNSIGNED-PAYLOAD"),))
    assert error_code(unsigned) == "AuthFailure.SignatureFailure"
    garbled = admin.call("DescribeListeners", raw=body, headers=(
        ("Authorization", "TC3-HMAC-SHA256 Credential=admin"),))
    assert error_code(garbled) == "AuthFailure.InvalidAuthorization"


# --- the official SDK over a real socket ----------------------------------------------------


class LoopbackAdmin:
    """A minimal HTTP/1.1 server of the test's own on 127.0.0.1:0 that hands each request to
    an AdminApp; its event loop runs in a thread because the SDK's calls block."""

    def __init__(self, admin: Admin) -> None:
        self.admin = admin
        self.port = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._server.close()
        clients = asyncio.all_tasks(self._loop)  # keep-alive connections the SDK left open
        for task in clients:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*clients, return_exceptions=True))
        self._loop.run_until_complete(self._server.wait_closed())
        self._loop.close()

    async def _client(self, reader: asyncio.StreamReader,
                      writer_: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                request_line, *lines = head.split("\r\n")
                method, target, _ = request_line.split(" ")
                headers = tuple((k.strip(), v.strip()) for k, _, v in
                                (line.partition(":") for line in lines if line))
                length = int(dict((k.lower(), v) for k, v in headers).get("content-length", 0))
                body = await reader.readexactly(length)
                path, _, query = target.partition("?")
                outcome = await self.admin.app.handle(Request(
                    method, path, query, headers, body, "1.1", "127.0.0.1", 1, "http", "admin",
                    time.time()))
                writer_.write(writer.serialize(outcome.response, keep_alive=True))
                await writer_.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer_.close()

    def __enter__(self) -> LoopbackAdmin:
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
def sdk_admin() -> Iterator[tuple[Admin, LoopbackAdmin]]:
    admin = Admin(token=TOKEN)
    with LoopbackAdmin(admin) as server:
        yield admin, server


def clb(port: int, key: str = TOKEN) -> clb_client.ClbClient:
    profile = ClientProfile(httpProfile=HttpProfile(protocol="http", endpoint=f"127.0.0.1:{port}",
                                                    reqTimeout=5))
    return clb_client.ClbClient(Credential("admin", key), "ap-guangzhou", profile)


def sdk_request(kind: type[Any], **fields: Any) -> Any:
    request = kind()
    request.from_json_string(json.dumps(fields))
    return request


@pytest.mark.filterwarnings("ignore:EniIp fileds are useless")  # SPEC §10 shows EniIp too
def test_the_official_sdk_binds_a_function_moves_weights_and_unbinds_it(
        sdk_admin: tuple[Admin, LoopbackAdmin]) -> None:
    admin, server = sdk_admin
    client = clb(server.port)
    register = client.RegisterFunctionTargets(sdk_request(
        models.RegisterFunctionTargetsRequest, **WEB, LocationId=API, FunctionTargets=[
            {"Function": {"FunctionNamespace": "default", "FunctionName": "binary",
                          "FunctionQualifier": "$LATEST", "FunctionQualifierType": "VERSION"},
             "Weight": 0}]))
    assert client.DescribeTaskStatus(sdk_request(
        models.DescribeTaskStatusRequest, TaskId=register.RequestId)).Status == 0
    # CVM -> SCF switch-over: the CVM target drained, the function takes the traffic
    client.ModifyTargetWeight(sdk_request(models.ModifyTargetWeightRequest, **WEB,
                                          LocationId=API, Weight=0, Targets=[
                                              {"EniIp": "10.0.0.7", "Port": 8080}]))
    assert [(t.label, t.weight) for t in admin.rule(API).targets] == \
        [("CVM:10.0.0.7:8080", 0), ("SCF:default/binary", 0)]
    described = client.DescribeTargets(sdk_request(
        models.DescribeTargetsRequest, LoadBalancerId=LB, ListenerIds=["lbl-web"],
        Filters=[{"Name": "location-id", "Values": [API]}]))
    [rule] = described.Listeners[0].Rules
    assert rule.LocationId == API
    assert [(b.PrivateIpAddresses, b.Port, b.Weight) for b in rule.Targets] == \
        [(["10.0.0.7"], 8080, 0)]
    assert [(f.Function.FunctionName, f.Weight) for f in rule.FunctionTargets] == \
        [("binary", 0)]
    client.DeregisterFunctionTargets(sdk_request(
        models.DeregisterFunctionTargetsRequest, **WEB, Domain="example.com", Url="/api/",
        FunctionTargets=[{"Function": {"FunctionName": "binary"}}]))
    assert [t.label for t in admin.rule(API).targets] == ["CVM:10.0.0.7:8080"]
    listeners = client.DescribeListeners(sdk_request(models.DescribeListenersRequest,
                                                     LoadBalancerId=LB))
    assert listeners.TotalCount == 2 and listeners.Listeners[0].Rules[1].LocationId == API


def test_the_official_sdk_with_a_wrong_key_gets_auth_failure(
        sdk_admin: tuple[Admin, LoopbackAdmin]) -> None:
    admin, server = sdk_admin
    with pytest.raises(TencentCloudSDKException) as caught:
        clb(server.port, key="not-the-token").RegisterFunctionTargets(sdk_request(
            models.RegisterFunctionTargetsRequest, **WEB, LocationId=ROOT,
            FunctionTargets=[{"Function": {"FunctionName": "binary"}}]))
    assert caught.value.code == "AuthFailure.SignatureFailure"
    assert not admin.applied


def test_the_official_sdk_sees_tencent_error_codes(
        sdk_admin: tuple[Admin, LoopbackAdmin]) -> None:
    _, server = sdk_admin
    with pytest.raises(TencentCloudSDKException) as caught:
        clb(server.port).CreateRule(sdk_request(models.CreateRuleRequest, **WEB, Rules=[
            {"Domain": "example.com", "Url": "/"}]))
    assert caught.value.code == "InvalidParameterValue.Duplicate"
    assert caught.value.requestId
