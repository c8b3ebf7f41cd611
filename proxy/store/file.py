"""File mode: the rule table is the ``--config`` file, and changes are written back into it.

Owns reading the file with its revision (the SHA-256 of its bytes, so a hand edit since it was
loaded is seen as a conflict however its time stamps look) and writing a new text atomically
(writeback.atomic_write). A file without write permission, or a folder where no file can be
made (a read-only mount such as a Kubernetes ConfigMap), is ``ReadOnly``: its message points to
``--store``.

Must not know: the actions, TOML, etcd.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

from .. import writeback
from . import Conflict, ReadOnly, Snapshot, StoreError

READ_ONLY_HINT = ("changes cannot be written back; keep the table in etcd instead: "
                  "clbscf-proxy store push FILE --store etcd://HOST:PORT/PREFIX, then run with "
                  "--store")


def revision(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FileBackend:
    kind = "file"

    def __init__(self, path: Path) -> None:
        self.path = Path(os.path.abspath(path))
        self.location = str(self.path)

    def _read_bytes(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot read: {exc.strerror}") from exc

    async def read(self) -> Snapshot:
        data = self._read_bytes()
        return Snapshot(data.decode("utf-8", "replace"), revision(data))

    async def peek(self) -> str:
        return revision(self._read_bytes())

    async def write(self, text: str, expected: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(None, self._write, text,
                                                                expected)

    def _write(self, text: str, expected: str) -> str:
        if revision(self._read_bytes()) != expected:
            raise Conflict(f"{self.path} changed on disk since it was loaded")
        if writeback.is_read_only(self.path):
            raise ReadOnly(f"{self.path} is read-only: {READ_ONLY_HINT}")
        try:
            writeback.atomic_write(self.path, text)
        except OSError as exc:
            if exc.errno in writeback.READ_ONLY_ERRORS:
                raise ReadOnly(f"{self.path} cannot be written ({exc.strerror}): "
                               f"{READ_ONLY_HINT}") from exc
            raise StoreError(f"{self.path}: cannot write: {exc.strerror}") from exc
        return revision(text.encode("utf-8"))

    async def close(self) -> None:
        pass
