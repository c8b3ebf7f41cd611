"""The SCF target: a request in, the CLB event to a function, its integration response out.

One path for every way a function can run (a local instance, the InvokeFunction API, an
invoke URL): the forwarded headers and the event are built here once, handed to an *invoker*
(``async (event, request_id) -> Invocation``), and the result is decoded here. The invokers
know nothing about HTTP requests; this module knows nothing about processes or the cloud API.

Strategy (the hot path): a local function also offers ``start(event, request_id, done)``, which
with a warm instance free is callbacks only; a bodiless request to it is then served with no
task at all. A request with a body still arriving, and the cloud invokers, run on a task.
Request ids are UUID-shaped (version 4, as SCF's are) but cheap: a random prefix drawn once
per process and a counter, instead of ``uuid4()`` (a system random read) per request.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from ..handover import Cancel, Done, on_task
from ..headers import TrustedProxies, forwarded_headers
from ..messages import Invocation, Outcome, Request, Route
from .event import (MAX_EVENT_BYTES, check_declared_length, declared_length, decode_response,
                    encode_event)

Invoker = Callable[[bytes, str], Awaitable[Invocation]]
#: a local function's start: (event, request_id, done) -> drop; done gets an Invocation or
#: the ProxyError
Starter = Callable[[bytes, str, Done], Cancel]

#: "xxxxxxxx-xxxx-4xxx-yxxx-": the random part of every id this process makes
_ID_PREFIX = str(uuid.uuid4())[:24]
_ID_COUNTER = itertools.count()


def new_request_id() -> str:
    """A request id unique to this process's lifetime and, by its random prefix, across
    processes: UUID-shaped, version 4, the last 48 bits a counter."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFF:012x}"


class FunctionTarget:
    """An SCF target of a rule, bound to the invoker that runs its function."""

    __slots__ = ("invoker", "trusted", "starter")

    def __init__(self, invoker: Invoker, trusted: TrustedProxies,
                 starter: Starter | None = None) -> None:
        self.invoker = invoker
        self.trusted = trusted
        self.starter = starter

    def start(self, request: Request, route: Route, done: Done) -> Cancel:
        """Serve ``request``; ``done`` gets the Outcome or the ProxyError, once."""
        starter = self.starter
        if starter is None or request.stream is not None:
            return on_task(self(request, route), done)
        request_id = new_request_id()
        event = encode_event(request, forwarded_headers(request, self.trusted), route, request_id)

        def invoked(result: Any) -> None:
            if isinstance(result, BaseException):
                done(result)
                return
            try:
                outcome = self._outcome(result, request, route)
            except Exception as exc:  # a response that cannot be decoded is answered as one
                done(exc)
                return
            done(outcome)

        return starter(event, request_id, invoked)

    async def __call__(self, request: Request, route: Route) -> Outcome:
        stream = request.stream
        if stream is not None:
            # The event carries the whole body (SPEC §6: 413 without invoking). A declared
            # length that can never fit is refused before a byte of it is read, so before any
            # 100 Continue (the connection then closes, the body unread); otherwise the body
            # is read, stopping early (413) past what could fit in an event at all.
            if stream.declared_length is not None:
                check_declared_length(stream.declared_length,
                                      request.header("content-type") or "")
            request = replace(request, body=await stream.read_all(MAX_EVENT_BYTES),
                              stream=None)
        request_id = new_request_id()
        event = encode_event(request, forwarded_headers(request, self.trusted), route, request_id)
        return self._outcome(await self.invoker(event, request_id), request, route)

    @staticmethod
    def _outcome(invocation: Invocation, request: Request, route: Route) -> Outcome:
        response = decode_response(invocation.result)
        if not response.body and request.method == "HEAD":
            # A function that answers HEAD without the body may say what the GET would carry:
            # its Content-Length is the one to send (RFC 9110 §8.6, §9.3.2); none, and the
            # writer sends none rather than a 0 the GET would contradict.
            response = replace(response, length=declared_length(invocation.result))
        return Outcome(response, route, invocation.request_id, invocation.cold_start,
                       invocation.duration_ms, function_mem=invocation.mem_usage,
                       function_version=invocation.version)


class AliasTarget:
    """An SCF target naming an alias that routes its calls (scf/aliases.py): each request
    picks its version by one draw or by its headers (``invoke.headers.NAME`` rules), then is
    served as that version's FunctionTarget. Targets whose qualifier runs one version are
    plain FunctionTargets and pay nothing for this."""

    __slots__ = ("pick", "targets")

    def __init__(self, pick: Callable[[Callable[[str], str | None]], object],
                 targets: dict[object, FunctionTarget]) -> None:
        self.pick = pick
        self.targets = targets

    def start(self, request: Request, route: Route, done: Done) -> Cancel:
        return self.targets[self.pick(request.header)].start(request, route, done)

    async def __call__(self, request: Request, route: Route) -> Outcome:
        return await self.targets[self.pick(request.header)](request, route)
