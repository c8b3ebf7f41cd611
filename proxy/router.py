"""The router: one request -> rule (rules.py) -> target (balancer.py) -> backend call.

A ``Router`` is built from one ``Config`` and is immutable afterwards: each listener gets its
compiled ``RuleTable``, each rule its ``Balancer`` and its targets bound to backend callables.
A reload builds a new Router and the server swaps the reference atomically; requests in flight
finish on the router they started with. The backends themselves (worker pools, upstream pools,
API clients) live in ``Backends`` and outlive routers, so a reload keeps warm instances and
pooled connections.

A CVM failure the backend marks ``retryable`` (UpstreamError: nothing of the request was sent,
or it is idempotent and bodiless, RFC 9110 §9.2.2) is tried once on each other usable target
of the rule, as nginx's ``proxy_next_upstream error``; anything else is answered as it is.

Strategy (the hot path): ``dispatch(request, reply)`` matches and picks synchronously and
starts the target with a callback (a bound target's ``start(request, route, done)``; an
async one runs on a task of its own); ``reply`` gets the Outcome once, at once for a 404 or a
redirect, else from the target's own callback. ``handle`` is the same, awaited.

Every outcome, errors included, comes back as an ``Outcome``: ProxyErrors are turned into
responses by writer.py here, where the matched route is still known for the access log.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

from . import writer
from .balancer import Balancer
from .config import Config, Listener, Rewrite, Rule, Target
from .errors import ConfigError, NoTargetAvailable, NotFound, ProxyError, UpstreamError
from .handover import Cancel, Done, awaited, on_task
from .headers import TrustedProxies
from .messages import Outcome, Request, Route
from .metrics import ProxyMetrics
from .rules import RuleTable, normalize_path
from .scf.backend import AliasTarget, FunctionTarget, Invoker
from .scf.local import LocalFunctions
from .scf.web import WebFunctions
from .sessions import Session, for_rule

error_log = logging.getLogger("proxy.error")

#: a bound target: starts one request; ``done`` gets its Outcome (or the exception that
#: ended it) once, now or later
Start = Callable[[Request, Route, Done], Cancel | None]
#: an async target (a coroutine function): each request runs on a task of its own
AsyncBackend = Callable[[Request, Route], Coroutine[Any, Any, Outcome]]
#: tells whether a target may take new requests now (health state); None = always
Usable = Callable[[], bool]


def _starter(bound: Any) -> Start:
    """A bound target's ``start``; an async target gets one that runs it on a task."""
    start: Start | None = getattr(bound, "start", None)
    if start is not None:
        return start
    backend: AsyncBackend = bound

    def on_its_task(request: Request, route: Route, done: Done) -> Cancel:
        return on_task(backend(request, route), done)
    return on_its_task


@dataclass
class Backends:
    """The long-lived things targets are bound to; owned by the server, shared by routers."""

    local: LocalFunctions
    #: the InvokeFunction/Invoke client: async (target, event, request_id) -> Invocation
    remote: Callable[[Target, bytes, str], Awaitable[object]] | None = None
    #: the invoke_url client: async (url, event, request_id) -> Invocation
    invoke_url: Callable[[str, bytes, str], Awaitable[object]] | None = None
    #: binds a CVM target: (listener, rule, target) -> (backend, usable); the backend has a
    #: ``start`` (a Start) or is an async callable
    cvm: Callable[[Listener, Rule, Target], tuple[object, Usable | None]] | None = None
    #: the web functions (type = "HTTP", scf/web.py): raw HTTP to their instances
    web: WebFunctions | None = None
    #: listener name -> the port it is bound to (filled as listeners bind): where a rewrite
    #: to a listener configured with port 0 points
    ports: dict[str, int] = field(default_factory=dict)


def _bind_scf(backends: Backends, listener: Listener, rule: Rule,
              target: Target) -> tuple[object, Usable | None]:
    web = backends.web.get(target.namespace, target.function) if backends.web else None
    if web is not None:
        return backends.web.bind(web, listener, rule), None  # type: ignore[union-attr]
    trusted = TrustedProxies(listener.trusted_proxies)
    selected = backends.local.select(target.namespace, target.function, target.qualifier)
    if selected is not None:  # a local function can also be started without a task
        local = selected.fixed
        if local is not None:  # one version: bound to its pool, nothing to pick per call
            return FunctionTarget(local.invoke, trusted, local.start), None
        return AliasTarget(selected.pick, {
            fn: FunctionTarget(fn.invoke, trusted, fn.start)
            for fn in selected.pools.values()}), None
    if backends.local.config(target.namespace, target.function) is not None:
        raise ConfigError(f"{target.label}: no version or alias {target.qualifier!r}")
    invoker: Invoker
    if target.invoke_url:
        client = backends.invoke_url
        if client is None:
            raise ConfigError(f"{target.label}: invoke_url targets are not available")
        url = target.invoke_url

        async def invoker(event: bytes, request_id: str) -> object:  # type: ignore[misc]
            return await client(url, event, request_id)
    else:
        remote = backends.remote
        if remote is None:
            raise ConfigError(f"{target.label}: no local function and no [scf] remote config")

        async def invoker(event: bytes, request_id: str) -> object:  # type: ignore[misc]
            return await remote(target, event, request_id)
    return FunctionTarget(invoker, trusted), None


def _bind_cvm(backends: Backends, listener: Listener, rule: Rule,
              target: Target) -> tuple[object, Usable | None]:
    if backends.cvm is None:
        raise ConfigError(f"{target.label}: CVM targets are not available")
    return backends.cvm(listener, rule, target)


TARGET_BINDERS = {"SCF": _bind_scf, "CVM": _bind_cvm}


class _BoundRule:
    __slots__ = ("rule", "balancer", "starts", "usable", "routes", "no_target", "session",
                 "rewrite")

    def __init__(self, listener: Listener, rule: Rule, backends: Backends,
                 metrics: ProxyMetrics | None, listeners: dict[str, Listener]) -> None:
        self.rule = rule
        #: a rewritten rule answers every request with a redirect (its targets take none)
        self.rewrite: tuple[Callable[[Request], str], int] | None = None if (
            rule.rewrite is None) else (_rewrite_location(
                rule.rewrite, listeners[rule.rewrite.listener], backends.ports),
                rule.rewrite.code)
        self.balancer = Balancer(rule.scheduler, [t.weight for t in rule.targets])
        bound = [TARGET_BINDERS[t.type](backends, listener, rule, t) for t in rule.targets]
        self.starts = tuple(_starter(b) for b, _ in bound)
        checks = tuple(u for _, u in bound)
        self.usable = checks if any(u is not None for u in checks) else None
        self.routes = tuple(_route(listener, rule, t.label, t.type, metrics)
                            for t in rule.targets)
        #: the route of a request this rule matched but no target could take (or a redirect)
        self.no_target = _route(listener, rule, "", "", metrics)
        #: session persistence (sessions.py); None = off, nothing done per request
        self.session: Session | None = for_rule(rule, listener.protocol == "HTTPS")

    def usable_mask(self) -> list[bool] | None:
        if self.usable is None:
            return None
        return [u is None or u() for u in self.usable]


def _route(listener: Listener, rule: Rule, label: str, kind: str,
           metrics: ProxyMetrics | None) -> Route:
    """A route with its metric series resolved now, once, not per request."""
    meter = metrics.route_meter(listener.name, f"{rule.domain}{rule.url}", label, kind) \
        if metrics is not None else None
    return Route(listener.name, rule.domain, rule.url, rule.location_id, label, meter)


#: the port a URL leaves out, by scheme
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _literal(url: str) -> str:
    """A rule url as a path a redirect can name: "=/a" and "^~/a" are "/a"; a regex is "/"."""
    if url.startswith("~"):
        return "/"
    return url.removeprefix("=").removeprefix("^~")


def _request_host(request: Request) -> str:
    host = request.header("host") or ""
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0]


def _rewrite_location(rewrite: Rewrite, target: Listener,
                      ports: dict[str, int]) -> Callable[[Request], str]:
    """Where a rewritten rule sends a request (docs/BEHAVIOUR.md "Redirects"): the target
    listener's scheme and port (its public_port, else its port, else the one it was bound to
    for port 0; none when it is the scheme's default), the target rule's domain (the
    request's host when that domain is a wildcard or a regex), and the request's path and
    query with ``take_url``, else the target rule's url."""
    scheme = "https" if target.protocol == "HTTPS" else "http"
    domain = rewrite.domain
    fixed_host = domain if "*" not in domain and not domain.startswith("~") else ""
    path = _literal(rewrite.url)

    def location(request: Request) -> str:
        port = target.public_port or target.port or ports.get(target.name, 0)
        host = fixed_host or _request_host(request)
        authority = host if port in (0, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
        if not rewrite.take_url:
            return f"{scheme}://{authority}{path}"
        query = "?" + request.query if request.query else ""
        return f"{scheme}://{authority}{request.path}{query}"
    return location


class _BoundListener:
    __slots__ = ("listener", "table", "rules", "unrouted")

    def __init__(self, listener: Listener, backends: Backends,
                 metrics: ProxyMetrics | None, listeners: dict[str, Listener]) -> None:
        self.listener = listener
        self.table = RuleTable(listener)
        self.rules = tuple(_BoundRule(listener, r, backends, metrics, listeners)
                           for r in listener.rules)
        #: the route of a request no rule matched (404)
        meter = metrics.route_meter(listener.name, "", "", "") if metrics is not None else None
        self.unrouted = Route(listener.name, "", "", "", "", meter)


def _error_outcome(request: Request, exc: ProxyError, route: Route | None) -> Outcome:
    if exc.status_hint >= 500 and not exc.logged:
        error_log.warning(
            "%s %s %s -> %d %s%s", request.listener, request.method, request.path,
            exc.status_hint, type(exc).__name__,
            f": {exc.log_detail}" if exc.log_detail else f": {exc}",
        )
    return Outcome(writer.error_response(exc), route, error=type(exc).__name__)


class _Call:
    """One request at one rule's targets: the pick, the retry on another target for what the
    backend marked replayable (RFC 9110 §9.2.2), the balancer's in-flight count."""

    __slots__ = ("brule", "request", "reply", "pick", "tried", "cancel_target", "attempt",
                 "live")

    def __init__(self, brule: _BoundRule, request: Request, reply: Done, pick: int) -> None:
        self.brule = brule
        self.request = request
        self.reply = reply
        self.pick = pick
        self.tried: set[int] | None = None
        self.cancel_target: Cancel | None = None
        self.attempt = 0
        #: a target holds the request (its done has not come yet)
        self.live = False

    def start(self) -> Cancel:
        pick = self.pick
        brule = self.brule
        self.attempt += 1
        attempt = self.attempt
        self.live = True
        try:
            cancel = brule.starts[pick](self.request, brule.routes[pick], self.done)
        except Exception as exc:  # a backend that fails to start answers as one that failed
            self.done(exc)
            return self.cancel
        if self.live and self.attempt == attempt:  # done may have come already, and a retry
            self.cancel_target = cancel
        return self.cancel

    def cancel(self) -> None:
        if not self.live:
            return
        self.live = False
        self.brule.balancer.release(self.pick)
        cancel, self.cancel_target = self.cancel_target, None
        if cancel is not None:
            cancel()

    def done(self, result: Any) -> None:
        if not self.live:
            return  # cancelled: nobody waits for it
        self.live = False
        self.cancel_target = None
        brule = self.brule
        pick = self.pick
        brule.balancer.release(pick)
        if isinstance(result, Outcome):
            session = brule.session
            if session is not None:  # CLB writes the cookie on every answer (§1.1)
                response = result.response  # copies: a backend may reuse its answers
                result = replace(result, response=replace(
                    response, headers=tuple(response.headers) + (session.set_cookie[pick],)))
            self.reply(result)
            return
        route = brule.routes[pick]
        if isinstance(result, UpstreamError):
            tried = self.tried = (self.tried or set()) | {pick}
            retry = -1
            if result.retryable:
                mask = brule.usable_mask() or [True] * len(brule.routes)
                retry = brule.balancer.pick(
                    self.request.client_ip, [ok and i not in tried for i, ok in enumerate(mask)])
            if retry >= 0:
                request = self.request
                error_log.warning("%s %s %s: %s failed (%s), retrying on %s", request.listener,
                                  request.method, request.path, route.target,
                                  result.log_detail or result, brule.routes[retry].target)
                self.pick = retry
                self.start()
                return
        self.reply(_answer_error(self.request, result, route))


def _answer_error(request: Request, exc: BaseException, route: Route | None) -> Outcome:
    """A failure as the client's Outcome: a ProxyError's page, or a 500 for a bug."""
    if not isinstance(exc, ProxyError):
        error_log.error("internal error serving %s %s", request.method, request.path,
                        exc_info=exc)
        exc = ProxyError(str(exc))
    return _error_outcome(request, exc, route)


def _session_pick(brule: _BoundRule, session: Session, request: Request) -> int:
    """The target the request's session cookie names when it may take requests now, else a
    new pick (whose cookie the answer then carries)."""
    usable = brule.usable_mask()
    balancer = brule.balancer
    index = session.sticky(request, balancer.weights, usable)
    return balancer.take(index) if index >= 0 else balancer.pick(request.client_ip, usable)


class Router:
    """Routes requests for every listener of one config."""

    def __init__(self, config: Config, backends: Backends,
                 metrics: ProxyMetrics | None = None) -> None:
        self.config = config
        by_name = {l.name: l for l in config.listeners}
        self._listeners = {l.name: _BoundListener(l, backends, metrics, by_name)
                           for l in config.listeners}

    def dispatch(self, request: Request, reply: Done) -> Cancel | None:
        """Route ``request``; ``reply`` gets its Outcome once, now or when the target answers
        (errors included, as error pages). Returns what cancels it while in flight."""
        bound = self._listeners[request.listener]
        route = bound.unrouted
        try:
            path = normalize_path(request.path)
            index, redirect = bound.table.match(request.header("host") or "", path)
            if index < 0:
                raise NotFound()
            brule = bound.rules[index]
            route = brule.no_target
            if redirect:
                query = "?" + request.query if request.query else ""
                reply(Outcome(writer.redirect_response(request.path + "/" + query), route))
                return None
            if brule.rewrite is not None:
                location, code = brule.rewrite
                reply(Outcome(writer.redirect_response(location(request), code), route))
                return None
            session = brule.session
            if session is None:
                pick = brule.balancer.pick(request.client_ip, brule.usable_mask())
            else:
                pick = _session_pick(brule, session, request)
            if pick < 0:
                raise NoTargetAvailable()
        except ProxyError as exc:
            reply(_error_outcome(request, exc, route))
            return None
        return _Call(brule, request, reply, pick).start()

    async def handle(self, request: Request) -> Outcome:
        """``dispatch`` awaited, for callers that have a task anyway (tests, tools)."""
        outcome: Outcome = await awaited(lambda reply: self.dispatch(request, reply))
        return outcome
