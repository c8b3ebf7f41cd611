"""One local function instance, seen from the proxy: a worker process and its three channels.

Owns the process side of an instance: starting it (``subprocess.Popen`` with ``pass_fds``: one
end of a socketpair carries the frames of scf/frames.py; fd 1 and 2 are pipes), sending an
invocation and taking its reply, logging what the handler prints, noticing the exit, killing.
The pool (scf/local.py) owns the policy: which instance serves whom, and what a reply means.

Strategy: callbacks only, no task, future, timer or thread per instance or request. The channel
is an ``asyncio.Protocol``; the pipes and the exit (a pidfd, polled where the kernel has none)
are ``add_reader`` callbacks; an invocation's reply goes to the callback ``run`` was given, and
its timeout is a deadline in the owner's sweep (deadlines.py). Each instance is its own
session, so a kill (SIGKILL to the process group) also takes the handler's subprocesses. The
exit is the authority on death: the socket's EOF only starts a short grace for the exit to
show, because a handler's forked child may hold the socket open. Output is attributed to the
request the instance is running: the worker flushes before replying and the pipes are drained
before the reply is handed on, so what a request printed is logged under its id even though
pipe and socket are read independently. An instance that is sent invocations ahead
(``invocations_ahead``: the worker may be running the next one before the proxy reads the
reply to the last) marks the end of each invocation's output in both pipes instead
(frames.END_OF_OUTPUT, written before the reply): what follows a mark is held until that
reply is taken and logged under the invocation it belongs to. Those sent ahead start here
(``next``) when the owner keeps the instance after a reply; the worker runs them strictly in
turn, so when the instance goes before a reply, the ones behind it have not started and go
back to the owner (``rerun``).

Also SCF's platform lines of each invocation (clb-features.md §3.5): ``START`` (written lazily:
before the first output line, else with the END, so a quiet invocation costs one write for all
three), ``Init Report`` after it when the instance was started for this call (its phases from
the spawn, the READY frame's import time and memory), ``END`` and ``Report`` (duration, the
``memory`` setting, the peak memory the worker reports with each reply) once it ends, whether
by a reply, a timeout or a death. ``init_timeout`` bounds the start (FunctionInitTimeout).

Must not know: HTTP, the event's fields, the pool's queue, what a reply status means.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import select
import signal
import socket
import subprocess
import time
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from ..errors import (FunctionCrashed, FunctionInitTimeout, FunctionTimeout, Overloaded,
                      ProxyError)
from ..logs import PlatformLines
from . import frames, runtime

if TYPE_CHECKING:
    from ..config import Function
    from ..deadlines import Deadlines

#: where an invocation's outcome goes: the result JSON, or the ProxyError that ended it
Reply = Callable[[Any], None]

function_log = logging.getLogger("proxy.function")
#: SCF's START / END / Report lines, on the function log at one write each (logs.py)
PLATFORM = PlatformLines("proxy.function")

#: the directory holding the ``proxy`` package, for the worker's bootstrap
SOURCE_ROOT = str(Path(__file__).resolve().parents[2])
#: what the caller of a cold start over ``init_timeout`` is told
INIT_TIMEOUT_MESSAGE = "function initialization timed out"
#: after the channel closes, how long the process may take to exit before it is killed
EOF_GRACE = 1.0
EXIT_POLL = 0.05
#: handler output lines longer than this are logged in pieces
MAX_LINE = 16 * 1024
STREAMS = ("stdout", "stderr")
#: an instance that marks its output reads its pipes this often while it runs invocations
OUTPUT_POLL = 0.05
#: and asks for pipes this large (Linux's default limit for a process), so that a handler
#: printing fast is not held up between two reads
MARKED_PIPE_BYTES = 1 << 20
#: an invocation's last output kept for the SCF API's Log (4 KB of it is answered), about
TAIL_BYTES = 8 * 1024


class Owner(Protocol):
    """What an instance needs from its pool (scf/local.py's LocalFunction)."""

    config: Function
    key: str
    #: the code directory of the version the instances run
    code: Path
    environment: dict[str, str]
    closed: bool

    deadlines: Deadlines

    def spawned(self, instance: Instance) -> None: ...
    def release(self, instance: Instance) -> None: ...
    def replied(self, instance: Instance, reply: Reply | None, status: str,
                body: bytes) -> None: ...
    def gone(self, instance: Instance) -> None: ...
    def rerun(self, event: bytes, request_id: str, reply: Reply) -> None: ...
    def reaped(self, instance: Instance) -> None: ...


def logged(exc: ProxyError) -> ProxyError:
    """``exc``, marked as already written to the log (the router then does not repeat it)."""
    exc.logged = True
    return exc


def exit_text(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


def _cannot_start(fn: Function, exc: OSError) -> FunctionCrashed:
    function_log.error("function=%s cannot start an instance: %s", fn.key, exc)
    crashed = FunctionCrashed("cannot start an instance",
                              log_detail=f"{fn.key}: cannot start an instance: {exc}")
    crashed.logged = True
    return crashed


class _Channel(asyncio.Protocol):
    """The proxy's end of an instance's socketpair: frames in, EOF noticed."""

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self.decoder = frames.FrameDecoder()

    def data_received(self, data: bytes) -> None:
        try:
            payloads = self.decoder.feed(data)
        except frames.FrameError as exc:
            self.instance.broken(str(exc))
            return
        for payload in payloads:
            self.instance.on_frame(payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self.instance.on_eof()


class Instance:
    """One worker process: its channel, its output pipes, and what it is doing."""

    def __init__(self, owner: Owner) -> None:
        self.owner = owner
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.returncode: int | None = None
        #: resolves once the worker has imported (or failed to import) the handler
        self.started: asyncio.Future[None] = self.loop.create_future()
        self.exited: asyncio.Future[int] = self.loop.create_future()
        #: the invocation running: where its outcome goes
        self.reply: Reply | None = None
        #: clock() by which the invocation running must answer (0.0: none runs)
        self.deadline = 0.0
        self.reply_header: dict[str, Any] | None = None
        self.request_id = "-"
        self.last_used = self.loop.time()
        self.spawned_at = time.perf_counter()
        self.import_error: str | None = None
        self.ready = False
        self.dead = False
        self.timer: asyncio.TimerHandle | None = None
        self.pidfd = -1
        self.outputs: list[int] = []
        #: the output pipes, to ask at once which of them holds something (drain_output)
        self.output_poll = select.poll()
        self.partial = [bytearray(), bytearray()]
        #: SCF's platform lines: the running invocation's START is still to be written (it
        #: goes out before its first output line, or with its END), its start, cold or not
        self.start_pending = False
        self.run_at = 0.0
        self.cold = False
        #: the peak resident memory the worker last reported (kB); the handler's import (ms)
        self.mem_kb = 0
        self.init_function_ms = 0.0
        self.init_ms = 0.0
        #: the running invocation's output lines (None: none yet), and the last finished one's
        self.output: list[str] | None = None
        self.output_size = 0
        self.last_output: list[str] | None = None
        #: invocations sent ahead (``invocations_ahead``), in order: (request id, where its
        #: outcome goes, the event, kept to run it elsewhere if this instance dies first)
        self.ahead: list[tuple[str, Reply, bytes]] = []
        #: the frames of invocations ahead not written yet (``_uncork``)
        self.corked: list[bytes] = []
        #: the worker marks the end of each invocation's output (frames.END_OF_OUTPUT)
        self.marks = owner.config.invocations_ahead > 0
        #: a marking instance's pipes are read by ``output_timer`` (busy), not as they fill
        self.polling = False
        self.output_timer: asyncio.TimerHandle | None = None

    # -- starting --------------------------------------------------------------------------

    async def spawn(self) -> None:
        """Start the process; ``started`` resolves when it has imported the handler."""
        fn = self.owner.config
        fds: list[int] = []  # the output pipes: read end, write end, read end, write end
        try:
            parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as exc:  # out of file descriptors, most likely
            raise _cannot_start(fn, exc) from exc
        try:
            self.transport, _ = await self.loop.create_unix_connection(
                lambda: _Channel(self), sock=parent)
            if self.owner.closed:  # closed while we were connecting: start nothing
                raise Overloaded("shutting down", log_detail=f"{fn.key}: closed")
            for _ in STREAMS:
                fds.extend(os.pipe())
            self.proc = subprocess.Popen(
                runtime.worker_argv(SOURCE_ROOT, child.fileno(), fn.handler, fn.memory,
                                    self.marks),
                stdin=subprocess.DEVNULL, stdout=fds[1], stderr=fds[3],
                pass_fds=(child.fileno(),), cwd=self.owner.code, env=self.owner.environment,
                start_new_session=True)
        except BaseException as exc:
            self.dead = True
            for fd in fds:
                os.close(fd)
            if self.transport is not None:
                self.transport.abort()
            else:
                parent.close()
            if isinstance(exc, OSError):
                raise _cannot_start(fn, exc) from exc
            raise
        finally:
            child.close()  # the worker's end: only the worker holds it now
        self.pid = self.proc.pid
        self.owner.spawned(self)
        for index in range(len(STREAMS)):
            read_end, write_end = fds[2 * index], fds[2 * index + 1]
            os.close(write_end)
            os.set_blocking(read_end, False)
            if self.marks:
                try:
                    fcntl.fcntl(read_end, fcntl.F_SETPIPE_SZ, MARKED_PIPE_BYTES)
                except OSError:  # over /proc/sys/fs/pipe-max-size: the default size it is
                    pass
            self.loop.add_reader(read_end, self._read_output, index)
            self.outputs.append(read_end)
            self.output_poll.register(read_end, select.POLLIN)
        self._watch_exit()
        self.timer = self.loop.call_later(fn.init_timeout, self._init_timed_out)

    def _watch_exit(self) -> None:
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # no pidfd (kernel < 5.3): look now and then
            self.loop.call_later(EXIT_POLL, self._poll_exit)
            return
        self.loop.add_reader(self.pidfd, self._on_exit, False)

    def _poll_exit(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.loop.call_later(EXIT_POLL, self._poll_exit)
        else:
            self._on_exit(True)

    def _init_timed_out(self) -> None:
        # SCF's InitTimeout: the start (interpreter, then the code before the handler) ran
        # over init_timeout; a failed cold start, apart from the invocation's ``timeout``
        limit = self.owner.config.init_timeout
        function_log.warning("function=%s instance pid=%d init timed out: not initialized "
                             "within init_timeout %ds (cold start failed); killed",
                             self.owner.key, self.pid, limit)
        self.kill(logged(FunctionInitTimeout(INIT_TIMEOUT_MESSAGE, log_detail=(
            f"{self.owner.key}: instance pid={self.pid} did not initialize (import its "
            f"handler) within init_timeout {limit}s"))))

    # -- frames ----------------------------------------------------------------------------

    def on_frame(self, payload: bytes) -> None:
        if self.dead:
            return
        try:
            message = orjson.loads(payload) if self.reply_header is None else None
        except orjson.JSONDecodeError:
            self.broken("a frame that is not JSON")
            return
        if not self.ready:
            self._on_ready(message)
        elif self.reply is None:
            self.broken("a frame while idle")
        elif self.reply_header is None:
            if not isinstance(message, dict) or message.get("status") not in frames.STATUSES:
                self.broken(f"a reply header {message!r:.100}")
                return
            self.reply_header = message
        else:
            header = self.reply_header
            self.reply_header = None
            self.mem_kb = header.get("mem_kb") or self.mem_kb
            self._on_reply(header["status"], payload)

    def _on_ready(self, message: Any) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.ready = True
        self.init_ms = (time.perf_counter() - self.spawned_at) * 1000.0
        if isinstance(message, dict):
            self.import_error = message.get("import_error")
            self.init_function_ms = float(message.get("init_function_ms") or 0.0)
            self.mem_kb = int(message.get("mem_kb") or 0)
        self.last_used = self.loop.time()
        if self.started.cancelled():  # whoever started it went away: it joins the pool
            self.owner.release(self)
        elif not self.started.done():
            self.started.set_result(None)

    def run(self, header: bytes, event: bytes, request_id: str, reply: Reply,
            cold: bool = False) -> None:
        """Send one invocation; ``reply`` gets its outcome through the owner (``replied``), or
        the ProxyError that ended it (timeout, crash). ``cold``: the instance was started for
        it (its START line is followed by an Init Report). Sent while another one runs, it is
        an invocation ahead: the worker runs it next, and the owner starts it here (``next``)
        when it keeps the instance after the reply."""
        assert self.transport is not None
        length = frames.LENGTH.pack
        if self.reply is not None:
            self.ahead.append((request_id, reply, event))
            # Sent at the end of this turn of the loop with the others that came in it: the
            # worker wakes once for all of them, not once each.
            if not self.corked:
                self.loop.call_soon(self._uncork)
            self.corked += (length(len(header)), header, length(len(event)), event)
            return
        self.transport.writelines((length(len(header)), header, length(len(event)), event))
        self._begin(request_id, reply, cold)

    def _uncork(self) -> None:
        corked, self.corked = self.corked, []
        if not self.dead and self.transport is not None:
            self.transport.writelines(corked)

    def _begin(self, request_id: str, reply: Reply, cold: bool) -> None:
        if self.marks and not self.polling:
            self._read_output_by_timer(True)
        self.request_id = request_id
        self.reply = reply
        self.start_pending = True
        self.cold = cold
        self.run_at = time.perf_counter()
        self.owner.deadlines.arm(self, self.owner.config.timeout)

    def next(self) -> None:
        """The worker went on to the first invocation sent ahead: it is the one running now
        (its timeout starts now), and what the worker printed after the last mark is its."""
        request_id, reply, _ = self.ahead.pop(0)
        self._begin(request_id, reply, False)
        self._log_held()

    def expire(self) -> None:
        """The invocation's deadline passed (called by the owner's sweep)."""
        if self.reply is not None and not self.dead:
            self._timed_out()

    def _on_reply(self, status: str, body: bytes) -> None:
        if self.deadline:
            self.owner.deadlines.disarm(self)
        self.drain_output()  # what it printed belongs to this request: log it first
        if self.marks:
            self._end_of_output()
        self._end_lines()
        # what it printed, for the SCF API's LogType Tail (kept until the next reply: the
        # pool may start the next invocation before the caller reads this one)
        self.last_output, self.output = self.output, None
        reply, self.reply = self.reply, None
        self.last_used = self.loop.time()
        if self.marks and not self.ahead:
            self._log_held()  # printed between invocations (a thread, a subprocess)
        self.owner.replied(self, reply, status, body)
        if self.polling and self.reply is None and not self.dead:
            self._read_output_by_timer(False)  # idle: its pipes are read as they fill

    def _timed_out(self) -> None:
        timeout = self.owner.config.timeout
        function_log.warning("function=%s request_id=%s timed out after %ds (SCF 433); "
                             "instance pid=%d killed", self.owner.key, self.request_id, timeout,
                             self.pid)
        self.kill(logged(FunctionTimeout(
            "function timed out", log_detail=f"{self.owner.key}: timed out after {timeout}s")))

    def broken(self, what: str) -> None:
        function_log.error("function=%s instance pid=%d broke the protocol: %s; killed",
                           self.owner.key, self.pid, what)
        self.kill(logged(FunctionCrashed("instance broke the protocol",
                                         log_detail=f"{self.owner.key}: {what}")))

    # -- ending ----------------------------------------------------------------------------

    def kill(self, exc: ProxyError | None) -> None:
        """Kill the process (and its process group); ``exc`` goes to whoever waits on it."""
        if self.dead:
            return
        self.dead = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.deadline:
            self.owner.deadlines.disarm(self)
        error = exc or FunctionCrashed("instance retired")
        if not self.started.done():
            self.started.set_exception(error)
            self.started.exception()  # mark it retrieved: its caller may be gone
        reply, self.reply = self.reply, None
        if reply is not None:
            self.drain_output()
            self._end_lines()
            reply(error)
        if self.returncode is None and self.pid:
            # Not reaped yet, so the pid cannot have been reused: safe to signal.
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except OSError:
                pass
        if self.transport is not None:
            self.transport.abort()
        # The worker runs them in order, one after the other: those sent ahead of a reply
        # that never came have not started, so another instance runs them. Before the slot
        # is freed: they were admitted before anyone now in line, and the slot goes to them.
        ahead, self.ahead = self.ahead, []
        for request_id, waiting, event in ahead:
            self.owner.rerun(event, request_id, waiting)
        self.owner.gone(self)

    def on_eof(self) -> None:
        if not self.dead and self.returncode is None:
            self.loop.call_later(EOF_GRACE, self._eof_expired)

    def _eof_expired(self) -> None:
        if not self.dead:
            self._crashed("closed its channel")

    def _on_exit(self, reaped: bool) -> None:
        assert self.proc is not None
        if self.pidfd >= 0:
            self.loop.remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = -1
        if not reaped:
            # The handler's leftover subprocesses, while the unreaped zombie keeps the group
            # id ours (once reaped, the id could be reused by a stranger).
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except OSError:
                pass
        self.returncode = self.proc.wait()  # a zombie by now: does not block
        self.polling = False
        if self.output_timer is not None:
            self.output_timer.cancel()
            self.output_timer = None
        self.drain_output()
        if not self.dead:
            self._crashed(exit_text(self.returncode))
        for fd in self.outputs:
            if fd >= 0:
                self.loop.remove_reader(fd)
                self.output_poll.unregister(fd)
                os.close(fd)
        self.outputs = []
        self.owner.reaped(self)
        self.exited.set_result(self.returncode)

    def _crashed(self, how: str) -> None:
        busy = self.reply is not None or not self.ready
        function_log.warning("function=%s request_id=%s instance pid=%d %s %s",
                             self.owner.key, self.request_id if busy else "-", self.pid, how,
                             "(SCF 439)" if busy else "while idle")
        self.kill(logged(FunctionCrashed("function instance crashed", log_detail=(
            f"{self.owner.key}: instance pid={self.pid} {how} (request {self.request_id})"))))

    # -- output ----------------------------------------------------------------------------

    def _read_output(self, index: int) -> bool:
        """Log the complete lines in one pipe now; False when there was nothing to read."""
        fd = self.outputs[index] if index < len(self.outputs) else -1
        if fd < 0:
            return False
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        buf = self.partial[index]
        if not data:  # every writer closed it: the process and its children are gone
            self.loop.remove_reader(fd)
            self.output_poll.unregister(fd)
            self.outputs[index] = -1
            os.close(fd)
            rest = bytes(buf).replace(frames.END_OF_OUTPUT, b"\n") if self.marks else bytes(buf)
            buf.clear()
            for line in rest.split(b"\n"):
                if line:
                    self._log_line(index, line)
            return False
        buf += data
        self._log_lines(index)
        return True

    def _log_lines(self, index: int) -> None:
        """Log the complete lines in pipe ``index``'s buffer; where the worker marks, only
        those before the first mark (after it, they are the next invocation's)."""
        buf = self.partial[index]
        end = buf.find(frames.END_OF_OUTPUT) if self.marks else -1
        if end < 0:
            end = len(buf)
        pos = 0
        while True:
            cut = buf.find(b"\n", pos, end)
            if cut >= 0:
                self._log_line(index, bytes(buf[pos:cut]))
                pos = cut + 1
            elif end - pos >= MAX_LINE:
                self._log_line(index, bytes(buf[pos:pos + MAX_LINE]))
                pos += MAX_LINE
            else:
                break
        if pos:
            del buf[:pos]

    def _end_of_output(self) -> None:
        """The invocation running replied: its output ends at the first mark of each pipe
        (the worker wrote it before the reply); what precedes it unended is its last line."""
        for index, buf in enumerate(self.partial):
            end = buf.find(frames.END_OF_OUTPUT)
            if end >= 0:
                if end:
                    self._log_line(index, bytes(buf[:end]))
                del buf[:end + len(frames.END_OF_OUTPUT)]

    def _log_held(self) -> None:
        """Log what the buffers hold past a mark, now that it is known whose it is."""
        for index, buf in enumerate(self.partial):
            if buf:
                self._log_lines(index)

    def _read_output_by_timer(self, busy: bool) -> None:
        """A marking instance's pipes are read as they fill only while it is idle; while it
        runs invocations, at each reply and every OUTPUT_POLL seconds, so that the marks it
        writes after each invocation wake nobody (on a shared CPU, a wake-up per mark would
        cost more than the invocations ahead save)."""
        self.polling = busy
        for index, fd in enumerate(self.outputs):
            if fd >= 0:
                if busy:
                    self.loop.remove_reader(fd)
                else:
                    self.loop.add_reader(fd, self._read_output, index)
        if self.output_timer is not None:
            self.output_timer.cancel()
            self.output_timer = None
        if busy:
            self.output_timer = self.loop.call_later(OUTPUT_POLL, self._poll_output)

    def _poll_output(self) -> None:
        self.output_timer = None
        if self.polling and not self.dead:
            self.drain_output()
            self.output_timer = self.loop.call_later(OUTPUT_POLL, self._poll_output)

    def drain_output(self) -> None:
        """Log what the pipes hold now: one poll says which (a handler that printed nothing,
        the usual case, costs that one system call)."""
        ready = {fd for fd, _ in self.output_poll.poll(0)}
        if not ready:
            return
        for index, fd in enumerate(self.outputs):
            if fd in ready:
                while self._read_output(index):
                    pass

    # -- SCF's platform lines (clb-features.md §3.5) -----------------------------------------

    def _start_lines(self) -> list[str]:
        self.start_pending = False
        key, request_id = self.owner.key, self.request_id
        lines = [f"function={key} START RequestId:{request_id}"]
        if self.cold:
            init_function = self.init_function_ms
            lines.append(
                f"function={key} Init Report RequestId:{request_id} Coldstart: "
                f"{self.init_ms:.0f}ms (PullCode: 0ms InitRuntime: "
                f"{max(0.0, self.init_ms - init_function):.0f}ms InitFunction: "
                f"{init_function:.0f}ms) Memory: {self.owner.config.memory}MB MemUsage: "
                f"{self.mem_kb / 1024}MB")
        return lines

    def _end_lines(self) -> None:
        """END and Report of the invocation that ended (START first, if nothing was printed)."""
        if not PLATFORM.enabled:
            self.start_pending = False
            return
        key, request_id = self.owner.key, self.request_id
        lines = self._start_lines() if self.start_pending else []
        lines.append(f"function={key} END RequestId:{request_id}")
        lines.append(f"function={key} Report RequestId:{request_id} Duration:"
                     f"{(time.perf_counter() - self.run_at) * 1000.0:.0f}ms Memory:"
                     f"{self.owner.config.memory}MB MemUsage:{self.mem_kb / 1024}MB")
        PLATFORM.write(*lines)

    def _log_line(self, index: int, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        if self.reply is not None:
            if self.start_pending:
                PLATFORM.write(*self._start_lines())
            output = self.output
            if output is None:
                output = self.output = []
                self.output_size = 0
            output.append(text)
            self.output_size += len(text) + 1
            while self.output_size > TAIL_BYTES and len(output) > 1:  # the tail is what counts
                self.output_size -= len(output.pop(0)) + 1
        function_log.info("function=%s request_id=%s %s: %s", self.owner.key, self.request_id,
                          STREAMS[index], text)
