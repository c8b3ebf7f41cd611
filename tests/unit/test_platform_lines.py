"""logs.PlatformLines (SCF's START / END / Report lines): its fast path writes exactly what
``logging`` would (same prefix, one line each) in one write, honours the level, and falls back
to records when setup_logging's handler is not the one in place."""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Iterator

import pytest

from proxy import logs
from proxy.logs import PlatformLines, setup_logging

LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d INFO proxy.function: (.*)")


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> Iterator[CountingStream]:
    out = CountingStream()
    root = logging.getLogger("proxy")
    saved = (root.handlers[:], root.level, root.propagate, logs._handler)
    monkeypatch.setattr(sys, "stderr", out)
    setup_logging("info")
    yield out
    root.handlers[:], root.level, root.propagate, logs._handler = saved


def _only_ours() -> None:
    """pytest's capture handlers join the proxy logger during a test: take them out."""
    logging.getLogger("proxy").handlers[:] = [logs._handler]  # type: ignore[list-item]


def test_the_fast_path_writes_what_logging_writes_in_one_write(stream: CountingStream) -> None:
    _only_ours()
    logging.getLogger("proxy.function").info("%s", "by logging")
    before = stream.writes
    PlatformLines("proxy.function").write("START RequestId:a", "END RequestId:a")
    assert stream.writes - before == 1
    lines = stream.getvalue().splitlines()
    assert [LINE.fullmatch(line)[1] for line in lines] == [  # type: ignore[index]
        "by logging", "START RequestId:a", "END RequestId:a"]
    assert lines[0].split(" INFO ")[0][:16] == lines[1].split(" INFO ")[0][:16]


def test_the_level_is_honoured(stream: CountingStream) -> None:
    _only_ours()
    logging.getLogger("proxy").setLevel(logging.WARNING)
    PlatformLines("proxy.function").write("START RequestId:a")
    assert stream.getvalue() == ""


def test_another_handler_gets_records(stream: CountingStream) -> None:
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    _only_ours()
    root = logging.getLogger("proxy")
    root.handlers.append(Keep())
    PlatformLines("proxy.function").write("START RequestId:b", "END RequestId:b")
    assert seen == ["START RequestId:b", "END RequestId:b"]
    assert [LINE.fullmatch(line)[1] for line in stream.getvalue().splitlines()] == [  # type: ignore[index]
        "START RequestId:b", "END RequestId:b"]


def test_the_scf_apis_tail_log_is_the_last_4_kb_ending_with_the_report() -> None:
    from proxy.scf.api import MAX_LOG, tail_log

    short = tail_log("r1", ["hello"], 2.4, 128, 18 * 1048576)
    assert short == ("START RequestId:r1\nhello\nEND RequestId:r1\n"
                     "Report RequestId:r1 Duration:2ms Memory:128MB MemUsage:18.0MB\n")
    long = tail_log("r2", [f"line {i} " + "x" * 90 for i in range(100)], 1.0, 64, 0)
    assert len(long.encode()) <= MAX_LOG and "START RequestId" not in long
    assert long.endswith("END RequestId:r2\nReport RequestId:r2 Duration:1ms Memory:64MB "
                         "MemUsage:0.0MB\n") and "line 99 " in long
