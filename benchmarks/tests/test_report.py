"""Verdicts against the issue's targets, and the table in text, Markdown and JSON."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.report import Check, Row, Side, render_markdown, render_text, write_json

CVM_CHECKS = (Check("value", ">=", 1.0), Check("p99", "<=", 1.5))


def cvm_row(ours: float, peer: float, ours_p99: float, peer_p99: float) -> Row:
    return Row("cvm", "CVM path", "req/s", Side("clbscf-proxy", ours, 1.0, ours_p99),
               Side("nginx", peer, 1.0, peer_p99), checks=CVM_CHECKS)


def test_row_meets_both_targets() -> None:
    row = cvm_row(12000, 10000, 3.0, 2.5)
    assert row.ratio == 1.2
    assert row.p99_ratio == 1.2
    assert row.met is True


def test_p99_over_target_fails_the_row_even_with_more_throughput() -> None:
    assert cvm_row(12000, 10000, 4.0, 2.5).met is False


def test_lower_is_better_check_for_memory() -> None:
    check = (Check("value", "<=", 4.0),)
    small = Row("idle", "", "B/conn", Side("ours", 1500.0), Side("nginx", 500.0), checks=check)
    big = Row("idle", "", "B/conn", Side("ours", 2500.0), Side("nginx", 500.0), checks=check)
    assert (small.met, big.met) == (True, False)


def test_row_with_error_or_missing_number_has_no_verdict() -> None:
    failed = cvm_row(12000, 10000, 3.0, 2.5)
    failed.error = "ours: proxy exited with 1"
    missing = Row("scf", "", "req/s", Side("ours", None), Side("peer", 100.0),
                  checks=(Check("value", ">=", 1.0),))
    untargeted = Row("https-handshake", "", "req/s", Side("ours", 5.0), Side("peer", 4.0))
    assert (failed.met, missing.met, untargeted.met) == (None, None, None)
    assert untargeted.ratio == 1.25


def test_text_table_shows_numbers_ratio_and_verdict() -> None:
    text = render_text([cvm_row(12000, 10000, 3.0, 2.5)])
    header, rule, line = text.splitlines()[:3]
    assert header.split()[:3] == ["scenario", "unit", "ours"]
    assert set(rule.replace(" ", "")) == {"-"}
    assert "12,000" in line and "10,000 (nginx)" in line and "1.20x" in line
    assert ">=1x, p99 <=1.5x" in line and line.rstrip().endswith("yes")


def test_error_row_keeps_peer_numbers_and_long_error_goes_to_notes() -> None:
    row = cvm_row(0, 10000, 0, 2.5)
    row.ours = Side("clbscf-proxy")
    row.error = "ours: proxy-cvm exited with 1: ModuleNotFoundError: No module named " \
                "'proxy.http1' and more words to make it long"
    text = render_text([row])
    assert "error: ours: proxy-cvm" in text and "10,000 (nginx)" in text
    assert "notes:" in text and "'proxy.http1' and more words" in text


def test_markdown_has_one_line_per_row_and_escapes_pipes() -> None:
    row = Row("a|b", "", "req/s", Side("x", 1.0), Side("y", 2.0))
    lines = render_markdown([row, cvm_row(1, 1, 1, 1)]).splitlines()
    assert lines[0].startswith("| scenario | unit | ours |")
    assert lines[1].startswith("| --- |")
    assert lines[2].startswith("| a\\|b |")
    assert len(lines) == 4


def test_json_holds_meta_rows_ratios_and_verdicts(tmp_path: Path) -> None:
    out = tmp_path / "results" / "run.json"
    write_json(out, {"settings": {"duration": 5}}, [cvm_row(12000, 10000, 3.0, 2.5)])
    data = json.loads(out.read_text())
    assert data["settings"] == {"duration": 5}
    (row,) = data["rows"]
    assert row["ratio"] == 1.2 and row["met"] is True
    assert row["checks"] == [">=1x", "p99 <=1.5x"]
    assert row["ours"]["value"] == 12000 and row["peer"]["label"] == "nginx"


def test_cpu_per_request_column_and_json_fields(tmp_path: Path) -> None:
    row = cvm_row(12000, 10000, 3.0, 2.5)
    row.ours.cpu_us_per_request, row.peer.cpu_us_per_request = 61.5, 24.25
    row.ours.cpu_processes = [{"name": "proxy-cvm", "comm": "clbscf-proxy", "pid": 7,
                               "us_per_request": 61.5}]
    row.peer.origin_cpu_us_per_request = 11.0
    header, _, line = render_text([row]).splitlines()[:3]
    assert "CPU µs/req ours / peer" in header and "61.5 / 24.2" in line
    assert "| CPU µs/req ours / peer |" in render_markdown([row])
    out = tmp_path / "run.json"
    write_json(out, {}, [row])
    (data,) = json.loads(out.read_text())["rows"]
    assert data["ours"]["cpu_us_per_request"] == 61.5
    assert data["ours"]["cpu_processes"][0]["comm"] == "clbscf-proxy"
    assert data["peer"]["origin_cpu_us_per_request"] == 11.0
