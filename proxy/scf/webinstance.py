"""One web-function instance: its scf_bootstrap process, its network namespace, its pool.

Owns the process side of a web function's instance (SCF's web functions, clb-features.md §3.1):
starting ``scf_bootstrap`` as SCF does (working directory the code directory, the environment of
an event function's instance plus ``PORT``, a session of its own so a kill takes the whole
process group), waiting until its server accepts connections on the port (9000 in a network
namespace of its own, scf/netns.py; otherwise the free port it was given in ``PORT``), logging
what it prints, noticing its exit, killing it. The connections to its server are a
backends/pool.py ``Pool`` whose sockets are made in the instance's namespace; the requests on
them are backends/cvm.py's exchanges (scf/web.py binds them).

Strategy: callbacks for the output pipes and the exit (a pidfd, polled where the kernel has
none), one task per start that tries a connect every ``READY_POLL`` seconds until one is
accepted, the process exits, or ``init_timeout`` passes (SCF's InitTimeout: the start "runs the
bootstrap and all code up to listening on 9000"). The probing connection is closed at once.
``ready`` resolves when the server listens, or fails with the reason (FunctionCrashed, 502),
which is also logged once here.

Must not know: HTTP, the pool's policy (who is served where), routing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import subprocess
import time
from typing import TYPE_CHECKING, Protocol

from ..backends.pool import Pool
from ..config import WEB_BOOTSTRAP
from ..errors import FunctionCrashed
from . import netns
from .instance import EXIT_POLL, MAX_LINE, STREAMS, exit_text, logged

if TYPE_CHECKING:
    from ..config import Function

function_log = logging.getLogger("proxy.function")

#: where SCF's web functions must listen (clb-features.md §3.1), in an instance's namespace
SCF_PORT = 9000
#: how often a starting instance is tried for a connection
READY_POLL = 0.02
#: one probing connect may take this long before it counts as "not yet"
PROBE_TIMEOUT = 1.0


class Owner(Protocol):
    """What an instance needs from its function (scf/web.py's WebFunction)."""

    config: Function
    key: str
    environment: dict[str, str]

    def listening(self, instance: WebInstance) -> None: ...
    def gone(self, instance: WebInstance) -> None: ...


def free_port() -> int:
    """A port free on the host now, for an instance that cannot have a namespace."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class WebInstance:
    """One scf_bootstrap process and the pool of connections to the server it started."""

    def __init__(self, owner: Owner, isolated: bool) -> None:
        self.owner = owner
        self.loop = asyncio.get_running_loop()
        self.isolated = isolated
        self.port = SCF_PORT if isolated else free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.returncode: int | None = None
        self.namespace: netns.Namespace | None = None
        self.pool: Pool | None = None
        #: resolves once the server accepts connections; fails (FunctionCrashed) otherwise
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.exited: asyncio.Future[int] = self.loop.create_future()
        self.listening = False
        self.dead = False
        #: requests it serves now (or that wait for its start), against instance_concurrency
        self.active = 0
        self.last_used = self.loop.time()
        self.spawned_at = time.perf_counter()
        self.init_ms = 0.0
        self._task: asyncio.Task[None] | None = None
        self._pidfd = -1
        self._outputs: list[int] = []
        self._partial = [bytearray(), bytearray()]

    # -- starting --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the bootstrap; ``ready`` says when (and whether) its server listens."""
        fn = self.owner.config
        try:
            self._spawn(fn)
        except (OSError, subprocess.SubprocessError) as exc:
            self.kill(f"cannot start {fn.code / WEB_BOOTSTRAP}: {exc}")
            return
        if self.pool is not None:  # else it is exiting already (see _spawn)
            self._task = self.loop.create_task(self._wait_listening(fn))

    def _spawn(self, fn: Function) -> None:
        env = dict(self.owner.environment)
        env["PORT"] = str(self.port)  # ours: 9000 in a namespace, else the port to listen on
        fds: list[int] = []  # the output pipes: read end, write end, read end, write end
        try:
            for _ in STREAMS:
                fds.extend(os.pipe())
            self.proc = subprocess.Popen(
                [str(fn.code / WEB_BOOTSTRAP)], cwd=fn.code, env=env,
                stdin=subprocess.DEVNULL, stdout=fds[1], stderr=fds[3],
                start_new_session=True,
                preexec_fn=functools.partial(netns.child_setup, self.isolated))
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        self.pid = self.proc.pid
        for index in range(len(STREAMS)):
            read_end, write_end = fds[2 * index], fds[2 * index + 1]
            os.close(write_end)
            os.set_blocking(read_end, False)
            self.loop.add_reader(read_end, self._read_output, index)
            self._outputs.append(read_end)
        self._watch_exit()
        opener = None
        if self.isolated:
            try:
                self.namespace = netns.Namespace(self.pid)
            except FileNotFoundError:
                # /proc/PID/ns goes as the process exits, before it is reaped: it is
                # exiting already, and its exit (watched above) says why; nothing to probe
                return
            opener = self.namespace.socket
        self.pool = Pool(f"127.0.0.1:{self.port}", opener=opener)

    async def _wait_listening(self, fn: Function) -> None:
        deadline = self.loop.time() + fn.init_timeout
        while not self.dead:
            if self.loop.time() >= deadline:
                self.kill(f"did not listen on port {self.port} within its init_timeout of "
                          f"{fn.init_timeout}s")
                return
            sock = self.namespace.socket() if self.namespace is not None else None
            if sock is None:
                sock = socket.socket()
                sock.setblocking(False)
            try:
                async with asyncio.timeout(PROBE_TIMEOUT):
                    await self.loop.sock_connect(sock, ("127.0.0.1", self.port))
            except (OSError, TimeoutError):
                await asyncio.sleep(READY_POLL)
                continue
            finally:
                sock.close()
            break
        if self.dead:
            return
        self.init_ms = (time.perf_counter() - self.spawned_at) * 1000.0
        self.listening = True
        self.last_used = self.loop.time()
        self.ready.set_result(None)
        self.owner.listening(self)

    # -- ending ----------------------------------------------------------------------------

    def kill(self, reason: str | None) -> None:
        """Kill the process group; ``reason`` (None: retired, nothing went wrong) is logged
        and is what those waiting for its start get."""
        if self.dead:
            return
        self.dead = True
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        if reason is not None:
            function_log.warning("function=%s instance pid=%d %s", self.owner.key, self.pid,
                                 reason)
        if not self.ready.done():
            self.ready.set_exception(logged(FunctionCrashed(
                "web function instance did not start",
                log_detail=f"{self.owner.key}: {reason or 'retired'}")))
            self.ready.exception()  # retrieved: its waiters may be gone
        if self.returncode is None and self.pid:
            try:  # not reaped yet, so the pid (and group id) cannot have been reused
                os.killpg(self.pid, signal.SIGKILL)
            except OSError:
                pass
        if self.pool is not None:
            self.pool.retire()
        if self.proc is None and not self.exited.done():
            self.exited.set_result(-1)  # never ran
        self.owner.gone(self)

    def _watch_exit(self) -> None:
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # no pidfd (kernel < 5.3): look now and then
            self.loop.call_later(EXIT_POLL, self._poll_exit)
            return
        self.loop.add_reader(self._pidfd, self._on_exit)

    def _poll_exit(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.loop.call_later(EXIT_POLL, self._poll_exit)
        else:
            self._on_exit()

    def _on_exit(self) -> None:
        assert self.proc is not None
        if self._pidfd >= 0:
            self.loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1
        try:  # what it left running (a framework's reloader child), while the id is ours
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass
        self.returncode = self.proc.wait()
        self._drain_output()
        if not self.dead:
            when = "while serving" if self.listening else "before listening on its port"
            self.kill(f"{WEB_BOOTSTRAP} {exit_text(self.returncode)} {when}")
        for fd in self._outputs:
            if fd >= 0:
                self.loop.remove_reader(fd)
                os.close(fd)
        self._outputs = []
        if self.namespace is not None:
            self.namespace.close()
        if not self.exited.done():
            self.exited.set_result(self.returncode)

    # -- output ----------------------------------------------------------------------------

    def _read_output(self, index: int) -> bool:
        fd = self._outputs[index] if index < len(self._outputs) else -1
        if fd < 0:
            return False
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        buf = self._partial[index]
        if not data:  # every writer closed it
            self.loop.remove_reader(fd)
            self._outputs[index] = -1
            os.close(fd)
            if buf:
                self._log_line(index, bytes(buf))
                buf.clear()
            return False
        buf += data
        while True:
            cut = buf.find(b"\n")
            if cut >= 0:
                self._log_line(index, bytes(buf[:cut]))
                del buf[: cut + 1]
            elif len(buf) >= MAX_LINE:
                self._log_line(index, bytes(buf[:MAX_LINE]))
                del buf[:MAX_LINE]
            else:
                return True

    def _drain_output(self) -> None:
        for index in range(len(self._outputs)):
            while self._read_output(index):
                pass

    def _log_line(self, index: int, line: bytes) -> None:
        # Several requests may run on one instance at once: the line names the instance.
        function_log.info("function=%s instance pid=%d %s: %s", self.owner.key, self.pid,
                          STREAMS[index], line.decode("utf-8", "replace").rstrip("\r"))
