"""Signature v1's pure parts (proxy/sigv1.py): the string to sign as the SDK builds it, the
HMACs, and the dotted form parameters back into the JSON shape the actions take."""

from __future__ import annotations

import pytest
from tencentcloud.common.sign import Sign

from proxy import sigv1


def test_string_to_sign_and_signature_match_the_sdk() -> None:
    params = {"Action": "CreateRule", "Rules.0.Url": "/a b", "Nonce": "1", "Signature": "x",
              "Rules_0.Domain": "a.test"}
    text = sigv1.string_to_sign("POST", "clb.example:9", "/", params)
    assert text == ("POSTclb.example:9/?Action=CreateRule&Nonce=1&Rules.0.Domain=a.test&"
                    "Rules.0.Url=/a b")
    for method in ("HmacSHA1", "HmacSHA256"):
        assert sigv1.signature("key", text, method) == Sign.sign("key", text, method)


def test_unflatten_builds_arrays_and_objects() -> None:
    params = sigv1.unflatten({"Action": "X", "LoadBalancerId": "lb", "Rules.0.Url": "/",
                              "Rules.0.Domains.0": "a", "Rules.0.Domains.1": "b",
                              "Rules.1.HealthCheck.HealthSwitch": "0"})
    assert params == {"LoadBalancerId": "lb", "Rules": [
        {"Url": "/", "Domains": ["a", "b"]}, {"HealthCheck": {"HealthSwitch": "0"}}]}
    assert isinstance(params["Rules"][1]["HealthCheck"]["HealthSwitch"], sigv1.FormText)


@pytest.mark.parametrize("form", [{"A.0": "x", "A.2": "y"}, {"A": "x", "A.b": "y"},
                                  {"A.b": "y", "A": "x"}, {"A..b": "x"}, {"0": "x"}])
def test_unreadable_forms_are_errors(form: dict[str, str]) -> None:
    with pytest.raises(sigv1.FormError):
        sigv1.unflatten(form)


def test_parse_form_refuses_a_key_twice() -> None:
    assert sigv1.parse_form("a=1&b=%2F") == {"a": "1", "b": "/"}
    with pytest.raises(sigv1.FormError):
        sigv1.parse_form("a=1&a=2")
