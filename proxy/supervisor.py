"""``--workers N``: a supervisor process that binds the listeners and runs N worker processes.

Owns the multi-process shape of SPEC §10. The supervisor binds every listening socket once and
hands the same sockets to each worker (inherited file descriptors; the kernel spreads accepted
connections over the processes waiting on them), so ports picked by the kernel (port 0) are the
same in every worker, and a restarted worker serves the very sockets its predecessor did: no
connection attempt is refused while a worker is replaced. It serves no traffic itself.

- A worker that dies is restarted with the current config (one restart per second at most, so
  a worker that cannot start does not spin).
- SIGHUP reads the config again and sends it to every worker (control.py); the admin API's
  changes take the same way. A config is checked here first (listeners unchanged, certificates
  load), so a bad one is refused before any worker sees it and the running one stays.
- SIGTERM/SIGINT: close the supervisor's copies of the sockets, SIGTERM every worker (each
  drains its in-flight requests), wait for them, exit 0.
- The admin API runs here and presents the whole: /metrics merges the workers' expositions
  (``merge_expositions``: counters summed), /healthz lists the workers.

Must not know: HTTP, routing, backends (the workers' ProxyServer does all of that).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from . import control, tls
from .admin import AdminApp
from .adminserver import bind_scf_api, start_admin
from .config import Config
from .control import CONTROL_FD_VARIABLE, Channel, ChannelClosed, WorkerSetup
from .errors import ConfigError
from .listening import announce, bind_listener
from .metrics import ProxyMetrics, merge_expositions
from .server import check_same_listeners
from .statuspage import StatusPage
from .store.table import Table

error_log = logging.getLogger("proxy.error")
RESTART_INTERVAL = 1.0  # seconds between two starts of the same worker slot
START_TIMEOUT = 60.0  # a worker that is not serving by then is killed and restarted
SCRAPE_TIMEOUT = 5.0


class WorkerProcess:
    """One worker slot: the current process in it and its control channel."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.channel: Channel | None = None
        self.started_at = 0.0
        self.restarts = 0

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    @property
    def serving(self) -> bool:
        return self.channel is not None and self.process is not None \
            and self.process.returncode is None


class Supervisor:
    def __init__(self, config: Config, args: argparse.Namespace, argv: list[str],
                 load: Callable[[], Config],
                 admin: tuple[str, int, str | None] | None, table: Table | None = None) -> None:
        self.config = config
        self.args = args
        self.argv = argv  # what each worker is started with, beside the table's document
        self.load = load
        self.admin = admin
        self.metrics = ProxyMetrics()  # its own: admin calls, reloads, worker restarts
        self.restarts = self.metrics.registry.counter(
            "clbscf_worker_restarts_total", "Worker processes restarted after they died.")
        self.table = table or Table(None, lambda text: self.config, None)
        self.table.attach(lambda: self.config, self.apply, self.check,
                          self.metrics.registry)
        self.workers = [WorkerProcess(i) for i in range(args.workers)]
        self.sockets: dict[str, list[socket.socket]] = {}
        #: --scf-api: bound once here and served by every worker, like the listeners
        self.scf_api: socket.socket | None = None
        self.stopping = False
        self._lock = asyncio.Lock()  # one config change at a time
        self._tasks: set[asyncio.Task[None]] = set()

    # -- start --------------------------------------------------------------------------------

    async def run(self) -> int:
        try:
            self._bind()
            await asyncio.gather(*(self._start(w) for w in self.workers))
            admin_server = None
            if self.admin is not None:
                host, port, token = self.admin
                status = StatusPage(lambda: self.config, self.status_views, self.table.status,
                                    self.process, token=token)
                app = AdminApp(lambda: self.config, self.table.commit, self.metrics.registry,
                               token=token, health=self.health, scrape=self.scrape,
                               status=status)
                admin_server = await start_admin(app, host, port, self.args.http)
            self.table.start_watching()
        except BaseException:
            await self._stop_workers(0)
            raise
        for worker in self.workers:
            self._watch(worker)
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_term() -> None:
            if not self.stopping:
                self.stopping = True
                error_log.info("stopping: draining the workers")
                task = loop.create_task(self._stop_workers(self.args.drain_timeout))
                task.add_done_callback(lambda _: stopped.set())

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_term)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        print(f"clbscf-proxy: ready ({len(self.workers)} workers)", file=sys.stderr,
              flush=True)
        await stopped.wait()
        await self.table.close()
        if admin_server is not None:
            admin_server.close()
        return 0

    def _bind(self) -> None:
        for listener in self.config.listeners:
            self.sockets[listener.name] = bind_listener(listener)
            announce(listener, self.sockets[listener.name])
        if self.args.scf_api is not None:
            self.scf_api = bind_scf_api(self.args.scf_api)

    async def _start(self, worker: WorkerProcess) -> None:
        """Start a process in ``worker``'s slot and wait until it serves."""
        ours, theirs = socket.socketpair()
        fds = {name: [s.fileno() for s in socks] for name, socks in self.sockets.items()}
        setup = WorkerSetup(self.argv, self.table.text, fds, worker.index,
                            scf_api_fd=self.scf_api.fileno() if self.scf_api else -1)
        inherited = [theirs.fileno(), *(fd for group in fds.values() for fd in group)]
        if self.scf_api is not None:
            inherited.append(self.scf_api.fileno())
        env = {**os.environ, CONTROL_FD_VARIABLE: str(theirs.fileno())}
        worker.started_at = time.monotonic()
        try:
            worker.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "proxy.worker", pass_fds=inherited, env=env,
                stdin=asyncio.subprocess.DEVNULL)
        finally:
            theirs.close()
        channel = await Channel.open(ours)
        try:
            await channel.send({"op": "setup"}, setup.encode())
            header, _ = await asyncio.wait_for(channel.receive(), START_TIMEOUT)
        except (ChannelClosed, asyncio.TimeoutError, OSError) as exc:
            channel.close()
            if worker.process.returncode is None:
                worker.process.kill()
            raise ConfigError(f"worker {worker.index} did not start: {exc or 'no answer'}") \
                from None
        if header.get("op") != "ready":
            raise ConfigError(f"worker {worker.index} did not start: {header!r}")
        worker.channel = channel
        error_log.info("worker %d serving (pid %d)", worker.index, worker.pid)

    # -- supervision --------------------------------------------------------------------------

    def _watch(self, worker: WorkerProcess) -> None:
        task = asyncio.get_running_loop().create_task(self._supervise(worker))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _supervise(self, worker: WorkerProcess) -> None:
        while not self.stopping:
            assert worker.process is not None
            code = await worker.process.wait()
            if worker.channel is not None:
                worker.channel.close()
                worker.channel = None
            if self.stopping:
                return
            error_log.error("worker %d (pid %d) exited with %d; restarting", worker.index,
                            worker.pid, code)
            self.restarts.labels().inc()
            worker.restarts += 1
            wait = worker.started_at + RESTART_INTERVAL - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            while not self.stopping:
                try:
                    await self._start(worker)
                    break
                except ConfigError as exc:
                    error_log.error("%s; retrying", exc)
                    await asyncio.sleep(RESTART_INTERVAL)

    async def _stop_workers(self, drain_timeout: float) -> None:
        for sockets in self.sockets.values():
            for sock in sockets:
                sock.close()  # the workers' copies keep serving until they drain
        if self.scf_api is not None:
            self.scf_api.close()
        processes = [w.process for w in self.workers
                     if w.process is not None and w.process.returncode is None]
        for process in processes:
            process.send_signal(signal.SIGTERM)
        if processes:
            await asyncio.wait([asyncio.ensure_future(p.wait()) for p in processes],
                                         timeout=drain_timeout + 10.0)
            for process in processes:
                if process.returncode is None:
                    error_log.error("worker pid %d did not stop; killing it", process.pid)
                    process.kill()
                    await process.wait()

    # -- config changes -----------------------------------------------------------------------

    def _on_hup(self) -> None:
        if self.table.backend is not None:
            asyncio.get_running_loop().create_task(self.table.reload())
            return

        async def reload() -> None:
            try:
                await self.apply(self.load())
            except ConfigError as exc:
                error_log.error("reload refused, the running config stays: %s", exc)
        asyncio.get_running_loop().create_task(reload())

    def check(self, config: Config) -> None:
        """What ``apply`` refuses, checked before a change is stored: ConfigError."""
        check_same_listeners(self.config, config)
        tls.config_certificates(config)

    async def apply(self, config: Config) -> None:
        """Check ``config`` and send it to every worker; ConfigError if refused."""
        async with self._lock:
            try:
                check_same_listeners(self.config, config)
                tls.config_certificates(config)  # what start-up and --check-config check
            except ConfigError:
                self.metrics.observe_reload(False)
                raise
            self.config = config  # a worker restarted from now on starts with it
            # the document the table now holds (the table sets it before applying); none
            # without a file or store: the command line alone gives the config again
            data = control.encode_document(self.table.text)
            errors = []
            for worker in self.workers:
                if worker.serving:
                    assert worker.channel is not None
                    try:
                        header, _ = await worker.channel.request("reload", data)
                    except (ChannelClosed, asyncio.TimeoutError):
                        continue  # it died: its replacement starts with the new config
                    if not header.get("ok"):
                        errors.append(f"worker {worker.index}: {header.get('error')}")
            self.metrics.observe_reload(not errors)
            if errors:
                raise ConfigError("; ".join(errors))
            error_log.info("config applied to %d workers", len(self.workers))

    # -- the admin's view -----------------------------------------------------------------------

    async def _ask(self, op: str) -> list[bytes]:
        async def ask(worker: WorkerProcess) -> bytes | None:
            if not worker.serving:
                return None
            assert worker.channel is not None
            try:
                header, body = await worker.channel.request(op, timeout=SCRAPE_TIMEOUT)
            except (ChannelClosed, asyncio.TimeoutError):
                return None
            return body if header.get("ok") else None
        answers = await asyncio.gather(*(ask(w) for w in self.workers))
        return [a for a in answers if a is not None]

    async def scrape(self) -> bytes:
        """/metrics: every worker's exposition merged with the supervisor's own."""
        texts = await self._ask("metrics")
        return merge_expositions([*texts, self.metrics.render()], ProxyMetrics.MERGE)

    async def status_views(self) -> list[dict[str, Any]]:
        """The status page's figures: every serving worker's ``status_view`` (instances,
        target health, traffic), merged by statuspage.snapshot."""
        return [orjson.loads(body) for body in await self._ask("status")]

    def process(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "workers": [
            {"index": w.index, "pid": w.pid, "serving": w.serving, "restarts": w.restarts}
            for w in self.workers]}

    def health(self) -> dict[str, Any]:
        alive = [w for w in self.workers if w.serving]
        return {
            "status": "ok" if alive and not self.stopping else
                      ("draining" if self.stopping else "no workers"),
            "pid": os.getpid(),
            "workers": [{"index": w.index, "pid": w.pid, "serving": w.serving,
                         "restarts": w.restarts} for w in self.workers],
            "store": self.table.health(),
        }
