"""The config's one declaration of each key (config.Key) against what uses it: the key tables
of docs/CONFIG.md are generated from it and current, every loaded field is declared, and the
CLB API takes the ranges and host names the loader takes (they had drifted: the API took
``a..b`` as a host)."""

from __future__ import annotations

import dataclasses

import pytest

from proxy import configdoc
from proxy.config import FIELD_NAMES, FUNCTION_ARRAYS
from tests.unit.test_admin import WEB, Admin, error_code

#: fields the loader derives, never read as keys
DERIVED = {("Rule", "location_id"), ("Function", "key")}


def test_the_docs_tables_are_current() -> None:
    text = configdoc.DOC.read_text()
    assert configdoc.render(text) == text, "run: .venv/bin/python -m proxy.configdoc"
    for name in configdoc.SECTIONS:
        assert f"<!-- keys: {name} -->" in text, name


@pytest.mark.parametrize("name", sorted(configdoc.SECTIONS))
def test_every_field_is_declared_once_as_a_key(name: str) -> None:
    kind, keys, _ = configdoc.SECTIONS[name]
    fields = {f.name for f in dataclasses.fields(kind)} - {n for k, n in DERIVED
                                                          if k == kind.__name__}
    renamed = {**FIELD_NAMES, **FUNCTION_ARRAYS}
    declared = {renamed.get(k, k) for k in keys} & fields
    if kind.__name__ == "Target":  # one section per type: each declares its own fields
        assert declared == {renamed.get(k, k) for k in keys}
        return
    assert declared == fields, fields - declared
    for key in keys.values():
        assert key.doc, name


def test_the_api_takes_the_loaders_host_names_and_ranges() -> None:
    admin = Admin()
    loc = admin.config.listeners[0].rules[1].location_id
    for host in ("a..b", "-a.b", "a_b.c"):
        answer = admin.call("RegisterTargets", {**WEB, "LocationId": loc, "Targets": [
            {"EniIp": host, "Port": 80}]})
        assert error_code(answer) == "InvalidParameterValue", host
    answer = admin.call("RegisterTargets", {**WEB, "LocationId": loc, "Targets": [
        {"EniIp": "app-1.internal", "Port": 80, "Weight": 101}]})
    assert error_code(answer) == "InvalidParameterValue.Range"
    assert "0..100" in answer["Error"]["Message"]
    answer = admin.call("ModifyRule", {**WEB, "LocationId": loc,
                                       "HealthCheck": {"IntervalTime": 301}})
    assert error_code(answer) == "InvalidParameterValue.Range"
    assert "2..300" in answer["Error"]["Message"]


@pytest.mark.parametrize("action, params, field", [
    ("ModifyRule", {"HealthCheck": {"HttpCheckPath": "no-slash"}}, "HealthCheck.HttpCheckPath"),
    ("ModifyRule", {"HealthCheck": {"HttpCheckMethod": "POST"}}, "HealthCheck.HttpCheckMethod"),
    ("ModifyRule", {"HealthCheck": {"HttpCheckDomain": "*.a.com"}},
     "HealthCheck.HttpCheckDomain"),
    ("ModifyRule", {"Scheduler": "RANDOM"}, "Scheduler"),
    ("ModifyRule", {"SessionExpireTime": 10}, "SessionExpireTime"),
    ("ModifyRule", {"SessionExpireTime": 60, "CookieName": "a b"}, "CookieName"),
    ("ModifyRule", {"ForwardType": "TRPC"}, "ForwardType"),
    ("RegisterFunctionTargets", {"FunctionTargets": [{"Function": {
        "FunctionName": "9lives"}}]}, "FunctionTargets.0.Function.FunctionName"),
    ("RegisterFunctionTargets", {"FunctionTargets": [{"Function": {
        "FunctionName": ""}}]}, "FunctionTargets.0.Function.FunctionName"),
    ("RegisterFunctionTargets", {"FunctionTargets": [{"Function": {
        "FunctionName": "f", "FunctionQualifier": "$NOPE"}}]},
     "FunctionTargets.0.Function.FunctionQualifier"),
])
def test_the_api_refuses_what_the_loader_refuses_with_its_words(
        action: str, params: dict[str, object], field: str) -> None:
    """One check per key: the API's error is the loader's, naming the API's field."""
    admin = Admin()
    before = admin.config
    loc = before.listeners[0].rules[1].location_id
    answer = admin.call(action, {**WEB, "LocationId": loc, **params})
    assert error_code(answer).startswith("InvalidParameterValue"), answer
    assert answer["Error"]["Message"].startswith(f"{field}: must be"), answer
    assert admin.config is before


def test_the_rule_actions_take_the_declared_keys() -> None:
    """RuleInput and ModifyRule take each rule key's API name (those the API can set), so a
    key declared with an API name is reachable through the API."""
    from proxy import clbapi
    from proxy.config import RULE_KEYS, api_names
    assert api_names(RULE_KEYS) - {"RewriteTarget"} <= clbapi._RULE_KEYS
    assert {"Url", "Scheduler", "HealthCheck", "SessionExpireTime", "CookieName",
            "ForwardType"} == clbapi._MODIFY_RULE_KEYS
