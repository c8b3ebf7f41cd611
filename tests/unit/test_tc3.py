"""TC3-HMAC-SHA256: the documented example, and agreement with the official Python SDK."""

from __future__ import annotations

import hashlib
import json
import time
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tencentcloud.common import abstract_client as sdk_client
from tencentcloud.common.credential import Credential
from tencentcloud.common.http.request import RequestInternal
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.common.sign import Sign

from proxy.scf import tc3

# The example of the API 3.0 "signature v3" document (reference clb-scf-facts.md §4.4).
DOC_SECRET_ID = "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE"
DOC_SECRET_KEY = "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE"
DOC_TIMESTAMP = 1551113065
DOC_HOST = "cvm.tencentcloudapi.com"
DOC_CONTENT_TYPE = "application/json; charset=utf-8"
DOC_PAYLOAD = json.dumps(
    {"Limit": 1, "Filters": [{"Values": ["未命名"], "Name": "instance-name"}]}).encode()


def test_doc_payload_is_the_documented_bytes() -> None:
    assert DOC_PAYLOAD == (b'{"Limit": 1, "Filters": [{"Values": ["\\u672a\\u547d\\u540d"], '
                           b'"Name": "instance-name"}]}')


def test_doc_vector_payload_hash() -> None:
    assert tc3.hashed_payload(DOC_PAYLOAD) == (
        "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064")


def test_doc_vector_canonical_request_hash() -> None:
    canonical = tc3.canonical_request("POST", DOC_CONTENT_TYPE, DOC_HOST, DOC_PAYLOAD)
    assert canonical.split("\n")[:6] == [
        "POST", "/", "", f"content-type:{DOC_CONTENT_TYPE}", f"host:{DOC_HOST}", ""]
    assert hashlib.sha256(canonical.encode()).hexdigest() == (
        "5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031")


def test_doc_vector_scope_uses_the_utc_date() -> None:
    assert tc3.utc_date(DOC_TIMESTAMP) == "2019-02-25"
    assert tc3.credential_scope("2019-02-25", "cvm") == "2019-02-25/cvm/tc3_request"


def test_doc_vector_signature() -> None:
    canonical = tc3.canonical_request("POST", DOC_CONTENT_TYPE, DOC_HOST, DOC_PAYLOAD)
    to_sign = tc3.string_to_sign(DOC_TIMESTAMP, "2019-02-25/cvm/tc3_request", canonical)
    assert to_sign == (
        "TC3-HMAC-SHA256\n1551113065\n2019-02-25/cvm/tc3_request\n"
        "5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031")
    assert tc3.signature(DOC_SECRET_KEY, "2019-02-25", "cvm", to_sign) == (
        "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168")


def test_doc_vector_masked_key_gives_the_other_documented_signature() -> None:
    canonical = tc3.canonical_request("POST", DOC_CONTENT_TYPE, DOC_HOST, DOC_PAYLOAD)
    to_sign = tc3.string_to_sign(DOC_TIMESTAMP, "2019-02-25/cvm/tc3_request", canonical)
    assert tc3.signature("Gu5t9xGARNpq86cd98joQYCN3*******", "2019-02-25", "cvm", to_sign) == (
        "2230eefd229f582d8b1b891af7107b91597240707d778ab3738f756258d7652c")


def test_sign_builds_the_documented_authorization_header() -> None:
    headers = tc3.sign(DOC_SECRET_ID, DOC_SECRET_KEY, "cvm", DOC_HOST, "DescribeInstances",
                       "2017-03-12", "ap-guangzhou", DOC_TIMESTAMP, DOC_PAYLOAD,
                       content_type=DOC_CONTENT_TYPE)
    assert headers == {
        "Authorization": (
            "TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE/2019-02-25/cvm/"
            "tc3_request, SignedHeaders=content-type;host, "
            "Signature=72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"),
        "Content-Type": DOC_CONTENT_TYPE,
        "Host": DOC_HOST,
        "X-TC-Action": "DescribeInstances",
        "X-TC-Timestamp": "1551113065",
        "X-TC-Version": "2017-03-12",
        "X-TC-Region": "ap-guangzhou",
    }


def test_sign_adds_token_and_language_only_when_given_and_omits_empty_region() -> None:
    bare = tc3.sign("id", "key", "scf", "h", "Invoke", "2018-04-16", "", 1, b"{}")
    assert "X-TC-Region" not in bare and "X-TC-Token" not in bare
    assert "X-TC-Language" not in bare
    full = tc3.sign("id", "key", "scf", "h", "Invoke", "2018-04-16", "ap-beijing", 1, b"{}",
                    token="tok", language="en-US")
    assert full["X-TC-Token"] == "tok" and full["X-TC-Language"] == "en-US"
    # the token is not signed: the signature depends only on content-type and host
    assert full["Authorization"] == bare["Authorization"]


def test_signature_changes_with_every_signed_input() -> None:
    base = dict(secret_id="id", secret_key="key", service="scf", host="h", action="Invoke",
                version="2018-04-16", region="r", timestamp=1700000000, payload=b"{}")
    reference = tc3.sign(**base)["Authorization"]  # type: ignore[arg-type]
    for field, value in [("secret_key", "key2"), ("service", "cvm"), ("host", "h2"),
                         ("timestamp", 1700000001), ("payload", b"{ }")]:
        changed = tc3.sign(**{**base, field: value})["Authorization"]  # type: ignore[arg-type]
        assert changed != reference, field


# --- the official SDK as a second opinion -------------------------------------------------

class _ScfClient(sdk_client.AbstractClient):  # type: ignore[misc]
    _apiVersion = "2018-04-16"
    _endpoint = "scf.tencentcloudapi.com"
    _service = "scf"


def _sdk_signature(secret_key: str, service: str, host: str, content_type: str,
                   timestamp: int, payload: str) -> str:
    """The SDK's own canonical request, string to sign and key derivation."""
    client = _ScfClient(Credential("AKIDtest", secret_key), "ap-guangzhou",
                        ClientProfile(httpProfile=HttpProfile(endpoint=host)))
    req = RequestInternal(host, "POST", "/",
                          header={"Content-Type": content_type, "Host": host,
                                  "X-TC-Timestamp": str(timestamp)},
                          data=payload)
    date = time.strftime("%Y-%m-%d", time.gmtime(timestamp))
    result: str = client._get_tc3_signature({}, req, date, service, secret_key)
    return result


_keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
                min_size=1, max_size=40)
_hosts = st.from_regex(r"[a-z]{1,10}(\.[a-z0-9-]{1,10}){0,3}(:[0-9]{1,5})?", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(secret_key=_keys, service=st.sampled_from(["scf", "cvm", "clb", "cam"]), host=_hosts,
       content_type=st.sampled_from(["application/json", "application/json; charset=utf-8"]),
       timestamp=st.integers(min_value=0, max_value=4_102_444_800), payload=st.text())
def test_signature_matches_the_sdk(secret_key: str, service: str, host: str, content_type: str,
                                   timestamp: int, payload: str) -> None:
    date = tc3.utc_date(timestamp)
    canonical = tc3.canonical_request("POST", content_type, host, payload.encode())
    ours = tc3.signature(secret_key, date, service,
                         tc3.string_to_sign(timestamp, tc3.credential_scope(date, service),
                                            canonical))
    assert ours == _sdk_signature(secret_key, service, host, content_type, timestamp, payload)


@settings(max_examples=100, deadline=None)
@given(secret_key=_keys, region=st.sampled_from(["ap-guangzhou", "ap-shanghai", "na-ashburn"]),
       params=st.dictionaries(st.sampled_from(["FunctionName", "Namespace", "Qualifier", "Event"]),
                              st.text(max_size=30)),
       timestamp=st.integers(min_value=1_500_000_000, max_value=2_000_000_000),
       token=st.one_of(st.none(), _keys))
def test_signed_headers_match_the_sdk_request_builder(
        secret_key: str, region: str, params: dict[str, str], timestamp: int,
        token: str | None) -> None:
    host = f"scf.{region}.tencentcloudapi.com"
    client = _ScfClient(Credential("AKIDtest", secret_key, token), region,
                        ClientProfile(httpProfile=HttpProfile(endpoint=host)))
    req = RequestInternal(host, "POST", "/")
    with pytest.MonkeyPatch.context() as patch:
        # the SDK reads its clock through its module's ``time``: give it ours, only there
        patch.setattr(sdk_client, "time", SimpleNamespace(time=lambda: float(timestamp)))
        client._build_req_with_tc3_signature("InvokeFunction", params, req)
    payload = req.data.encode() if isinstance(req.data, str) else req.data
    ours = tc3.sign("AKIDtest", secret_key, "scf", host, "InvokeFunction", "2018-04-16", region,
                    timestamp, payload, token=token, language=client.profile.language)
    theirs = {k: v for k, v in req.header.items() if k != "X-TC-RequestClient"}
    assert ours == theirs


def test_sdk_sign_tc3_agrees_on_the_doc_vector() -> None:
    canonical = tc3.canonical_request("POST", DOC_CONTENT_TYPE, DOC_HOST, DOC_PAYLOAD)
    to_sign = tc3.string_to_sign(DOC_TIMESTAMP, "2019-02-25/cvm/tc3_request", canonical)
    assert Sign.sign_tc3(DOC_SECRET_KEY, "2019-02-25", "cvm", to_sign) == tc3.signature(
        DOC_SECRET_KEY, "2019-02-25", "cvm", to_sign)
