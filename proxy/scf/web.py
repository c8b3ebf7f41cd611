"""Web functions (``type = "HTTP"``): raw HTTP to the servers their scf_bootstrap starts.

Owns the instances of each web function and which request runs where (SCF's web functions and
单实例多并发, clb-features.md §3.1): an instance (scf/webinstance.py) serves up to
``instance_concurrency`` requests at once (InstanceConcurrencyConfig.MaxConcurrency); instances
start on demand up to ``concurrency``, the oldest with room first (so the newest go idle and
retire after ``idle_timeout``); beyond that, callers wait in line (``queue_size``,
``queue_timeout``, then 503 as for event functions). A request is not an event: it goes to the
instance over HTTP/1.1 through the CVM exchange of backends/cvm.py (keep-alive pool per
instance, streaming both ways, the CLB headers and X-Forwarded-* as CLB sends them, WebSocket
through a Tunnel), bound per instance and rule. A request holds its instance's slot until its
response ends: the body streamed out, or the tunnel closed (one WebSocket connection is one
invocation, as on SCF).

Isolation (``isolation()``): where the host allows network namespaces (root), each instance gets
its own (scf/netns.py), so real templates, which all bind 0.0.0.0:9000, run unchanged side by
side. Elsewhere each web function runs at most one instance, told in ``PORT`` which port to
listen on. ``CLBSCF_WEB_ISOLATION`` = ``netns`` or ``port`` forces either (``auto`` by default).

Decisions (ours, where SCF is silent or we cannot do as it does):
- The function's ``timeout`` is the exchange's read timeout: the longest wait for the response
  head, and for each next piece of a streamed body (504). The instance is not killed for it: it
  may be serving other requests. A WebSocket tunnel closes after the listener's
  ``proxy_read_timeout`` of silence either way (CLB is in front of it; SCF's own WS idle default
  is 15 s).
- A start that fails (the bootstrap exits, or does not listen within ``init_timeout``) is a 502
  (FunctionCrashed) for the requests that waited for it, with the reason logged once; the next
  request starts a new instance. No instance starts with the proxy unless ``min_instances``
  asks: a web function's first request is a cold start, as on SCF.
- ``memory`` is not enforced: the bootstrap may run any program, and an address-space limit
  breaks runtimes that reserve large ranges up front (Node, the JVM, Go).

Must not know: processes (webinstance.py), namespaces (netns.py), the HTTP wire (backends/).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

from ..backends.cvm import CvmTarget
from ..backends.health import ActiveCheck, PassiveEjection
from ..config import Function, Listener, Rule
from ..errors import Overloaded
from ..handover import Cancel, Done, awaited, on_task
from ..messages import Outcome, Request, Route
from . import netns, runtime
from .backend import new_request_id
from .webinstance import WebInstance

function_log = logging.getLogger("proxy.function")

ISOLATION_VARIABLE = "CLBSCF_WEB_ISOLATION"
ISOLATIONS = ("auto", "netns", "port")


def isolation(environ: Mapping[str, str]) -> tuple[bool, str]:
    """Whether instances get network namespaces of their own, and why not when they don't."""
    wanted = environ.get(ISOLATION_VARIABLE, "auto") or "auto"
    if wanted not in ISOLATIONS:
        function_log.warning("%s=%r is not one of %s; using auto", ISOLATION_VARIABLE, wanted,
                             ", ".join(ISOLATIONS))
        wanted = "auto"
    if wanted == "port":
        return False, f"{ISOLATION_VARIABLE}=port"
    why_not = netns.probe()
    if wanted == "netns":
        return True, why_not  # forced: an instance that cannot get one fails with the reason
    return not why_not, why_not


def event_functions(functions: Iterable[Function]) -> list[Function]:
    """The functions that are not web functions (scf/local.py runs those)."""
    return [fn for fn in functions if fn.type != "HTTP"]


class WebFunction:
    """The instances of one web function and the callers waiting for room on one."""

    def __init__(self, config: Function, environment: dict[str, str], isolated: bool,
                 spool_dir: Path, wake: Callable[[], None] = lambda: None,
                 started: Callable[[str, float], None] | None = None) -> None:
        self.config = config
        self.key = config.key
        self.environment = environment
        self.isolated = isolated
        self.spool_dir = spool_dir
        self._wake = wake
        self._started = started  # (function, seconds) for each instance that came up
        #: without namespaces two instances would both want the one port
        self.max_instances = config.concurrency if isolated else 1
        self.instances: list[WebInstance] = []  # live: starting or listening, oldest first
        self._unreaped: set[WebInstance] = set()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self.cold_starts = 0
        self.invocations = 0
        self.closed = False
        self.retiring = False

    # -- finding room ----------------------------------------------------------------------

    def room(self) -> WebInstance | None:
        """A listening instance with a free slot (the oldest), if nobody waits before us."""
        if self._waiters:
            return None
        cap = self.config.instance_concurrency
        for instance in self.instances:
            if instance.listening and instance.active < cap:
                return instance
        return None

    async def acquire(self) -> tuple[WebInstance, bool]:
        """A slot on an instance (started for it if need be: then the bool is True, a cold
        start), waiting in line when every instance is full."""
        cap = self.config.instance_concurrency
        deadline = asyncio.get_running_loop().time() + self.config.queue_timeout
        while True:
            if self.closed or self.retiring:
                raise Overloaded("shutting down", log_detail=f"{self.key}: closed")
            instance = next((i for i in self.instances if i.active < cap), None)
            cold = instance is None and len(self.instances) < self.max_instances
            if cold:
                instance = self._new_instance()
            if instance is not None:
                instance.active += 1
                if not instance.listening:
                    try:
                        await asyncio.shield(instance.ready)
                    except BaseException:
                        self.release(instance)
                        raise
                return instance, cold
            await self._wait_in_line(deadline)

    async def _wait_in_line(self, deadline: float) -> None:
        cfg = self.config
        if len(self._waiters) >= cfg.queue_size:
            raise Overloaded("all instances busy", log_detail=(
                f"{self.key}: all {len(self.instances)} instances serve "
                f"{cfg.instance_concurrency} requests each and {len(self._waiters)} wait"))
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                await waiter
        except TimeoutError:
            raise Overloaded("waited too long for an instance", log_detail=(
                f"{self.key}: no instance had room within {cfg.queue_timeout:g}s")) from None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _wake_all(self) -> None:
        """Room came free (or an instance went): everyone in line looks again, in order."""
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _new_instance(self) -> WebInstance:
        self._wake()
        instance = WebInstance(self, self.isolated)
        self.instances.append(instance)
        self._unreaped.add(instance)
        instance.exited.add_done_callback(lambda _: self._unreaped.discard(instance))
        instance.start()
        return instance

    # -- what instances and requests report ------------------------------------------------

    def listening(self, instance: WebInstance) -> None:
        self.cold_starts += 1
        function_log.info("cold start function=%s instance pid=%d listening on port %d in "
                          "%.0f ms", self.key, instance.pid, instance.port, instance.init_ms)
        if self._started is not None:
            self._started(self.key, instance.init_ms / 1000.0)
        self._wake_all()

    def gone(self, instance: WebInstance) -> None:
        if instance in self.instances:
            self.instances.remove(instance)
        self._wake_all()

    def release(self, instance: WebInstance) -> None:
        """A request on ``instance`` is over (its response ended, or it failed)."""
        instance.active -= 1
        instance.last_used = asyncio.get_running_loop().time()
        if self.retiring and instance.active <= 0:
            instance.kill(None)
        elif self._waiters:
            self._wake_all()

    # -- lifecycle -------------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Retire instances idle for ``idle_timeout`` down to ``min_instances``; start
        instances up to ``min_instances``."""
        if self.closed or self.retiring:
            return
        cfg = self.config
        for instance in list(self.instances):
            if len(self.instances) <= cfg.min_instances:
                break
            if instance.listening and instance.active <= 0 \
                    and now - instance.last_used >= cfg.idle_timeout:
                function_log.debug("function=%s instance pid=%d retired after %.1fs idle",
                                   self.key, instance.pid, now - instance.last_used)
                instance.kill(None)
        # only here, not when an instance dies: a bootstrap that fails at start is retried
        # once per sweep, never in a tight loop
        for _ in range(min(cfg.min_instances, self.max_instances) - len(self.instances)):
            self._new_instance()

    def retire(self) -> None:
        """A reload replaced this function: requests already on it finish, then it goes."""
        self.retiring = True
        for instance in list(self.instances):
            if instance.active <= 0:
                instance.kill(None)
        self._wake_all()  # those in line get Overloaded ("shutting down")

    @property
    def finished(self) -> bool:
        return not self.instances and not self._unreaped

    def stats(self) -> dict[str, int]:
        starting = sum(1 for i in self.instances if not i.listening)
        busy = sum(1 for i in self.instances if i.listening and i.active > 0)
        return {"instances": len(self.instances), "idle": len(self.instances) - starting - busy,
                "busy": busy, "starting": starting, "queued": len(self._waiters),
                "cold_starts": self.cold_starts, "invocations": self.invocations}

    async def close(self) -> None:
        self.closed = True
        self._wake_all()
        for instance in list(self.instances):
            instance.kill(None)
        pending = [i.exited for i in self._unreaped]
        if pending:
            await asyncio.wait(pending, timeout=10.0)


class WebTarget:
    """An SCF target of one rule bound to a web function: what the router starts requests on."""

    __slots__ = ("fn", "listener", "rule", "_bound")

    def __init__(self, fn: WebFunction, listener: Listener, rule: Rule) -> None:
        self.fn = fn
        self.listener = listener
        self.rule = rule
        #: the CVM exchange's target on each instance (weak: instances come and go)
        self._bound: WeakKeyDictionary[WebInstance, CvmTarget] = WeakKeyDictionary()

    def start(self, request: Request, route: Route, done: Done) -> Cancel:
        """Send ``request`` to an instance; ``done`` gets the Outcome or the ProxyError."""
        fn = self.fn
        instance = fn.room()
        if instance is not None:  # the hot path: a listening instance with room, no task
            instance.active += 1
            return _Call(self, instance, request, route, done, False).start()
        return on_task(self._cold(request, route), done)

    async def _cold(self, request: Request, route: Route) -> Outcome:
        instance, cold = await self.fn.acquire()
        outcome: Outcome = await awaited(
            lambda done: _Call(self, instance, request, route, done, cold).start())
        return outcome

    def on(self, instance: WebInstance) -> CvmTarget:
        """The CVM exchange's target bound on ``instance`` for this rule (made once)."""
        bound = self._bound.get(instance)
        if bound is None:
            pool = instance.pool
            assert pool is not None
            rule = self.rule
            label = f"SCF:{self.fn.key} pid={instance.pid}"
            bound = CvmTarget(pool, PassiveEjection(label),
                              ActiveCheck(label, pool.host, pool.port, rule.health_check,
                                          pool.address),
                              self.listener, self.fn.spool_dir, rule.custom_config)
            bound.read_timeout = self.fn.config.timeout
            self._bound[instance] = bound
        return bound


class _Call:
    """One request on one instance: holds its slot until the response has ended."""

    __slots__ = ("web", "instance", "request", "route", "done", "cold", "request_id",
                 "began", "held", "answered", "stop")

    def __init__(self, web: WebTarget, instance: WebInstance, request: Request, route: Route,
                 done: Done, cold: bool) -> None:
        self.web = web
        self.instance = instance
        self.request = request
        self.route = route
        self.done = done
        self.cold = cold
        self.request_id = new_request_id()
        self.began = time.perf_counter()
        self.held = True
        self.answered = False
        self.stop: Cancel | None = None

    def start(self) -> Cancel:
        self.web.fn.invocations += 1
        self.stop = self.web.on(self.instance).start(self.request, self.route, self._finished)
        return self.cancel

    def _finished(self, result: Any) -> None:
        if isinstance(result, BaseException):
            self.release()
            self.done(result)
            return
        self.answered = True
        outcome: Outcome = result
        response = outcome.response
        if response.tunnel is not None:
            tunnel = response.tunnel
            tunnel.idle_timeout = self.web.listener.proxy_read_timeout
            if tunnel.closed:
                self.release()
            else:
                tunnel.on_close = self.release
        elif response.stream is not None:
            response.stream = _HeldBody(response.stream, self.release)
        else:
            self.release()
        outcome.function_request_id = self.request_id
        outcome.cold_start = self.cold
        outcome.function_ms = (time.perf_counter() - self.began) * 1000.0
        self.done(outcome)

    def cancel(self) -> None:
        """The client went away before the answer: the exchange stops, the slot is free."""
        if self.answered:
            return
        if self.stop is not None:
            self.stop()
        self.release()

    def release(self) -> None:
        if self.held:
            self.held = False
            self.web.fn.release(self.instance)


class _HeldBody:
    """A streamed response body that frees its instance's slot when it ends, however."""

    __slots__ = ("_body", "_release")

    def __init__(self, body: AsyncIterator[bytes], release: Callable[[], None]) -> None:
        self._body = body
        self._release: Callable[[], None] | None = release

    def __aiter__(self) -> _HeldBody:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._body.__anext__()
        except BaseException:  # the end, the upstream breaking off, or the client leaving
            self._end()
            raise

    def _end(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def __del__(self) -> None:  # never read to the end
        self._end()


class WebFunctions:
    """Every web function of the config, by namespace and name; one idle sweep for all."""

    def __init__(self, functions: Iterable[Function], region: str = "ap-guangzhou",
                 appid: str = "1250000000", uin: str = "100000000001",
                 spool_dir: Path | None = None,
                 environ: Mapping[str, str] = os.environ) -> None:
        self._identity = (region, appid, uin)
        self._environ = environ
        #: metrics hook: (function, seconds) for each instance start, bootstrap to listening
        self.on_cold_start: Callable[[str, float], None] | None = None
        self.spool_dir = spool_dir or Path(tempfile.gettempdir())
        web = [fn for fn in functions if fn.type == "HTTP"]
        #: decided once per process, and only when there is a web function at all
        self.isolated, self.why_not = False, ""
        self._decided = False
        if web:
            self._decide()
        self._functions = {(fn.namespace, fn.name): self._new(fn) for fn in web}
        self._retired: set[WebFunction] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    def _decide(self) -> None:
        self.isolated, self.why_not = isolation(self._environ)
        self._decided = True

    def _new(self, config: Function) -> WebFunction:
        environment = runtime.instance_environment(config, *self._identity, self._environ)
        return WebFunction(config, environment, self.isolated, self.spool_dir,
                           self._start_sweeping, self._cold_start)

    def _cold_start(self, function: str, seconds: float) -> None:
        if self.on_cold_start is not None:
            self.on_cold_start(function, seconds)

    def get(self, namespace: str, name: str) -> WebFunction | None:
        return self._functions.get((namespace, name))

    def bind(self, fn: WebFunction, listener: Listener, rule: Rule) -> WebTarget:
        return WebTarget(fn, listener, rule)

    async def start(self) -> None:
        """Say how instances are isolated, and start ``min_instances``."""
        if not self._functions:
            return
        if self.isolated:
            function_log.info("web functions: each instance in a network namespace of its own"
                              " (listening on port 9000)%s",
                              f"; {self.why_not}" if self.why_not else "")
        else:
            function_log.warning("web functions: no network namespaces here (%s): one instance "
                                 "per web function, listening on the port in $PORT",
                                 self.why_not)
            for fn in self._functions.values():
                if fn.config.concurrency > 1:
                    function_log.warning("function=%s: concurrency %d needs network "
                                         "namespaces; it runs 1 instance", fn.key,
                                         fn.config.concurrency)
        self._start_sweeping()
        self._sweep()

    async def update(self, functions: Iterable[Function]) -> None:
        """A reload: unchanged functions keep their instances; changed or removed ones
        retire (requests on them finish), new or changed ones start afresh."""
        web = [fn for fn in functions if fn.type == "HTTP"]
        if web and not self._decided:
            self._decide()
        current, updated = self._functions, {}
        for config in web:
            key = (config.namespace, config.name)
            old = current.get(key)
            updated[key] = old if old is not None and old.config == config \
                else self._new(config)
        for key, old in current.items():
            if updated.get(key) is not old:
                old.retire()
                self._retired.add(old)
        self._functions = updated

    def _interval(self) -> float:
        shortest = min((f.config.idle_timeout for f in self._functions.values()),
                       default=300.0)
        return min(5.0, max(0.05, shortest / 4))

    def _start_sweeping(self) -> None:
        if self._sweeper is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(self._interval(), self._sweep)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for fn in self._functions.values():
            fn.sweep(now)
        self._retired = {fn for fn in self._retired if not fn.finished}
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._sweeper = loop.call_later(self._interval(), self._sweep) \
            if not self._closed else None

    def stats(self) -> dict[str, dict[str, int]]:
        return {fn.key: fn.stats() for fn in self._functions.values()}

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        await asyncio.gather(*(fn.close() for fn in [*self._functions.values(),
                                                     *self._retired]))
