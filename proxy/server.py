"""The process: listeners, the live router, reload, graceful drain and signals.

Owns the long-lived backends (local function instances, API clients, upstream pools) and the
``ServerState`` every connection reads: the current ``Router`` (swapped atomically on reload;
requests in flight keep the one they started with), the access log and the set of open
connections (tracked here because Python 3.11's ``Server`` cannot close idle clients).

On start it prints one line per bound listener to stderr, ``listening on
http://HOST:PORT (listener "NAME")``, with the real port when the config asked for port 0, then
``clbscf-proxy: ready`` once every listener is bound. As one of several workers (supervisor.py)
it serves sockets bound by the supervisor and says nothing: the supervisor announces.

It also owns the process's metrics (``ProxyMetrics``: request counters are fed per request by
the connections, pool, instance and health gauges are read at each scrape) and, with one
process, the admin API (adminserver.py), whose changes are applied by ``reload``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import tls
from .admin import AdminApp
from .adminserver import start_admin
from .backends.cvm import CvmUpstreams
from .config import Config, Listener, RemoteScf, load_config
from .connection import ListenerContext, ServerState
from .http2 import H2Connection, sni_http2
from .errors import ConfigError
from .listening import AcceptGate, announce, bind_listener
from .logs import AccessLog
from .metrics import ProxyMetrics
from .router import Backends, Router
from .scf.local import INSTANCE_STATES, LocalFunctions
from .scf.web import WebFunctions, event_functions
from .scf.remote import Credentials, InvokeUrlClient, RemoteFunctions
from .statuspage import StatusPage, process_view
from .store.table import Table
from .traffic import TrafficRing, totals

if TYPE_CHECKING:
    import ssl

error_log = logging.getLogger("proxy.error")
DEFAULT_REGION = "ap-guangzhou"


class ProxyServer:
    """Runs one config: ``await start()``, ``await reload(config)``, ``await stop()``."""

    def __init__(self, config: Config, *, parser_kind: str = "auto",
                 access_log: AccessLog | None = None,
                 admin: tuple[str, int, str | None] | None = None,
                 load: Callable[[], Config] | None = None, table: Table | None = None,
                 scf_api: socket.socket | None = None, reload: bool = False) -> None:
        """``admin``: (host, port, token) to serve the admin API on, or None; ``load``: how
        SIGHUP reads the config again without a ``table`` (default: the file, as it is);
        ``table``: where the rule table is kept (store/table.py), which the admin API's
        changes and SIGHUP go through; ``scf_api``: the bound socket of the local SCF API
        (``--scf-api``, scf/api.py); ``reload``: watch the local functions' code and recycle
        their instances on a change (``--reload``, scf/devloop.py)."""
        self.config = config
        self.load = load or (lambda: load_config(self.config.source or ""))
        self.admin = admin
        self._admin_server: asyncio.AbstractServer | None = None
        self.parser_kind = parser_kind
        region = config.scf.region if config.scf else DEFAULT_REGION
        # upstream pools and health state outlive reloads; large buffered uploads are spooled
        # under the state folder (as nginx's client_body_temp)
        # (the upstream timings are the access log's fields only: not taken without it)
        access_log = access_log or AccessLog()
        self.cvm = CvmUpstreams(spool_dir=tls.default_state_dir() / "client_body_temp",
                                timed=access_log.enabled)
        self.backends = Backends(local=LocalFunctions(event_functions(config.functions),
                                                      region=region),
                                 cvm=self.cvm.bind,
                                 web=WebFunctions(config.functions, region=region,
                                                  spool_dir=self.cvm.spool_dir))
        self._remote: RemoteFunctions | None = None
        self._remote_config: RemoteScf | None = None
        self._invoke_url: InvokeUrlClient | None = None
        self._invoke_ca: Path | None = None
        self._closing: list[Any] = []  # clients replaced by a reload, closed at stop
        self._sync_remote(config)
        self.metrics = ProxyMetrics()
        self.table = table or Table(None, lambda text: self.config, None)
        self.table.attach(lambda: self.config, self.reload, self.check, self.metrics.registry)
        self.state = ServerState(Router(config, self.backends, self.metrics),
                                 access_log, self.metrics)
        self._track()
        #: the last minute's totals, sampled once a second for the status page while an
        #: admin shows it (this process's, or the supervisor's for a worker)
        self.traffic = TrafficRing(lambda: totals(self.metrics))
        self._gates: list[AcceptGate] = []
        self._contexts: dict[str, ListenerContext] = {}
        self._announce = False
        self._tls: dict[str, tls.ServerTLS] = {}
        self._stopped = asyncio.Event()
        self._scf_api_socket = scf_api
        self._scf_api: Any = None  # (ScfApi, its server) once started
        self._watcher: Any = None
        if reload:
            from .scf.devloop import CodeWatcher

            self._watcher = CodeWatcher(self.backends.local)

    def _sync_remote(self, config: Config) -> None:
        """(Re)build the cloud API and invoke-URL clients when their config changed."""
        scf = config.scf
        ca_file = scf.ca_file if scf else None
        listener = config.listeners[0] if config.listeners else None
        # the first listener's upstream timeouts apply to the API and invoke-URL clients
        connect = listener.proxy_connect_timeout if listener else 4.0
        read = listener.proxy_read_timeout if listener else 60.0
        current = self._remote
        credentials = Credentials.from_environ(os.environ)
        if scf is not None and credentials is not None:
            if current is None or self._remote_config != scf:
                self._remote = RemoteFunctions(scf, credentials, connect_timeout=connect,
                                               read_timeout=read)
                self._remote_config = scf
                if current is not None:
                    self._closing.append(current)
        if self._invoke_url is None or self._invoke_ca != ca_file:
            if self._invoke_url is not None:
                self._closing.append(self._invoke_url)
            self._invoke_url = InvokeUrlClient(ca_file=ca_file, connect_timeout=connect,
                                               read_timeout=read)
            self._invoke_ca = ca_file
        self.backends.remote = self._remote.invoke if self._remote else None
        self.backends.invoke_url = self._invoke_url.invoke_url

    def _track(self) -> None:
        """The gauges read at each scrape: instances, upstream pools and health, clients."""
        metrics = self.metrics
        local = self.backends.local
        local.on_queue_wait = metrics.observe_queue_wait
        if self.backends.web is not None:
            self.backends.web.on_cold_start = metrics.observe_cold_start
        metrics.track_instances(lambda: {
            fn: {k: v for k, v in stats.items() if k in INSTANCE_STATES}
            for fn, stats in self.function_stats().items()})

        def collect() -> None:
            state = self.cvm.state()
            metrics.upstream_connections.clear()
            for address, pool in state["pools"].items():
                metrics.set_upstream_pool(address, pool["busy"], pool["idle"])
            metrics.upstream_healthy.clear()
            for check in state["checks"]:
                metrics.set_upstream_health(check["listener"], check["location_id"],
                                            check["address"], bool(check["healthy"]))
            counts = dict.fromkeys((l.name for l in self.config.listeners), 0)
            for conn in self.state.connections:
                counts[conn.ctx.listener.name] = counts.get(conn.ctx.listener.name, 0) + 1
            for name, count in counts.items():
                metrics.set_client_connections(name, count)
        metrics.add_collector(collect)

    def health(self) -> dict[str, Any]:
        """For /healthz: "draining" (answered 503) once a stop has begun."""
        return {"status": "draining" if self.state.draining else "ok", "pid": os.getpid(),
                "connections": len(self.state.connections),
                "functions": self.function_stats(), "store": self.table.health()}

    def function_stats(self) -> dict[str, dict[str, int]]:
        """Instance counts of every local function, event and web."""
        web = self.backends.web
        return {**self.backends.local.stats(), **(web.stats() if web is not None else {})}

    def status_view(self) -> dict[str, Any]:
        """This process's part of the status page (statuspage.py; a worker's answer to the
        supervisor's ``status`` op)."""
        return process_view(self.config, self.backends.local.stats(), self.cvm.health_of,
                            self.traffic)

    async def start(self, sockets: dict[str, list[socket.socket]] | None = None) -> None:
        """Bind the listeners (or serve ``sockets``, listener name -> bound sockets, handed
        over by the supervisor) and the admin API."""
        # every certificate is checked before anything is bound, as --check-config checks them
        certificates = tls.config_tls(self.config)
        await self.backends.local.start()
        if self.backends.web is not None:
            await self.backends.web.start()
        for listener in self.config.listeners:
            extra = (tls.hsts_header(listener.hsts_max_age),) if listener.hsts_max_age else ()
            ctx = ListenerContext(listener, self.parser_kind, self.state, extra)
            self._contexts[listener.name] = ctx
            ssl_ctx = self._ssl_context(listener, *certificates.get(listener.name,
                                                                    (tls.DEFAULT_POLICY, ())))
            ctx.mutual = self._tls.get(listener.name)
            if sockets is not None:
                bound = sockets[listener.name]
            else:
                bound = bind_listener(listener)
                announce(listener, bound)
            self.backends.ports[listener.name] = bound[0].getsockname()[1]
            gate = AcceptGate(listener.name, bound,
                              lambda ctx=ctx: ctx.connection_class(ctx),  # type: ignore[misc]
                              listener.max_connections, ssl_ctx, listener.ssl_handshake_timeout)
            ctx.gate = gate
            self._gates.append(gate)
            await gate.start()
        if self.admin is not None:
            host, port, token = self.admin


            async def views() -> list[dict[str, Any]]:
                return [self.status_view()]
            status = StatusPage(lambda: self.config, views, self.table.status,
                                lambda: {"pid": os.getpid()}, token=token)
            app = AdminApp(lambda: self.config, self.table.commit, self.metrics.registry,
                           token=token, health=self.health, target_health=self.cvm.health_of,
                           status=status)
            self._admin_server = await start_admin(app, host, port, self.parser_kind)
        self.table.start_watching()
        if self.admin is not None or sockets is not None:  # a worker's admin is the supervisor
            self.traffic.start(asyncio.get_running_loop())
        if self._scf_api_socket is not None:
            from .scf.api import MAX_BODY, ScfApi, api_credentials

            api = ScfApi(self.backends.local, *api_credentials(os.environ))
            self._scf_api = (api, await start_admin(
                api, "", 0, self.parser_kind, what="scf-api", max_body=MAX_BODY,
                sock=self._scf_api_socket))
        if self._watcher is not None:
            await self._watcher.watch(self.config)
        self._announce = sockets is None  # a worker's supervisor announces

    def _ssl_context(self, listener: Listener, policy: tls.TlsPolicy,
                     certificates: Sequence[tls.LoadedCertificate]) -> ssl.SSLContext | None:
        if listener.protocol != "HTTPS":
            return None
        server_tls = tls.ServerTLS(certificates, policy=policy,
                                   handshake_timeout=listener.ssl_handshake_timeout,
                                   http2=sni_http2(listener))
        if not server_tls.groups_policy_in_effect():
            error_log.warning("listener %r: TLS key-exchange groups are not limited to "
                              "X25519/P-256/P-384", listener.name)
        self._tls[listener.name] = server_tls
        return server_tls.context

    async def reload(self, config: Config) -> None:
        """Swap in a new config for new requests; in-flight ones finish on the old one.

        Everything is built before anything is swapped: a certificate or binding that fails
        raises ConfigError and leaves the running config in place.
        """
        try:
            await self._reload(config)
        except ConfigError:
            self.metrics.observe_reload(False)
            raise
        self.metrics.observe_reload(True)

    def check(self, config: Config) -> None:
        """What a reload refuses, checked before a change is stored: ConfigError."""
        check_same_listeners(self.config, config)
        tls.config_certificates(config)

    async def _reload(self, config: Config) -> None:
        check_same_listeners(self.config, config)
        certificates = tls.config_tls(config)  # the checks of start-up
        self._sync_remote(config)
        await self.backends.local.update(event_functions(config.functions))
        if self.backends.web is not None:
            await self.backends.web.update(config.functions)
        router = Router(config, self.backends, self.metrics)
        listeners = {l.name: l for l in config.listeners}
        for name, (policy, loaded) in certificates.items():
            if name in self._tls and self._tls[name].reload(loaded, policy,
                                                            sni_http2(listeners[name])):
                # a new TLS policy: a new listening context, served from now on (its old
                # sessions are not resumed under the new policy)
                for gate in self._gates:
                    if gate.name == name:
                        await gate.serve_with(self._tls[name].context)
        self.state.router = router
        for conn in list(self.state.connections):
            if isinstance(conn, H2Connection):
                # GOAWAY: its streams finish, and the client's next connection is negotiated
                # under the new config (certificates, the per-domain Http2 switch)
                conn.goaway()
        if self._watcher is not None:
            await self._watcher.watch(config)
        for listener in config.listeners:  # custom_config's response headers follow reloads
            if listener.name in self._contexts:
                self._contexts[listener.name].configure(listener)
        self.cvm.retain(config)  # health checks and pools no rule uses any more stop
        self.config = config
        error_log.info("config reloaded%s", f" from {config.source}" if config.source else "")

    def reload_from_source(self) -> None:
        """SIGHUP: read the config again (the file, with the command line's overrides, or
        the store)."""
        if self.table.backend is not None:
            asyncio.get_running_loop().create_task(self.table.reload())
            return
        if self.config.source is None:
            error_log.warning("SIGHUP: the embedded default has no file to reload")
            return
        asyncio.get_running_loop().create_task(self.reload_checked())

    async def reload_checked(self) -> bool:
        """Reload from the source; a bad config is refused, logged, and changes nothing."""
        try:
            await self.reload(self.load())
        except ConfigError as exc:
            error_log.error("reload refused, the running config stays: %s", exc)
            return False
        return True

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Stop accepting, finish in-flight requests (up to ``drain_timeout``), then close."""
        self.state.draining = True
        self.traffic.stop()
        for gate in self._gates:
            gate.close()
        deadline = time.monotonic() + drain_timeout
        while True:
            for conn in list(self.state.connections):
                conn.close_if_idle()
            if not self.state.connections or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        for conn in list(self.state.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self._watcher is not None:
            await self._watcher.close()
        if self._scf_api is not None:
            self._scf_api[1].close()
            await self._scf_api[0].close()
        await self.backends.local.close()
        if self.backends.web is not None:
            await self.backends.web.close()
        await self.cvm.close()
        for client in [self._remote, self._invoke_url, *self._closing]:
            if client is not None:
                await client.close()
        self.state.access_log.flush()
        await self.table.close()
        if self._admin_server is not None:
            self._admin_server.close()
        self._stopped.set()

    async def run_until_signalled(self, drain_timeout: float = 30.0,
                                  reload_on_hup: bool = True) -> None:
        """Serve until SIGTERM/SIGINT, then drain; SIGHUP reloads (a worker leaves that to
        its supervisor and ignores it)."""
        loop = asyncio.get_running_loop()
        stopping: list[asyncio.Task[None]] = []

        def on_term() -> None:
            if not stopping:
                error_log.info("stopping: draining in-flight requests")
                stopping.append(loop.create_task(self.stop(drain_timeout)))

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_term)
        if reload_on_hup:
            loop.add_signal_handler(signal.SIGHUP, self.reload_from_source)
        else:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        settle_gc()
        if self._announce:  # only now: a signal sent on seeing it finds its handler
            print("clbscf-proxy: ready", file=sys.stderr, flush=True)
        await self._stopped.wait()


#: the cyclic collector's generation-0 threshold while serving (CPython's default is 700): a
#: request allocates ~100 objects and frees them by reference counting (its values form no
#: cycles), so the default runs a young collection every few requests for nothing
GC_THRESHOLD = 20_000


def settle_gc() -> None:
    """Before serving: what start-up made (modules, the config, compiled rules) moves out of
    the collector's sight (``gc.freeze``), so a full collection scans only what serving made;
    young collections run less often."""
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, second, third)


def _bindings(config: Config) -> list[tuple[str, str, str, int]]:
    return sorted((l.name, l.protocol, l.host, l.port) for l in config.listeners)


def check_same_listeners(old: Config, new: Config) -> None:
    """A reload keeps the bound sockets: listeners may not be added, removed or rebound."""
    if _bindings(old) != _bindings(new):
        raise ConfigError("a reload cannot add, remove or rebind listeners (name, protocol, "
                          "host, port); restart the proxy for that")
