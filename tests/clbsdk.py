"""The official tencentcloud SDK pointed at a proxy's admin listener, for the tests that drive
the CLB API with it: a ``ClbClient`` (plain HTTP on loopback; the credential is not checked
without a token) and a request model filled from keyword fields."""

from __future__ import annotations

import json
from typing import Any

from tencentcloud.clb.v20180317 import clb_client
from tencentcloud.common.credential import Credential
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile


def client(port: int, secret_id: str = "admin",
           secret_key: str = "unused-without-a-token") -> clb_client.ClbClient:
    profile = ClientProfile(httpProfile=HttpProfile(protocol="http",
                                                    endpoint=f"127.0.0.1:{port}", reqTimeout=10))
    return clb_client.ClbClient(Credential(secret_id, secret_key), "ap-guangzhou", profile)


def request(kind: type[Any], **fields: Any) -> Any:
    """``kind`` (a models.*Request class) with ``fields`` as the API names them."""
    made = kind()
    made.from_json_string(json.dumps(fields))
    return made
