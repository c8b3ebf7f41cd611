"""The local SCF API (``--scf-api [HOST]:PORT``): ``Invoke`` and ``InvokeFunction`` in the
Tencent Cloud API 3.0 shape, run against the local functions.

Owns the API's request handler (``ScfApi.handle(Request) -> Outcome``, served like the admin
API by adminserver.py's listener): the envelope (``POST /`` with ``X-TC-Action`` and a JSON
body, or ``GET /`` with the parameters in the query string as the SDK's ``reqMethod="GET"``
sends them; ``{"Response": {"Result": {...}, "RequestId"}}`` answers; errors as
``Response.Error.Code/Message`` with HTTP 200, as the real API answers), its TC3 check
(tc3.verify, the admin API's own verifier) against ``CLBSCF_SCF_API_SECRET_ID`` /
``CLBSCF_SCF_API_SECRET_KEY``, the two actions' parameters (reference clb-scf-facts.md
§4.1-4.3, clb-features.md §3.4), and the mapping of an invocation's outcome to ``Result``.

Decisions (ours, where SCF is silent):
- ``RetMsg`` is the JSON text of the return value (a returned string arrives quoted), as
  scf/remote.py reads it; ``Duration`` is the run time (ms, float), ``BillDuration`` it rounded
  up (ms, int, at least 1); ``MemUsage`` the instance's peak resident memory in bytes (0 for a
  failed call); ``Log`` is empty unless ``LogType`` is ``Tail``: then the last 4 KB of SCF's
  lines for it (START, what it printed, END, Report). The output also goes to the error log
  under the FunctionRequestId, as for any invocation.
- A failed invocation is ``InvokeResult`` 1 with SCF's error object (``errorCode``,
  ``errorMessage``, ``stackTrace``, ``statusCode``) as JSON in both ``RetMsg`` and ``ErrMsg``
  (tencentserverless reads 1 as "RetMsg is the error object"): the handler's own (430, 437,
  443; trace included: the caller holds the API keys), 433 timeout, 434 memory, 439 crash, 407
  result over 6 MB, 406 event over 6 MB, 432 every instance busy (scf/remote.py then retries
  and answers 503, as for SCF's concurrency limit).
- ``InvocationType: Event`` answers at once with the FunctionRequestId (the other fields
  empty) and runs the function in the background; its outcome is logged. Its event may be
  128 KB at most.
- Only local functions are served: a function that is not a local ``[[function]]`` is
  ``ResourceNotFound.Function``. ``X-TC-Region`` is not checked.
- Qualifiers go through ``select``: ``$LATEST``, a published version or an alias (its
  routing by weight, or by a ``RoutingKey`` key for ``invoke.headers.NAME``; scf/aliases.py);
  ``$DEFAULT`` is ``$LATEST`` unless declared; anything else is ``ResourceNotFound.Qualifier``.

Must not know: sockets, the connection, how the functions run (scf/local.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson

from .. import writer
from ..config import parse_listen
from ..errors import (BadFunctionResponse, ConfigError, FunctionCrashed, FunctionError,
                      FunctionInitTimeout, FunctionResponseTooLarge, FunctionTimeout,
                      Overloaded, PayloadTooLarge, ProxyError)
from ..messages import Invocation, Outcome, Request, Response
from . import tc3
from .backend import new_request_id
from .local import LocalFunction, LocalFunctions
from .remote import API_VERSION

error_log = logging.getLogger("proxy.error")

SECRET_ID_VARIABLE = "CLBSCF_SCF_API_SECRET_ID"
SECRET_KEY_VARIABLE = "CLBSCF_SCF_API_SECRET_KEY"
#: a POST signed with v3 may carry 10 MB (reference §4.4); a 6 MB event fits, escaped
MAX_BODY = 10 * 1024 * 1024
#: a GET's query string, at most (reference §4.4: GET requests are limited to 32 KB)
MAX_QUERY = 32 * 1024
#: an asynchronous invocation's event, at most (reference §4.1)
MAX_ASYNC_EVENT = 128 * 1024
LATEST, DEFAULT = "$LATEST", "$DEFAULT"
#: an alias's RoutingKey, at most (reference §4.1)
MAX_ROUTING_KEY = 1024
SYNC, ASYNC = "RequestResponse", "Event"
TAIL = "Tail"
LOG_TYPES = frozenset({"None", TAIL, ""})
#: LogType Tail answers this much of the invocation's log, at most (reference §3.4: 4 KB)
MAX_LOG = 4096

_JSON = (("Content-Type", "application/json"),)  # exactly this: the SDK checks it verbatim


@dataclass(frozen=True)
class _Action:
    #: the parameter that carries the event, and the error code of a bad one
    event: str
    bad_event: str
    #: the qualifier when none is given
    qualifier: str
    params: frozenset[str]


_COMMON = frozenset({"FunctionName", "Qualifier", "LogType", "Namespace", "RoutingKey"})
ACTIONS = {
    "Invoke": _Action("ClientContext", "InvalidParameterValue.ClientContext", LATEST,
                      _COMMON | {"ClientContext", "InvocationType"}),
    "InvokeFunction": _Action("Event", "InvalidParameterValue.Param", DEFAULT,
                              _COMMON | {"Event"}),
}

#: a failed invocation -> SCF's status code and message (clb-scf-facts.md §2.2 [SCF-STATUS])
_FAILURES: dict[type[ProxyError], tuple[int, str]] = {
    FunctionInitTimeout: (433, "init timeout: the function did not initialize within its "
                               "init_timeout"),
    FunctionTimeout: (433, "time out"),
    FunctionCrashed: (439, "the function's process exited"),
    FunctionResponseTooLarge: (407, "The size of response exceeds the upper limit (6MB)"),
    BadFunctionResponse: (430, "the return value is not JSON-serialisable"),
    PayloadTooLarge: (406, "RequestTooLarge: the event is over 6 MB"),
    Overloaded: (432, "every instance of the function is busy (concurrency limit)"),
}
#: FunctionCrashed messages (scf/local.py) with a status of their own
_CRASHES = {"memory limit exceeded": (434, "memory limit exceeded")}


class ApiFault(Exception):
    """An API error answered as ``Response.Error``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def parse_scf_api(text: str) -> tuple[str, int]:
    """``[HOST]:PORT`` -> (host, port), 127.0.0.1 without a host; ConfigError naming the flag."""
    try:
        host, port = parse_listen(text) if text.strip() else ("", -1)
    except ConfigError:
        host, port = "", -1
    if port < 0:
        raise ConfigError(f"--scf-api: must be [HOST]:PORT (IPv6 as [::1]:PORT, port 0..65535), "
                          f"got {text!r}")
    return host or "127.0.0.1", port


def api_credentials(environ: Mapping[str, str]) -> tuple[str, str]:
    """The SecretId and SecretKey callers must sign with; ConfigError when unset."""
    secret_id = environ.get(SECRET_ID_VARIABLE, "").strip()
    secret_key = environ.get(SECRET_KEY_VARIABLE, "").strip()
    if not secret_id or not secret_key:
        raise ConfigError(f"--scf-api needs the credentials callers sign with: set "
                          f"{SECRET_ID_VARIABLE} and {SECRET_KEY_VARIABLE}")
    return secret_id, secret_key


def select(functions: LocalFunctions, namespace: str, name: str, qualifier: str,
           routing_key: str) -> LocalFunction:
    """What runs for ``namespace/name:qualifier``: the version, or the alias routed by the
    ``RoutingKey`` (a JSON object of string keys and values, scf/aliases.py)."""
    if functions.config(namespace, name) is None:
        raise ApiFault("ResourceNotFound.Function", f"no local function {namespace}/{name}")
    selected = functions.select(namespace, name, qualifier)
    if selected is None:
        raise ApiFault("ResourceNotFound.Qualifier",
                       f"{namespace}/{name} has no version or alias {qualifier!r}")
    fixed = selected.fixed
    if fixed is not None:
        return fixed
    return selected.pick(_routing_keys(routing_key).get)


def _routing_keys(text: str) -> dict[str, str]:
    if not text:
        return {}
    if len(text.encode()) > MAX_ROUTING_KEY:
        raise ApiFault("InvalidParameterValue.RoutingKey",
                       f"RoutingKey is at most {MAX_ROUTING_KEY} bytes")
    try:
        keys = orjson.loads(text)
    except orjson.JSONDecodeError:
        keys = None
    if not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values()):
        raise ApiFault("InvalidParameterValue.RoutingKey",
                       'RoutingKey must be a JSON object of strings, such as {"User":"Bob"}')
    return keys


def _string(params: Mapping[str, Any], name: str, default: str, code: str) -> str:
    value = params.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ApiFault(code, f"{name} must be a string")
    return value


def _envelope(payload: dict[str, Any], request_id: str) -> Response:
    return Response(200, _JSON, orjson.dumps({"Response": {**payload, "RequestId": request_id}}))


def _result(function_request_id: str, duration_ms: float, ret: str, err: str,
            invoke_result: int, mem_usage: int = 0, log: str = "") -> dict[str, Any]:
    return {"Result": {
        "FunctionRequestId": function_request_id,
        "Duration": round(duration_ms, 3),
        "BillDuration": max(1, math.ceil(duration_ms)) if duration_ms else 0,
        "MemUsage": mem_usage, "InvokeResult": invoke_result,
        "RetMsg": ret, "ErrMsg": err, "Log": log,
    }}


def tail_log(request_id: str, output: list[str] | None, duration_ms: float, memory_mb: int,
             mem_usage: int) -> str:
    """``LogType: Tail``'s ``Log``: the invocation's lines as SCF logs them (START, what it
    printed, END, Report), the last MAX_LOG bytes of them."""
    text = "\n".join([f"START RequestId:{request_id}", *(output or ()),
                      f"END RequestId:{request_id}",
                      f"Report RequestId:{request_id} Duration:{duration_ms:.0f}ms "
                      f"Memory:{memory_mb}MB MemUsage:{mem_usage / 1048576}MB"]) + "\n"
    data = text.encode("utf-8")
    if len(data) <= MAX_LOG:
        return text
    return data[-MAX_LOG:].decode("utf-8", "ignore")


def failure(exc: ProxyError, request_id: str) -> dict[str, object]:
    """SCF's error object for a failed invocation (the module docstring's table)."""
    if isinstance(exc, FunctionError) and exc.error:
        return {**exc.error, "requestId": exc.error.get("requestId", request_id)}
    status, message = _CRASHES.get(str(exc), (0, "")) if isinstance(exc, FunctionCrashed) \
        else (0, "")
    if not status:
        for cls in type(exc).__mro__:
            if cls in _FAILURES:
                status, message = _FAILURES[cls]
                break
        else:
            status, message = 500, str(exc)
    return {"errorCode": -1, "errorMessage": message, "statusCode": status,
            "requestId": request_id}


class ScfApi:
    """The local SCF API's request handler (serve it like the admin's ``AdminApp``)."""

    def __init__(self, functions: LocalFunctions, secret_id: str, secret_key: str, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._functions = functions
        self._secret_id = secret_id
        self._secret_key = secret_key
        self._clock = clock
        self._background: set[asyncio.Task[None]] = set()

    async def handle(self, request: Request) -> Outcome:
        if request.path != "/":
            return Outcome(Response(404, (("Content-Type", "text/plain"),), b"not found\n"))
        if request.method not in ("POST", "GET"):
            return Outcome(Response(405, (("Allow", "GET, POST"),
                                          ("Content-Type", "text/plain")),
                                    b"method not allowed\n"))
        request_id = str(uuid.uuid4())
        try:
            body = request.body
            if request.stream is not None:
                body = await request.stream.read_all(MAX_BODY)
            payload = await self._call(request, body)
        except PayloadTooLarge:
            payload = {"Error": {"Code": "RequestSizeLimitExceeded",
                                 "Message": f"the body is over {MAX_BODY} bytes"}}
        except ApiFault as exc:
            payload = {"Error": {"Code": exc.code, "Message": exc.message}}
        except ProxyError as exc:  # the client broke off sending the body
            return Outcome(writer.error_response(exc))
        return Outcome(_envelope(payload, request_id))

    def _secret_key_of(self, secret_id: str) -> str | None:
        return self._secret_key if secret_id == self._secret_id else None

    async def _call(self, request: Request, body: bytes) -> dict[str, Any]:
        get = request.method == "GET"  # the SDK's reqMethod="GET": parameters in the query
        if get and len(request.query) > MAX_QUERY:
            raise ApiFault("RequestSizeLimitExceeded", f"a GET is at most {MAX_QUERY} bytes")
        try:
            tc3.verify(request.method, request.header, b"" if get else body,
                       self._secret_key_of, self._clock(), query=request.query if get else "",
                       unknown_id_hint=f"sign with the SecretId in {SECRET_ID_VARIABLE}")
        except tc3.SignatureError as exc:
            raise ApiFault(exc.code, exc.message) from None
        action_name = request.header("x-tc-action") or ""
        action = ACTIONS.get(action_name)
        if action is None:
            raise ApiFault("InvalidAction", f"the local SCF API answers {sorted(ACTIONS)}, not "
                                            f"{action_name!r}")
        version = request.header("x-tc-version")
        if version is not None and version != API_VERSION:
            raise ApiFault("NoSuchVersion", f"X-TC-Version must be {API_VERSION}")
        try:
            params = dict(parse_qsl(request.query, keep_blank_values=True)) if get else \
                orjson.loads(body) if body.strip() else {}
        except orjson.JSONDecodeError as exc:
            raise ApiFault("InvalidParameter", f"the body is not JSON: {exc}") from None
        if not isinstance(params, dict):
            raise ApiFault("InvalidParameter", "the body must be a JSON object")
        unknown = sorted(set(params) - action.params)
        if unknown:
            raise ApiFault("UnknownParameter", f"{action_name} takes no {unknown[0]}")
        return await self._invoke(action, params)

    async def _invoke(self, action: _Action, params: Mapping[str, Any]) -> dict[str, Any]:
        name = _string(params, "FunctionName", "", "InvalidParameterValue.FunctionName")
        if not name:
            raise ApiFault("MissingParameter", "FunctionName is required")
        namespace = _string(params, "Namespace", "", "InvalidParameterValue.Namespace") \
            or "default"
        qualifier = _string(params, "Qualifier", "", "InvalidParameterValue.Qualifier") \
            or action.qualifier
        routing_key = _string(params, "RoutingKey", "", "InvalidParameterValue.RoutingKey")
        kind = _string(params, "InvocationType", SYNC, "InvalidParameterValue.InvokeType")
        if kind not in (SYNC, ASYNC):
            raise ApiFault("InvalidParameterValue.InvokeType",
                           f"InvocationType must be {SYNC} or {ASYNC}, got {kind!r}")
        log_type = _string(params, "LogType", "", "InvalidParameterValue.LogType")
        if log_type not in LOG_TYPES:
            raise ApiFault("InvalidParameterValue.LogType", "LogType must be None or Tail")
        event = _string(params, action.event, "", action.bad_event).encode("utf-8") or b"{}"
        try:
            orjson.loads(event)
        except orjson.JSONDecodeError:
            raise ApiFault(action.bad_event, f"{action.event} is not JSON") from None
        fn = select(self._functions, namespace, name, qualifier, routing_key)
        request_id = new_request_id()
        if kind == ASYNC:
            if len(event) > MAX_ASYNC_EVENT:
                raise ApiFault(action.bad_event, f"an {ASYNC} invocation's event is at most "
                                                 f"{MAX_ASYNC_EVENT} bytes")
            task = asyncio.get_running_loop().create_task(self._in_background(fn, event,
                                                                              request_id))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return _result(request_id, 0.0, "", "", 0)
        began = time.perf_counter()
        try:
            invocation: Invocation = await fn.invoke(event, request_id)
        except ProxyError as exc:
            error = orjson.dumps(failure(exc, request_id)).decode()
            took = (time.perf_counter() - began) * 1000.0
            return _result(request_id, took, error, error, 1, log=tail_log(
                request_id, None, took, fn.config.memory, 0) if log_type == TAIL else "")
        log = tail_log(request_id, invocation.output, invocation.duration_ms, fn.config.memory,
                       invocation.mem_usage) if log_type == TAIL else ""
        return _result(request_id, invocation.duration_ms, invocation.result.decode("utf-8"),
                       "", 0, invocation.mem_usage, log)

    async def _in_background(self, fn: LocalFunction, event: bytes, request_id: str) -> None:
        try:
            await fn.invoke(event, request_id)
        except ProxyError as exc:
            error_log.warning("scf-api: %s invocation of %s (FunctionRequestId %s) failed: %s",
                              ASYNC, fn.key, request_id, orjson.dumps(
                                  failure(exc, request_id)).decode())

    async def close(self) -> None:
        """Wait for the background invocations (the pool's close fails what is left)."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=5.0)
