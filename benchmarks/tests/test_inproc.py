"""The in-process driver runs the real CVM path (and the SCF path, with a real instance) and
refuses an answer that is not the origin's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import inproc

ROOT = Path(__file__).resolve().parents[2]


def test_drives_requests_through_the_real_path(capsys: pytest.CaptureFixture[str]) -> None:
    assert inproc.main(["--requests", "200"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("200 CVM requests, ") and "us of CPU per request" in out


def test_drives_scf_requests_through_a_real_instance(capsys: pytest.CaptureFixture[str]) -> None:
    assert inproc.main(["--requests", "50", "--scf"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("50 SCF requests, ") and "the proxy only" in out


def test_the_access_log_can_be_on(capsys: pytest.CaptureFixture[str]) -> None:
    assert inproc.main(["--requests", "200", "--access-log"]) == 0
    assert capsys.readouterr().out.startswith("200 CVM requests, ")


def test_profile_order_and_length(capsys: pytest.CaptureFixture[str]) -> None:
    assert inproc.main(["--requests", "50", "--profile", "--sort", "cumulative",
                        "--top", "6"]) == 0
    out = capsys.readouterr().out
    assert "Ordered by: cumulative time" in out and "to 6 due to restriction <6>" in out
    assert "connection.py" in out  # the proxy's path, not only the driver


def test_a_wrong_answer_stops_it(tmp_path: Path) -> None:
    # an origin answering 404 must not be counted as the CVM path's cost
    script = ("import sys; from benchmarks import inproc; "
              "inproc.ANSWER = inproc.ANSWER.replace(b'200 OK', b'404 Not Found'); "
              "sys.exit(inproc.main(['--requests', '10']))")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0 and "unexpected answer" in done.stderr
