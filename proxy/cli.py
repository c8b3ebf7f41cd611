"""The command line: ``clbscf-proxy [options]``, ``clbscf-proxy invoke FUNCTION`` and
``clbscf-proxy store push FILE|pull --store URL``.

Flags are generated from one table (``OPTIONS``) so each is declared once, with its help text;
the table is also what the README's option list is written from. Where the rule table is kept
is decided here (``open_table``): the --config file (changes written back into it), the
--store (etcd), or nowhere (the embedded default, which refuses changes). ``main(argv) -> int``
returns
the exit status: 0 on a clean stop, 2 for a config or usage error (with the ConfigError's text,
which names the file and field), 1 for anything else.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__
from .config import (Config, embedded_default, load_config, parse_document, parse_listen,
                     with_listen_overrides)
from .errors import ConfigError
from .logs import AccessLog, setup_logging
from .store import Backend, Snapshot
from .store.table import EMPTY_STORE, Table

error_log = logging.getLogger("proxy.error")

#: (flags, argparse keyword arguments): the single declaration of every option
OPTIONS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("--listen",), dict(action="append", default=[], metavar="[HOST]:PORT",
                         help="listen here (repeatable); with --config, overrides the bind "
                              "address of the listener on that port or adds one")),
    (("-c", "--config"), dict(type=Path, metavar="FILE",
                              help="the rule table (TOML); admin API changes are written "
                                   "back into it")),
    (("--store",), dict(metavar="etcd://HOST:PORT[,...]/PREFIX",
                        help="keep the rule table in etcd instead of a file (no --config): "
                             "serve what it holds, follow its changes, write admin API "
                             "changes to it (etcds:// for TLS)")),
    (("--check-config",), dict(nargs="?", const=True, default=None, metavar="FILE",
                               help="validate the config (FILE or --config) and its certificates "
                                    "as start-up does, and exit")),
    (("--tls",), dict(action="store_true",
                      help="serve HTTPS on the --listen ports (443 implies it)")),
    (("--tls-cert",), dict(type=Path, metavar="FILE", help="certificate chain (PEM)")),
    (("--tls-key",), dict(type=Path, metavar="FILE", help="private key (PEM)")),
    (("--http",), dict(choices=("auto", "httptools", "h11"), default="auto",
                       help="HTTP/1.1 parser: httptools (llhttp), h11 (pure Python), or auto")),
    (("--log-level",), dict(choices=("debug", "info", "warning", "error"), default="info",
                            help="error-log verbosity (stderr)")),
    (("--no-access-log",), dict(action="store_true",
                                help="do not write the JSON access log to stdout")),
    (("--drain-timeout",), dict(type=float, default=30.0, metavar="SECONDS",
                                help="on SIGTERM, how long in-flight requests may take")),
    (("--state-dir",), dict(type=Path, metavar="DIR",
                            help="where generated development certificates and request-body "
                                 "temp files (client_body_temp/) are kept (default: "
                                 "$CLBSCF_PROXY_STATE, else the XDG state folder)")),
    (("--admin",), dict(metavar="[HOST]:PORT",
                        help="serve the admin API (healthz, metrics, CLB API actions) here; "
                             "the host defaults to 127.0.0.1; off loopback the bearer token "
                             "comes from CLBSCF_ADMIN_TOKEN")),
    (("--workers",), dict(type=int, default=1, metavar="N",
                          help="N worker processes share the listening sockets under a "
                               "supervisor that restarts any that dies (default 1: one "
                               "process, no supervisor)")),
    (("--scf-api",), dict(metavar="[HOST]:PORT",
                          help="serve the local SCF API (Invoke, InvokeFunction; TC3-signed "
                               "with CLBSCF_SCF_API_SECRET_ID / CLBSCF_SCF_API_SECRET_KEY) "
                               "here; the host defaults to 127.0.0.1")),
    (("--reload",), dict(action="store_true",
                         help="watch each local function's code and recycle its instances on "
                              "a change (calls in flight finish on the old code)")),
    (("--debug",), dict(metavar="NAMESPACE/FUNCTION[:[HOST:]PORT]",
                        help="run that function in one instance under debugpy, listening for "
                             "an attach (127.0.0.1:5678 unless given), its timeout lifted; "
                             "needs the debug extra and --workers 1")),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clbscf-proxy",
        description="An L7 edge gateway: Tencent CLB rules in front of SCF functions and CVM "
                    "servers. `clbscf-proxy invoke NAMESPACE/FUNCTION --event FILE` runs a "
                    "local function once.",
    )
    parser.add_argument("--version", action=_VersionAction, nargs=0,
                        help="show the version and which native modules are active")
    for flags, kwargs in OPTIONS:
        parser.add_argument(*flags, **kwargs)
    return parser


class _VersionAction(argparse.Action):
    """--version, computed only when asked (it imports the native modules to say which)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(version_text())
        parser.exit()


def version_text() -> str:
    from . import _native

    return f"clbscf-proxy {__version__} ({_native.describe()})"


def _certificates(args: argparse.Namespace) -> tuple[Any, ...]:
    from .config import Certificate

    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    if args.tls_cert:
        return (Certificate(args.tls_cert.resolve(), args.tls_key.resolve()),)
    return ()


def document_parser(args: argparse.Namespace, source: Path | None,
                    label: str | None = None) -> Callable[[str], Config]:
    """How a TOML document (the file's text, or the store's) becomes the Config to serve:
    the loader, then the command line's --listen overrides. Relative paths in it are from the
    file's folder, or in store mode from the working directory."""
    listens = [parse_listen(text) for text in args.listen]
    certs = _certificates(args)
    base = source.parent if source is not None else Path.cwd()

    def parse(text: str) -> Config:
        config = parse_document(text, source, base, label)
        config = with_listen_overrides(config, listens, args.tls, certs) if listens else config
        return _with_debug(config, args)
    return parse


def _backend(args: argparse.Namespace) -> tuple[Backend, Callable[[str], Config]] | None:
    if args.store:
        from .store.etcd import EtcdBackend, parse_store_url

        if args.config is not None:
            raise ConfigError("--store and --config: give one; put the file in the store with "
                              "clbscf-proxy store push FILE --store URL")
        url = parse_store_url(args.store)
        return EtcdBackend(url), document_parser(args, None, str(url))
    if args.config is not None:
        from .store.file import FileBackend

        backend = FileBackend(args.config)
        return backend, document_parser(args, backend.path)
    return None


def config_of(argv: list[str], document: str | None) -> tuple[argparse.Namespace, Config]:
    """A worker's options and config: the supervisor's command line, and the document its
    rule table holds read with the same loader (None: the command line alone says it)."""
    args = build_parser().parse_args(argv)
    if document is None:
        return args, resolve_config(args)
    if args.store:
        from .store.etcd import parse_store_url

        return args, document_parser(args, None, str(parse_store_url(args.store)))(document)
    from .store.file import FileBackend

    return args, document_parser(args, FileBackend(args.config).path)(document)


def open_table(args: argparse.Namespace) -> tuple[Config, Table | None]:
    """The config to serve and the Table that keeps it (None: the embedded default)."""
    found = _backend(args)
    if found is None:
        return resolve_config(args), None
    backend, parse = found
    if backend.kind == "file":
        resolve_config(args)  # the file's own errors first, as --check-config gives them
    snapshot = _read(backend)
    if snapshot.text is None:
        raise ConfigError(f"{backend.location}: {EMPTY_STORE}")
    config = parse(snapshot.text)
    if backend.kind == "etcd":  # the first read ran on a loop of its own; serve on a fresh one
        backend = _backend(args)[0]  # type: ignore[index]
    return config, Table(backend, parse, snapshot)


def _read(backend: Backend) -> Snapshot:
    import asyncio

    async def read() -> Snapshot:
        try:
            return await backend.read()
        finally:
            await backend.close()
    return asyncio.run(read())


def resolve_config(args: argparse.Namespace) -> Config:
    """The config the flags describe: the file (with --listen overrides) or the default."""
    return _with_debug(_resolve_config(args), args)


def _with_debug(config: Config, args: argparse.Namespace) -> Config:
    """--debug's transform of the served config (the file's, the store's, and on reloads)."""
    if getattr(args, "debug", None):
        from .scf.devloop import debug_config, parse_debug

        config = debug_config(config, parse_debug(args.debug))
    return config


def _resolve_config(args: argparse.Namespace) -> Config:
    listens = [parse_listen(text) for text in args.listen]
    certs = _certificates(args)
    if args.config is not None:
        config = load_config(args.config)
        return with_listen_overrides(config, listens, args.tls, certs) if listens else config
    if not listens:
        raise ConfigError("nothing to serve: give --listen [HOST]:PORT and/or --config FILE "
                          "or --store URL")
    host, port = listens[0]
    tls = args.tls or port == 443
    if tls and not certs:
        certs = (_dev_certificate(args),)
    config = embedded_default(host, port, tls, certs)
    return with_listen_overrides(config, listens[1:], args.tls, certs) if listens[1:] else config


def _dev_certificate(args: argparse.Namespace) -> Any:
    from .tls import default_state_dir, ensure_dev_certificate

    return ensure_dev_certificate(args.state_dir or default_state_dir())


def check_config(args: argparse.Namespace) -> int:
    """--check-config: what start-up would refuse is refused here, with the same error (exit
    2): the config's validation, then every certificate's checks (tls.config_certificates,
    which start-up and reload run too: files, chain, key type, key matching the leaf,
    validity, usage, names, OpenSSL loading them)."""
    if isinstance(args.check_config, str):
        args.config = Path(args.check_config)
    config = resolve_config(args)
    from .tls import config_certificates

    config_certificates(config)
    rules = sum(len(listener.rules) for listener in config.listeners)
    print(f"{config.source or 'embedded default'}: OK ({len(config.listeners)} listeners, "
          f"{rules} rules, {len(config.functions)} functions)")
    return 0


def admin_address(args: argparse.Namespace) -> tuple[str, int, str | None] | None:
    """(host, port, token) of --admin, or None; ConfigError when a token is missing."""
    if not args.admin:
        return None
    from .adminserver import admin_token, parse_admin

    host, port = parse_admin(args.admin)
    return host, port, admin_token(host, os.environ)


def check_devloop(args: argparse.Namespace) -> None:
    """--scf-api, --reload and --debug: what they need, checked before anything starts
    (ConfigError, exit 2)."""
    if args.scf_api is not None:
        from .scf.api import api_credentials, parse_scf_api

        parse_scf_api(args.scf_api)
        api_credentials(os.environ)
    if args.reload:
        import importlib.util

        if importlib.util.find_spec("watchfiles") is None:
            raise ConfigError("--reload needs watchfiles, which is not installed: "
                              "pip install watchfiles")
    if args.debug is not None:
        from .scf.devloop import parse_debug, require_debugpy

        target = parse_debug(args.debug)
        if args.workers > 1:
            raise ConfigError("--debug runs the function in one instance: it needs --workers 1")
        require_debugpy()
        print(f"clbscf-proxy: debugging {target.key} under debugpy on {target.address} (one "
              "instance, timeouts lifted)", file=sys.stderr, flush=True)


def _bind_scf_api(args: argparse.Namespace) -> Any:
    from .adminserver import bind_scf_api

    return bind_scf_api(args.scf_api)


async def serve(config: Config, table: Table | None, args: argparse.Namespace) -> int:
    from .server import ProxyServer

    server = ProxyServer(config, parser_kind=args.http,
                         access_log=AccessLog(enabled=not args.no_access_log),
                         admin=admin_address(args), table=table,
                         load=lambda: resolve_config(args),
                         scf_api=_bind_scf_api(args), reload=args.reload)
    try:
        await server.start()
    except BaseException:
        await server.stop(drain_timeout=0)
        raise
    await server.run_until_signalled(args.drain_timeout)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "invoke":
        from .invoke import main as invoke_main

        return invoke_main(argv[1:])
    if argv and argv[0] == "store":
        from .store.command import main as store_main

        return store_main(argv[1:])
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    if args.state_dir is not None:  # one answer for tls.default_state_dir, workers included
        os.environ["CLBSCF_PROXY_STATE"] = os.path.abspath(args.state_dir)
    try:
        if args.check_config is not None:
            return check_config(args)
        config, table = open_table(args)
        if any(listener.protocol == "HTTPS" for listener in config.listeners):
            from .tls import default_state_dir, ensure_openssl_groups_config

            # Before any handshake: limits key exchange to X25519/P-256/P-384; may re-exec
            # this process once with OPENSSL_CONF set (Python 3.11 has no set_groups()).
            ensure_openssl_groups_config(args.state_dir or default_state_dir())
        if args.workers < 1:
            raise ConfigError("--workers must be at least 1")
        check_devloop(args)
        import uvloop

        if args.workers > 1:
            from .supervisor import Supervisor

            supervisor = Supervisor(config, args, argv, lambda: resolve_config(args),
                                    admin_address(args), table)
            return uvloop.run(supervisor.run())
        return uvloop.run(serve(config, table, args))
    except ConfigError as exc:
        print(f"clbscf-proxy: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
