"""One CLB API 3.0 call to the admin listener, as JSON over HTTP (no SDK, no signature: the
admin on loopback without a token takes unsigned calls), for the store and write-back tests."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

LB = "lb-local"


def clb(port: int, action: str, params: dict[str, Any] | None = None, *,
        token: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
    """The ``Response`` object of ``action``; an error answer has ``Error``."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/", data=json.dumps({"LoadBalancerId": LB, **(params or {})})
        .encode(), method="POST", headers={"Content-Type": "application/json",
                                           "X-TC-Action": action,
                                           "X-TC-Version": "2018-03-17"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        answer: dict[str, Any] = json.loads(resp.read())["Response"]
    return answer


def targets(port: int, listener: str = "lbl-web") -> dict[str, list[tuple[str, int]]]:
    """domain + url -> [(target, weight)] as DescribeTargets shows them."""
    answer = clb(port, "DescribeTargets", {"ListenerIds": [listener]})
    out: dict[str, list[tuple[str, int]]] = {}
    for rule in answer["Listeners"][0]["Rules"]:
        shown = [(f"{t['EniIp']}:{t['Port']}", t["Weight"]) for t in rule["Targets"]]
        shown += [(f["Function"]["FunctionName"], f["Weight"]) for f in rule["FunctionTargets"]]
        out[rule["Domain"] + rule["Url"]] = shown
    return out
