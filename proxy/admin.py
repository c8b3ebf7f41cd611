"""The admin API: ``GET /healthz``, ``GET /metrics`` and the CLB API 3.0 actions (SPEC §10);
``GET /`` without a signature and ``GET /status.json`` are the status page (statuspage.py).

Owns the admin's HTTP surface as a request handler (``AdminApp.handle(Request) -> Outcome``,
served by the same connection machinery as the listeners, see adminserver.py), its
authentication, and the Tencent Cloud API 3.0 envelope (``POST /`` with ``X-TC-Action``, a JSON
body, ``{"Response": {..., "RequestId"}}`` answers, ``Error.Code``/``Message`` with HTTP 200 as
the real API does). The actions themselves are pure functions in clbapi.py; this module runs
them, hands a mutating one to the ``commit`` callback (store/table.py's ``Table.commit``: the
change is made durable, in the config file or the etcd store, before it is applied and
answered; nothing is changed in memory alone), serialises changes by a lock so none is lost,
and answers DescribeTaskStatus.

Auth: ``/healthz`` is open to probes (without the token it shows only the status); with a
token (the server requires one off loopback) every other request needs
``Authorization: Bearer <token>`` (401 otherwise, RFC 6750 §3), or, for API calls, a TC3
signature made with SecretId ``admin`` and SecretKey = the token: the official SDKs then work
unchanged (``Credential("admin", token)``). The signature is checked as Tencent does (5-minute
window, payload signed; ``UNSIGNED-PAYLOAD`` is refused).

It knows nothing of sockets, routers or backends: only the Config value and the callbacks.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

import orjson

from . import writer
from .clbapi import (ACTIONS, TASK_ACTION, ActionContext, ApiError, Params, TargetHealth,
                     only_params, required_param)
from .config import Config
from .errors import ConfigError, PayloadTooLarge, ProxyError
from .messages import Outcome, Request, Response
from .statuspage import PATHS as STATUS_PATHS, StatusPage
from .store.table import Change
from .metrics import CONTENT_TYPE, Registry
from . import sigv1
from .scf import tc3

error_log = logging.getLogger("proxy.error")

API_VERSION = "2018-03-17"
TC3_SECRET_ID = "admin"
MAX_BODY = 1 << 20
TASKS_KEPT = 1024  # DescribeTaskStatus answers for this many recent changes
PERSISTED = "stored (config file or etcd) and applied to new requests"

_JSON = (("Content-Type", "application/json"),)  # exactly this: the SDK checks it verbatim
_REALM = 'Bearer realm="clbscf-proxy admin"'



def _v1_form(request: Request) -> bool:
    """Whether the request is (meant as) a signature-v1 call: a form, by GET or POST."""
    if request.method == "GET":
        return "Signature=" in request.query
    return (request.header("content-type") or "").split(";")[0].strip().lower() \
        == sigv1.FORM_TYPE


def _envelope(payload: dict[str, Any], request_id: str) -> Response:
    return Response(200, _JSON, orjson.dumps({"Response": {**payload, "RequestId": request_id}}))


def _error(code: str, message: str) -> dict[str, Any]:
    return {"Error": {"Code": code, "Message": message}}


class AdminApp:
    """The admin's request handler; serve it like a router (``ServerState.router``)."""

    def __init__(self, get_config: Callable[[], Config],
                 commit: Callable[[Change], Awaitable[dict[str, Any]]], metrics: Registry, *,
                 token: str | None, health: Callable[[], dict[str, Any]] | None = None,
                 scrape: Callable[[], Awaitable[bytes]] | None = None,
                 environ: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.time,
                 target_health: TargetHealth | None = None,
                 status: StatusPage | None = None) -> None:
        """``scrape`` replaces ``metrics.render()`` for /metrics (the supervisor's merge of
        its workers); ``environ`` is where remote-invocation credentials are looked for;
        ``status`` serves ``GET /`` (not a signed call) and ``GET /status.json``."""
        self._get_config = get_config
        self._commit = commit
        self._metrics = metrics
        self._token = token.encode() if token else None
        self._health = health
        self._scrape = scrape
        self._environ = os.environ if environ is None else environ
        self._clock = clock
        self._target_health = target_health
        self._status = status
        self._lock = asyncio.Lock()
        self._tasks: OrderedDict[str, str] = OrderedDict()
        self._calls = metrics.counter("clbscf_admin_requests_total", "Admin API calls by "
                                      "action and result code.", ("action", "code"))
        self._endpoints: dict[str, tuple[tuple[str, ...],
                                         Callable[[Request, bool], Awaitable[Response]]]] = {
            "/healthz": (("GET", "HEAD"), self._healthz),
            "/metrics": (("GET", "HEAD"), self._metrics_page),
            "/": (("GET", "POST"), self._api),
        }

    async def handle(self, request: Request) -> Outcome:
        authorized = self._bearer_ok(request)
        signed = request.path == "/" and ((request.header("authorization") or "").startswith(
            tc3.ALGORITHM + " ") or _v1_form(request))
        if self._status is not None and request.method == "GET" and not signed \
                and request.path in STATUS_PATHS:  # the status page: its own token rules
            return Outcome(await self._status.handle(request, authorized))
        endpoint = self._endpoints.get(request.path)
        if endpoint is None:
            return Outcome(Response(404, (("Content-Type", "text/plain"),), b"not found\n"))
        methods, serve = endpoint
        if request.method not in methods:
            return Outcome(Response(405, (("Allow", ", ".join(methods)),
                                          ("Content-Type", "text/plain")),
                                    b"method not allowed\n"))
        # /healthz is open (probes carry no token), but says only ok/not ok without one
        if not authorized and not signed and request.path != "/healthz":
            return Outcome(self._unauthorized(request))
        return Outcome(await serve(request, authorized))

    # -- auth --------------------------------------------------------------------------------

    def _bearer_ok(self, request: Request) -> bool:
        if self._token is None:
            return True
        scheme, _, credentials = (request.header("authorization") or "").partition(" ")
        # RFC 9110 §11.1: the auth-scheme is case-insensitive; the token compare takes constant
        # time so it cannot be guessed byte by byte
        return scheme.lower() == "bearer" and hmac.compare_digest(
            credentials.strip().encode(), self._token)

    def _unauthorized(self, request: Request) -> Response:
        # RFC 6750 §3.1: error="invalid_token" only when a token was presented
        challenge = _REALM + (', error="invalid_token"' if request.header("authorization")
                              else "")
        if request.path != "/":
            return Response(401, (("WWW-Authenticate", challenge),
                                  ("Content-Type", "text/plain")), b"unauthorized\n")
        envelope = _envelope(_error("AuthFailure", "a bearer token (or a TC3 signature made "
                                    "with the token) is required"), str(uuid.uuid4()))
        return replace(envelope, status=401,
                       headers=(("WWW-Authenticate", challenge),) + envelope.headers)

    def _verify_tc3(self, request: Request, body: bytes) -> None:
        """API 3.0 signature v3 (reference clb-scf-facts.md §4.4) with the token as the key."""
        assert self._token is not None
        token = self._token.decode()
        try:
            tc3.verify(request.method, request.header, body,
                       lambda secret_id: token if secret_id == TC3_SECRET_ID else None,
                       self._clock(), unknown_id_hint=f"use SecretId {TC3_SECRET_ID!r} with "
                                                     "the admin token as SecretKey")
        except tc3.SignatureError as exc:
            raise ApiError(exc.code, exc.message) from None

    # -- endpoints -----------------------------------------------------------------------------

    async def _healthz(self, request: Request, authorized: bool) -> Response:
        info: dict[str, Any] = {"status": "ok", **(self._health() if self._health else {})}
        status = 200 if info["status"] == "ok" else 503
        if not authorized:
            info = {"status": info["status"]}
        return Response(status, _JSON + (("Cache-Control", "no-store"),), orjson.dumps(info))

    async def _metrics_page(self, request: Request, authorized: bool) -> Response:
        body = await self._scrape() if self._scrape else self._metrics.render()
        return Response(200, (("Content-Type", CONTENT_TYPE),), body)

    def _verify_v1(self, request: Request, form: dict[str, str]) -> None:
        """API 3.0 signature v1 (clb-features.md §1.10) with the token as the key; the
        Timestamp window is TC3's (the v1 one is undocumented)."""
        assert self._token is not None
        method = form.get("SignatureMethod") or sigv1.DEFAULT_METHOD
        if method not in sigv1.DIGESTS:
            raise ApiError("AuthFailure.SignatureFailure", "SignatureMethod must be HmacSHA1 "
                           f"or HmacSHA256, got {method!r}")
        if form.get("SecretId") != TC3_SECRET_ID:
            raise ApiError("AuthFailure.SecretIdNotFound", f"use SecretId {TC3_SECRET_ID!r} "
                           "with the admin token as SecretKey")
        stamp = form.get("Timestamp", "")
        if not stamp.isdigit() or abs(self._clock() - int(stamp)) > tc3.SIGNATURE_WINDOW:
            raise ApiError("AuthFailure.SignatureExpire", "Timestamp is missing or more than "
                           "5 minutes off the gateway's clock")
        text = sigv1.string_to_sign(request.method, request.header("host") or "",
                                    request.path, form)
        expected = sigv1.signature(self._token.decode(), text, method)
        if not hmac.compare_digest(expected.encode(), form.get("Signature", "").encode()):
            raise ApiError("AuthFailure.SignatureFailure", "the signature does not match")

    async def _api(self, request: Request, authorized: bool) -> Response:
        request_id = str(uuid.uuid4())
        action = request.header("x-tc-action") or ""
        try:
            body = request.body
            if request.stream is not None:
                body = await request.stream.read_all(MAX_BODY)
            if _v1_form(request):
                form = self._form(request, body)
                action = form.get("Action", "")
                if not authorized:
                    self._verify_v1(request, form)
                payload = await self._call(action, form.get("Version"),
                                           self._form_params(form), request_id)
            else:
                if not authorized:
                    self._verify_tc3(request, body)
                payload = await self._call(action, request.header("x-tc-version"),
                                           self._json_params(body), request_id)
            code = "ok"
        except PayloadTooLarge:
            code, payload = "RequestSizeLimitExceeded", _error(
                "RequestSizeLimitExceeded", f"the body is over {MAX_BODY} bytes")
        except ApiError as exc:
            code, payload = exc.code, _error(exc.code, exc.message)
        except ProxyError as exc:  # the client broke off sending the body
            return writer.error_response(exc)
        known = action in ACTIONS or action == TASK_ACTION
        self._calls.labels(action if known else "unknown", code).inc()
        return _envelope(payload, request_id)

    @staticmethod
    def _form(request: Request, body: bytes) -> dict[str, str]:
        try:
            text = request.query if request.method == "GET" else body.decode()
            return sigv1.parse_form(text)
        except (sigv1.FormError, UnicodeDecodeError) as exc:
            raise ApiError("InvalidParameter", str(exc)) from None

    @staticmethod
    def _form_params(form: dict[str, str]) -> dict[str, Any]:
        try:
            return sigv1.unflatten(form)
        except sigv1.FormError as exc:
            raise ApiError("InvalidParameter", str(exc)) from None

    @staticmethod
    def _json_params(body: bytes) -> dict[str, Any]:
        try:
            params = orjson.loads(body) if body.strip() else {}
        except orjson.JSONDecodeError as exc:
            raise ApiError("InvalidParameter", f"the body is not JSON: {exc}") from None
        if not isinstance(params, dict):
            raise ApiError("InvalidParameter", "the body must be a JSON object")
        return params

    async def _call(self, action: str, version: str | None, params: dict[str, Any],
                    request_id: str) -> dict[str, Any]:
        if version is not None and version != API_VERSION:
            raise ApiError("NoSuchVersion", f"the Version must be {API_VERSION}")
        if not action:
            raise ApiError("MissingParameter", "the X-TC-Action header (or the Action "
                           "parameter) is required")
        entry = ACTIONS.get(action)
        if entry is None and action != TASK_ACTION:
            raise ApiError("InvalidAction", f"unknown action {action!r}")
        if entry is None:
            return self._task_status(params)
        only_params(params, entry.params, "", "UnknownParameter")
        if not entry.mutates:  # reads need no lock
            return entry.run(self._context(self._get_config()), params)[1]

        def change(config: Config) -> tuple[Config | None, dict[str, Any]]:
            return entry.run(self._context(config), params)

        async with self._lock:  # one change at a time, each on top of the last
            try:
                answer = await self._commit(change)
            except ApiError:
                raise
            except ConfigError as exc:
                raise ApiError("FailedOperation", str(exc)) from None
            except Exception as exc:
                error_log.exception("admin %s: applying the change failed", action)
                raise ApiError("InternalError", f"applying the change failed: {exc}") from None
        self._tasks[request_id] = action
        while len(self._tasks) > TASKS_KEPT:
            self._tasks.popitem(last=False)
        return answer

    def _context(self, config: Config) -> ActionContext:
        return ActionContext(config, self._environ, self._target_health)

    def _task_status(self, params: Params) -> dict[str, Any]:
        only_params(params, frozenset({"TaskId"}), "", "UnsupportedOperation")
        task = required_param(params, "TaskId", str)
        if task not in self._tasks:
            raise ApiError("ResourceNotFound", f"no task {task!r} among the last {TASKS_KEPT} "
                           "changes")
        # every change is applied before its action answers, so a known task has succeeded
        return {"Status": 0, "LoadBalancerIds": [self._get_config().load_balancer_id],
                "Message": f"{self._tasks[task]}: {PERSISTED}"}
