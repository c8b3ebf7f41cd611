"""The development loop: ``--reload`` (watch each local function's code, recycle its instances)
and ``--debug NAMESPACE/FUNCTION[:[HOST:]PORT]`` (that function's instance under debugpy).

Owns the watcher (``CodeWatcher``: watchfiles over every local function's ``code``
directory; a change recycles the functions whose directory holds it, ``LocalFunctions.recycle``:
calls in flight finish on the old code, the next one runs the new) and the debug option: its
syntax (``parse_debug``) and what it does to the config (``debug_config``): the function runs
in one instance (``concurrency = 1``, kept up: ``min_instances = 1``, never idle-retired) with
its timeout, queue timeout and idle timeout lifted to ``DEBUG_TIMEOUT``; the instance is told
the debugpy address in ``CLBSCF_DEBUGPY`` (scf/runtime.py listens on it before the handler is
imported, and logs ``debugpy listening on HOST:PORT``).

watchfiles and debugpy are imported only when the flags ask for them: an installation that
never reloads or debugs needs neither (debugpy is the ``debug`` extra). Which directories are
watched is ``watched_directories`` (the one place: versions with code of their own add theirs
there).

Must not know: HTTP, routing, processes (scf/local.py and scf/instance.py do that).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from ..config import Config, parse_listen
from ..errors import ConfigError
from .local import LocalFunctions
from .runtime import DEBUG_VARIABLE

function_log = logging.getLogger("proxy.function")

#: what "lifted" means for a debugged function's timeouts: a day (seconds)
DEBUG_TIMEOUT = 86400
DEFAULT_DEBUG_HOST = "127.0.0.1"
DEFAULT_DEBUG_PORT = 5678  # debugpy's own default
#: watchfiles groups the changes of one save: it yields once nothing changed for STEP ms
STEP_MS = 50


# -- --debug -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DebugTarget:
    namespace: str
    name: str
    host: str
    port: int

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_debug(text: str) -> DebugTarget:
    """``NAMESPACE/FUNCTION``, ``NAMESPACE/FUNCTION:PORT`` or ``NAMESPACE/FUNCTION:HOST:PORT``
    (``[::1]:PORT`` for IPv6; ``FUNCTION`` alone is in namespace ``default``); the host is
    127.0.0.1 unless given, the port 5678."""
    key, _, where = text.partition(":")
    namespace, _, name = key.rpartition("/")
    namespace = namespace or "default"
    bad = ConfigError(f"--debug: must be NAMESPACE/FUNCTION[:[HOST:]PORT], got {text!r}")
    if not name or "/" in namespace:
        raise bad
    if not where:
        return DebugTarget(namespace, name, DEFAULT_DEBUG_HOST, DEFAULT_DEBUG_PORT)
    try:
        host, port = parse_listen(where)
    except ConfigError:
        raise bad from None
    return DebugTarget(namespace, name, host.strip("[]") or DEFAULT_DEBUG_HOST, port)


def require_debugpy() -> None:
    """ConfigError unless debugpy can be imported (by the instances: the same interpreter)."""
    if importlib.util.find_spec("debugpy") is None:
        raise ConfigError("--debug needs debugpy, which is not installed: "
                          "pip install 'clbscf-proxy[debug]' (or pip install debugpy)")


def debug_config(config: Config, target: DebugTarget) -> Config:
    """``config`` with ``target``'s function set up for debugging (the module docstring);
    ConfigError when it is not a local function of the config."""
    fn = config.function(target.namespace, target.name)
    if fn is None:
        where = config.source or "the embedded default"
        raise ConfigError(f"--debug: {target.key} is not a local function ([[function]]) of "
                          f"{where}")
    debugged = replace(fn, concurrency=1, min_instances=1, timeout=DEBUG_TIMEOUT,
                       init_timeout=DEBUG_TIMEOUT,
                       queue_timeout=float(DEBUG_TIMEOUT), idle_timeout=float(DEBUG_TIMEOUT),
                       environment=(*fn.environment, (DEBUG_VARIABLE, target.address)))
    return replace(config, functions=tuple(debugged if f is fn else f
                                           for f in config.functions))


# -- --reload ------------------------------------------------------------------------------


def watched_directories(config: Config) -> dict[Path, frozenset[tuple[str, str]]]:
    """Each code directory to watch -> the local functions (namespace, name) it holds."""
    found: dict[Path, set[tuple[str, str]]] = {}
    for fn in config.functions:
        found.setdefault(Path(fn.code).resolve(), set()).add((fn.namespace, fn.name))
    return {path: frozenset(keys) for path, keys in found.items()}


def changed_functions(directories: dict[Path, frozenset[tuple[str, str]]],
                      paths: set[str]) -> set[tuple[str, str]]:
    """The functions whose code directory holds one of ``paths``."""
    hit: set[tuple[str, str]] = set()
    for text in paths:
        path = Path(text)
        for directory, keys in directories.items():
            if path == directory or directory in path.parents:
                hit |= keys
    return hit


class CodeWatcher:
    """Watches the code of every local function of the config it was last given (``watch``)
    and recycles a function's instances when its code changes."""

    def __init__(self, functions: LocalFunctions) -> None:
        import watchfiles  # only with --reload: a clear ImportError at start otherwise

        self._awatch = watchfiles.awatch
        self._functions = functions
        self._directories: dict[Path, frozenset[tuple[str, str]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        #: changes seen (for tests and the benchmark's log reading)
        self.recycles = 0

    async def watch(self, config: Config) -> None:
        """Watch ``config``'s code directories (again, if they changed)."""
        directories = watched_directories(config)
        if directories == self._directories and self._task is not None:
            return
        await self.close()
        self._directories = directories
        if not directories:
            return
        self._stop = asyncio.Event()
        ready = asyncio.get_running_loop().create_future()
        self._task = asyncio.get_running_loop().create_task(
            self._run(directories, self._stop, ready))
        await ready  # the watch is in place: a change from now on is seen
        function_log.info("--reload: watching %s", ", ".join(str(d) for d in directories))

    async def _run(self, directories: dict[Path, frozenset[tuple[str, str]]],
                   stop: asyncio.Event, ready: asyncio.Future[None]) -> None:
        watcher = self._awatch(*directories, stop_event=stop, step=STEP_MS,
                               yield_on_timeout=True, rust_timeout=500)
        try:
            async for changes in watcher:
                if not ready.done():
                    ready.set_result(None)  # the first (empty) yield: the watch is set up
                if not changes:
                    continue
                paths = {path for _, path in changes}
                for namespace, name in sorted(changed_functions(directories, paths)):
                    if self._functions.recycle(namespace, name):
                        self.recycles += 1
                        function_log.info("function=%s/%s code changed (%s): instances "
                                          "recycled", namespace, name,
                                          ", ".join(sorted(Path(p).name for p in paths)[:5]))
        except Exception as exc:  # a watcher that fails must not take the proxy down
            function_log.error("--reload: watching the code failed: %s", exc)
        finally:
            if not ready.done():
                ready.set_result(None)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        assert self._stop is not None
        self._stop.set()  # checked by the watch thread every rust_timeout
        try:
            await asyncio.wait_for(task, 5.0)
        except (TimeoutError, asyncio.CancelledError):
            pass
