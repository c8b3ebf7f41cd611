"""``clbscf-proxy store push FILE --store URL`` and ``clbscf-proxy store pull --store URL``.

push validates FILE as an instance in store mode will read it (the loader, relative paths from
the working directory, the certificates as start-up checks them) and stores its text as it is,
comments included; a bad file exits 2 naming the field path, and nothing is stored. The write is
a compare-and-swap on the revision push read, so a change an instance made meanwhile is not
silently overwritten: push fails and says so (run it again to overwrite); with ``--if-empty``
it stores nothing when a table is already there (a seed, e.g. a Kubernetes Job, that can run
again without undoing the fleet's changes), still validating FILE. pull prints the
stored document. Exit 0, 2 for a bad file, a bad URL, an empty store or a store that cannot be
reached (the message names it).

Must not know: serving, the admin API.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from ..config import parse_document
from ..errors import ConfigError
from . import Conflict
from .etcd import EtcdBackend, parse_store_url
from .table import EMPTY_STORE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clbscf-proxy store",
                                     description="Put the rule table in etcd, or read it.")
    sub = parser.add_subparsers(dest="command", required=True)
    push = sub.add_parser("push", help="validate FILE and store it")
    push.add_argument("file", type=Path, metavar="FILE")
    push.add_argument("--if-empty", action="store_true",
                      help="store FILE only when the store holds no table yet (a seed that "
                           "is safe to run again: the fleet's changes are kept)")
    pull = sub.add_parser("pull", help="print the stored table (TOML)")
    for each in (push, pull):
        each.add_argument("--store", required=True, metavar="etcd://HOST:PORT[,...]/PREFIX")
    return parser


async def push(url_text: str, path: Path, if_empty: bool = False) -> str:
    url = parse_store_url(url_text)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path.name}: cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path.name}: must be UTF-8 text, got byte {exc.start}") from exc
    config = parse_document(text, None, Path.cwd(), path.name)
    from ..tls import config_certificates

    config_certificates(config)
    backend = EtcdBackend(url)
    try:
        current = await backend.read()
        if if_empty and current.text is not None:
            return (f"{path}: not pushed, {url} already holds a table (revision "
                    f"{current.revision}); --if-empty keeps it")
        try:
            revision = await backend.write(text, current.revision)
        except Conflict:
            raise ConfigError(f"{url}: the table changed while it was pushed (an admin API "
                              "change?); nothing was stored, push again to overwrite") from None
    finally:
        await backend.close()
    return f"{path}: stored in {url} (revision {revision})"


async def pull(url_text: str) -> str:
    url = parse_store_url(url_text)
    backend = EtcdBackend(url)
    try:
        snapshot = await backend.read()
    finally:
        await backend.close()
    if snapshot.text is None:
        raise ConfigError(f"{url}: {EMPTY_STORE}")
    return snapshot.text


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "push":
            print(asyncio.run(push(args.store, args.file, args.if_empty)), file=sys.stderr)
        else:
            sys.stdout.write(asyncio.run(pull(args.store)))
    except ConfigError as exc:
        print(f"clbscf-proxy: {exc}", file=sys.stderr)
        return 2
    return 0
