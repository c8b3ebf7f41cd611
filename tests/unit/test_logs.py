"""The buffered JSON access log: one line per record, and whole-line writes for shared pipes."""

from __future__ import annotations

import json
import select
from typing import Any

from proxy.logs import AccessLog


class RecordingStream:
    """A stream that keeps each write separately, as write(2) calls would be."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.pending = b""

    def write(self, data: bytes) -> int:
        self.pending += data
        return len(data)

    def flush(self) -> None:
        if self.pending:
            self.writes.append(self.pending)
            self.pending = b""


def _records(n: int, size: int) -> list[dict[str, Any]]:
    return [{"i": i, "path": "/" + "x" * size} for i in range(n)]


def test_each_record_is_one_json_line() -> None:
    stream = RecordingStream()
    log = AccessLog(stream)  # type: ignore[arg-type]
    for record in _records(3, 10):
        log.write(record)
    log.flush()
    lines = b"".join(stream.writes).splitlines()
    assert [json.loads(line)["i"] for line in lines] == [0, 1, 2]


def test_atomic_lines_write_whole_lines_of_at_most_pipe_buf() -> None:
    stream = RecordingStream()
    log = AccessLog(stream, atomic_lines=True)  # type: ignore[arg-type]
    records = _records(200, 300) + [{"i": 200, "path": "/" + "y" * (2 * select.PIPE_BUF)}]
    for record in records:
        log.write(record)
    log.flush()
    assert len(stream.writes) > 1
    for piece in stream.writes:
        assert piece.endswith(b"\n")
        # only a single line longer than PIPE_BUF may exceed it, and then it is alone
        assert len(piece) <= select.PIPE_BUF or piece.count(b"\n") == 1
    lines = b"".join(stream.writes).splitlines()
    assert [json.loads(line)["i"] for line in lines] == list(range(201))


def test_disabled_log_writes_nothing() -> None:
    stream = RecordingStream()
    log = AccessLog(stream, enabled=False)  # type: ignore[arg-type]
    log.write({"i": 0})
    log.flush()
    assert stream.writes == []
