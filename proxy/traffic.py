"""Request rates and error counts over the last minute, for the status page (statuspage.py).

Owns ``TrafficRing``: the running totals of counters the proxy keeps anyway (metrics.py's
``clbscf_requests_total`` split into all, 4xx and 5xx answers; ``clbscf_upstream_errors_total``;
function invocations whose outcome was not ok), sampled once a second by a timer into a ring
of ``WINDOW + 1`` samples, each keyed by its whole wall-clock second. Nothing is done per
request: a sample walks the counters' series once a second (O(series), not O(requests)).

``window`` turns one or more rings (the workers' under ``--workers N``) into the last minute:
differences of neighbouring samples, summed per second across the rings (keyed by second, so
the samples of different processes line up), with the per-second request counts as a series.

Must not know: HTTP, the config, the status page's shape beyond these figures.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .metrics import ProxyMetrics

#: the figures of one sample, in this order after its second
FIELDS = ("requests", "client_errors", "server_errors", "upstream_errors", "function_errors")
WINDOW = 60  # seconds: "the last minute"

Totals = tuple[int, ...]


def totals(metrics: ProxyMetrics) -> Totals:
    """The running totals of ``FIELDS`` from a process's metrics, now."""
    requests = client = server = 0.0
    for labels, child in metrics.requests.series():
        requests += child.value
        status = labels[-1]  # the last label of clbscf_requests_total is the status code
        if status.startswith("4"):
            client += child.value
        elif status.startswith("5"):
            server += child.value
    upstream = sum(child.value for _, child in metrics.upstream_errors.series())
    function = sum(child.value for labels, child in metrics.invocations.series()
                   if labels[1] != "ok")
    return int(requests), int(client), int(server), int(upstream), int(function)


class TrafficRing:
    """The last ``WINDOW + 1`` samples of a process's totals, each with its second."""

    def __init__(self, source: Callable[[], Totals],
                 clock: Callable[[], float] = time.time) -> None:
        self._source = source
        self._clock = clock
        self._samples: deque[tuple[int, Totals]] = deque(maxlen=WINDOW + 1)
        self._timer: asyncio.TimerHandle | None = None

    def sample(self) -> None:
        second = int(self._clock())
        if self._samples and self._samples[-1][0] >= second:
            if self._samples[-1][0] > second:  # the wall clock went back: start again
                self._samples.clear()
            else:
                self._samples.pop()  # two ticks in one second: the later one counts
        self._samples.append((second, self._source()))

    def samples(self) -> list[list[int]]:
        """``[[second, *totals], ...]``, oldest first (JSON for the supervisor)."""
        return [[second, *figures] for second, figures in self._samples]

    # -- the timer ---------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Sample now and just after each whole second from now on."""
        if self._timer is None:
            self._tick(loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self.sample()
        delay = 1.005 - self._clock() % 1.0  # just past the next whole second
        self._timer = loop.call_later(delay, self._tick, loop)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def window(rings: Iterable[Sequence[Sequence[int]]], now: float) -> dict[str, Any]:
    """The last ``WINDOW`` seconds up to ``now`` over ``rings`` (``TrafficRing.samples()``).

    The answer: ``seconds`` (how much of the minute the samples cover: less just after a
    start), each of ``FIELDS`` summed, ``rate`` (requests per second over ``seconds``) and
    ``series`` (requests in each of the ``WINDOW`` seconds, oldest first)."""
    end = int(now)
    start = end - WINDOW  # a difference counts when its later sample is after this
    per_second: dict[int, list[int]] = {}
    covered = 0
    for ring in rings:
        earlier: Sequence[int] | None = None
        first: int | None = None
        last = 0
        for sample in ring:
            if earlier is not None and start < sample[0] <= end:
                # a counter never goes down within one process; max() guards a reset anyway
                sums = per_second.setdefault(sample[0], [0] * len(FIELDS))
                for i in range(len(FIELDS)):
                    sums[i] += max(sample[1 + i] - earlier[1 + i], 0)
                first = earlier[0] if first is None else first
                last = sample[0]
            earlier = sample
        if first is not None:
            covered = max(covered, last - max(first, start))
    sums = [sum(figures[i] for figures in per_second.values()) for i in range(len(FIELDS))]
    answer: dict[str, Any] = dict(zip(FIELDS, sums))
    answer["seconds"] = covered
    answer["rate"] = round(sums[0] / covered, 2) if covered else 0.0
    answer["series"] = [per_second.get(second, [0])[0] for second in range(start + 1, end + 1)]
    return answer
