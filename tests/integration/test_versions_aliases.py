"""Issue 16 item 2 through the real process: ``[[function.version]]`` and ``[[function.alias]]``
on local functions. A target's ``qualifier`` picks the version that runs (its own code, its own
instances, ``context.function_version`` and SCF_FUNCTIONVERSION saying which); an alias splits
calls by weight (checked statistically, with bounds a correct split misses about once in a
million runs) or routes them by a request header (``exact`` / ``range``); ``$DEFAULT`` is
``$LATEST`` unless declared. The local SCF API's Qualifier and RoutingKey pick the same way, and
the CLB API's RegisterFunctionTargets binds an alias (refusing an unknown one), its change
written back into a file that keeps the versions and aliases.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import tomllib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clbcall import clb
from tests.configs import listener, scf_rule
from tests.integration.test_scf_api import ENV, api_port, invoke
from tests.proxyproc import ProxyProcess

#: every version's code is this handler; CODE says which directory it was loaded from
HANDLER = '''import json
import os

CODE = {code!r}


def main_handler(event, context):
    body = {{"code": CODE, "version": context["function_version"], "pid": os.getpid(),
             "env_version": os.environ["SCF_FUNCTIONVERSION"]}}
    if "headers" not in event:  # called through the SCF API: the event itself
        return body
    return {{"isBase64Encoded": False, "statusCode": 200,
             "headers": {{"Content-Type": "application/json"}}, "body": json.dumps(body)}}
'''
SPLIT_CALLS = 200
SPLIT_WEIGHT = 0.3


def _code(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "index.py").write_text(HANDLER.format(code=name))
    return folder


def _config(root: Path) -> str:
    latest, v1, v2 = (_code(root, n) for n in ("latest", "v1", "v2"))
    rules = "".join(scf_rule("fn.test", f"/{path}", "fn", qualifier=qualifier)
                    for path, qualifier in (("latest", "$LATEST"), ("one", "1"), ("two", "2"),
                                            ("split", "split"), ("rule", "rule"),
                                            ("default", "$DEFAULT")))
    return (listener() + rules + f'''
[[function]]
name = "fn"
code = {json.dumps(str(latest))}
concurrency = 4

  [[function.version]]
  version = "1"
  code = {json.dumps(str(v1))}

  [[function.version]]
  version = "2"
  code = {json.dumps(str(v2))}

  [[function.alias]]
  name = "split"
  version = "1"
  additional_version_weights = {{ "2" = {SPLIT_WEIGHT} }}

  [[function.alias]]
  name = "rule"
  version = "1"

    [[function.alias.additional_version_matches]]
    version = "2"
    key = "invoke.headers.User"
    method = "exact"
    expression = "Bob"

    [[function.alias.additional_version_matches]]
    version = "$LATEST"
    key = "invoke.headers.Tier"
    method = "range"
    expression = "[1,5)"
''')


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess, Path]]:
    root = tmp_path_factory.mktemp("versions")
    with ProxyProcess.with_config(_config(root), root, "--scf-api", "127.0.0.1:0",
                                  "--admin", "127.0.0.1:0", env=ENV) as proc:
        yield proc, root / "rules.toml"


class _Client:
    """One keep-alive connection to the proxy."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def get(self, path: str, **headers: str) -> dict[str, Any]:
        self.conn.request("GET", path, headers={"Host": "fn.test", **headers})
        resp = self.conn.getresponse()
        body = resp.read()
        assert resp.status == 200, body
        answer: dict[str, Any] = json.loads(body)
        return answer

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def client(proxy: tuple[ProxyProcess, Path]) -> Iterator[_Client]:
    c = _Client(proxy[0].port())
    yield c
    c.close()


@pytest.mark.parametrize(("path", "code", "version"), [
    ("/latest", "latest", "$LATEST"), ("/one", "v1", "1"), ("/two", "v2", "2"),
    ("/default", "latest", "$LATEST")])
def test_a_qualifier_runs_that_versions_code_and_context_says_which(
        client: _Client, path: str, code: str, version: str) -> None:
    answer = client.get(path)
    assert (answer["code"], answer["version"], answer["env_version"]) == (code, version, version)


def test_each_version_runs_its_own_instances(client: _Client) -> None:
    pids = {name: client.get(f"/{name}")["pid"] for name in ("latest", "one", "two")}
    assert len(set(pids.values())) == 3, pids


def test_an_alias_splits_calls_by_weight(client: _Client) -> None:
    seen = Counter((a["code"], a["version"]) for a in
                   (client.get("/split") for _ in range(SPLIT_CALLS)))
    assert set(seen) <= {("v1", "1"), ("v2", "2")}, seen
    # Binomial(200, 0.3): mean 60, sd 6.5; 25..95 is more than 5 sd either side.
    assert 25 <= seen[("v2", "2")] <= 95, seen
    assert seen[("v1", "1")] + seen[("v2", "2")] == SPLIT_CALLS


@pytest.mark.parametrize(("headers", "version"), [
    ({"User": "Bob"}, "2"), ({"user": "Bob"}, "2"),  # header names are case-insensitive
    ({"User": "Alice"}, "1"), ({}, "1"),  # no match, no key: the main version
    ({"Tier": "1"}, "$LATEST"), ({"Tier": "4"}, "$LATEST"),  # [1,5): 1..4
    ({"Tier": "5"}, "1"), ({"Tier": "gold"}, "1"),  # outside, not a number
    ({"User": "Bob", "Tier": "2"}, "2"),  # the first rule that matches wins
])
def test_an_alias_routes_calls_by_a_request_header(
        client: _Client, headers: dict[str, str], version: str) -> None:
    assert client.get("/rule", **headers)["version"] == version


def test_the_local_scf_api_picks_versions_and_aliases(proxy: tuple[ProxyProcess, Path]) -> None:
    port = api_port(proxy[0])

    def ret(**fields: Any) -> dict[str, Any]:
        result = invoke(port, FunctionName="fn", **fields)
        assert result.InvokeResult == 0, result.RetMsg
        answer: dict[str, Any] = json.loads(result.RetMsg)
        return answer

    assert ret()["version"] == "$LATEST"  # Invoke's default qualifier
    assert ret(Qualifier="2")["code"] == "v2"
    assert ret(Qualifier="rule", RoutingKey=json.dumps({"User": "Bob"}))["version"] == "2"
    assert ret(Qualifier="rule", RoutingKey=json.dumps({"User": "Eve"}))["version"] == "1"
    assert ret(Qualifier="rule")["version"] == "1"
    assert {ret(Qualifier="split")["version"] for _ in range(40)} == {"1", "2"}


def test_the_clb_api_binds_an_alias_and_refuses_an_unknown_one(
        proxy: tuple[ProxyProcess, Path], client: _Client) -> None:
    proc, path = proxy
    where = {"ListenerId": "lbl-web", "Domain": "fn.test", "Url": "/latest"}

    def register(qualifier: str, kind: str) -> dict[str, Any]:
        return clb(proc.admin_port, "RegisterFunctionTargets", {**where, "FunctionTargets": [
            {"Function": {"FunctionName": "fn", "FunctionQualifier": qualifier,
                          "FunctionQualifierType": kind}, "Weight": 10}]})

    answer = register("canary", "ALIAS")
    assert answer["Error"]["Code"] == "ResourceNotFound", answer
    assert "canary" in answer["Error"]["Message"]
    answer = register("rule", "VERSION")  # an alias is not a version
    assert answer["Error"]["Code"] == "InvalidParameterValue", answer
    answer = register("rule", "ALIAS")
    assert "Error" not in answer, answer
    # the change is in the file, its versions and aliases kept
    function = tomllib.loads(path.read_text())["function"][0]
    assert [v["version"] for v in function["version"]] == ["1", "2"]
    assert [a["name"] for a in function["alias"]] == ["split", "rule"]
    answer = clb(proc.admin_port, "DeregisterFunctionTargets", {**where, "FunctionTargets": [
        {"Function": {"FunctionName": "fn", "FunctionQualifier": "$LATEST"}}]})
    assert "Error" not in answer, answer
    assert client.get("/latest", User="Bob")["version"] == "2"  # now the alias serves it


def test_workers_run_versions_and_aliases_too(tmp_path: Path) -> None:
    # the config (versions, aliases) reaches each worker through the control channel
    with ProxyProcess.with_config(_config(tmp_path), tmp_path, "--workers", "2") as proc:
        c = _Client(proc.port())
        try:
            assert c.get("/one")["code"] == "v1"
            assert c.get("/rule", User="Bob")["version"] == "2"
        finally:
            c.close()


def test_a_reload_that_changes_an_alias_keeps_the_versions_instances(tmp_path: Path) -> None:
    text = _config(tmp_path)
    with ProxyProcess.with_config(text, tmp_path) as proc:
        c = _Client(proc.port())
        try:
            pids = {name: c.get(f"/{name}")["pid"] for name in ("one", "two")}
            assert {c.get("/split")["version"] for _ in range(40)} == {"1", "2"}
            # the alias now sends every call to version 2; nothing else changes
            (tmp_path / "rules.toml").write_text(text.replace(
                f'additional_version_weights = {{ "2" = {SPLIT_WEIGHT} }}',
                'additional_version_weights = { "2" = 1.0 }'))
            os.kill(proc.pid, signal.SIGHUP)
            proc.wait_for_log("config reloaded", timeout=15)
            assert {c.get("/split")["version"] for _ in range(20)} == {"2"}
            assert {name: c.get(f"/{name}")["pid"] for name in ("one", "two")} == pids
        finally:
            c.close()
