"""The SCF target: a request in, the CLB event to a function, its integration response out.

One path for every way a function can run (a local instance, the InvokeFunction API, an
invoke URL): the forwarded headers and the event are built here once, handed to an *invoker*
(``async (event, request_id) -> Invocation``), and the result is decoded here. The invokers
know nothing about HTTP requests; this module knows nothing about processes or the cloud API.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace

from ..headers import TrustedProxies, forwarded_headers
from ..messages import Invocation, Outcome, Request, Route
from .event import MAX_EVENT_BYTES, decode_response, encode_event

Invoker = Callable[[bytes, str], Awaitable[Invocation]]


class FunctionTarget:
    """An SCF target of a rule, bound to the invoker that runs its function."""

    __slots__ = ("invoker", "trusted")

    def __init__(self, invoker: Invoker, trusted: TrustedProxies) -> None:
        self.invoker = invoker
        self.trusted = trusted

    async def __call__(self, request: Request, route: Route) -> Outcome:
        if request.stream is not None:
            # The event carries the whole body: read it, stopping early (413) past what could
            # fit in an event at all (SPEC §6: 413 without invoking).
            request = replace(request, body=await request.stream.read_all(MAX_EVENT_BYTES),
                              stream=None)
        request_id = str(uuid.uuid4())
        event = encode_event(request, forwarded_headers(request, self.trusted), route, request_id)
        invocation = await self.invoker(event, request_id)
        return Outcome(decode_response(invocation.result), route, invocation.request_id,
                       invocation.cold_start, invocation.duration_ms)
