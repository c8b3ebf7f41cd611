"""The running rule table: its document, its revision, and the one path a change takes.

Owns ``Table``: what the process serves (as the document it was read from and that document's
revision in its backend), and

- ``commit(change)``: an admin API action made durable before it is answered. The action is
  run on the latest table (the running one, or in store mode the store's latest), its new
  ``Config`` is written into the document (writeback.patch, keeping comments), the document is
  validated by the loader (``parse``: the same as a file load or a reload) and must give
  exactly what the action made, the reload checks run (``check``: listeners unchanged,
  certificates load), the backend stores it (atomic file write, or etcd compare-and-swap
  retried on conflict), and only then it is applied (``apply``: the reload path). Any
  failure before the store write changes nothing anywhere; errors are the CLB API's
  (``ApiError``: FailedOperation for conflicts and store trouble, InvalidParameterValue for a
  value the loader refuses).
- ``reload()``: SIGHUP; in store mode also what ``watch()`` does when the store's revision
  moved (polled every ``POLL_INTERVAL``; a change lands within about that). A document that
  does not validate, or changes the listeners, is refused, logged with its field path, counted
  (``clbscf_store_rejected_total``) and the last good table stays.
- ``health()``: the store's state for /healthz: ok / unreachable (and since when, and why),
  the revision served; ``status()`` the same for the status page (mode, state, revision,
  last error).

Without a backend (the embedded default, no --config) every change is refused: there is
nowhere to make it durable.

Must not know: HTTP, the admin envelope, sockets, workers (``apply`` is the server's or the
supervisor's).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError

from .. import writeback
from ..clbapi import ApiError
from ..config import Config
from ..errors import ConfigError
from ..metrics import Registry
from . import Backend, Conflict, ReadOnly, Snapshot, StoreError

error_log = logging.getLogger("proxy.error")

POLL_INTERVAL = 0.25  # seconds between two reads of the store's revision
CAS_ATTEMPTS = 20  # compare-and-swap attempts of one change before giving up
NO_STORE = ("the embedded default (no --config) has no file to write changes to, and changes "
            "are never kept in memory alone: start with --config FILE or --store URL")
EMPTY_STORE = "store holds no table: push one with clbscf-proxy store push"

Change = Callable[[Config], tuple[Config | None, dict[str, Any]]]


def _same(a: Config, b: Config) -> bool:
    return replace(a, source=None) == replace(b, source=None)


class Table:
    def __init__(self, backend: Backend | None, parse: Callable[[str], Config],
                 snapshot: Snapshot | None) -> None:
        """``parse``: a document -> the Config it describes (the loader, plus the command
        line's --listen overrides), ConfigError when it does not validate; ``snapshot``: what
        the running config was loaded from."""
        self.backend = backend
        self.parse = parse
        self.text = snapshot.text if snapshot else None
        self.revision = snapshot.revision if snapshot else ""
        self._apply: Callable[[Config], Awaitable[None]] | None = None
        self._check: Callable[[Config], None] = lambda config: None
        self._current: Callable[[], Config] | None = None
        self._lock = asyncio.Lock()
        self._watching: asyncio.Task[None] | None = None
        self.state = "ok"
        self.error = ""
        self.since = time.time()
        self._refused = ""  # the revision last refused, so it is logged once

    def attach(self, current: Callable[[], Config], apply: Callable[[Config], Awaitable[None]],
               check: Callable[[Config], None], registry: Registry) -> None:
        """The server's side: its running config, how a config is applied (reload), the
        checks a reload makes before anything changes, and its metrics."""
        self._current, self._apply, self._check = current, apply, check
        self._rejected = registry.counter(
            "clbscf_store_rejected_total", "Documents read from the store that were not "
            "applied (invalid, or changing the listeners), by reason.", ("reason",))
        self._conflicts = registry.counter(
            "clbscf_store_conflicts_total", "Compare-and-swap writes retried because another "
            "instance changed the table first.")
        self._up = registry.gauge("clbscf_store_up", "1 while the table's store answers.")
        self._up.labels().set(1)

    @property
    def kind(self) -> str:
        return self.backend.kind if self.backend else "none"

    # -- state -------------------------------------------------------------------------------

    def _reachable(self, ok: bool, error: str = "") -> None:
        state = "ok" if ok else "unreachable"
        if state != self.state:
            self.since = time.time()
            if ok:
                error_log.info("store %s reachable again", self.location)
            else:
                error_log.error("store %s unreachable, serving revision %s: %s",
                                self.location, self.revision, error)
        self.state, self.error = state, error
        self._up.labels().set(1 if ok else 0)

    @property
    def location(self) -> str:
        return self.backend.location if self.backend else "embedded default"

    def health(self) -> dict[str, Any]:
        return {"kind": self.kind, "location": self.location, "state": self.state,
                "revision": self.revision, "since": round(self.since, 3),
                **({"error": self.error} if self.error else {})}

    def status(self) -> dict[str, Any]:
        """The store at a glance, for the status page: ``mode`` (none, file or etcd),
        ``state`` (ok or unreachable), the ``revision`` served, ``last_error`` ("" if none)."""
        return {"mode": self.kind, "state": self.state, "revision": self.revision,
                "last_error": self.error}

    # -- a change ------------------------------------------------------------------------------

    async def commit(self, change: Change) -> dict[str, Any]:
        """Run ``change`` on the latest table, store the result, apply it; its answer."""
        assert self._apply is not None and self._current is not None
        if self.backend is None:
            new, answer = change(self._current())  # its own parameter errors come first
            raise ApiError("FailedOperation", NO_STORE)
        async with self._lock:
            for _ in range(CAS_ATTEMPTS):
                snapshot = await self._read_for_change()
                current = self._current()
                if snapshot.revision != self.revision:
                    if self.backend.kind == "file":
                        raise ApiError("FailedOperation", f"conflict: {self.location} was "
                                       "changed on disk since it was loaded; reload it first "
                                       "(SIGHUP), then retry. Nothing was changed")
                    current = self._parse_stored(snapshot)
                new, answer = change(current)
                if new is None:
                    return answer
                text, validated = self._document(snapshot, current, new)
                try:
                    self._check(validated)
                except ConfigError as exc:
                    raise ApiError("FailedOperation", str(exc)) from None
                try:
                    revision = await self.backend.write(text, snapshot.revision)
                except Conflict as exc:
                    if self.backend.kind == "file":
                        raise ApiError("FailedOperation", f"conflict: {exc}; reload it first "
                                       "(SIGHUP), then retry. Nothing was changed") from None
                    self._conflicts.labels().inc()
                    await asyncio.sleep(random.uniform(0.005, 0.05))
                    continue
                except ReadOnly as exc:
                    raise ApiError("FailedOperation", str(exc)) from None
                except StoreError as exc:
                    self._reachable(False, str(exc))
                    raise ApiError("FailedOperation", f"{exc}; the outcome of this change is "
                                   "unknown: describe the table once the store is back "
                                   "(the running table was not changed)") from None
                await self._take(validated, text, revision)
                return answer
        raise ApiError("FailedOperation", f"{self.location}: the table kept changing under "
                       f"this change ({CAS_ATTEMPTS} attempts); nothing was changed")

    async def _read_for_change(self) -> Snapshot:
        assert self.backend is not None
        try:
            snapshot = await self.backend.read()
        except StoreError as exc:
            if self.backend.kind == "etcd":
                self._reachable(False, str(exc))
            raise ApiError("FailedOperation", f"{exc}; nothing was changed") from None
        if self.backend.kind == "etcd":
            self._reachable(True)
        if snapshot.text is None:
            raise ApiError("FailedOperation", f"{self.location}: {EMPTY_STORE}")
        return snapshot

    def _parse_stored(self, snapshot: Snapshot) -> Config:
        assert snapshot.text is not None
        try:
            return self.parse(snapshot.text)
        except ConfigError as exc:
            raise ApiError("FailedOperation", f"the table in {self.location} (revision "
                           f"{snapshot.revision}) does not validate, fix it with "
                           f"clbscf-proxy store push: {exc}") from None

    def _document(self, snapshot: Snapshot, current: Config, new: Config) -> tuple[str, Config]:
        """The new document and the Config the loader reads from it (which must be ``new``)."""
        assert snapshot.text is not None
        try:
            document = tomlkit.parse(snapshot.text)
            writeback.patch(document, current, new)
        except writeback.Unwritable as exc:
            raise ApiError("FailedOperation", f"this change cannot be written to "
                           f"{self.location}: {exc}") from None
        except TOMLKitError as exc:  # the loader read it, so this is tomlkit's limit
            raise ApiError("InternalError", f"{self.location}: cannot edit the document: "
                           f"{exc}") from None
        text = writeback.render(document)
        try:
            validated = self.parse(text)
        except ConfigError as exc:
            # the loader is the one judge of a value (host names, ranges): what it refuses in
            # a file it refuses from the API
            raise ApiError("InvalidParameterValue", f"the change does not validate: {exc}") \
                from None
        if not _same(validated, new):
            error_log.error("write-back of a change to %s does not read back as the change; "
                            "refused", self.location)
            raise ApiError("InternalError", "the change could not be written back faithfully; "
                           "nothing was changed")
        return text, validated

    async def _take(self, config: Config, text: str, revision: str) -> None:
        """A stored document becomes the running one."""
        assert self._apply is not None
        self.text, self.revision = text, revision
        try:
            await self._apply(config)
        except ConfigError as exc:
            raise ApiError("InternalError", f"the change was stored in {self.location} "
                           f"(revision {revision}) but applying it failed: {exc}") from None

    # -- reload and watch ----------------------------------------------------------------------

    async def reload(self) -> bool:
        """Read the table again and apply it (SIGHUP); a bad one is refused and logged."""
        if self.backend is None:
            error_log.warning("SIGHUP: the embedded default has no file to reload")
            return False
        try:
            snapshot = await self.backend.read()
        except StoreError as exc:
            error_log.error("reload refused, the running config stays: %s", exc)
            return False
        async with self._lock:
            return await self._adopt(snapshot)

    async def _adopt(self, snapshot: Snapshot) -> bool:
        assert self._apply is not None
        if snapshot.text is None:
            self._refuse(snapshot, "empty", EMPTY_STORE)
            return False
        try:
            config = self.parse(snapshot.text)
            await self._apply(config)
        except ConfigError as exc:
            self._refuse(snapshot, "invalid", str(exc))
            return False
        self.text, self.revision = snapshot.text, snapshot.revision
        self._refused = ""
        if self.backend is not None and self.backend.kind == "etcd":
            error_log.info("store %s: revision %s applied", self.location, snapshot.revision)
        return True

    def _refuse(self, snapshot: Snapshot, reason: str, message: str) -> None:
        if self._refused == snapshot.revision:
            return  # logged and counted once per revision, not at every poll
        self._refused = snapshot.revision
        self._rejected.labels(reason).inc()
        error_log.error("reload refused, the running config stays (revision %s): %s: %s",
                        self.revision, self.location if self.kind == "etcd" else "", message)

    def start_watching(self) -> None:
        if self.backend is not None and self.backend.kind == "etcd" and self._watching is None:
            self._watching = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        assert self.backend is not None
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            try:
                snapshot = await self.backend.read()
            except StoreError as exc:
                self._reachable(False, str(exc))
                continue
            except Exception:  # never let the watch die: log and go on
                error_log.exception("store %s: watching failed", self.location)
                continue
            self._reachable(True)
            if snapshot.revision in (self.revision, self._refused) or self._lock.locked():
                continue
            async with self._lock:  # a commit may have moved on meanwhile: only newer
                if snapshot.text is None or int(snapshot.revision) > int(self.revision or 0):
                    await self._adopt(snapshot)

    async def close(self) -> None:
        if self._watching is not None:
            self._watching.cancel()
            self._watching = None
        if self.backend is not None:
            await self.backend.close()
