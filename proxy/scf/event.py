"""The CLB trigger event (request -> function) and the integration response (function -> client).

Owns the JSON shapes of SPEC §5 and §6 and their size limits (SCF quota: 6 MB each way). Strategy:
tables and compiled patterns at module top, one pass over the headers, ``orjson`` both ways,
size checks before work where a lower bound already decides. Pure: no asyncio, no logging; it
does not know how a function runs (local worker, InvokeFunction, invoke URL) nor how the
response is written.

Decisions where CLB is undocumented (clb-scf-facts.md §1.3, §2.2), all **ours**:

* ``queryStringParameters`` repeats ``queryString``: the API-gateway name, so handlers written
  for APIGW events work unchanged.
* ``requestContext`` also carries ``httpMethod``, as the APIGW event's does.
* Header values are sent as text: a value that was valid UTF-8 on the wire becomes that text
  (not its latin-1 mojibake); any other byte sequence stays latin-1 decoded.
* ``payload`` of a JSON body is the body's own bytes embedded as JSON (``orjson.Fragment``),
  not a re-serialised parse: big integers and number spellings reach the handler unchanged.
* Because ``payload`` repeats the body, the body counts twice towards the 6 MB event limit.
  ``check_declared_length`` applies the same count to a declared Content-Length, so that a body
  which can never fit is refused before it is read (a text type by its text size: the bytes
  may still turn out not UTF-8, and go as Base64).
* A function's ``Content-Length`` is dropped and computed from the body, except for an answer
  to HEAD that has no body: then what the function declared (``declared_length``) is the GET's
  length (RFC 9110 §8.6); the backend asks for it only then.
* A response ``body`` that is not a string (a dict, a number) is invalid (502): CLB documents
  ``body`` as a string, and guessing a serialisation would hide the handler's bug.
* A 1xx ``statusCode`` is invalid too: 1xx are interim responses, never final (RFC 9110 §15.2),
  and a 101 would tell the client its connection switched protocols to nothing.
* Response header values go out as str whose code points are bytes: non-ASCII text is encoded
  UTF-8 and decoded latin-1, so the writer's latin-1 encode puts the UTF-8 bytes on the wire.
* ``Date`` and ``Server`` from the function are dropped, as nginx hides them from upstreams by
  default (``proxy_hide_header``): the writer always sends its own and both are singletons.
"""

from __future__ import annotations

import binascii
import re
from typing import Any
from urllib.parse import unquote

import orjson

from .. import _native
from ..errors import BadFunctionResponse, FunctionResponseTooLarge, PayloadTooLarge
from ..messages import Headers, Request, Response, Route
from ..vocabulary import RESPONSE_DROPPED, SCF_PAYLOAD_LIMIT, TOKEN

#: SCF quota for a synchronous invocation's event and result (clb-scf-facts.md §2.2).
MAX_EVENT_BYTES = SCF_PAYLOAD_LIMIT
MAX_RESPONSE_BYTES = SCF_PAYLOAD_LIMIT

#: Content types CLB passes through untranscoded (clb-scf-facts.md §1.2); ``text/*`` as prefix.
_TEXT_TYPES = frozenset({"application/json", "application/javascript", "application/xml"})
_JSON_TYPE = "application/json"
#: Repeated headers are joined with ", " (RFC 9110 §5.3) except Cookie, whose list separator
#: is "; " (RFC 6265 §5.4).
_JOINERS = {"cookie": "; "}

#: CTLs other than HTAB are invalid in a field value (RFC 9110 §5.5); CR/LF/NUL would let a
#: function inject header lines or split the response.
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_OWS = " \t"
_NAME_VERDICTS: dict[str, bool] = {}
_NAME_CACHE_MAX = 512


# --- request -> event -----------------------------------------------------------------------


def _as_text(value: str) -> str:
    """A latin-1-decoded header value as the text it was, if its bytes were UTF-8."""
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def _event_headers(forwarded: Headers) -> tuple[dict[str, str], str]:
    """Headers merged case-insensitively under their first spelling; and the Content-Type."""
    merged: dict[str, str] = {}
    spelling: dict[str, str] = {}
    content_type = ""
    for name, raw in forwarded:
        value = _as_text(raw)
        lname = name.lower()
        first = spelling.get(lname)
        if first is None:
            spelling[lname] = name
            merged[name] = value
            if lname == "content-type":
                content_type = value
        else:
            merged[first] += _JOINERS.get(lname, ", ") + value
    return merged, content_type


def _form_decode(text: str) -> str:
    """``+`` as space, then percent-decoding; bad UTF-8 becomes U+FFFD (as ``parse_qsl``)."""
    if "+" in text:
        text = text.replace("+", " ")
    return unquote(text) if "%" in text else text


def _query_map(query: str) -> dict[str, str | list[str]]:
    """Form semantics (``parse_qsl(keep_blank_values=True)``): pairs split on ``&``, a key
    without ``=`` has the value "", empty pairs are skipped; a repeated key maps to the list
    of its values in order. Hand-rolled because only the few escaped parts need decoding."""
    out: dict[str, str | list[str]] = {}
    if not query:
        return out
    for pair in query.split("&"):
        if not pair:
            continue
        raw_key, _, raw_value = pair.partition("=")
        key = _form_decode(raw_key)
        value = _form_decode(raw_value)
        seen = out.get(key)
        if seen is None:
            out[key] = value
        elif isinstance(seen, list):
            seen.append(value)
        else:
            out[key] = [seen, value]
    return out


def _media_type(content_type: str) -> str:
    """``type/subtype`` of a Content-Type, lower-cased, parameters dropped (RFC 9110 §8.3.1)."""
    return content_type.partition(";")[0].strip(_OWS).lower()


def _too_large(size: int) -> PayloadTooLarge:
    return PayloadTooLarge("event over 6 MB",
                           log_detail=f"event at least {size} bytes, limit {MAX_EVENT_BYTES}")


def _is_text(media: str) -> bool:
    """Whether a body of this media type goes into the event as text (if valid UTF-8)."""
    return media in _TEXT_TYPES or media.startswith("text/")


# How a body counts towards the 6 MB event (the one place that knows): it is carried twice,
# as ``body`` and as ``payload``; as text each copy is at least its own size (JSON escaping
# only adds), as Base64 each is 4*ceil(n/3) bytes.


def _as_text_size(length: int) -> int:
    """The fewest event bytes a body of ``length`` bytes takes as text."""
    return 2 * length


def _as_base64_size(length: int) -> int:
    """The event bytes a body of ``length`` bytes takes as Base64 (both copies)."""
    return 2 * (4 * ((length + 2) // 3))


def _must_fit(size: int) -> None:
    if size > MAX_EVENT_BYTES:
        raise _too_large(size)


def check_declared_length(length: int, content_type: str) -> None:
    """PayloadTooLarge when a body of ``length`` bytes (a declared Content-Length) with this
    Content-Type can never fit in an event, whatever its bytes turn out to be: decided before
    any of it is read. A text type is judged by its text size, the smaller one (a body that is
    then not UTF-8 goes as Base64 and may still be refused once read)."""
    if length:
        media = _media_type(content_type)
        _must_fit(_as_text_size(length) if _is_text(media) else _as_base64_size(length))


def _body_fields(body: bytes, content_type: str) -> tuple[str, bool, object]:
    """``(body, isBase64Encoded, payload)`` of the event, or PayloadTooLarge."""
    if not body:
        return "", False, ""
    media = _media_type(content_type)
    text: str | None = None
    if _is_text(media):
        # Text passes at its own size (or more, once JSON-escaped); ``payload`` repeats it.
        _must_fit(_as_text_size(len(body)))
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    if text is None:
        _must_fit(_as_base64_size(len(body)))  # decided before spending time encoding
        encoded = binascii.b2a_base64(body, newline=False).decode("ascii")
        return encoded, True, encoded
    payload: object = text
    if media == _JSON_TYPE:
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
        else:
            payload = orjson.Fragment(body)
    return text, False, payload


def encode_event_py(request: Request, forwarded: Headers, route: Route, request_id: str) -> bytes:
    """The CLB trigger event for ``request`` as JSON bytes (SPEC §5); PayloadTooLarge over 6 MB."""
    headers, content_type = _event_headers(forwarded)
    body, is_base64, payload = _body_fields(request.body, content_type)
    query = _query_map(request.query)
    event = {
        "headers": headers,
        "httpMethod": request.method,
        "path": request.path,
        "queryString": query,
        "queryStringParameters": query,
        "body": body,
        "isBase64Encoded": is_base64,
        "payload": payload,
        "requestContext": {
            "requestId": request_id,
            "sourceIp": request.client_ip,
            "sourcePort": request.client_port,
            "protocol": request.scheme,
            "listener": request.listener,
            "domain": route.domain,
            "url": route.url,
            "requestTime": int(request.received_at * 1000),
            "httpMethod": request.method,
        },
    }
    data = orjson.dumps(event)
    if len(data) > MAX_EVENT_BYTES:
        raise _too_large(len(data))
    return data


# --- integration response -> Response -------------------------------------------------------


def _invalid(why: str) -> BadFunctionResponse:
    return BadFunctionResponse("Analyse scf response failed.", log_detail=why)


def _field_value(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise _invalid(f"header {name!r}: value must be a string, got {type(value).__name__}")
    if value.isascii() and value.isprintable():  # the common case: visible ASCII and SP
        return value.strip(" ")
    if _BAD_VALUE.search(value):
        raise _invalid(f"header {name!r}: control character in value")
    value = value.strip(_OWS)  # OWS around a value is not part of it (RFC 9110 §5.5)
    if not value.isascii():
        try:
            value = value.encode("utf-8").decode("latin-1")
        except UnicodeEncodeError as exc:  # a lone surrogate cannot be sent as bytes
            raise _invalid(f"header {name!r}: value is not encodable text") from exc
    return value


def _name_kept(name: str) -> bool:
    """Whether a response field name is forwarded; BadFunctionResponse if it is no token.

    Verdicts are cached: functions return the same few names on every response."""
    kept = _NAME_VERDICTS.get(name)
    if kept is None:
        if not TOKEN.fullmatch(name):
            raise _invalid(f"header name {name!r:.60} is not a token")
        kept = name.lower() not in RESPONSE_DROPPED
        if len(_NAME_VERDICTS) >= _NAME_CACHE_MAX:  # bounded: names are the function's choice
            _NAME_VERDICTS.clear()
        _NAME_VERDICTS[name] = kept
    return kept


def _response_headers(raw: object) -> Headers:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise _invalid(f"headers must be an object, got {type(raw).__name__}")
    out: list[tuple[str, str]] = []
    for name, value in raw.items():
        kept = _name_kept(name)
        # Values of dropped fields are validated too: a malformed response is malformed whole.
        if type(value) is list:  # one header line per list item (SPEC §6)
            for item in value:
                line = _field_value(name, item)
                if kept:
                    out.append((name, line))
        else:
            line = _field_value(name, value)
            if kept:
                out.append((name, line))
    return tuple(out)


def _response_body(raw: object, is_base64: object) -> bytes:
    if type(is_base64) is not bool:
        raise _invalid(f"isBase64Encoded must be a JSON boolean, got {type(is_base64).__name__}")
    if raw is None:
        return b""
    if not isinstance(raw, str):
        raise _invalid(f"body must be a string, got {type(raw).__name__}")
    try:
        if is_base64:
            return binascii.a2b_base64(raw.encode("ascii"), strict_mode=True)
        return raw.encode("utf-8")
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise _invalid("body is not valid Base64" if is_base64 else "body is not text") from exc


def decode_response_py(raw: bytes) -> Response:
    """The client's Response from a function's JSON result (SPEC §6).

    BadFunctionResponse when the result is not a valid integration response,
    FunctionResponseTooLarge when it is over 6 MB.
    """
    if len(raw) > MAX_RESPONSE_BYTES:
        raise FunctionResponseTooLarge(
            "function response over 6 MB",
            log_detail=f"result is {len(raw)} bytes, limit {MAX_RESPONSE_BYTES}")
    try:
        result: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _invalid(f"result is not JSON: {exc}") from exc
    if not isinstance(result, dict):
        raise _invalid(f"result must be a JSON object, got {type(result).__name__}")
    status = result.get("statusCode")
    if type(status) is not int or not 200 <= status <= 599:
        raise _invalid(f"statusCode must be an integer 200..599, got {status!r:.40}")
    headers = _response_headers(result.get("headers"))
    body = _response_body(result.get("body"), result.get("isBase64Encoded", False))
    return Response(status, headers, body)


def _length_value(value: object) -> int | None:
    if not isinstance(value, str):
        return None
    value = value.strip(_OWS)
    return int(value) if value.isascii() and value.isdigit() else None


def declared_length(raw: bytes) -> int | None:
    """The ``Content-Length`` a function declared in its (valid, already decoded) integration
    response, or None: absent, not ``1*DIGIT`` (RFC 9110 §8.6), or several that differ.

    Only asked for an answer to HEAD that came without a body: what the function says its GET
    would carry. Every other answer's length is its body's, computed by the writer."""
    headers = orjson.loads(raw).get("headers")
    if not isinstance(headers, dict):
        return None
    found: set[int | None] = set()
    for name, value in headers.items():
        if name.lower() == "content-length":
            found.update(_length_value(v) for v in (value if type(value) is list else [value]))
    if len(found) != 1:
        return None
    return found.pop()


def name_cache() -> dict[str, bool]:
    """The header-name verdict cache (bounded by _NAME_CACHE_MAX), for tests."""
    return _NAME_VERDICTS


# --- native swap ----------------------------------------------------------------------------
# setup.py compiles this very file with Cython into ``proxy._speedups.event`` (no hand-written
# twin to keep in step); proxy._native rebinds ``encode_event`` and ``decode_response`` to the
# compiled ``*_py`` functions when built and PROXY_NO_NATIVE is unset. It runs here, as this
# module's last step, so every importer binds the chosen ones; the ``_py`` names of this module
# stay pure Python for the parity tests. The compiled copy does not swap itself.

encode_event = encode_event_py
decode_response = decode_response_py
if __name__ == "proxy.scf.event":
    _native.install("event", globals())

__all__ = ["MAX_EVENT_BYTES", "MAX_RESPONSE_BYTES", "check_declared_length", "declared_length",
           "decode_response", "decode_response_py", "encode_event", "encode_event_py"]
