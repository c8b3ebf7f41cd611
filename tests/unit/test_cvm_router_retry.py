"""The router's retry of a CVM failure on another target (RFC 9110 §9.2.2), with fake targets."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import uvloop

from proxy.config import Config, HealthCheck, Listener, Rule, Target
from proxy.errors import UpstreamError, UpstreamTimeout
from proxy.messages import Outcome, Request, Response, Route
from proxy.router import Backends, Router
from proxy.scf.local import LocalFunctions

Behaviour = Callable[[], Awaitable[Outcome]]


def _router(behaviours: dict[str, Behaviour], calls: list[str],
            usable: dict[str, bool] | None = None) -> Router:
    targets = tuple(Target("CVM", address=a, weight=10) for a in behaviours)
    rule = Rule("a.test", "/", health_check=HealthCheck(enabled=False), targets=targets,
                location_id="loc-1")
    listener = Listener("web", "HTTP", 0, rules=(rule,), default_domain="a.test")

    def bind(lst: Listener, r: Rule, t: Target) -> tuple[
            Callable[[Request, Route], Awaitable[Outcome]], Callable[[], bool] | None]:
        async def backend(request: Request, route: Route) -> Outcome:
            calls.append(t.address)
            return Outcome((await behaviours[t.address]()).response, route)
        return backend, (lambda: (usable or {}).get(t.address, True))

    return Router(Config(listeners=(listener,)),
                  Backends(local=LocalFunctions(()), cvm=bind))


def _request(method: str = "GET") -> Request:
    return Request(method, "/", "", (("Host", "a.test"),), b"", "1.1", "127.0.0.1", 1, "http",
                   "web", time.time())


def _fail(retryable: bool) -> Behaviour:
    async def behaviour() -> Outcome:
        raise UpstreamError("down", retryable=retryable)
    return behaviour


def _ok(body: bytes) -> Behaviour:
    async def behaviour() -> Outcome:
        return Outcome(Response(200, (), body))
    return behaviour


def test_retryable_failure_goes_to_the_next_target() -> None:
    calls: list[str] = []
    router = _router({"d:1": _fail(True), "a:1": _ok(b"A")}, calls)
    outcome = uvloop.run(router.handle(_request()))
    assert outcome.response.body == b"A" and calls == ["d:1", "a:1"]
    assert outcome.route is not None and outcome.route.target == "CVM:a:1"


def test_failure_that_is_not_retryable_is_answered_at_once() -> None:
    calls: list[str] = []
    router = _router({"d:1": _fail(False), "a:1": _ok(b"A")}, calls)
    outcome = uvloop.run(router.handle(_request("POST")))
    assert outcome.response.status == 502 and calls == ["d:1"]


def test_each_target_is_tried_at_most_once() -> None:
    calls: list[str] = []
    router = _router({"d:1": _fail(True), "d:2": _fail(True), "d:3": _fail(True)}, calls)
    outcome = uvloop.run(router.handle(_request()))
    assert outcome.response.status == 502 and sorted(calls) == ["d:1", "d:2", "d:3"]


def test_unusable_targets_are_not_retried_on() -> None:
    calls: list[str] = []
    router = _router({"d:1": _fail(True), "sick:1": _ok(b"S")}, calls, {"sick:1": False})
    outcome = uvloop.run(router.handle(_request()))
    assert outcome.response.status == 502 and calls == ["d:1"]


def test_a_timeout_is_not_retried() -> None:
    async def slow() -> Outcome:
        raise UpstreamTimeout("read timeout")

    calls: list[str] = []
    router = _router({"s:1": slow, "a:1": _ok(b"A")}, calls)
    outcome = uvloop.run(router.handle(_request()))
    assert outcome.response.status == 504 and calls == ["s:1"]


def test_in_flight_counts_are_released_after_retries() -> None:
    calls: list[str] = []
    router = _router({"d:1": _fail(True), "a:1": _ok(b"A")}, calls)
    for _ in range(4):
        uvloop.run(router.handle(_request()))
    balancer = router._listeners["web"].rules[0].balancer  # type: ignore[attr-defined]
    assert [balancer.in_flight(i) for i in range(2)] == [0, 0]
