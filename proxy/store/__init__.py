"""Where the rule table is kept, and the one path every change of it takes.

The table is a TOML document (the file's text, or the same text in etcd). ``table.Table`` holds
the running one and its revision, and is the only place a change is committed: an admin API
action is run on the latest table, the new document is written (file.py: atomically, keeping
comments; etcd.py: compare-and-swap on the key's revision, retried on conflict) and only then
applied, as a reload is. Nothing is ever changed in memory alone.

This module declares what the backends share: ``Snapshot`` (a document and its revision),
``StoreError`` (the store cannot be reached or refused us: a ConfigError, so the command line
exits 2 with it) and ``Conflict`` (the document changed since it was read).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from ..errors import ConfigError


class Snapshot(NamedTuple):
    #: the TOML document, or None when the store holds none
    text: str | None
    #: the file's SHA-256, or etcd's mod_revision of the key ("0": no key)
    revision: str


class StoreError(ConfigError):
    """The store cannot be read or written (unreachable, authentication, TLS, read-only)."""


class ReadOnly(StoreError):
    """The table cannot be written where it is kept."""


class Conflict(Exception):
    """The document changed since the revision the change was made on."""


class Backend(Protocol):
    #: "file" or "etcd"
    kind: str
    #: where, for messages: the file's path or the store URL
    location: str

    async def read(self) -> Snapshot: ...

    async def peek(self) -> str:
        """The revision ``read`` would give, without the document (the watch's cheap poll)."""
        ...

    async def write(self, text: str, expected: str) -> str:
        """Store ``text`` if the revision is still ``expected``; the new revision.
        Raises Conflict, ReadOnly or StoreError."""
        ...

    async def close(self) -> None: ...
