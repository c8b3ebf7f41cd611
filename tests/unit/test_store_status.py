"""``Table.status()``: the store's state in the stable shape the status page reads."""

from __future__ import annotations

from pathlib import Path

from proxy.config import embedded_default
from proxy.store import Snapshot
from proxy.store.file import FileBackend
from proxy.store.table import Table

KEYS = {"mode", "location", "state", "since", "revision", "last_error", "refused"}


def test_the_embedded_default_has_no_store() -> None:
    config = embedded_default("127.0.0.1", 0, False, ())
    status = Table(None, lambda text: config, None).status()
    assert set(status) == KEYS
    assert (status["mode"], status["state"], status["revision"], status["last_error"],
            status["refused"]) == ("none", "ok", "", "", None)


def test_a_file_table_shows_its_path_and_revision(tmp_path: Path) -> None:
    config = embedded_default("127.0.0.1", 0, False, ())
    backend = FileBackend(tmp_path / "rules.toml")
    status = Table(backend, lambda text: config, Snapshot("x = 1\n", "abc")).status()
    assert set(status) == KEYS
    assert status["mode"] == "file" and status["revision"] == "abc"
    assert status["location"] == str(tmp_path / "rules.toml")
