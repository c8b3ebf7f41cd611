# cython: language_level=3, boundscheck=False, wraparound=False
"""Native twins of ``encode_event`` and ``decode_response`` (proxy/scf/event.py).

Owns nothing of the event's shape or the response's rules: the pure functions are the
specification (their docstring lists the decisions) and these repeat them step for step, with
the same bytes out, the same exceptions and the same log details;
tests/unit/test_native_parity.py holds the two together.

Strategy: the per-header and per-value work runs as C loops over the strings' code points
(ASCII checks, the printable fast path of a response header value, Cookie joining), Python
objects are touched only to build what goes out, and ``orjson`` still does the JSON both ways.

Must not know how a function runs or how a response is written; imports only the leaves
(errors, messages, headers), not proxy.scf.event, which loads it (through proxy._native) while
still initialising. The tables it repeats from the pure module are returned by ``tables()``
so a test can check that they are still the same.
"""

import binascii
import re
from urllib.parse import unquote

import orjson

cimport cython

from proxy.errors import BadFunctionResponse, FunctionResponseTooLarge, PayloadTooLarge
from proxy.headers import HOP_BY_HOP
from proxy.messages import Response


cdef extern from "Python.h":
    # CPython's own accessors (non-limited API): read code points without an object
    int PyUnicode_KIND(object text)
    void *PyUnicode_DATA(object text)
    Py_UCS4 PyUnicode_READ(int kind, void *data, Py_ssize_t index)
    bint PyUnicode_IS_ASCII(object text)
    int PyUnicode_1BYTE_KIND


# --- the pure module's tables, repeated (see tables()) -----------------------------------------

cdef Py_ssize_t MAX_EVENT_BYTES = 6 * 1024 * 1024
cdef Py_ssize_t MAX_RESPONSE_BYTES = 6 * 1024 * 1024
cdef frozenset _TEXT_TYPES = frozenset({"application/json", "application/javascript",
                                        "application/xml"})
cdef str _JSON_TYPE = "application/json"
cdef dict _JOINERS = {"cookie": "; "}
cdef frozenset _DROPPED_RESPONSE = HOP_BY_HOP | {"content-length", "date", "server"}
cdef object _TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
cdef object _BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
cdef str _OWS = " \t"
cdef dict _NAME_VERDICTS = {}
cdef Py_ssize_t _NAME_CACHE_MAX = 512

cdef object _dumps = orjson.dumps
cdef object _loads = orjson.loads
cdef object _Fragment = orjson.Fragment
cdef object _JSONDecodeError = orjson.JSONDecodeError
cdef object _b2a_base64 = binascii.b2a_base64
cdef object _a2b_base64 = binascii.a2b_base64
cdef object _BinasciiError = binascii.Error


def tables():
    """The tables this module repeats from proxy.scf.event, by their names there."""
    return {
        "MAX_EVENT_BYTES": MAX_EVENT_BYTES, "MAX_RESPONSE_BYTES": MAX_RESPONSE_BYTES,
        "_TEXT_TYPES": _TEXT_TYPES, "_JSON_TYPE": _JSON_TYPE, "_JOINERS": _JOINERS,
        "_DROPPED_RESPONSE": _DROPPED_RESPONSE, "_TOKEN": _TOKEN, "_BAD_VALUE": _BAD_VALUE,
        "_OWS": _OWS, "_NAME_CACHE_MAX": _NAME_CACHE_MAX,
    }


def name_cache():
    """The live cache of response header name verdicts (the pure module's _NAME_VERDICTS)."""
    return _NAME_VERDICTS


# --- request -> event --------------------------------------------------------------------------


cdef str _as_text(str value):
    """A latin-1-decoded header value as the text it was, if its bytes were UTF-8."""
    if PyUnicode_IS_ASCII(value):
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


cdef tuple _event_headers(forwarded):
    """Headers merged case-insensitively under their first spelling; and the Content-Type."""
    cdef dict merged = {}
    cdef dict spelling = {}
    cdef str content_type = ""
    cdef str name, raw, value, lname
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
            joiner = _JOINERS.get(lname)
            merged[first] = (<str>merged[first]) + (", " if joiner is None else joiner) + value
    return merged, content_type


cdef str _form_decode(str text):
    """``+`` as space, then percent-decoding; bad UTF-8 becomes U+FFFD (as ``parse_qsl``)."""
    if "+" in text:
        text = text.replace("+", " ")
    return unquote(text) if "%" in text else text


cdef dict _query_map(str query):
    """Form semantics, as the pure ``_query_map`` (parse_qsl with keep_blank_values)."""
    cdef dict out = {}
    if not query:
        return out
    cdef str pair, key, value
    for pair in query.split("&"):
        if not pair:
            continue
        raw_key, _, raw_value = pair.partition("=")
        key = _form_decode(raw_key)
        value = _form_decode(raw_value)
        seen = out.get(key)
        if seen is None:
            out[key] = value
        elif type(seen) is list:
            (<list>seen).append(value)
        else:
            out[key] = [seen, value]
    return out


cdef str _media_type(str content_type):
    """``type/subtype`` of a Content-Type, lower-cased, parameters dropped (RFC 9110 §8.3.1)."""
    return content_type.partition(";")[0].strip(_OWS).lower()


cdef object _too_large(Py_ssize_t size):
    return PayloadTooLarge("event over 6 MB",
                           log_detail=f"event at least {size} bytes, limit {MAX_EVENT_BYTES}")


cdef tuple _body_fields(body, str content_type):
    """``(body, isBase64Encoded, payload)`` of the event, or PayloadTooLarge."""
    if not body:
        return "", False, ""
    cdef Py_ssize_t size = len(body), encoded_size
    cdef str media = _media_type(content_type)
    text = None
    if media in _TEXT_TYPES or media.startswith("text/"):
        if 2 * size > MAX_EVENT_BYTES:
            raise _too_large(2 * size)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    if text is None:
        encoded_size = 4 * ((size + 2) // 3)
        if 2 * encoded_size > MAX_EVENT_BYTES:  # decided before spending time encoding
            raise _too_large(2 * encoded_size)
        encoded = _b2a_base64(body, newline=False).decode("ascii")
        return encoded, True, encoded
    payload = text
    if media == _JSON_TYPE:
        try:
            _loads(body)
        except _JSONDecodeError:
            pass
        else:
            payload = _Fragment(body)
    return text, False, payload


def encode_event(request, forwarded, route, request_id):
    """The CLB trigger event for ``request`` as JSON bytes (SPEC §5); PayloadTooLarge over
    6 MB."""
    headers, content_type = _event_headers(forwarded)
    body, is_base64, payload = _body_fields(request.body, content_type)
    query = _query_map(request.query)
    method = request.method
    event = {
        "headers": headers,
        "httpMethod": method,
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
            "httpMethod": method,
        },
    }
    cdef bytes data = _dumps(event)
    if len(data) > MAX_EVENT_BYTES:
        raise _too_large(len(data))
    return data


# --- integration response -> Response ----------------------------------------------------------


cdef object _invalid(str why):
    return BadFunctionResponse("Analyse scf response failed.", log_detail=why)


cdef str _field_value(name, value):
    if type(value) is not str and not isinstance(value, str):
        raise _invalid(f"header {name!r}: value must be a string, got {type(value).__name__}")
    cdef str text = <str>value
    cdef Py_ssize_t size = len(text), i
    cdef void *data
    cdef Py_UCS4 ch
    if PyUnicode_KIND(text) == PyUnicode_1BYTE_KIND:
        # the common case (visible ASCII and SP) as the pure isascii() and isprintable()
        data = PyUnicode_DATA(text)
        for i in range(size):
            ch = PyUnicode_READ(PyUnicode_1BYTE_KIND, data, i)
            if ch < 0x20 or ch > 0x7e:
                break
        else:
            return text.strip(" ")
    if _BAD_VALUE.search(text):
        raise _invalid(f"header {name!r}: control character in value")
    text = text.strip(_OWS)  # OWS around a value is not part of it (RFC 9110 §5.5)
    if not PyUnicode_IS_ASCII(text):
        try:
            text = text.encode("utf-8").decode("latin-1")
        except UnicodeEncodeError as exc:  # a lone surrogate cannot be sent as bytes
            raise _invalid(f"header {name!r}: value is not encodable text") from exc
    return text


cdef bint _name_kept(name) except -1:
    """Whether a response field name is forwarded; BadFunctionResponse if it is no token."""
    kept = _NAME_VERDICTS.get(name)
    if kept is None:
        if not _TOKEN.fullmatch(name):
            raise _invalid(f"header name {name!r:.60} is not a token")
        kept = name.lower() not in _DROPPED_RESPONSE
        if len(_NAME_VERDICTS) >= _NAME_CACHE_MAX:  # bounded: names are the function's choice
            _NAME_VERDICTS.clear()
        _NAME_VERDICTS[name] = kept
    return kept is True


cdef tuple _response_headers(raw):
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise _invalid(f"headers must be an object, got {type(raw).__name__}")
    cdef list out = []
    cdef bint kept
    cdef str line
    for name, value in (<dict>raw).items():
        kept = _name_kept(name)
        # values of dropped fields are validated too: a malformed response is malformed whole
        if type(value) is list:  # one header line per list item (SPEC §6)
            for item in <list>value:
                line = _field_value(name, item)
                if kept:
                    out.append((name, line))
        else:
            line = _field_value(name, value)
            if kept:
                out.append((name, line))
    return tuple(out)


cdef bytes _response_body(raw, is_base64):
    if type(is_base64) is not bool:
        raise _invalid(f"isBase64Encoded must be a JSON boolean, got {type(is_base64).__name__}")
    if raw is None:
        return b""
    if not isinstance(raw, str):
        raise _invalid(f"body must be a string, got {type(raw).__name__}")
    try:
        if is_base64:
            return _a2b_base64((<str>raw).encode("ascii"), strict_mode=True)
        return (<str>raw).encode("utf-8")
    except (UnicodeEncodeError, _BinasciiError) as exc:
        raise _invalid("body is not valid Base64" if is_base64 else "body is not text") from exc


def decode_response(raw):
    """The client's Response from a function's JSON result (SPEC §6).

    BadFunctionResponse when the result is not a valid integration response,
    FunctionResponseTooLarge when it is over 6 MB.
    """
    if len(raw) > MAX_RESPONSE_BYTES:
        raise FunctionResponseTooLarge(
            "function response over 6 MB",
            log_detail=f"result is {len(raw)} bytes, limit {MAX_RESPONSE_BYTES}")
    try:
        result = _loads(raw)
    except _JSONDecodeError as exc:
        raise _invalid(f"result is not JSON: {exc}") from exc
    if not isinstance(result, dict):
        raise _invalid(f"result must be a JSON object, got {type(result).__name__}")
    status = (<dict>result).get("statusCode")
    if type(status) is not int or not 200 <= status <= 599:
        raise _invalid(f"statusCode must be an integer 200..599, got {status!r:.40}")
    headers = _response_headers((<dict>result).get("headers"))
    body = _response_body((<dict>result).get("body"), (<dict>result).get("isBase64Encoded", False))
    return Response(status, headers, body)
