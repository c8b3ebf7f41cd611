"""Local function instances: a pool of worker processes per function, in the proxy's event loop.

Owns the instance lifecycle of SPEC §7: instances start on demand up to ``concurrency`` and run
one invocation at a time; free ones are reused warm, last in first out, so the least recently
used ones stay idle and retire after ``idle_timeout`` (one periodic sweep for all functions, no
timer per instance); ``min_instances`` are kept up. Callers beyond ``concurrency`` wait in a
bounded queue (``queue_size``, ``queue_timeout``) and get Overloaded (503) past it. Each reply
status maps to one outcome (the table ``_OUTCOMES``); scf/instance.py turns a timeout and a death
into FunctionTimeout (504) and FunctionCrashed (502), and the pool replaces the instance.

With ``invocations_ahead`` (ours, off by default), a caller that finds every instance busy and
no slot free is sent at once to a busy instance with room (``_offer``/``_take_open``: up to
that many per instance) instead of waiting in line; nobody waits in line while an instance has
room, so the order stays first come, first served. The instance runs them in turn and starts
each one's timeout as it starts; ``queue_timeout`` holds for each until it starts (its caller
gets the 503, the invocation runs on: ``_Call.expire``); one that goes first hands them back
(``rerun``), each run once. docs/CONFIG.md says what it trades.

Strategy: slots, not processes, are counted against ``concurrency``: a slot freed by a death is
handed straight to the first waiting caller, who starts the replacement, so nobody overtakes the
queue. The hot path is callbacks only: ``start`` with a warm instance free hands the event to
it and its reply to the caller's callback, with no task, future or timer (invocation timeouts
are deadlines in one sweep per function); queueing and cold starts run on a task (``invoke``).

Decisions (ours):
- A caller cancelled while its invocation runs (client gone) does not stop it: the instance
  finishes, the result is dropped, the instance returns to the pool (as SCF runs an invocation
  whose client went away); the timeout still applies. A caller cancelled while queued frees its
  place; one cancelled during its instance's cold start leaves that instance to join the pool.
- ``start()`` checks each handler: a function with ``min_instances`` starts them, one without
  starts one instance; either way the checked instances join the idle pool as warm ones (the
  module-level code runs once, not once for the check and again for the first request), so the
  first request is a warm start (no ``cold start`` line, ``cold_start`` false), and an instance
  nobody uses retires by the ``idle_timeout`` rule. A handler that does not import is a
  WARNING, never a failed startup; its instance stays too, and every invocation of it is a
  FunctionError (SCF 437/443) with an ERROR line (the worker retries the import each time).
- A result that is not JSON is raised here as BadFunctionResponse (the log says why), rather than
  handing the event decoder bytes it would reject without saying why.
- A retired instance is killed: an idle worker holds no work to finish, and a kill cannot hang.
- ``min_instances`` are topped up by the sweep only, so a function that dies while starting is
  retried once per sweep, never in a tight loop.

Versions (issue 16): each version of a function (``$LATEST`` and every
``[[function.version]]``) is a pool of its own, keyed (namespace, name, version), running in
its own code directory; ``select`` gives the pools a qualifier may run on (scf/aliases.py
decides which one per call). A reload keeps a pool whose version runs alike (only aliases or
other versions changed).

Must not know: HTTP, the event's fields, routing, processes (scf/instance.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

import orjson

from ..config import LATEST, Function
from ..errors import (BadFunctionResponse, FunctionCrashed, FunctionError,
                      FunctionResponseTooLarge, Overloaded, PayloadTooLarge, ProxyError)
from ..deadlines import Deadlines
from ..handover import Cancel, Done, awaited, on_task
from ..messages import Invocation
from . import frames, runtime
from .aliases import Lookup, Routing, resolve
from .instance import Instance, Reply, logged

function_log = logging.getLogger("proxy.function")

#: at most this many import checks at once in start()
CHECKS_AT_ONCE = max(2, os.cpu_count() or 2)
#: how often invocation deadlines are checked: a timeout fires up to this much late
TIMEOUT_SWEEP = 0.1
#: the ``LocalFunction.stats()`` keys that are instance counts (the rest are running totals)
INSTANCE_STATES = ("busy", "idle", "starting", "queued")


# -- outcomes: reply status -> (result or error, keep the instance) ----------------------------

Outcome = tuple[bytes | ProxyError, bool]


def _ok(fn: LocalFunction, inst: Instance, body: bytes) -> Outcome:
    return body, True


def _error(fn: LocalFunction, inst: Instance, body: bytes) -> Outcome:
    # The handler raised (SCF 430) or cannot be imported (437/443): the body is SCF's error
    # object, logged whole, stack trace included; the client sees it only with ``debug``.
    error = orjson.loads(body)
    function_log.error("function=%s handler=%s request_id=%s %s", fn.key, fn.config.handler,
                       inst.request_id, body.decode("utf-8", "replace"))
    return logged(FunctionError(str(error.get("errorMessage", "")), error=error,
                                debug=fn.config.debug)), True


def _memory(fn: LocalFunction, inst: Instance, body: bytes) -> Outcome:
    function_log.warning("function=%s request_id=%s memory limit of %d MB exceeded (SCF 434); "
                         "instance pid=%d replaced", fn.key, inst.request_id, fn.config.memory,
                         inst.pid)
    return logged(FunctionCrashed("memory limit exceeded", log_detail=(
        f"{fn.key}: memory limit of {fn.config.memory} MB exceeded (SCF 434)"))), False


def _too_large(fn: LocalFunction, inst: Instance, body: bytes) -> Outcome:
    return FunctionResponseTooLarge("function response too large", log_detail=(
        f"{fn.key}: {body.decode('utf-8', 'replace')} (SCF 407)")), True


def _not_json(fn: LocalFunction, inst: Instance, body: bytes) -> Outcome:
    return BadFunctionResponse("Analyse scf response failed.", log_detail=(
        f"{fn.key}: {body.decode('utf-8', 'replace')}")), True


_OUTCOMES: dict[str, Callable[[LocalFunction, Instance, bytes], Outcome]] = {
    frames.OK: _ok, frames.ERROR: _error, frames.IMPORT_ERROR: _error,
    frames.MEMORY: _memory, frames.TOO_LARGE: _too_large, frames.NOT_JSON: _not_json,
}


# -- the pool --------------------------------------------------------------------------------


class LocalFunction:
    """The instances of one function and the callers waiting for one."""

    def __init__(self, config: Function, region: str, appid: str, uin: str,
                 wake: Callable[[], None] = lambda: None,
                 waited: Callable[[str, float], None] | None = None,
                 version: str = LATEST, credentials: Mapping[str, str] | None = None) -> None:
        self.config = config
        #: the version these instances run ($LATEST: the function's own code) and its code
        self.version = version
        self.code = config.code_of(version)
        self.key = config.key if version == LATEST else f"{config.key}:{version}"
        self.environment = runtime.instance_environment(
            config, region, appid, uin, os.environ, version=version,
            credentials=credentials if config.role_credentials else None)
        #: the invoke header's fixed part, encoded once
        self._context = orjson.dumps(runtime.static_context(config, region, appid, uin,
                                                            version))
        self._wake = wake  # starts the idle sweep once there is something to sweep
        self._waited = waited  # (function, seconds) for each caller that had to queue
        self._instances: set[Instance] = set()  # live: starting, idle or busy
        self._unreaped: set[Instance] = set()  # every process not waited for yet
        self._idle: list[Instance] = []  # LIFO: the end is the most recently used
        #: callers waiting for an instance, in order; each is handed one (or a free slot)
        self._waiters: deque[_Waiter] = deque()
        #: live instances + slots handed to waiters that are starting one; <= concurrency
        self._slots = 0
        self._tasks: set[asyncio.Task[None]] = set()
        #: busy instances that may be sent another invocation ahead (``invocations_ahead``)
        self._open: set[Instance] = set()
        self.cold_starts = 0
        self.invocations = 0
        #: the deadlines of the invocations running and of the callers waiting in line
        self.deadlines = Deadlines(TIMEOUT_SWEEP)
        self.closed = False
        #: replaced by a reload: callers already holding it are served, then instances go
        self.retiring = False
        #: instances started before the code changed (``recycle``): they go when released
        self._stale: set[Instance] = set()

    def start(self, event: bytes, request_id: str, done: Done, *, rerun: bool = False
              ) -> Cancel:
        """Run the function on ``event`` (JSON bytes); ``done`` gets the Invocation, or the
        ProxyError, once (Overloaded and PayloadTooLarge are raised at once). A warm instance
        free, an invocation ahead on a busy one, or a place in line: callbacks only; a cold
        start runs on a task. Returns what drops the caller (the invocation itself still
        runs to its end, see the module docstring). ``rerun``: one admitted before, whose
        instance went before starting it; if it must wait, it goes to the front of the line
        (behind earlier reruns only) and is never refused for a full queue."""
        if self.closed:
            raise Overloaded("shutting down", log_detail=f"{self.key}: closed")
        if len(event) > frames.MAX_EVENT_BYTES:
            raise PayloadTooLarge(log_detail=f"{self.key}: event of {len(event)} bytes")
        idle = self._idle
        while idle:
            instance = idle.pop()
            if not instance.dead:  # (a dead one is on its way out: gone() forgets it)
                return self._call(instance, event, request_id, done)
        if self._slots < self.config.concurrency:
            self._slots += 1
            return on_task(self._cold_invoke(event, request_id), done)
        busy = self._take_open()
        if busy is not None:  # every instance busy: it runs this one next
            return self._call(busy, event, request_id, done)
        # wait in line, handed the next free instance (or room on a busy one) directly
        queued = _Queued(self, event, request_id, done)
        queued.waiter = self._wait_in_line(queued.granted, first=rerun)
        return queued.cancel

    async def invoke(self, event: bytes, request_id: str) -> Invocation:
        """Run the function on ``event`` (JSON bytes) and wait for its Invocation."""
        invocation: Invocation = await awaited(
            lambda done: self.start(event, request_id, done))
        return invocation

    def _call(self, instance: Instance, event: bytes, request_id: str, done: Done,
              cold: bool = False) -> Cancel:
        call = _Call(self, done, request_id, cold)
        self._run(instance, event, call)
        return call.drop  # cancelled: the invocation runs on, its result is dropped

    def _run(self, instance: Instance, event: bytes, call: _Call) -> None:
        header = b'{"request_id":%b,"context":%b}' % (orjson.dumps(call.request_id),
                                                      self._context)
        self.invocations += 1
        call.instance = instance
        instance.run(header, event, call.request_id, call, call.cold)
        if self.config.invocations_ahead:
            if instance.reply is not call:  # sent ahead: it waits as a caller in line would
                self.deadlines.arm(call, self.config.queue_timeout)
            self._offer(instance)

    def stats(self) -> dict[str, int]:
        """Counters for metrics: instances (total/busy/idle/starting), queue, starts, calls."""
        starting = sum(1 for i in self._instances if not i.ready)
        ahead = sum(len(i.ahead) for i in self._instances) if self._instances else 0
        return {"instances": len(self._instances), "idle": len(self._idle),
                "busy": len(self._instances) - len(self._idle) - starting,
                "starting": starting, "queued": len(self._waiters) + ahead,
                "cold_starts": self.cold_starts, "invocations": self.invocations}

    # -- getting an instance ---------------------------------------------------------------

    def _wait_in_line(self, granted: Callable[[Any], None], first: bool = False) -> _Waiter:
        """Queue a caller; ``granted`` gets an idle instance, None (a free slot: start one),
        or the Overloaded error (queue full now, or no instance within queue_timeout).
        ``first``: a rerun, placed before every caller that is not one and never refused."""
        cfg = self.config
        waiters = self._waiters
        if len(waiters) >= cfg.queue_size and not first:
            raise Overloaded("all instances busy", log_detail=(
                f"{self.key}: all {cfg.concurrency} instances busy and "
                f"{len(waiters)} callers waiting"))
        waiter = _Waiter(self, granted, first)
        if first:
            place = 0
            while place < len(waiters) and waiters[place].first:
                place += 1
            waiters.insert(place, waiter)
        else:
            waiters.append(waiter)
        self.deadlines.arm(waiter, cfg.queue_timeout)
        return waiter

    # -- invocations ahead -------------------------------------------------------------------

    def _has_room(self, instance: Instance) -> bool:
        """``instance`` is busy and may be sent one more invocation ahead."""
        return (instance.reply is not None and not instance.dead
                and len(instance.ahead) < self.config.invocations_ahead
                and not (self.closed or self.retiring or instance in self._stale))

    def _offer(self, instance: Instance) -> None:
        """A busy instance with room: the first caller in line is sent to it, else it is kept
        open for the next caller (nobody waits in line while an instance has room)."""
        if not self._has_room(instance):
            self._open.discard(instance)
        elif not self._grant(instance):
            self._open.add(instance)

    def _take_open(self) -> Instance | None:
        while self._open:
            instance = self._open.pop()
            if self._has_room(instance):
                return instance
        return None

    def rerun(self, event: bytes, request_id: str, reply: Reply) -> None:
        """An invocation sent ahead to an instance that died before it started it (the worker
        runs them in turn): it starts again on another instance, before the callers that
        came after it (``start(rerun=True)``); the instance reruns them before it frees its
        slot, so the slot goes to the first of them."""
        call = reply
        assert isinstance(call, _Call)
        self.deadlines.disarm(call)  # it starts over: as a new call, it waits anew
        if call.done is None:
            function_log.info("function=%s request_id=%s not run: its instance went and its "
                              "caller is gone", self.key, request_id)
            return

        def done(result: Any) -> None:
            caller, call.done = call.done, None
            if caller is not None:  # else the caller went away meanwhile (``call.drop``)
                caller(result)

        try:
            self.start(event, request_id, done, rerun=True)
        except ProxyError as exc:  # closed
            done(exc)

    def _grant(self, value: Instance | None) -> bool:
        """Hand ``value`` to the first caller in line; False when nobody waits."""
        if not self._waiters:
            return False
        waiter = self._waiters.popleft()
        self.deadlines.disarm(waiter)
        if self._waited is not None:
            self._waited(self.key, time.perf_counter() - waiter.began)
        waiter.granted(value)
        return True

    def _pass_on(self, value: Any) -> None:
        """What a caller that went away was handed goes to the next one (or back)."""
        if value is None:
            self._free_slot()
        elif isinstance(value, Instance):
            if value.reply is not None:  # room on a busy one (invocations ahead)
                self._offer(value)
            else:
                self.release(value)

    async def _cold_invoke(self, event: bytes, request_id: str) -> Invocation:
        """A caller handed a free slot: start an instance in it and invoke it there."""
        instance = await self._cold_start(request_id)
        invocation: Invocation = await awaited(
            lambda done: self._call(instance, event, request_id, done, True))
        return invocation

    async def _cold_start(self, request_id: str) -> Instance:
        instance = await self._new_instance()
        await instance.started  # cancelled: the instance joins the pool when it is up
        self.cold_starts += 1
        function_log.info("cold start function=%s request_id=%s pid=%d in %.0f ms",
                          self.key, request_id, instance.pid,
                          (time.perf_counter() - instance.spawned_at) * 1000.0)
        return instance

    async def _new_instance(self) -> Instance:
        """Start an instance in a slot already counted in ``_slots``."""
        self._wake()
        instance = Instance(self)
        try:
            await instance.spawn()
        except BaseException:
            self._free_slot()
            raise
        return instance

    # -- giving instances back -------------------------------------------------------------

    def spawned(self, instance: Instance) -> None:
        self._instances.add(instance)
        self._unreaped.add(instance)

    def release(self, instance: Instance) -> None:
        """An instance is free: to the first caller waiting, else on top of the idle stack."""
        self._open.discard(instance)
        if instance.dead:
            return
        if self.closed or (self._stale and instance in self._stale):
            instance.kill(None)
            return
        if self._grant(instance):
            return
        if self.retiring:
            instance.kill(None)
            return
        self._idle.append(instance)

    @property
    def finished(self) -> bool:
        """No process of it is left (retired functions are forgotten then)."""
        return not self._instances and not self._unreaped and not self._waiters

    def retire(self) -> None:
        """A reload replaced this function's config: requests already routed here finish on
        it, idle instances go now, busy ones when they are released."""
        self.retiring = True
        while self._idle:
            self._idle.pop().kill(None)

    def replied(self, instance: Instance, reply: Reply | None, status: str,
                body: bytes) -> None:
        """An instance answered: the caller gets the outcome; the instance goes back or goes
        (back first: the caller's callback may well start the next invocation on it)."""
        result, keep = _OUTCOMES[status](self, instance, body)
        if keep and instance.ahead:
            instance.next()  # the worker went on to it already
            if isinstance(instance.reply, _Call):
                self.deadlines.disarm(instance.reply)  # started: its timeout counts now
            self._offer(instance)
        elif keep:
            self.release(instance)
        else:
            instance.kill(None)
        if reply is not None:
            reply(result)

    def _free_slot(self) -> None:
        if not self._grant(None):  # the slot passes to the first in line: it starts one
            self._slots -= 1

    def gone(self, instance: Instance) -> None:
        """An instance was killed or died: its slot is free (its process may still be dying)."""
        self._stale.discard(instance)
        self._open.discard(instance)
        if instance in self._instances:
            self._instances.discard(instance)
            if instance in self._idle:
                self._idle.remove(instance)
            self._free_slot()

    def reaped(self, instance: Instance) -> None:
        self._unreaped.discard(instance)

    # -- lifecycle -------------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Retire instances idle for ``idle_timeout`` (least recently used first) down to
        ``min_instances``, and start instances up to ``min_instances``."""
        if self.closed or self.retiring:
            return
        cfg = self.config
        idle = self._idle
        while (idle and len(self._instances) > cfg.min_instances
               and now - idle[0].last_used >= cfg.idle_timeout):
            instance = idle.pop(0)
            function_log.debug("function=%s instance pid=%d retired after %.1fs idle",
                               self.key, instance.pid, now - instance.last_used)
            instance.kill(None)
        # Only here, not when an instance dies: a function that crashes at start is retried
        # once per sweep, never in a tight loop.
        for _ in range(min(cfg.min_instances, cfg.concurrency) - self._slots):
            self._slots += 1
            task = asyncio.get_running_loop().create_task(self._warm())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _warm(self) -> None:
        try:
            instance = await self._new_instance()
            await instance.started
        except (ProxyError, OSError) as exc:
            function_log.warning("function=%s could not start a warm instance: %s", self.key,
                                 getattr(exc, "log_detail", "") or exc)
            return
        self.release(instance)

    async def check(self) -> None:
        """Start ``min_instances`` (at least one instance), warn if the handler does not
        import, and keep them warm in the idle pool. Never raises: a broken function must not
        stop the proxy from starting."""
        if self.config.role_credentials and "TENCENTCLOUD_SECRETID" not in self.environment:
            function_log.warning("function=%s has role_credentials but the proxy's environment "
                                 "holds no credentials (%s): its instances get none", self.key,
                                 ", ".join(f"{i}/{k}" for i, k, _ in runtime.ROLE_SOURCES))
        count = max(min(self.config.min_instances, self.config.concurrency), 1)
        self._slots += count
        self._wake()
        results = await asyncio.gather(*(self._started() for _ in range(count)),
                                       return_exceptions=True)
        instances = [r for r in results if isinstance(r, Instance)]
        failures = [r for r in results if not isinstance(r, Instance)]
        if failures:
            detail = failures[0]
            function_log.warning("function=%s: an instance could not start: %s", self.key,
                                 getattr(detail, "log_detail", "") or detail)
        errors = sorted({i.import_error for i in instances if i.import_error})
        if errors:
            function_log.warning("function=%s handler %r cannot be imported: %s; its "
                                 "invocations fail until it is fixed", self.key,
                                 self.config.handler, errors[0])
        for instance in instances:
            self.release(instance)

    def recycle(self) -> None:
        """Its code changed (``--reload``): the invocations running finish on the old code and
        their instances go when released; idle ones go now; one instance starts on the new
        code at once (its import is checked: a WARNING if it fails), so the next call is warm."""
        if self.closed or self.retiring:
            return
        self._stale.update(self._instances)
        for instance in list(self._idle):
            instance.kill(None)
        if self._slots < self.config.concurrency:
            self._slots += 1
            task = asyncio.get_running_loop().create_task(self._rewarm())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _rewarm(self) -> None:
        try:
            instance = await self._started()
        except (ProxyError, OSError) as exc:
            function_log.warning("function=%s could not start an instance on the new code: %s",
                                 self.key, getattr(exc, "log_detail", "") or exc)
            return
        if instance.import_error:
            function_log.warning("function=%s handler %r cannot be imported after the change: "
                                 "%s", self.key, self.config.handler, instance.import_error)
        self.release(instance)

    async def _started(self) -> Instance:
        instance = await self._new_instance()
        await instance.started
        return instance

    async def close(self) -> None:
        """Fail the waiting callers, kill every instance and wait until all are reaped."""
        self.closed = True
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            self.deadlines.disarm(waiter)
            waiter.granted(Overloaded("shutting down", log_detail=f"{self.key}: closed"))
        for task in list(self._tasks):
            task.cancel()
        for instance in list(self._instances):
            instance.kill(logged(FunctionCrashed("shutting down",
                                                  log_detail=f"{self.key}: closed")))
        pending: list[asyncio.Future[Any]] = [i.exited for i in self._unreaped]
        pending.extend(self._tasks)
        if pending:
            await asyncio.wait(pending, timeout=10.0)


class _Call:
    """One invocation's caller: turns the instance's reply into an Invocation for ``done``,
    or drops it when the caller went away (the invocation is not stopped: SCF runs it)."""

    __slots__ = ("fn", "done", "request_id", "cold", "began", "instance", "deadline")

    def __init__(self, fn: LocalFunction, done: Done | None, request_id: str,
                 cold: bool) -> None:
        self.fn = fn
        self.done = done
        self.request_id = request_id
        self.cold = cold
        self.began = time.perf_counter()
        #: the instance running it (its last reported memory goes into the Invocation)
        self.instance: Instance | None = None
        #: sent ahead: by when it must have started (the function's sweep; 0.0: not armed)
        self.deadline = 0.0

    def drop(self) -> None:
        self.done = None

    def expire(self) -> None:
        """Sent ahead and not started within ``queue_timeout``: its caller gets the 503 of a
        caller that waited in line that long; the invocation still runs in its turn (it was
        sent), and its result is dropped."""
        done, self.done = self.done, None
        if done is not None:
            fn = self.fn
            done(Overloaded("waited too long for an instance", log_detail=(
                f"{fn.key}: not started within {fn.config.queue_timeout:g}s on the busy "
                "instance it was sent ahead to")))

    def __call__(self, result: Any) -> None:
        done = self.done
        if done is None:
            function_log.info("function=%s request_id=%s finished after its caller went away",
                              self.fn.key, self.request_id)
            return
        self.done = None
        if isinstance(result, BaseException):
            done(result)
        else:
            instance = self.instance
            done(Invocation(result, self.request_id, self.cold,
                            (time.perf_counter() - self.began) * 1000.0,
                            instance.mem_kb * 1024 if instance is not None else 0,
                            self.fn.version,
                            instance.last_output if instance is not None else None))


class _Waiter:
    """A caller in line for an instance (see ``LocalFunction._wait_in_line``)."""

    __slots__ = ("fn", "granted", "began", "deadline", "first")

    def __init__(self, fn: LocalFunction, granted: Callable[[Any], None],
                 first: bool = False) -> None:
        self.fn = fn
        self.granted = granted
        self.began = time.perf_counter()
        self.deadline = 0.0
        #: a rerun: ahead of every caller in line that is not one
        self.first = first

    def expire(self) -> None:
        """Waited queue_timeout (called by the function's sweep)."""
        fn = self.fn
        if self in fn._waiters:
            fn._waiters.remove(self)
            self.granted(Overloaded("waited too long for an instance", log_detail=(
                f"{fn.key}: no instance free within {fn.config.queue_timeout:g}s")))

    def withdraw(self) -> None:
        """The caller went away before its turn."""
        fn = self.fn
        fn.deadlines.disarm(self)
        if self in fn._waiters:
            fn._waiters.remove(self)


class _Queued:
    """A caller of ``start`` that had to wait in line: runs the invocation on what it is
    handed (an instance directly, or a slot to cold-start one on a task)."""

    __slots__ = ("fn", "event", "request_id", "done", "waiter", "stop")

    def __init__(self, fn: LocalFunction, event: bytes, request_id: str, done: Done) -> None:
        self.fn = fn
        self.event = event
        self.request_id = request_id
        self.done: Done | None = done
        self.waiter: _Waiter | None = None
        #: once granted: what drops the invocation (or cancels the cold start's task)
        self.stop: Cancel | None = None

    def granted(self, value: Any) -> None:
        done = self.done
        if done is None:  # went away meanwhile (only reachable through a race in close())
            self.fn._pass_on(value)
            return
        if isinstance(value, BaseException):
            self.done = None
            done(value)
        elif value is None:
            self.stop = on_task(self.fn._cold_invoke(self.event, self.request_id), done)
        else:
            self.stop = self.fn._call(value, self.event, self.request_id, done)

    def cancel(self) -> None:
        if self.stop is not None:
            self.stop()
            return
        if self.done is not None:
            self.done = None
            waiter = self.waiter
            if waiter is not None:
                waiter.withdraw()


class Selected:
    """The pools a call to one ``namespace/name:qualifier`` may run on (scf/aliases.py)."""

    __slots__ = ("routing", "pools")

    def __init__(self, routing: Routing, pools: dict[str, LocalFunction]) -> None:
        self.routing = routing
        self.pools = pools

    @property
    def fixed(self) -> LocalFunction | None:
        """The one pool every call runs on, or None when the alias routes calls."""
        version = self.routing.fixed
        return self.pools[version] if version is not None else None

    def pick(self, lookup: Lookup) -> LocalFunction:
        return self.pools[self.routing.pick(lookup)]


#: a pool's key: (namespace, name, version)
PoolKey = tuple[str, str, str]


class LocalFunctions:
    """Every local function of the config, by namespace and name, one pool per version; one
    idle sweep for all."""

    def __init__(self, functions: Iterable[Function], region: str = "ap-guangzhou",
                 appid: str = "1250000000", uin: str = "100000000001", *,
                 environ: Mapping[str, str] | None = None) -> None:
        """``environ``: the proxy's environment, the credential source of ``role_credentials``
        functions (runtime.role_credentials; default os.environ)."""
        self._identity = (region, appid, uin)
        #: what ``role_credentials`` functions get, or None: the source holds no credentials
        self.credentials = runtime.role_credentials(os.environ if environ is None else environ)
        #: metrics hook: (function, seconds) for each caller that waited for an instance
        self.on_queue_wait: Callable[[str, float], None] | None = None
        self._configs: dict[tuple[str, str], Function] = {}
        self._functions: dict[PoolKey, LocalFunction] = {}
        for config in functions:
            self._configs[(config.namespace, config.name)] = config
            for version in _versions(config):
                self._functions[(config.namespace, config.name, version)] = \
                    self._new(config, version)
        self._retired: set[LocalFunction] = set()  # replaced by a reload, closed at close()
        self.sweep_interval = self._interval()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    def _new(self, config: Function, version: str = LATEST) -> LocalFunction:
        return LocalFunction(config, *self._identity, wake=self._start_sweeping,
                             waited=self._queue_wait, version=version,
                             credentials=self.credentials)

    def _queue_wait(self, function: str, seconds: float) -> None:
        if self.on_queue_wait is not None:
            self.on_queue_wait(function, seconds)

    def _interval(self) -> float:
        shortest = min((f.config.idle_timeout for f in self._functions.values()), default=300.0)
        # often enough that an instance retires within a quarter of its idle_timeout late
        return min(5.0, max(0.05, shortest / 4))

    async def update(self, functions: Iterable[Function]) -> None:
        """Reconcile with a reloaded config: an unchanged function keeps its warm instances;
        a new or changed one gets a fresh pool (its handler checked as at start); a removed or
        replaced one retires, finishing the requests already routed to it."""
        current = self._functions
        updated: dict[PoolKey, LocalFunction] = {}
        configs: dict[tuple[str, str], Function] = {}
        started: list[LocalFunction] = []
        for config in functions:
            configs[(config.namespace, config.name)] = config
            for version in _versions(config):
                key = (config.namespace, config.name, version)
                old = current.get(key)
                if old is not None and _runs_alike(old.config, config, version):
                    old.config = config  # only other versions or aliases changed: kept
                    updated[key] = old
                else:
                    updated[key] = fn = self._new(config, version)
                    started.append(fn)
        for key, old in current.items():
            if updated.get(key) is not old:
                old.retire()
                self._retired.add(old)
        self._functions = updated
        self._configs = configs
        self.sweep_interval = self._interval()
        await self._check(started)

    def get(self, namespace: str, name: str, version: str = LATEST) -> LocalFunction | None:
        """The pool of one version of a function (``$LATEST``: its own code)."""
        return self._functions.get((namespace, name, version))

    def config(self, namespace: str, name: str) -> Function | None:
        return self._configs.get((namespace, name))

    def select(self, namespace: str, name: str, qualifier: str) -> Selected | None:
        """The pools of ``namespace/name:qualifier``; None for no such function or qualifier
        (scf/aliases.py resolves it)."""
        config = self._configs.get((namespace, name))
        routing = resolve(config, qualifier) if config is not None else None
        if routing is None:
            return None
        return Selected(routing, {v: self._functions[(namespace, name, v)]
                                  for v in routing.versions})

    def recycle(self, namespace: str, name: str) -> bool:
        """``--reload``: the function's code changed (``LocalFunction.recycle``); False when
        there is no such function. Only ``$LATEST`` runs the code the watch sees: a published
        version is a snapshot of its own directory, as on SCF."""
        fn = self._functions.get((namespace, name, LATEST))
        if fn is not None:
            fn.recycle()
        return fn is not None

    async def start(self) -> None:
        """Check every handler imports (a WARNING for each that does not) and warm up
        ``min_instances``; never fails."""
        self._start_sweeping()
        await self._check(list(self._functions.values()))

    async def _check(self, functions: list[LocalFunction]) -> None:
        limit = asyncio.Semaphore(CHECKS_AT_ONCE)

        async def check(fn: LocalFunction) -> None:
            async with limit:
                await fn.check()

        await asyncio.gather(*(check(fn) for fn in functions))

    def _start_sweeping(self) -> None:
        if self._sweeper is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(self.sweep_interval, self._sweep)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for fn in self._functions.values():
            fn.sweep(now)
        self._retired = {fn for fn in self._retired if not fn.finished}
        self._sweeper = loop.call_later(self.sweep_interval, self._sweep)

    async def close(self) -> None:
        """Kill every instance of every function and wait for them to be gone."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        await asyncio.gather(*(fn.close() for fn in [*self._functions.values(),
                                                     *self._retired]))

    def stats(self) -> dict[str, dict[str, int]]:
        """``stats()`` of each function, by ``namespace/name``."""
        return {fn.key: fn.stats() for fn in self._functions.values()}


def _versions(config: Function) -> list[str]:
    """The versions of a function that get a pool: $LATEST and each published one."""
    return [LATEST, *(v.version for v in config.versions)]


def _runs_alike(old: Function, new: Function, version: str) -> bool:
    """The same instances of ``version`` serve both: only aliases or other versions differ."""
    return old == new or (old.code_of(version) == new.code_of(version) and replace(
        old, aliases=(), versions=()) == replace(new, aliases=(), versions=()))
