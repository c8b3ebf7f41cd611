"""Issue 16 item 3 through the real process: ``role_credentials = true`` hands the proxy's
credentials to a function under SCF's names (and the Python SDK's, when there is no session
token); a function without it sees none of them. A function then uses tencentcloud-sdk-python
with its role credentials to call another function through the local SCF API (``--scf-api``),
as a function on SCF calls SCF."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.configs import listener, scf_rule
from tests.integration.test_scf_api import ENV, SECRET_ID, SECRET_KEY, api_port
from tests.proxyproc import ProxyProcess, http_get

NAMES = ("TENCENTCLOUD_SECRETID", "TENCENTCLOUD_SECRETKEY", "TENCENTCLOUD_SESSIONTOKEN",
         "TENCENTCLOUD_SECRET_ID", "TENCENTCLOUD_SECRET_KEY", "TENCENTCLOUD_SESSION_TOKEN")
#: the proxy's environment holds none of these unless a test says so
CLEAN = dict.fromkeys(NAMES, "")

SHOW = '''import json
import os

NAMES = {names!r}


def main_handler(event, context):
    seen = {{n: os.environ[n] for n in NAMES if n in os.environ}}
    return {{"isBase64Encoded": False, "statusCode": 200, "headers": {{}},
             "body": json.dumps(seen)}}
'''
# Calls the function "target" through the local SCF API with the SDK, signed with the role
# credentials the SDK's own provider finds in the environment.
CALLER = '''import json

from tencentcloud.common.credential import DefaultCredentialProvider
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.scf.v20180416 import models, scf_client


def main_handler(event, context):
    port = event["queryString"]["port"]
    profile = ClientProfile(httpProfile=HttpProfile(protocol="http",
                                                    endpoint="127.0.0.1:" + port))
    client = scf_client.ScfClient(DefaultCredentialProvider().get_credential(),
                                  "ap-guangzhou", profile)
    request = models.InvokeRequest()
    request.from_json_string(json.dumps({"FunctionName": "target",
                                         "ClientContext": json.dumps({"from": "caller"})}))
    result = client.Invoke(request).Result
    return {"isBase64Encoded": False, "statusCode": 200, "headers": {},
            "body": result.RetMsg}
'''
TARGET = '''def main_handler(event, context):
    return {"called_with": event}
'''


def _code(root: Path, name: str, text: str) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "index.py").write_text(text)
    return folder


def _function(name: str, code: Path, **settings: object) -> str:
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
    return f'\n[[function]]\nname = "{name}"\ncode = {json.dumps(str(code))}\n{extra}'


def _config(root: Path) -> str:
    show = _code(root, "show", SHOW.format(names=NAMES))
    return (listener() + scf_rule("fn.test", "/with", "with") + scf_rule("fn.test", "/without",
                                                                          "without")
            + scf_rule("fn.test", "/caller", "caller")
            + _function("with", show, role_credentials=True) + _function("without", show)
            + _function("caller", _code(root, "caller", CALLER), role_credentials=True,
                        timeout=30)
            + _function("target", _code(root, "target", TARGET)))


def _seen(proc: ProxyProcess, path: str) -> dict[str, Any]:
    status, body = http_get(proc.port(), "fn.test", path)
    assert status == 200, body
    seen: dict[str, Any] = json.loads(body)
    return seen


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path


def test_a_function_sees_the_credentials_only_with_role_credentials(root: Path) -> None:
    env = {**CLEAN, "TENCENTCLOUD_SECRETID": "AKIDrole", "TENCENTCLOUD_SECRETKEY": "role-key",
           "TENCENTCLOUD_SESSIONTOKEN": "role-token"}
    with ProxyProcess.with_config(_config(root), root, env=env) as proc:
        assert _seen(proc, "/with") == {"TENCENTCLOUD_SECRETID": "AKIDrole",
                                        "TENCENTCLOUD_SECRETKEY": "role-key",
                                        "TENCENTCLOUD_SESSIONTOKEN": "role-token"}
        assert _seen(proc, "/without") == {}


def test_the_sdks_names_are_set_without_a_session_token(root: Path) -> None:
    env = {**CLEAN, "TENCENTCLOUD_SECRET_ID": "AKIDsdk", "TENCENTCLOUD_SECRET_KEY": "sdk-key"}
    with ProxyProcess.with_config(_config(root), root, env=env) as proc:
        assert _seen(proc, "/with") == {
            "TENCENTCLOUD_SECRETID": "AKIDsdk", "TENCENTCLOUD_SECRETKEY": "sdk-key",
            "TENCENTCLOUD_SESSIONTOKEN": "", "TENCENTCLOUD_SECRET_ID": "AKIDsdk",
            "TENCENTCLOUD_SECRET_KEY": "sdk-key"}
        assert _seen(proc, "/without") == {}


def test_no_credentials_in_the_proxy_is_a_warning_and_none_for_the_function(root: Path) -> None:
    with ProxyProcess.with_config(_config(root), root, env=CLEAN) as proc:
        assert _seen(proc, "/with") == {}
        proc.wait_for_log("function=default/with has role_credentials but the proxy's "
                          "environment holds no credentials")


def test_a_function_calls_the_local_scf_api_with_its_role_credentials(root: Path) -> None:
    with ProxyProcess.with_config(_config(root), root, "--scf-api", "127.0.0.1:0",
                                  env={**CLEAN, **ENV}) as proc:
        seen = _seen(proc, "/with")
        assert (seen["TENCENTCLOUD_SECRETID"], seen["TENCENTCLOUD_SECRET_KEY"]) == (
            SECRET_ID, SECRET_KEY)
        answer = _seen(proc, f"/caller?port={api_port(proc)}")
        assert answer == {"called_with": {"from": "caller"}}
