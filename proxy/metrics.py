"""Prometheus metrics without a dependency: counters, gauges and histograms with labels.

Owns the text exposition format 0.0.4 (``# HELP``/``# TYPE`` lines, escaped label values,
cumulative histogram ``_bucket{le=...}`` series ending in ``+Inf`` plus ``_sum`` and ``_count``),
the proxy's own metric set (``ProxyMetrics``: the calls the server makes per request, per
invocation and at scrape time) and ``merge_expositions``, which folds the expositions of several
worker processes into one.

Strategy: a family keeps its children in a dict keyed by the tuple of label values, and each
child renders its label text once, when created; an observation is one dict lookup and an add.
Values that only exist at scrape time (instances busy/idle, upstream pools and health) are set
by collect callbacks (``add_collector``) that ``render()`` runs first. One registry per process,
used from its event loop only, so there are no locks.

Multi-worker (``--workers N``): each worker renders its own registry; the supervisor fetches
them and calls ``merge_expositions``, which sums every series with the same name and labels
(counters and histogram buckets are sums by nature; instance and connection gauges are
per-worker counts, so they sum too) except the gauge families listed in ``ProxyMetrics.MERGE``
(upstream health takes the minimum: one worker that sees a target down shows it down). Rendering
is deterministic (label names in declared order, bucket bounds spelled the same), which is what
makes series from different workers line up.

It knows nothing of HTTP, asyncio or the config: labels are plain strings.
"""

from __future__ import annotations

import logging
import math
import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import ClassVar, Generic, TypeVar, cast

error_log = logging.getLogger("proxy.error")

#: the Content-Type of the text exposition format this module writes
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: request latencies: from a warm local function (ms) to CLB's 60 s proxy_read_timeout
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def format_value(value: float) -> str:
    """A sample value as the exposition format spells it (integers without a fraction)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _escape_label(value: str) -> str:
    # exposition format 0.0.4: backslash, double quote and line feed are escaped in values
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label_text(names: Sequence[str], values: Sequence[str]) -> str:
    """``a="x",b="y"`` (without braces), the label set of one series."""
    return ",".join(f'{n}="{_escape_label(v)}"' for n, v in zip(names, values))


class CounterChild:
    __slots__ = ("labels", "value")

    def __init__(self, labels: str) -> None:
        self.labels = labels
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self.value += amount

    def lines(self, name: str) -> Iterable[str]:
        yield f"{name}{{{self.labels}}} {format_value(self.value)}" if self.labels \
            else f"{name} {format_value(self.value)}"


class GaugeChild(CounterChild):
    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class HistogramChild:
    __slots__ = ("labels", "bounds", "le", "counts", "sum", "count")

    def __init__(self, labels: str, bounds: tuple[float, ...], le: tuple[str, ...]) -> None:
        self.labels = labels
        self.bounds = bounds
        self.le = le
        #: observations per bucket, not cumulative; the last one is (largest bound, +Inf)
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le = "less or equal")
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> Iterable[str]:
        prefix = self.labels + "," if self.labels else ""
        cumulative = 0
        for le, count in zip(self.le, self.counts):
            cumulative += count
            yield f'{name}_bucket{{{prefix}le="{le}"}} {cumulative}'
        braces = f"{{{self.labels}}}" if self.labels else ""
        yield f"{name}_sum{braces} {format_value(self.sum)}"
        yield f"{name}_count{braces} {self.count}"


C = TypeVar("C", CounterChild, GaugeChild, HistogramChild)


class Family(Generic[C]):
    """One metric name and its children, one per set of label values."""

    kind: ClassVar[str] = ""

    def __init__(self, name: str, help: str, labels: Sequence[str]) -> None:
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"bad metric name {name!r}")
        for label in labels:
            if not _LABEL_RE.fullmatch(label) or label.startswith("__") or label == "le":
                raise ValueError(f"bad label name {label!r} for {name}")
        self.name = name
        self.help = help
        self.label_names = tuple(labels)
        self._children: dict[tuple[str, ...], C] = {}
        if not labels:  # an unlabelled metric exists (as 0) from the start
            self.labels()

    def _new(self, labels: str) -> C:
        raise NotImplementedError

    def labels(self, *values: str, **named: str) -> C:
        """The child for these label values (positional in declared order, or by name)."""
        if named:
            if values or set(named) != set(self.label_names):
                raise ValueError(f"{self.name} takes labels {self.label_names}, got {named}")
            values = tuple(named[n] for n in self.label_names)
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.label_names):
                raise ValueError(f"{self.name} takes labels {self.label_names}, got {values}")
            values = tuple(str(v) for v in values)
            child = self._children.get(values)
            if child is None:
                child = self._children[values] = self._new(_label_text(self.label_names,
                                                                        values))
        return child

    def remove(self, *values: str) -> None:
        self._children.pop(tuple(values), None)

    def series(self) -> Iterable[tuple[tuple[str, ...], C]]:
        """Each child with its label values (traffic.py sums them once a second)."""
        return self._children.items()

    def clear(self) -> None:
        """Forget every child (a collector about to set the current ones)."""
        self._children.clear()

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {_escape_help(self.help)}"
        yield f"# TYPE {self.name} {self.kind}"
        for child in self._children.values():
            yield from child.lines(self.name)


class Counter(Family[CounterChild]):
    kind = "counter"

    def _new(self, labels: str) -> CounterChild:
        return CounterChild(labels)


class Gauge(Family[GaugeChild]):
    kind = "gauge"

    def _new(self, labels: str) -> GaugeChild:
        return GaugeChild(labels)


class Histogram(Family[HistogramChild]):
    kind = "histogram"

    def __init__(self, name: str, help: str, labels: Sequence[str],
                 buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        bounds = tuple(sorted(float(b) for b in buckets if not math.isinf(b)))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError(f"{name}: buckets must be distinct finite numbers, got {buckets}")
        self.bounds = bounds
        self._le = tuple(format_value(b) for b in bounds) + ("+Inf",)
        super().__init__(name, help, labels)

    def _new(self, labels: str) -> HistogramChild:
        return HistogramChild(labels, self.bounds, self._le)


_F = TypeVar("_F", Counter, Gauge, Histogram)


class Registry:
    """The metric families of one process and the callbacks that refresh them at scrape time."""

    def __init__(self) -> None:
        self._families: dict[str, Counter | Gauge | Histogram] = {}
        self._collectors: list[Callable[[], None]] = []

    def _register(self, family: _F) -> _F:
        existing = self._families.get(family.name)
        if existing is None:
            self._families[family.name] = family
            return family
        same = (type(existing) is type(family) and existing.label_names == family.label_names
                and getattr(existing, "bounds", None) == getattr(family, "bounds", None))
        if not same:
            raise ValueError(f"metric {family.name} is already registered differently")
        return cast(_F, existing)  # the same type: checked just above

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        """A counter family; registering the same definition again returns the first one."""
        return self._register(Counter(name, help, labels))

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> Gauge:
        return self._register(Gauge(name, help, labels))

    def histogram(self, name: str, help: str, labels: Sequence[str] = (),
                  buckets: Sequence[float] = DEFAULT_BUCKETS) -> Histogram:
        return self._register(Histogram(name, help, labels, buckets))

    def add_collector(self, collect: Callable[[], None]) -> None:
        """Run ``collect`` at each ``render()``, before anything is written (it sets gauges)."""
        self._collectors.append(collect)

    def get(self, name: str) -> Counter | Gauge | Histogram | None:
        return self._families.get(name)

    def render(self) -> bytes:
        """The whole registry in the text exposition format 0.0.4."""
        for collect in self._collectors:
            try:
                collect()
            except Exception:  # one broken source must not take the whole scrape down
                error_log.exception("metrics collector %r failed", collect)
        lines: list[str] = []
        for family in self._families.values():
            lines.extend(family.render())
        lines.append("")
        return "\n".join(lines).encode("utf-8")


# --- merging the expositions of several workers ---------------------------------------------

_AGGREGATES: dict[str, Callable[[float, float], float]] = {
    "sum": lambda a, b: a + b, "max": max, "min": min,
}


def merge_expositions(texts: Iterable[bytes], how: Mapping[str, str] | None = None) -> bytes:
    """One exposition from several ``Registry.render()`` outputs: each series (name + labels)
    is summed, or aggregated by ``how[family]`` ("sum", "max" or "min").

    HELP and TYPE come from the first text that has the family; families and series keep the
    order in which they first appear.
    """
    how = how or {}
    heads: dict[str, list[str]] = {}
    series: dict[str, dict[str, float]] = {}
    family = ""
    for text in texts:
        for line in text.decode("utf-8").splitlines():
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                family = line.split(" ", 3)[2]
                head = heads.setdefault(family, [])
                if len(head) < 2 and line not in head:
                    head.append(line)
                series.setdefault(family, {})
            elif line and not line.startswith("#"):
                key, _, raw = line.rpartition(" ")  # a sample line ends in its value
                value = float(raw)
                samples = series.setdefault(family, {})
                old = samples.get(key)
                samples[key] = value if old is None else \
                    _AGGREGATES[how.get(family, "sum")](old, value)
    out: list[str] = []
    for name, head in heads.items():
        out.extend(head)
        out.extend(f"{key} {format_value(value)}" for key, value in series[name].items())
    out.append("")
    return "\n".join(out).encode("utf-8")


# --- the proxy's metric set -------------------------------------------------------------------

_ROUTE = ("listener", "rule", "target")


class ProxyMetrics:
    """What the proxy measures, on one Registry, with the calls the server makes.

    Labels: ``listener`` is the listener name, ``rule`` is ``domain + url`` as the access log
    writes it, ``target`` is the target label (``SCF:ns/fn``, ``CVM:host:port``, "" when no
    target was picked), ``function`` is ``namespace/name``, ``upstream`` is ``host:port``.
    """

    #: how merge_expositions aggregates the families that are not sums across workers
    MERGE: ClassVar[Mapping[str, str]] = {"clbscf_upstream_healthy": "min"}

    def __init__(self, registry: Registry | None = None) -> None:
        r = self.registry = registry or Registry()
        self.requests = r.counter("clbscf_requests_total", "Requests answered, by listener, "
                                  "rule, target and status.", _ROUTE + ("status",))
        self.duration = r.histogram("clbscf_request_duration_seconds", "Time from the first "
                                    "byte of a request to the end of its response.", _ROUTE)
        self.bytes_sent = r.counter("clbscf_response_bytes_total", "Bytes written to clients "
                                    "(head and body).", _ROUTE)
        self.bytes_received = r.counter("clbscf_request_body_bytes_total", "Request body bytes "
                                        "received from clients.", _ROUTE)
        self.invocations = r.counter("clbscf_function_invocations_total", "Function "
                                     "invocations by outcome.", ("function", "outcome"))
        self.cold_starts = r.counter("clbscf_function_cold_starts_total", "Invocations that "
                                     "started a new instance.", ("function",))
        self.invocation_duration = r.histogram("clbscf_function_duration_seconds", "Time a "
                                               "function invocation took.", ("function",))
        self.cold_start = r.histogram("clbscf_function_cold_start_seconds", "Time from "
                                      "starting a web function's instance until its server "
                                      "listened.", ("function",))
        self.queue_wait = r.histogram("clbscf_function_queue_wait_seconds", "Time a request "
                                      "waited for a free function instance.", ("function",))
        self.instances = r.gauge("clbscf_function_instances", "Local function instances by "
                                 "state (busy, idle, ...).", ("function", "state"))
        self.upstream_connections = r.gauge("clbscf_upstream_connections", "Pooled upstream "
                                            "connections by state (active, idle).",
                                            ("upstream", "state"))
        self.upstream_healthy = r.gauge("clbscf_upstream_healthy", "1 when the health check "
                                        "sees the CVM target up, else 0.",
                                        ("listener", "rule", "upstream"))
        self.upstream_errors = r.counter("clbscf_upstream_errors_total", "Upstream failures by "
                                         "kind (connect, reset, timeout, ...).",
                                         ("upstream", "kind"))
        self.client_connections = r.gauge("clbscf_client_connections", "Open client "
                                          "connections.", ("listener",))
        self.reloads = r.counter("clbscf_config_reloads_total", "Config reloads by result.",
                                 ("result",))
        self._meters: dict[tuple[str, str, str], RouteMeter] = {}

    def route_meter(self, listener: str, rule: str, target: str, kind: str = "") -> RouteMeter:
        """The series of one route, resolved once (the router calls this when it is built, so
        a request only adds to them); ``kind`` is the target's type ("SCF", "CVM" or "")."""
        key = (listener, rule, target)
        meter = self._meters.get(key)
        if meter is None:
            meter = self._meters[key] = METERS[kind](self, key)
        return meter

    def observe_request(self, listener: str, rule: str, target: str, status: int,
                        duration_s: float, bytes_sent: int, bytes_received: int = 0) -> None:
        """One answered request on a route not resolved beforehand."""
        self.route_meter(listener, rule, target).observe(status, duration_s, bytes_sent,
                                                         bytes_received)

    def observe_invocation(self, function: str, cold_start: bool, outcome: str,
                           duration_s: float | None = None) -> None:
        """One function invocation; ``outcome`` is "ok" or the error kind ("timeout", ...)."""
        self.invocations.labels(function, outcome).inc()
        if cold_start:
            self.cold_starts.labels(function).inc()
        if duration_s is not None:
            self.invocation_duration.labels(function).observe(duration_s)

    def observe_cold_start(self, function: str, seconds: float) -> None:
        self.cold_start.labels(function).observe(seconds)

    def observe_queue_wait(self, function: str, seconds: float) -> None:
        self.queue_wait.labels(function).observe(seconds)

    def observe_upstream_error(self, upstream: str, kind: str) -> None:
        self.upstream_errors.labels(upstream, kind).inc()

    def observe_reload(self, ok: bool) -> None:
        self.reloads.labels("ok" if ok else "refused").inc()

    def set_upstream_health(self, listener: str, rule: str, upstream: str,
                            healthy: bool) -> None:
        self.upstream_healthy.labels(listener, rule, upstream).set(1 if healthy else 0)

    def set_upstream_pool(self, upstream: str, active: int, idle: int) -> None:
        self.upstream_connections.labels(upstream, "active").set(active)
        self.upstream_connections.labels(upstream, "idle").set(idle)

    def set_client_connections(self, listener: str, count: int) -> None:
        self.client_connections.labels(listener).set(count)

    def track_instances(self, source: Callable[[], Mapping[str, Mapping[str, int]]]) -> None:
        """At each scrape, set the instance gauges from ``source()``: function -> state ->
        count (e.g. ``{"default/hello": {"busy": 1, "idle": 3}}``); functions it no longer
        lists disappear."""
        def collect() -> None:
            snapshot = source()
            self.instances.clear()
            for function, states in snapshot.items():
                for state, count in states.items():
                    self.instances.labels(function, state).set(count)
        self.registry.add_collector(collect)

    def add_collector(self, collect: Callable[[], None]) -> None:
        self.registry.add_collector(collect)

    def render(self) -> bytes:
        return self.registry.render()


class RouteMeter:
    """The series of one route (listener, rule, target), resolved once: a request adds to
    counters it already holds; label text exists only per series. The series are made at the
    route's first request, so a route nobody used shows none."""

    __slots__ = ("_metrics", "key", "_duration", "_sent", "_received", "_by_status")

    def __init__(self, metrics: ProxyMetrics, key: tuple[str, str, str]) -> None:
        self._metrics = metrics
        self.key = key
        self._duration: HistogramChild | None = None
        self._sent = self._received = CounterChild("")
        self._by_status: dict[int, CounterChild] = {}

    def observe(self, status: int, duration_s: float, bytes_sent: int,
                bytes_received: int = 0) -> None:
        """One answered request."""
        if self._duration is None:
            metrics, key = self._metrics, self.key
            self._duration = metrics.duration.labels(*key)
            self._sent = metrics.bytes_sent.labels(*key)
            self._received = metrics.bytes_received.labels(*key)
        self._duration.observe(duration_s)
        self._sent.value += bytes_sent
        if bytes_received:
            self._received.value += bytes_received
        counter = self._by_status.get(status)
        if counter is None:
            counter = self._by_status[status] = self._metrics.requests.labels(*self.key,
                                                                               str(status))
        counter.value += 1

    def observe_target(self, error: str, cold_start: bool, function_ms: float) -> None:
        """What the target's kind counts besides the request (nothing for no target)."""


class FunctionMeter(RouteMeter):
    """A route to a function: each request is also an invocation. A warm one that went well
    (most of them) counts through the two series it resolved the first time; the others go by
    their labels."""

    __slots__ = ("_function", "_ok", "_took")

    def __init__(self, metrics: ProxyMetrics, key: tuple[str, str, str]) -> None:
        super().__init__(metrics, key)
        self._function = key[2].partition(":")[2]
        self._ok: CounterChild | None = None
        self._took: HistogramChild | None = None

    def observe_target(self, error: str, cold_start: bool, function_ms: float) -> None:
        if error or cold_start:
            self._metrics.observe_invocation(self._function, cold_start, error or "ok",
                                             function_ms / 1000.0 if not error else None)
            return
        ok, took = self._ok, self._took
        if ok is None or took is None:
            metrics = self._metrics
            ok = self._ok = metrics.invocations.labels(self._function, "ok")
            took = self._took = metrics.invocation_duration.labels(self._function)
        ok.value += 1
        took.observe(function_ms / 1000.0)


class UpstreamMeter(RouteMeter):
    """A route to a CVM upstream: its failures count by kind."""

    __slots__ = ("_upstream",)

    def __init__(self, metrics: ProxyMetrics, key: tuple[str, str, str]) -> None:
        super().__init__(metrics, key)
        self._upstream = key[2].partition(":")[2]

    def observe_target(self, error: str, cold_start: bool, function_ms: float) -> None:
        if error:
            self._metrics.observe_upstream_error(self._upstream, error)


#: the meter of each target kind (config.Target.type; "" for a route without a target)
METERS: dict[str, type[RouteMeter]] = {"": RouteMeter, "SCF": FunctionMeter,
                                       "CVM": UpstreamMeter}
