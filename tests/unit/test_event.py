"""proxy/scf/event.py: the CLB trigger event (SPEC §5) and the integration response (SPEC §6).

Every test runs on the pure twins and, when the native ones are active, on those too (the
``codec`` fixture); test_native_parity.py compares the two directly on random input.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import _native
from proxy.errors import BadFunctionResponse, FunctionResponseTooLarge, PayloadTooLarge
from proxy.headers import TrustedProxies, forwarded_headers
from proxy.messages import Headers, Request, Response, Route
from proxy.scf import event as event_module
from proxy.scf.event import MAX_EVENT_BYTES, MAX_RESPONSE_BYTES


@dataclass(frozen=True)
class Codec:
    """One implementation of the module's two functions, and its header-name cache."""

    encode_event: Callable[[Request, Headers, Route, str], bytes]
    decode_response: Callable[[bytes], Response]
    name_cache: Callable[[], dict[str, bool]]


CODECS = {"pure": Codec(event_module.encode_event_py, event_module.decode_response_py,
                        lambda: event_module._NAME_VERDICTS)}
_NATIVE = _native.native_module("event")
if _NATIVE is not None:  # active: built, and PROXY_NO_NATIVE unset
    CODECS["native"] = Codec(event_module.encode_event, event_module.decode_response,
                             _NATIVE.name_cache)


@pytest.fixture(scope="module", params=list(CODECS))
def codec(request: pytest.FixtureRequest) -> Codec:
    """The pure functions, or the native ones the SCF backend then uses."""
    chosen = CODECS[request.param]
    if request.param == "native":
        assert chosen.encode_event is not event_module.encode_event_py
        assert chosen.decode_response is not event_module.decode_response_py
    return chosen


ROUTE = Route(listener="web", domain="ev.test", url="/", location_id="loc-1",
              target="SCF:default/echo")


def make_request(method: str = "GET", path: str = "/", query: str = "",
                 headers: Headers = (("Host", "ev.test"),), body: bytes = b"") -> Request:
    return Request(method=method, path=path, query=query, headers=headers, body=body,
                   http_version="1.1", client_ip="203.0.113.7", client_port=51234,
                   scheme="https", listener="web", received_at=1718000000.1234)


def event_of(codec: Codec, request: Request) -> dict[str, Any]:
    forwarded = forwarded_headers(request, TrustedProxies([]))
    raw = codec.encode_event(request, forwarded, ROUTE, "req-1")
    parsed: dict[str, Any] = json.loads(raw)
    return parsed


def post(codec: Codec, content_type: str | None, body: bytes) -> dict[str, Any]:
    headers: Headers = (("Host", "ev.test"),)
    if content_type is not None:
        headers += (("Content-Type", content_type),)
    return event_of(codec, make_request("POST", "/up", headers=headers + (
        ("Content-Length", str(len(body))),), body=body))


# --- the event ------------------------------------------------------------------------------


def test_get_with_repeated_keys_and_percent_encoding(codec: Codec) -> None:
    event = event_of(codec, make_request(path="/p/%E4%BD%A0", query="a=1&a=2&b=%E4%BD%A0&c&d=x+y"))
    assert event["httpMethod"] == "GET"
    assert event["path"] == "/p/%E4%BD%A0"
    expected = {"a": ["1", "2"], "b": "你", "c": "", "d": "x y"}
    assert event["queryString"] == expected
    assert event["queryStringParameters"] == expected
    assert event["body"] == "" and event["payload"] == ""
    assert event["isBase64Encoded"] is False


def test_percent_encoded_keys_and_three_repeats_keep_order(codec: Codec) -> None:
    event = event_of(codec, make_request(query="k%20y=1&k+y=2&k%20y=3&e="))
    assert event["queryString"] == {"k y": ["1", "2", "3"], "e": ""}


def _parse_qsl_map(query: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in out:
            out[key] = value
        else:
            out[key] = (out[key] if isinstance(out[key], list) else [out[key]]) + [value]
    return out


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="ab=&%+2E4Fx;ü ", max_size=40))
def test_query_map_has_parse_qsl_semantics(codec: Codec, query: str) -> None:
    event = event_of(codec, make_request(query=query))
    assert event["queryString"] == _parse_qsl_map(query)


def test_no_query_gives_empty_maps(codec: Codec) -> None:
    event = event_of(codec, make_request())
    assert event["queryString"] == {} and event["queryStringParameters"] == {}


def test_request_context_fields(codec: Codec) -> None:
    event = event_of(codec, make_request(method="DELETE"))
    assert event["requestContext"] == {
        "requestId": "req-1", "sourceIp": "203.0.113.7", "sourcePort": 51234,
        "protocol": "https", "listener": "web", "domain": "ev.test", "url": "/",
        "requestTime": 1718000000123, "httpMethod": "DELETE",
    }


def test_event_headers_include_forwarded_clb_headers(codec: Codec) -> None:
    headers = event_of(codec, make_request())["headers"]
    assert headers["Host"] == "ev.test"
    assert headers["X-Stgw-Time"] == "1718000000.123"
    assert headers["X-Client-Proto"] == "https" and headers["X-Forwarded-Proto"] == "https"
    assert headers["X-Client-Proto-Ver"] == "HTTP/1.1"
    assert headers["X-Real-IP"] == "203.0.113.7" and headers["X-Forwarded-For"] == "203.0.113.7"


def test_repeated_headers_are_joined_under_the_first_spelling(codec: Codec) -> None:
    event = event_of(codec, make_request(headers=(
        ("Host", "ev.test"), ("Cookie", "a=1"), ("X-Multi", "1"), ("cookie", "b=2"),
        ("x-multi", "2"), ("X-MULTI", "3"))))
    headers = event["headers"]
    assert headers["Cookie"] == "a=1; b=2"
    assert headers["X-Multi"] == "1, 2, 3"
    assert "cookie" not in headers and "x-multi" not in headers and "X-MULTI" not in headers


def test_utf8_header_value_reaches_the_function_as_text(codec: Codec) -> None:
    raw = "你好".encode().decode("latin-1")  # how the parser hands over obs-text bytes
    latin = "caf\xe9"  # a lone 0xE9 byte is not UTF-8: kept as latin-1
    headers = event_of(codec, make_request(headers=(("Host", "ev.test"), ("X-Name", raw),
                                             ("X-Latin", latin))))["headers"]
    assert headers["X-Name"] == "你好"
    assert headers["X-Latin"] == "café"


def test_json_post_is_text_with_parsed_payload(codec: Codec) -> None:
    body = b'{"key1": "123", "key2": "abc", "big": 123456789012345678901234567890}'
    event = post(codec, "Application/JSON; charset=utf-8", body)
    assert event["isBase64Encoded"] is False
    assert event["body"] == body.decode()
    assert event["payload"] == {"key1": "123", "key2": "abc",
                                "big": 123456789012345678901234567890}


def test_json_that_does_not_parse_gives_payload_as_string(codec: Codec) -> None:
    event = post(codec, "application/json", b'{"broken": ')
    assert event["isBase64Encoded"] is False
    assert event["payload"] == event["body"] == '{"broken": '


@pytest.mark.parametrize("content_type", ["text/plain", "TEXT/html; charset=utf-8",
                                          "application/javascript", "application/xml"])
def test_text_types_are_passed_as_text(codec: Codec, content_type: str) -> None:
    event = post(codec, content_type, "héllo <b>".encode())
    assert event["isBase64Encoded"] is False
    assert event["body"] == event["payload"] == "héllo <b>"


def test_form_post_is_base64(codec: Codec) -> None:
    body = b"a=1&b=%E4%BD%A0"
    event = post(codec, "application/x-www-form-urlencoded", body)
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"], validate=True) == body
    assert event["payload"] == event["body"]


def test_binary_upload_is_base64_and_round_trips(codec: Codec) -> None:
    body = bytes(range(256)) * 40
    event = post(codec, "image/png", body)
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"], validate=True) == body


def test_body_without_content_type_is_base64(codec: Codec) -> None:
    event = post(codec, None, b"plain words")
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b"plain words"


def test_text_plain_with_invalid_utf8_is_base64(codec: Codec) -> None:
    body = b"\xff\xfe bad"
    event = post(codec, "text/plain", body)
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == body


def test_empty_body_is_not_base64_whatever_the_type(codec: Codec) -> None:
    event = post(codec, "image/png", b"")
    assert event["isBase64Encoded"] is False
    assert event["body"] == "" and event["payload"] == ""


def test_event_over_6mb_raises_payload_too_large(codec: Codec) -> None:
    with pytest.raises(PayloadTooLarge) as info:
        post(codec, "image/png", b"\0" * (MAX_EVENT_BYTES // 2))
    assert info.value.status_hint == 413


def test_text_event_over_6mb_raises_payload_too_large(codec: Codec) -> None:
    with pytest.raises(PayloadTooLarge):
        post(codec, "text/plain", b"a" * (MAX_EVENT_BYTES // 2 + 1))


def test_escaping_that_pushes_the_event_over_6mb_raises(codec: Codec) -> None:
    # Under the cheap bound, but every quote doubles when escaped as JSON.
    with pytest.raises(PayloadTooLarge):
        post(codec, "text/plain", b'"' * (MAX_EVENT_BYTES // 2 - 1000))


def test_event_just_under_the_limit_is_encoded(codec: Codec) -> None:
    body = b"\0" * (1024 * 1024)
    event = post(codec, "application/octet-stream", body)
    assert base64.b64decode(event["body"]) == body


# --- a declared Content-Length that can never fit (refused before the body is read) ------------

#: the largest body of each kind whose least event size is exactly the 6 MB limit
TEXT_BOUND = MAX_EVENT_BYTES // 2  # body + payload, each at least the text
BINARY_BOUND = MAX_EVENT_BYTES // 8 * 3  # body + payload, each 4*ceil(n/3) of Base64


@pytest.mark.parametrize("content_type,bound", [
    ("text/plain", TEXT_BOUND), ("Text/HTML; charset=utf-8", TEXT_BOUND),
    ("application/json", TEXT_BOUND), (" application/xml ;x=1", TEXT_BOUND),
    ("application/octet-stream", BINARY_BOUND), ("image/png", BINARY_BOUND),
    ("", BINARY_BOUND), ("application/x-www-form-urlencoded", BINARY_BOUND),
])
def test_declared_length_is_refused_only_past_what_could_ever_fit(content_type: str,
                                                                 bound: int) -> None:
    event_module.check_declared_length(0, content_type)
    event_module.check_declared_length(bound, content_type)
    with pytest.raises(PayloadTooLarge) as info:
        event_module.check_declared_length(bound + 1, content_type)
    assert info.value.status_hint == 413


@pytest.mark.parametrize("content_type,length", [
    ("text/plain", TEXT_BOUND + 1), ("application/octet-stream", BINARY_BOUND + 1),
    ("application/octet-stream", 5 * 1024 * 1024),
])
def test_what_the_declared_length_refuses_the_event_refuses_too(codec: Codec,
                                                               content_type: str,
                                                               length: int) -> None:
    # the early refusal never turns away a body the event would have carried
    with pytest.raises(PayloadTooLarge):
        event_module.check_declared_length(length, content_type)
    with pytest.raises(PayloadTooLarge):
        post(codec, content_type, b"a" * length)


def test_a_binary_body_at_its_bound_still_makes_an_event(codec: Codec) -> None:
    event_module.check_declared_length(BINARY_BOUND - 3000, "application/octet-stream")
    event = post(codec, "application/octet-stream", b"\1" * (BINARY_BOUND - 3000))
    assert event["isBase64Encoded"] is True


def test_text_type_is_judged_by_its_text_size_and_refused_later_if_not_utf8(
        codec: Codec) -> None:
    # a text type may still go as Base64 (not UTF-8): only the read body can tell
    length = BINARY_BOUND + 1000
    event_module.check_declared_length(length, "text/plain")
    with pytest.raises(PayloadTooLarge):
        post(codec, "text/plain", b"\xff" * length)


# --- the length a function declares for a HEAD answer without a body -------------------------


@pytest.mark.parametrize("headers,length", [
    ({"Content-Length": "45"}, 45),
    ({"content-length": " 45\t"}, 45),
    ({"Content-Length": ["45", "45"]}, 45),
    ({"Content-Length": "45", "content-length": "45"}, 45),
    ({"Content-Length": "0"}, 0),
    ({"Content-Length": ["45", "46"]}, None),
    ({"Content-Length": "45", "content-length": "46"}, None),
    ({"Content-Length": "-1"}, None),
    ({"Content-Length": "4 5"}, None),
    ({"Content-Length": "0x2d"}, None),
    ({"Content-Length": "\u0664\u0665"}, None),  # digits, but not ASCII ones
    ({"Content-Length": ""}, None),
    ({"Content-Length": []}, None),
    ({"Content-Type": "text/plain"}, None),
    (None, None),
])
def test_declared_length_of_a_function_answer(headers: object, length: int | None) -> None:
    raw = orjson.dumps({"statusCode": 200, "headers": headers, "body": ""})
    assert event_module.declared_length(raw) == length


# --- the integration response ---------------------------------------------------------------


def decode(codec: Codec, obj: object) -> Any:
    return codec.decode_response(orjson.dumps(obj))


def test_valid_response_with_list_headers_gives_several_lines(codec: Codec) -> None:
    response = decode(codec, {"isBase64Encoded": False, "statusCode": 201, "headers": {
        "Content-Type": "text/html", "Set-Cookie": ["a=1; Path=/", "b=2; Path=/"]},
        "body": "<h1>hi</h1>"})
    assert response.status == 201
    assert response.headers == (("Content-Type", "text/html"), ("Set-Cookie", "a=1; Path=/"),
                                ("Set-Cookie", "b=2; Path=/"))
    assert response.body == b"<h1>hi</h1>"


def test_base64_body_is_decoded_to_binary(codec: Codec) -> None:
    data = bytes(range(256))
    response = decode(codec, {"isBase64Encoded": True, "statusCode": 200,
                       "headers": {"Content-Type": "image/png"},
                       "body": base64.b64encode(data).decode()})
    assert response.body == data


def test_minimal_response_has_empty_headers_and_body(codec: Codec) -> None:
    response = decode(codec, {"statusCode": 204})
    assert (response.status, response.headers, response.body) == (204, (), b"")
    assert decode(codec, {"statusCode": 200, "headers": None, "body": None}).body == b""


def test_text_body_is_utf8_encoded(codec: Codec) -> None:
    assert decode(codec, {"statusCode": 200, "body": "你好"}).body == "你好".encode()


def test_hop_by_hop_content_length_date_and_server_are_dropped(codec: Codec) -> None:
    response = decode(codec, {"statusCode": 200, "body": "x", "headers": {
        "Connection": "close", "Transfer-Encoding": "chunked", "Keep-Alive": "timeout=5",
        "Upgrade": "websocket", "Proxy-Connection": "close", "TE": "trailers",
        "Trailer": "X-T", "content-length": "999", "Date": "yesterday", "Server": "fn",
        "X-Kept": "yes"}})
    assert response.headers == (("X-Kept", "yes"),)


def test_non_ascii_header_value_is_utf8_bytes_as_latin1(codec: Codec) -> None:
    response = decode(codec, {"statusCode": 200, "headers": {"X-Name": "你好"}})
    (name, value), = response.headers
    assert value.encode("latin-1") == "你好".encode()


def test_surrounding_whitespace_of_header_values_is_trimmed(codec: Codec) -> None:
    response = decode(codec, {"statusCode": 200, "headers": {"X-A": " \tv a l\t "}})
    assert response.headers == (("X-A", "v a l"),)


def test_many_distinct_header_names_keep_the_name_cache_bounded(codec: Codec) -> None:
    for i in range(3):
        decode(codec, {"statusCode": 200, "headers": {f"X-{i}-{j}": "v" for j in range(400)}})
    assert 0 < len(codec.name_cache()) <= event_module._NAME_CACHE_MAX


INVALID_RESULTS: dict[str, bytes] = {
    "not JSON": b"{nope",
    "empty": b"",
    "array": b"[1, 2]",
    "string": b'"hello"',
    "null": b"null",
    "missing statusCode": orjson.dumps({"body": "x"}),
    "statusCode string": orjson.dumps({"statusCode": "200", "body": "x"}),
    "statusCode float": orjson.dumps({"statusCode": 200.0}),
    "statusCode 99": orjson.dumps({"statusCode": 99}),
    "statusCode 101": orjson.dumps({"statusCode": 101}),
    "statusCode 600": orjson.dumps({"statusCode": 600}),
    "statusCode true": orjson.dumps({"statusCode": True}),
    "headers list": orjson.dumps({"statusCode": 200, "headers": ["a", "b"]}),
    "headers string": orjson.dumps({"statusCode": 200, "headers": "X-A: 1"}),
    "header value int": orjson.dumps({"statusCode": 200, "headers": {"X-A": 1}}),
    "header value null": orjson.dumps({"statusCode": 200, "headers": {"X-A": None}}),
    "header list of int": orjson.dumps({"statusCode": 200, "headers": {"X-A": ["a", 2]}}),
    "header nested list": orjson.dumps({"statusCode": 200, "headers": {"X-A": [["a"]]}}),
    "header value CRLF": orjson.dumps(
        {"statusCode": 200, "headers": {"X-A": "a\r\nX-Injected: 1"}}),
    "header value LF in list": orjson.dumps(
        {"statusCode": 200, "headers": {"Set-Cookie": ["a=1", "b\nX: 1"]}}),
    "header value NUL": orjson.dumps({"statusCode": 200, "headers": {"X-A": "a\0b"}}),
    "header name with space": orjson.dumps({"statusCode": 200, "headers": {"X A": "1"}}),
    "header name with colon": orjson.dumps({"statusCode": 200, "headers": {"X-A:": "1"}}),
    "header name CRLF": orjson.dumps({"statusCode": 200, "headers": {"X\r\nY": "1"}}),
    "header name empty": orjson.dumps({"statusCode": 200, "headers": {"": "1"}}),
    "hop-by-hop header with CRLF": orjson.dumps(
        {"statusCode": 200, "headers": {"Connection": "a\r\nb"}}),
    "isBase64Encoded string": orjson.dumps(
        {"statusCode": 200, "isBase64Encoded": "false", "body": "x"}),
    "isBase64Encoded null": orjson.dumps({"statusCode": 200, "isBase64Encoded": None}),
    "isBase64Encoded 0": orjson.dumps({"statusCode": 200, "isBase64Encoded": 0}),
    "bad base64": orjson.dumps(
        {"statusCode": 200, "isBase64Encoded": True, "body": "%%%not base64"}),
    "base64 without padding": orjson.dumps(
        {"statusCode": 200, "isBase64Encoded": True, "body": "YQ"}),
    "base64 with a line break": orjson.dumps(
        {"statusCode": 200, "isBase64Encoded": True, "body": "YWJj\nYWJj"}),
    "base64 data after padding": orjson.dumps(
        {"statusCode": 200, "isBase64Encoded": True, "body": "YQ==YQ=="}),
    "base64 non-ascii": orjson.dumps(
        {"statusCode": 200, "isBase64Encoded": True, "body": "YWJj你"}),
    "body dict": orjson.dumps({"statusCode": 200, "body": {"a": 1}}),
    "body number": orjson.dumps({"statusCode": 200, "body": 5}),
}


@pytest.mark.parametrize("raw", INVALID_RESULTS.values(), ids=INVALID_RESULTS.keys())
def test_invalid_integration_response_raises_bad_function_response(codec: Codec,
                                                                   raw: bytes) -> None:
    with pytest.raises(BadFunctionResponse) as info:
        codec.decode_response(raw)
    assert info.value.status_hint == 502
    assert info.value.log_detail


def test_result_over_6mb_raises_function_response_too_large(codec: Codec) -> None:
    raw = orjson.dumps({"statusCode": 200, "body": "x" * MAX_RESPONSE_BYTES})
    with pytest.raises(FunctionResponseTooLarge) as info:
        codec.decode_response(raw)
    assert info.value.status_hint == 502


def test_result_at_the_limit_is_accepted(codec: Codec) -> None:
    envelope = orjson.dumps({"statusCode": 200, "body": ""})
    raw = envelope[:-2] + b"x" * (MAX_RESPONSE_BYTES - len(envelope)) + b'"}'
    assert len(raw) == MAX_RESPONSE_BYTES
    assert len(codec.decode_response(raw).body) == MAX_RESPONSE_BYTES - len(envelope)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False,
                                                                              allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
response_like = st.fixed_dictionaries(
    {"statusCode": st.one_of(st.integers(0, 700), json_values)},
    optional={
        "headers": st.one_of(json_values, st.dictionaries(
            st.text(max_size=10), st.one_of(st.text(max_size=10),
                                            st.lists(st.text(max_size=10), max_size=3)),
            max_size=4)),
        "isBase64Encoded": st.one_of(st.booleans(), json_values),
        "body": st.one_of(st.text(), st.binary().map(lambda b: base64.b64encode(b).decode()),
                          json_values),
    },
)
ALLOWED = (BadFunctionResponse, FunctionResponseTooLarge)


def _decode_or_allowed_error(codec: Codec, raw: bytes) -> None:
    try:
        response = codec.decode_response(raw)
    except ALLOWED:
        return
    assert 200 <= response.status <= 599
    for name, value in response.headers:
        assert "\r" not in name + value and "\n" not in name + value and "\0" not in value
        value.encode("latin-1")  # the writer's encoding must never fail


@settings(max_examples=300, deadline=None)
@given(json_values | response_like)
def test_decode_response_only_raises_its_own_errors_on_any_json(codec: Codec,
                                                                value: object) -> None:
    _decode_or_allowed_error(codec, orjson.dumps(value))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_decode_response_only_raises_its_own_errors_on_any_bytes(codec: Codec,
                                                                 raw: bytes) -> None:
    _decode_or_allowed_error(codec, raw)
