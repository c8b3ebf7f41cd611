"""Remote SCF: functions that run in Tencent Cloud, or behind a self-hosted invoke URL.

Owns the InvokeFunction / Invoke (InvocationType RequestResponse) client of API version
2018-04-16 and the invoke-URL client: building the request, signing it (tc3.py), sending it on
pooled keep-alive HTTPS connections (backends/h1client.py, TLS verification always on), and
turning the answer into an ``Invocation`` or into the error tree. Must not know the CLB event
or the integration response (scf/event.py encodes and decodes those), routing, or where the
config came from; it never logs a secret, a token or the Authorization header.

Mapping (SPEC §6; every failure is logged on "proxy.error" with the API code):

* ``Response.Result`` with ``InvokeResult`` 0 -> ``Invocation(result=RetMsg)``; RetMsg is the
  JSON text of the function's return value.
* ``InvokeResult`` != 0 -> the SCF error object parsed from RetMsg / ErrMsg, classified by its
  SCF ``statusCode`` (reference §2.2 [SCF-STATUS]): 433 -> FunctionTimeout 504, 434 / 439 ->
  FunctionCrashed 502, 407 -> FunctionResponseTooLarge 502, 406 -> PayloadTooLarge 413, 429 /
  432 (instance rate or concurrency limit: the function did not run) -> throttled; anything
  else -> FunctionError 502 carrying the error object.
* ``Response.Error``: codes ``LimitExceeded[.*]`` and ``RequestLimitExceeded[.*]``, and HTTP
  429 from the API front, are throttling. The SDK's scf errorcodes.py has no dedicated invoke
  timeout code, so an ``InternalError[.*]`` or ``FailedOperation[.*]`` whose code or message
  speaks of a timeout, and an HTTP 504 from the front, -> UpstreamTimeout 504. Everything else
  (AuthFailure.*, ResourceNotFound.*, InvalidParameter*, UnauthorizedOperation*, ...) ->
  RemoteInvokeError 502 with Code, Message and RequestId in ``log_detail``.
* No bytes for ``read_timeout`` -> UpstreamTimeout 504; connect, TLS (verification included)
  or framing failure -> RemoteInvokeError 502.
* Throttling is retried with exponential backoff and equal jitter while the next attempt would
  still start within ``retry_budget`` seconds (safe: the function did not run), then
  Overloaded 503 with Retry-After.

The endpoint: the configured default (``https://scf.tencentcloudapi.com``) becomes the regional
host ``scf.<region>.tencentcloudapi.com``; any other endpoint is used as given.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from ..backends.h1client import HTTPClient, parse_url
from ..config import DEFAULT_ENDPOINT, RemoteScf, Target
from ..errors import (ConfigError, FunctionCrashed, FunctionError, FunctionResponseTooLarge,
                      FunctionTimeout, GatewayTimeout, Overloaded, PayloadTooLarge, ProxyError,
                      RemoteInvokeError, ServiceUnavailable, UpstreamError, UpstreamTimeout)
from ..messages import Invocation
from . import tc3

API_VERSION = "2018-04-16"
SERVICE = "scf"
CONTENT_TYPE = "application/json"
REQUEST_CLIENT = "clbscf-proxy"
#: a 6 MB RetMsg inside the JSON envelope may double with escaping
MAX_API_RESPONSE = 32 * 1024 * 1024

error_log = logging.getLogger("proxy.error")

#: the action's field that carries the event, and its fixed extra fields
_ACTIONS: dict[str, tuple[str, dict[str, str]]] = {
    "InvokeFunction": ("Event", {}),
    "Invoke": ("ClientContext", {"InvocationType": "RequestResponse"}),
}

THROTTLED, TIMEOUT, FAILED = "throttled", "timeout", "failed"
#: API error code prefixes (the code itself or the code followed by ".") -> outcome kind
_CODE_PREFIXES = (("LimitExceeded", THROTTLED), ("RequestLimitExceeded", THROTTLED))
#: code families in which a timeout wording means the invocation timed out behind the API
_TIMEOUT_FAMILIES = frozenset({"InternalError", "FailedOperation"})
_TIMEOUT_WORDS = ("timeout", "timed out", "time out")
#: HTTP statuses from the API front end, when they carry no API error
_HTTP_KINDS = {429: THROTTLED, 504: TIMEOUT}
#: SCF status codes of a failed invocation -> an error class or THROTTLED
_SCF_STATUS: dict[int, type[ProxyError] | str] = {
    406: PayloadTooLarge,
    407: FunctionResponseTooLarge,
    429: THROTTLED,
    432: THROTTLED,
    433: FunctionTimeout,
    434: FunctionCrashed,
    439: FunctionCrashed,
}
_KIND_ERRORS: dict[str, type[ProxyError]] = {TIMEOUT: UpstreamTimeout, FAILED: RemoteInvokeError}
#: error classes logged at WARNING (the function's own doing or a transient state), not ERROR
_WARNING_CLASSES = (FunctionError, GatewayTimeout, ServiceUnavailable)
#: backoff of throttled attempts: base * 2**n capped, half fixed and half random
_BACKOFF_BASE = 0.05
_BACKOFF_CAP = 1.0


class Credentials:
    """A SecretId / SecretKey pair and, for temporary credentials, a session token.

    The key and the token never appear in ``repr``/``str``.
    """

    __slots__ = ("secret_id", "secret_key", "token")

    def __init__(self, secret_id: str, secret_key: str, token: str | None = None) -> None:
        if not secret_id or not secret_key:
            raise ValueError("a secret id and a secret key are both required")
        self.secret_id = secret_id
        self.secret_key = secret_key
        self.token = token or None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Credentials | None:
        """From TENCENTCLOUD_SECRETID / _SECRETKEY / _SESSIONTOKEN; None unless id and key
        are both set."""
        secret_id = environ.get("TENCENTCLOUD_SECRETID", "").strip()
        secret_key = environ.get("TENCENTCLOUD_SECRETKEY", "").strip()
        if not secret_id or not secret_key:
            return None
        return cls(secret_id, secret_key, environ.get("TENCENTCLOUD_SESSIONTOKEN", "").strip())

    def __repr__(self) -> str:
        token = "'***'" if self.token else "None"
        shown = self.secret_id[:4] + "***"
        return f"Credentials(secret_id={shown!r}, secret_key='***', token={token})"

    __str__ = __repr__


def api_url(scf: RemoteScf) -> str:
    """The URL InvokeFunction is POSTed to: the regional host for the default endpoint."""
    if scf.endpoint.rstrip("/") == DEFAULT_ENDPOINT and scf.region:
        return f"https://{SERVICE}.{scf.region}.tencentcloudapi.com/"
    return scf.endpoint if urlsplit(scf.endpoint).path else scf.endpoint + "/"


def ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    """A verifying client context: the system's trust store plus ``ca_file`` if given."""
    context = ssl.create_default_context()
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"scf.ca_file: cannot load {ca_file}: {exc}") from exc
    return context


def build_payload(action: str, target: Target, event: bytes) -> bytes:
    """The JSON body of an InvokeFunction / Invoke request for ``target`` with ``event``."""
    field, extra = _ACTIONS[action]
    return orjson.dumps({
        "FunctionName": target.function,
        "Namespace": target.namespace,
        "Qualifier": target.qualifier,
        field: event.decode("utf-8"),
        **extra,
    })


def classify_code(code: str, message: str) -> str:
    """THROTTLED, TIMEOUT or FAILED for an API error code and its message."""
    for prefix, kind in _CODE_PREFIXES:
        if code == prefix or code.startswith(prefix + "."):
            return kind
    text = f"{code} {message}".lower()
    if code.split(".", 1)[0] in _TIMEOUT_FAMILIES and any(w in text for w in _TIMEOUT_WORDS):
        return TIMEOUT
    return FAILED


class _Throttled(Overloaded):
    """The API refused the invocation for rate or concurrency: it did not run; retry."""


def interpret(status: int, body: bytes, where: str) -> Invocation:
    """An API answer -> the Invocation, or the error of the mapping in the module docstring
    (``_Throttled``, an Overloaded, for throttling). ``where`` prefixes log details."""
    try:
        envelope = orjson.loads(body)["Response"]
        if not isinstance(envelope, dict):
            raise TypeError
    except (orjson.JSONDecodeError, TypeError, KeyError):
        envelope = None
    error = envelope.get("Error") if envelope is not None else None
    answered = isinstance(error, dict) or (
        envelope is not None and 200 <= status < 300 and isinstance(envelope.get("Result"), dict))
    if envelope is None or not answered:
        kind = _HTTP_KINDS.get(status, FAILED)
        detail = f"{where}: HTTP {status} without a usable API envelope: {body[:200]!r}"
        raise (_Throttled if kind == THROTTLED else _KIND_ERRORS[kind])(
            "bad API answer", log_detail=detail)
    api_request_id = str(envelope.get("RequestId", ""))
    if isinstance(error, dict):
        code, message = str(error.get("Code", "")), str(error.get("Message", ""))
        kind = THROTTLED if status == 429 else classify_code(code, message)
        detail = f"{where}: API error {code}: {message} (RequestId {api_request_id})"
        raise (_Throttled if kind == THROTTLED else _KIND_ERRORS[kind])(
            f"remote invoke failed: {code}", log_detail=detail)
    return _invocation(envelope["Result"], where, api_request_id)


def _invocation(result: dict[str, object], where: str, api_request_id: str) -> Invocation:
    function_request_id = str(result.get("FunctionRequestId") or api_request_id)
    duration = result.get("Duration")
    duration_ms = float(duration) if isinstance(duration, (int, float)) else 0.0
    memory = result.get("MemUsage")  # bytes, as SCF reports it
    outcome = result.get("InvokeResult", 0)
    if outcome == 0:
        ret = result.get("RetMsg")
        raw = ret.encode("utf-8") if isinstance(ret, str) else orjson.dumps(ret)
        return Invocation(raw, function_request_id, duration_ms=duration_ms,
                          mem_usage=int(memory) if isinstance(memory, (int, float)) else 0)
    error = _error_object(result)
    # the SCF status code: the error object's statusCode, else InvokeResult itself when it
    # carries one (some answers put 433 etc. there)
    stated = error.get("statusCode")
    scf_status = stated if isinstance(stated, int) else outcome if isinstance(outcome, int) else -1
    handler = _SCF_STATUS.get(scf_status)
    detail = (f"{where}: function failed (InvokeResult {outcome}, FunctionRequestId "
              f"{function_request_id}, RequestId {api_request_id}): "
              f"{orjson.dumps(error).decode()}")
    if handler == THROTTLED:
        raise _Throttled("function throttled", log_detail=detail)
    if isinstance(handler, type):
        raise handler(f"function failed with SCF status {scf_status}", log_detail=detail)
    raise FunctionError("function raised", error=error, log_detail=detail)


def _error_object(result: Mapping[str, object]) -> dict[str, object]:
    """The SCF error object of a failed invocation: RetMsg or ErrMsg when they hold a JSON
    object, else the text as errorMessage."""
    texts = [t for t in (result.get("RetMsg"), result.get("ErrMsg")) if isinstance(t, str) and t]
    for text in texts:
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError:
            continue
        if isinstance(parsed, dict):
            return parsed
    return {"errorMessage": texts[0] if texts else "function invocation failed"}


def _log(exc: ProxyError) -> None:
    level = logging.WARNING if isinstance(exc, _WARNING_CLASSES) else logging.ERROR
    error_log.log(level, "%s: %s", exc, exc.log_detail)
    exc.logged = True  # the router need not log it again


def _redact(url: str) -> str:
    """A URL for logs: no userinfo, no query (either may carry a secret)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


class InvokeUrlClient:
    """POSTs the event JSON to an invoke URL; the answer's body is the integration response.

    The request carries ``Content-Type: application/json`` and ``X-Scf-Request-Id``; the
    answer's ``X-Scf-Request-Id`` (if any) becomes the invocation's request id.
    """

    def __init__(self, *, ca_file: Path | None = None, connect_timeout: float = 4.0,
                 read_timeout: float = 60.0, pool_size: int = 32,
                 http: HTTPClient | None = None) -> None:
        self._http = http if http is not None else HTTPClient(
            ssl_context=ssl_context(ca_file), pool_size=pool_size,
            connect_timeout=connect_timeout, read_timeout=read_timeout)

    async def invoke_url(self, url: str, event: bytes, request_id: str) -> Invocation:
        where = f"invoke_url {_redact(url)}"
        started = time.monotonic()
        try:
            try:
                headers = (("Content-Type", CONTENT_TYPE), ("X-Scf-Request-Id", request_id))
                response = await self._http.request("POST", url, headers, event,
                                                    idempotent=False)
            except UpstreamTimeout as exc:
                raise UpstreamTimeout("invoke URL timed out",
                                      log_detail=f"{where}: {exc.log_detail}") from exc
            except UpstreamError as exc:
                raise RemoteInvokeError("invoke URL failed",
                                        log_detail=f"{where}: {exc.log_detail}") from exc
            if not 200 <= response.status < 300:
                raise RemoteInvokeError(
                    f"invoke URL answered {response.status}",
                    log_detail=f"{where}: HTTP {response.status}: {response.body[:200]!r}")
        except ProxyError as exc:
            _log(exc)
            raise
        return Invocation(response.body, response.header("X-Scf-Request-Id") or request_id,
                          duration_ms=(time.monotonic() - started) * 1000.0)

    async def close(self) -> None:
        await self._http.close()


class RemoteFunctions:
    """Invokes functions through the SCF API (``scf.action``: InvokeFunction or Invoke).

    ``read_timeout`` should be the listener's proxy_read_timeout (the function's own timeout
    is not known here; the API itself gives up on synchronous calls after 300 s). ``clock``
    gives the X-TC-Timestamp (it must be within 5 minutes of the API's clock).
    """

    def __init__(self, scf: RemoteScf, credentials: Credentials, *,
                 connect_timeout: float = 4.0, read_timeout: float = 60.0, pool_size: int = 32,
                 retry_budget: float = 2.0, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None, http: HTTPClient | None = None) -> None:
        if scf.action not in _ACTIONS:
            raise ConfigError(f"scf.action: must be one of {sorted(_ACTIONS)}, got {scf.action!r}")
        self.url = api_url(scf)
        self._host = parse_url(self.url)[2]
        self._scf = scf
        self._credentials = credentials
        self._retry_budget = retry_budget
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._http = http if http is not None else HTTPClient(
            ssl_context=ssl_context(scf.ca_file), pool_size=pool_size,
            connect_timeout=connect_timeout, read_timeout=read_timeout,
            max_body_size=MAX_API_RESPONSE)
        self.urls = InvokeUrlClient(http=self._http)

    @property
    def http(self) -> HTTPClient:
        """The connection pool (shared with ``urls``)."""
        return self._http

    async def invoke(self, target: Target, event: bytes, request_id: str) -> Invocation:
        """Run ``target``'s function with ``event`` (the CLB event JSON) and wait for it.

        ``request_id`` is the proxy's id of the request, for the logs; the returned
        Invocation's request_id is the function's (FunctionRequestId).
        """
        where = (f"{self._scf.action} {target.namespace}/{target.function}:{target.qualifier} "
                 f"(request {request_id})")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._retry_budget
        attempt = 0
        try:
            payload = build_payload(self._scf.action, target, event)
            while True:
                try:
                    return await self._attempt(payload, where)
                except _Throttled as exc:
                    cap = min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** attempt)
                    delay = cap / 2 + self._rng.uniform(0, cap / 2)
                    attempt += 1
                    if loop.time() + delay > deadline:
                        raise Overloaded(
                            "remote function throttled",
                            log_detail=f"{exc.log_detail}; gave up after {attempt} attempts "
                                       f"within the {self._retry_budget}s retry budget") from exc
                    await asyncio.sleep(delay)
        except ProxyError as exc:
            _log(exc)
            raise

    async def _attempt(self, payload: bytes, where: str) -> Invocation:
        cred = self._credentials
        headers = tc3.sign(cred.secret_id, cred.secret_key, SERVICE, self._host,
                           self._scf.action, API_VERSION, self._scf.region, int(self._clock()),
                           payload, CONTENT_TYPE, cred.token)
        headers["X-TC-RequestClient"] = REQUEST_CLIENT
        try:
            response = await self._http.request("POST", self.url, headers.items(), payload,
                                                idempotent=False)
        except UpstreamTimeout as exc:
            raise UpstreamTimeout("remote invoke timed out",
                                  log_detail=f"{where}: {exc.log_detail}") from exc
        except UpstreamError as exc:
            raise RemoteInvokeError("remote invoke failed",
                                    log_detail=f"{where}: {exc.log_detail}") from exc
        return interpret(response.status, response.body, where)

    async def invoke_url(self, url: str, event: bytes, request_id: str) -> Invocation:
        """``InvokeUrlClient.invoke_url`` on this client's connection pool."""
        return await self.urls.invoke_url(url, event, request_id)

    async def close(self) -> None:
        await self._http.close()
