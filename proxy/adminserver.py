"""The admin API's own listener: serves an ``AdminApp`` (admin.py) on the ``--admin`` address.

Owns the admin address rules of SPEC §10: loopback by default; bound anywhere else it requires
a bearer token, read from the environment variable ``CLBSCF_ADMIN_TOKEN`` (never from the
command line, where ``ps`` would show it), and refuses to start without one. ``/healthz``
answers without the token, so load balancers and kubelets can probe it.

Strategy: the same connection machinery as the listeners (``HttpConnection`` with a
``ServerState`` whose router is the AdminApp), with tighter client limits: small bodies and
headers, short timeouts, a few hundred connections. Admin calls are not written to the access
log. On start it prints ``clbscf-proxy: admin on http://HOST:PORT`` (the real port for port 0).

Must not know: the actions (admin.py), what is behind ``apply`` (one server or the workers).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import sys
from collections.abc import Iterable, Mapping

from .config import Listener, parse_listen
from .connection import HttpConnection, ListenerContext, ServerState
from .errors import ConfigError
from .logs import AccessLog

TOKEN_VARIABLE = "CLBSCF_ADMIN_TOKEN"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def admin_token(host: str, environ: Mapping[str, str]) -> str | None:
    """The bearer token for an admin bound to ``host``; ConfigError when one is required."""
    token = environ.get(TOKEN_VARIABLE, "").strip() or None
    if token is None and not is_loopback(host):
        where = host or "all addresses"
        raise ConfigError(f"--admin on {where} (not loopback) requires a bearer token: set "
                          f"{TOKEN_VARIABLE}")
    return token


def parse_admin(text: str) -> tuple[str, int]:
    """``[HOST]:PORT`` -> (host, port); without a host it is 127.0.0.1, never all addresses
    (binding the admin everywhere must be asked for: ``0.0.0.0:PORT``)."""
    host, port = parse_listen(text)
    return host or "127.0.0.1", port


async def start_admin(app: object, host: str, port: int, parser_kind: str = "auto", *,
                      what: str = "admin", max_body: int = 1 << 20,
                      sock: socket.socket | None = None) -> asyncio.AbstractServer:
    """Bind the admin address (or serve ``sock``, bound already) and serve ``app`` (anything
    with ``async handle(Request)``). ``what`` names it in the start-up line and errors (the
    local SCF API is served the same way: ``what="scf-api"``)."""
    # the admin's client limits: API bodies are small and callers are tools, not browsers
    listener = Listener(name=what, protocol="HTTP", port=port, host=host,
                        client_header_timeout=10.0, client_body_timeout=10.0,
                        keepalive_timeout=30.0, client_max_body_size=max_body,
                        max_header_size=16384, max_header_count=64, max_connections=256)
    state = ServerState(app, AccessLog(enabled=False))  # type: ignore[arg-type]
    ctx = ListenerContext(listener, parser_kind, state)
    loop = asyncio.get_running_loop()
    try:
        if sock is not None:
            server = await loop.create_server(lambda: HttpConnection(ctx), sock=sock)
        else:
            server = await loop.create_server(lambda: HttpConnection(ctx), host=host,
                                              port=port, reuse_address=True)
    except OSError as exc:
        raise ConfigError(f"--{what}: cannot listen on {host}:{port}: {exc.strerror}") from exc
    if sock is None:
        announce_app(what, server.sockets)
    return server


def announce_app(what: str, sockets: Iterable[socket.socket]) -> None:
    """``clbscf-proxy: WHAT on http://HOST:PORT`` for each bound socket (the real port)."""
    for bound in sockets:
        bound_host, bound_port = bound.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        print(f"clbscf-proxy: {what} on http://{shown}:{bound_port}", file=sys.stderr,
              flush=True)


def bind_app(what: str, host: str, port: int) -> socket.socket:
    """A listening socket for ``start_admin(..., sock=)``, bound now (the supervisor binds the
    local SCF API once and hands it to every worker, as it does the listeners)."""
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host
                                    else socket.AF_INET, reuse_port=True)
    except OSError as exc:
        raise ConfigError(f"--{what}: cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.set_inheritable(True)
    return sock


def bind_scf_api(text: str | None) -> socket.socket | None:
    """The bound, announced socket of ``--scf-api [HOST]:PORT`` (scf/api.py), or None."""
    if text is None:
        return None
    from .scf.api import parse_scf_api

    sock = bind_app("scf-api", *parse_scf_api(text))
    announce_app("scf-api", [sock])
    return sock
