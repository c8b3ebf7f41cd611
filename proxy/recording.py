"""What is recorded of each answered request: its metric series and its access-log line.

Owns the mapping from an answered request (its ``Request``, ``Outcome``, bytes written and
duration) to the metrics and to the JSON access-log record of SPEC §10. Strategy: the route
carries its metric series, resolved when the router was built (``Route.meter``, a
``metrics.RouteMeter`` whose kind decides what else counts: an invocation for a function, an
upstream failure for a CVM target), so recording is a few adds; the access-log record is built
only when the log is on. Nothing here decides by parsing labels.

The record keeps SPEC §10's fields (``time``, ``client``, ``bytes``, ``duration_ms``, ...: the
log's users and tests read them), the function's own ``function_duration_ms``,
``function_mem_usage`` (bytes, SCF's MemUsage) and ``function_version`` (0 / "" for other
targets and for what the function did not report), and adds CLB's access-log fields under
CLB's names (clb-features.md §1.7): ``stgw_request_id``, ``request_time`` and the
``upstream_*`` times in seconds with millisecond resolution as CLB's (nginx's) variables give
them, ``upstream_status`` as text, ``upstream_addr``, ``request_length``, ``bytes_sent``,
``ssl_protocol``, ``ssl_cipher``, ``connection_requests``, ``remote_port``, ``server_name``.
What does not apply is null (numbers) or "" (text): no upstream for an SCF target or an
answer of our own, no TLS on an HTTP listener. The upstream times come from the CVM exchange's
``UpstreamTiming`` (monotonic clock reads it took anyway, no system call of their own); for a
request retried on another target, the last attempt's.

A leaf: it knows the message values, the metrics and the access log, nothing of connections,
routing or backends.
"""

from __future__ import annotations

import time
from typing import Any

from .errors import ProxyError
from .logs import AccessLog
from .messages import Outcome, Request, Route, UpstreamTiming
from .metrics import ProxyMetrics


def tls_fields(ssl_object: Any) -> tuple[str, str]:
    """``ssl_protocol`` and ``ssl_cipher`` of a connection's ``ssl.SSLObject`` ("" for both
    without one): read once per connection, by HTTP/1.1 and HTTP/2 alike."""
    if ssl_object is None:
        return ("", "")
    cipher = ssl_object.cipher()
    return (ssl_object.version() or "", cipher[0] if cipher else "")


class Recorder:
    """Records answered requests in the metrics (when there are any) and the access log."""

    __slots__ = ("access_log", "metrics")

    def __init__(self, access_log: AccessLog, metrics: ProxyMetrics | None = None) -> None:
        self.access_log = access_log
        self.metrics = metrics

    def answered(self, request: Request, outcome: Outcome, nbytes: int,
                 duration: float, connection_requests: int = 1,
                 tls: tuple[str, str] = ("", "")) -> None:
        """A request was answered with ``nbytes`` written in ``duration`` seconds; it was
        the ``connection_requests``-th of its connection, whose TLS (protocol, cipher) is
        ``tls``."""
        route = outcome.route
        metrics = self.metrics
        if metrics is not None:
            meter = route.meter if route is not None else None
            if meter is None:  # a route from a router built without metrics (or none)
                meter = metrics.route_meter(request.listener, route.rule if route else "",
                                            route.target if route else "")
            stream = request.stream
            meter.observe(outcome.response.status, duration, nbytes,
                          stream.received if stream is not None else len(request.body))
            if route is not None and route.target:
                meter.observe_target(outcome.error, outcome.cold_start, outcome.function_ms)
        if not self.access_log.enabled:
            return
        # One dict literal, in the order of the fields; the upstream ones inline (no dict of
        # their own to merge); rounding as _ms3 does it (round() to digits goes through a
        # decimal string, and the log's cost on the CVM path is what issue 12 weighs).
        if route is None:
            route = _NO_ROUTE
        timing = outcome.upstream
        stream = request.stream
        received = stream.received if stream is not None else len(request.body)
        if timing is None:
            timing = _NO_TIMING
        start = timing.start
        self.access_log.write({
            "time": request.received_at,
            "client": request.client_ip,
            "method": request.method,
            "host": request.header("host") or "",
            "path": request.path,
            "status": outcome.response.status,
            "bytes": nbytes,
            "duration_ms": _ms3(duration * 1000),
            "listener": request.listener,
            "rule": route.rule,
            "location_id": route.location_id,
            "target": route.target,
            "function_request_id": outcome.function_request_id,
            "cold_start": outcome.cold_start,
            "function_duration_ms": _ms3(outcome.function_ms),
            "function_mem_usage": outcome.function_mem,
            "function_version": outcome.function_version,
            "stgw_request_id": request.request_id,
            "remote_port": request.client_port,
            "server_name": route.domain,
            "request_time": _ms3(duration),
            "request_length": (request.head_length + received if request.head_length
                               else request_length(request, received)),
            "bytes_sent": nbytes,
            "upstream_addr": timing.address,
            "upstream_status": str(timing.status) if timing.status else "",
            "upstream_connect_time": _ms3(timing.sent - start) if timing.sent else None,
            "upstream_header_time": _ms3(timing.header - start) if timing.header else None,
            "upstream_response_time": _ms3(timing.done - start) if timing.done else None,
            "ssl_protocol": tls[0],
            "ssl_cipher": tls[1],
            "connection_requests": connection_requests,
        })

    def refused(self, listener: str, client_ip: str, exc: ProxyError, nbytes: int,
                connection_requests: int = 0, tls: tuple[str, str] = ("", "")) -> None:
        """An error answered before any request could be routed (framing, limits, timeouts)."""
        if self.metrics is not None:
            self.metrics.observe_request(listener, "", "", exc.status_hint, 0.0, nbytes)
        if not self.access_log.enabled:
            return
        self.access_log.write({
            "time": time.time(), "client": client_ip, "method": "", "host": "",
            "path": "", "status": exc.status_hint, "bytes": nbytes, "duration_ms": 0.0,
            "listener": listener, "rule": "", "location_id": "", "target": "",
            "function_request_id": "", "cold_start": False, "function_duration_ms": 0.0,
            "function_mem_usage": 0, "function_version": "", "error": str(exc),
            "stgw_request_id": "", "remote_port": None, "server_name": "",
            "request_time": 0.0, "request_length": None, "bytes_sent": nbytes, **_NO_UPSTREAM,
            "ssl_protocol": tls[0], "ssl_cipher": tls[1],
            "connection_requests": connection_requests,
        })


#: the upstream_* fields of an answer refused before routing (``answered`` writes the same
#: from _NO_TIMING)
_NO_UPSTREAM: dict[str, object] = {
    "upstream_addr": "", "upstream_status": "", "upstream_connect_time": None,
    "upstream_header_time": None, "upstream_response_time": None,
}


#: the timing of an answer that had no upstream (a function, a page of our own): its
#: upstream_* fields (CLB's: seconds from the start of connecting to the upstream until the
#: request went out, the head came, the response ended) are "" or null, as _NO_UPSTREAM's
_NO_TIMING = UpstreamTiming("", 0.0)
#: what an answer without a route (none matched, an error of our own) logs for the rule
_NO_ROUTE = Route("", "", "", "", "")


def _ms3(value: float) -> float:
    """``value`` rounded to 3 decimals: the same figure as ``round(value, 3)`` but for exact
    halves, at a fraction of its cost (an integer over 1000 is the double nearest to that
    decimal, so it prints as at most 3 decimals)."""
    return round(value * 1000) / 1000


def request_length(request: Request, body: int) -> int:
    """CLB's request_length, where the head's bytes as received are not known (HTTP/2): the
    request line and header block worked out from the fields, plus the body."""
    line = len(request.method) + len(request.path) + 12  # " " + " HTTP/1.x\r\n"
    if request.query:
        line += len(request.query) + 1
    return line + sum(len(k) + len(v) + 4 for k, v in request.headers) + 2 + body
