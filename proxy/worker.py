"""A worker process under the supervisor: ``python -m proxy.worker`` (started by supervisor.py).

Owns the worker's side of ``--workers N``: read the ``WorkerSetup`` from the control channel
(control.py), serve the inherited listening sockets with a ``ProxyServer`` (its own function
instances, upstream pools and metrics), and answer the supervisor's ops: its metrics text, its
health, and the rule table's document to reload (from SIGHUP or the admin API), read with the
supervisor's own command line and applied the same way as in a single process. It exits when
told by SIGTERM/SIGINT (graceful drain) or when the supervisor is gone (the channel's EOF, and
the kernel's parent-death signal for a supervisor killed hard), so no worker outlives its
supervisor.

Must not know: other workers, the admin API, how it is restarted.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import sys
from typing import Any

import orjson

from .control import CONTROL_FD_VARIABLE, Channel, WorkerSetup, decode_document
from .errors import ConfigError
from .logs import AccessLog, setup_logging

error_log = logging.getLogger("proxy.error")
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when its parent (the supervisor) dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the channel's EOF still stops us


async def run(channel: Channel) -> int:
    from .cli import config_of
    from .server import ProxyServer

    header, body = await channel.receive()
    if header.get("op") != "setup":
        raise RuntimeError(f"expected the setup message, got {header!r}")
    setup = WorkerSetup.decode(body)
    args, config = config_of(setup.argv, setup.document)
    setup_logging(args.log_level)
    server = ProxyServer(config, parser_kind=args.http,
                         access_log=AccessLog(enabled=not args.no_access_log,
                                              atomic_lines=True),
                         scf_api=socket.socket(fileno=setup.scf_api_fd)
                         if setup.scf_api_fd >= 0 else None, reload=args.reload)
    sockets = {name: [socket.socket(fileno=fd) for fd in fds]
               for name, fds in setup.sockets.items()}
    await server.start(sockets)

    async def metrics(_: bytes) -> tuple[dict[str, Any], bytes]:
        return {"ok": True}, server.metrics.render()

    async def health(_: bytes) -> tuple[dict[str, Any], bytes]:
        return {"ok": True}, orjson.dumps(server.health())

    async def status(_: bytes) -> tuple[dict[str, Any], bytes]:
        return {"ok": True}, orjson.dumps(server.status_view())

    async def reload(data: bytes) -> tuple[dict[str, Any], bytes]:
        try:
            await server.reload(config_of(setup.argv, decode_document(data))[1])
        except ConfigError as exc:
            return {"ok": False, "error": str(exc)}, b""
        return {"ok": True}, b""

    await channel.send({"op": "ready", "pid": os.getpid()})
    loop = asyncio.get_running_loop()
    serving = loop.create_task(channel.serve({"metrics": metrics, "health": health,
                                              "status": status, "reload": reload}))

    def orphaned(_: asyncio.Task[None]) -> None:
        if not server.state.draining:
            error_log.warning("worker %d: the supervisor is gone; draining", setup.index)
            loop.create_task(server.stop(args.drain_timeout))
    serving.add_done_callback(orphaned)
    await server.run_until_signalled(args.drain_timeout, reload_on_hup=False)
    serving.cancel()
    return 0


def main() -> int:
    _die_with_parent()
    fd = int(os.environ.pop(CONTROL_FD_VARIABLE))
    sock = socket.socket(fileno=fd)
    import uvloop

    async def start() -> int:
        return await run(await Channel.open(sock))
    try:
        return uvloop.run(start())
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
