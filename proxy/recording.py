"""What is recorded of each answered request: its metric series and its access-log line.

Owns the mapping from an answered request (its ``Request``, ``Outcome``, bytes written and
duration) to the metrics and to the JSON access-log record of SPEC §10. Strategy: the route
carries its metric series, resolved when the router was built (``Route.meter``, a
``metrics.RouteMeter`` whose kind decides what else counts: an invocation for a function, an
upstream failure for a CVM target), so recording is a few adds; the access-log record is built
only when the log is on. Nothing here decides by parsing labels.

A leaf: it knows the message values, the metrics and the access log, nothing of connections,
routing or backends.
"""

from __future__ import annotations

import time

from .errors import ProxyError
from .logs import AccessLog
from .messages import Outcome, Request
from .metrics import ProxyMetrics


class Recorder:
    """Records answered requests in the metrics (when there are any) and the access log."""

    __slots__ = ("access_log", "metrics")

    def __init__(self, access_log: AccessLog, metrics: ProxyMetrics | None = None) -> None:
        self.access_log = access_log
        self.metrics = metrics

    def answered(self, request: Request, outcome: Outcome, nbytes: int,
                 duration: float) -> None:
        """A request was answered with ``nbytes`` written in ``duration`` seconds."""
        route = outcome.route
        metrics = self.metrics
        if metrics is not None:
            meter = route.meter if route is not None else None
            if meter is None:  # a route from a router built without metrics (or none)
                meter = metrics.route_meter(request.listener,
                                            f"{route.domain}{route.url}" if route else "",
                                            route.target if route else "")
            stream = request.stream
            meter.observe(outcome.response.status, duration, nbytes,
                          stream.received if stream is not None else len(request.body))
            if route is not None and route.target:
                meter.observe_target(outcome.error, outcome.cold_start, outcome.function_ms)
        if not self.access_log.enabled:
            return
        self.access_log.write({
            "time": request.received_at,
            "client": request.client_ip,
            "method": request.method,
            "host": request.header("host") or "",
            "path": request.path,
            "status": outcome.response.status,
            "bytes": nbytes,
            "duration_ms": round(duration * 1000, 3),
            "listener": request.listener,
            "rule": f"{route.domain}{route.url}" if route else "",
            "location_id": route.location_id if route else "",
            "target": route.target if route else "",
            "function_request_id": outcome.function_request_id,
            "cold_start": outcome.cold_start,
        })

    def refused(self, listener: str, client_ip: str, exc: ProxyError, nbytes: int) -> None:
        """An error answered before any request could be routed (framing, limits, timeouts)."""
        if self.metrics is not None:
            self.metrics.observe_request(listener, "", "", exc.status_hint, 0.0, nbytes)
        if not self.access_log.enabled:
            return
        self.access_log.write({
            "time": time.time(), "client": client_ip, "method": "", "host": "",
            "path": "", "status": exc.status_hint, "bytes": nbytes, "duration_ms": 0.0,
            "listener": listener, "rule": "", "location_id": "", "target": "",
            "function_request_id": "", "cold_start": False, "error": str(exc),
        })
