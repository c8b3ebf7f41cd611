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

Every outcome, errors included, comes back as an ``Outcome``: ProxyErrors are turned into
responses by writer.py here, where the matched route is still known for the access log.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from . import writer
from .balancer import Balancer
from .config import Config, Listener, Rule, Target
from .errors import ConfigError, NoTargetAvailable, NotFound, ProxyError, UpstreamError
from .headers import TrustedProxies
from .messages import Outcome, Request, Route
from .rules import RuleTable, normalize_path
from .scf.backend import FunctionTarget, Invoker
from .scf.local import LocalFunctions

error_log = logging.getLogger("proxy.error")

#: a bound target: serves one request that the router sent to it
Backend = Callable[[Request, Route], Awaitable[Outcome]]
#: tells whether a target may take new requests now (health state); None = always
Usable = Callable[[], bool]


@dataclass
class Backends:
    """The long-lived things targets are bound to; owned by the server, shared by routers."""

    local: LocalFunctions
    #: the InvokeFunction/Invoke client: async (target, event, request_id) -> Invocation
    remote: Callable[[Target, bytes, str], Awaitable[object]] | None = None
    #: the invoke_url client: async (url, event, request_id) -> Invocation
    invoke_url: Callable[[str, bytes, str], Awaitable[object]] | None = None
    #: binds a CVM target: (listener, rule, target) -> (backend, usable)
    cvm: Callable[[Listener, Rule, Target], tuple[Backend, Usable | None]] | None = None


def _bind_scf(backends: Backends, listener: Listener, rule: Rule,
              target: Target) -> tuple[Backend, Usable | None]:
    trusted = TrustedProxies(listener.trusted_proxies)
    local = backends.local.get(target.namespace, target.function)
    invoker: Invoker
    if local is not None:
        invoker = local.invoke
    elif target.invoke_url:
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
              target: Target) -> tuple[Backend, Usable | None]:
    if backends.cvm is None:
        raise ConfigError(f"{target.label}: CVM targets are not available")
    return backends.cvm(listener, rule, target)


TARGET_BINDERS = {"SCF": _bind_scf, "CVM": _bind_cvm}


class _BoundRule:
    __slots__ = ("rule", "balancer", "backends", "usable", "routes")

    def __init__(self, listener: Listener, rule: Rule, backends: Backends) -> None:
        self.rule = rule
        self.balancer = Balancer(rule.scheduler, [t.weight for t in rule.targets])
        bound = [TARGET_BINDERS[t.type](backends, listener, rule, t) for t in rule.targets]
        self.backends = tuple(b for b, _ in bound)
        checks = tuple(u for _, u in bound)
        self.usable = checks if any(u is not None for u in checks) else None
        self.routes = tuple(
            Route(listener.name, rule.domain, rule.url, rule.location_id, t.label)
            for t in rule.targets
        )

    def usable_mask(self) -> list[bool] | None:
        if self.usable is None:
            return None
        return [u is None or u() for u in self.usable]


def _https_location(request: Request, port: int) -> str:
    """Where an HTTP listener with ``redirect_https_port`` sends a request: same host (port
    replaced), path and query."""
    host = request.header("host") or ""
    if host.startswith("["):
        host = host[: host.find("]") + 1]
    else:
        host = host.rsplit(":", 1)[0]
    authority = host if port == 443 else f"{host}:{port}"
    query = "?" + request.query if request.query else ""
    return f"https://{authority}{request.path}{query}"


class _BoundListener:
    __slots__ = ("listener", "table", "rules", "https_port")

    def __init__(self, listener: Listener, backends: Backends) -> None:
        self.listener = listener
        self.https_port = listener.redirect_https_port
        self.table = RuleTable(listener)
        self.rules = tuple(_BoundRule(listener, r, backends) for r in listener.rules)


class Router:
    """Routes requests for every listener of one config."""

    def __init__(self, config: Config, backends: Backends) -> None:
        self.config = config
        self._listeners = {l.name: _BoundListener(l, backends) for l in config.listeners}

    async def handle(self, request: Request) -> Outcome:
        bound = self._listeners[request.listener]
        if bound.https_port:
            return Outcome(writer.redirect_response(_https_location(request, bound.https_port)))
        route: Route | None = None
        try:
            path = normalize_path(request.path)
            index, redirect = bound.table.match(request.header("host") or "", path)
            if index < 0:
                raise NotFound()
            brule = bound.rules[index]
            if redirect:
                query = "?" + request.query if request.query else ""
                return Outcome(writer.redirect_response(request.path + "/" + query),
                               Route(bound.listener.name, brule.rule.domain, brule.rule.url,
                                     brule.rule.location_id, ""))
            pick = brule.balancer.pick(request.client_ip, brule.usable_mask())
            if pick < 0:
                route = Route(bound.listener.name, brule.rule.domain, brule.rule.url,
                              brule.rule.location_id, "")
                raise NoTargetAvailable()
            tried: set[int] = set()
            while True:
                route = brule.routes[pick]
                try:
                    return await brule.backends[pick](request, route)
                except UpstreamError as exc:
                    # RFC 9110 §9.2.2: another target only for what the backend marked
                    # replayable (nothing of it was sent, or idempotent without a body).
                    tried.add(pick)
                    retry = -1
                    if exc.retryable:
                        mask = brule.usable_mask() or [True] * len(brule.routes)
                        retry = brule.balancer.pick(
                            request.client_ip, [ok and i not in tried for i, ok in enumerate(mask)])
                    if retry < 0:
                        raise
                    error_log.warning("%s %s %s: %s failed (%s), retrying on %s",
                                      request.listener, request.method, request.path,
                                      route.target, exc.log_detail or exc,
                                      brule.routes[retry].target)
                finally:
                    brule.balancer.release(pick)
                pick = retry
        except ProxyError as exc:
            if exc.status_hint >= 500 and not exc.logged:
                error_log.warning(
                    "%s %s %s -> %d %s%s", request.listener, request.method, request.path,
                    exc.status_hint, type(exc).__name__,
                    f": {exc.log_detail}" if exc.log_detail else f": {exc}",
                )
            return Outcome(writer.error_response(exc), route, error=type(exc).__name__)
