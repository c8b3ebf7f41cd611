"""Rows computed from other rows: CPU against the floor, the access log's cost."""

from __future__ import annotations

from benchmarks.derived import derive
from benchmarks.report import Row, Side


def side(label: str, value: float | None, cpu: float | None = None) -> Side:
    return Side(label, value, cpu_us_per_request=cpu)


def rows(cvm_cpu: float, floor_cpu: float, log_ratio: float) -> list[Row]:
    nginx = side("nginx", 10000.0, 20.0)
    return [Row("cvm", "", "req/s", side("clbscf-proxy", 9000.0, cvm_cpu), nginx),
            Row("cvm-floor", "", "req/s", side("floor relay", 15000.0, floor_cpu), nginx),
            Row("cvm-log", "", "req/s", side("ours log", 8000.0 * log_ratio / 0.8),
                side("nginx log", 10000.0))]


def test_cpu_against_the_floor_and_log_ratio_against_cvm() -> None:
    cpu, log = derive(rows(cvm_cpu=39.0, floor_cpu=30.0, log_ratio=0.85))
    assert (cpu.scenario, cpu.unit, cpu.ours.value, cpu.peer.value) == ("cvm-cpu", "µs/req",
                                                                        39.0, 30.0)
    assert cpu.ratio is not None and round(cpu.ratio, 2) == 1.3 and cpu.met is True
    assert log.scenario == "cvm-log-vs-cvm" and log.unit == "ratio"
    assert log.ours.value is not None and round(log.ours.value, 3) == 0.85
    assert log.peer.value == 0.9
    assert log.met is True  # 0.85 / 0.9 = 0.94, within 10 %


def test_targets_missed() -> None:
    cpu, log = derive(rows(cvm_cpu=50.0, floor_cpu=30.0, log_ratio=0.7))
    assert (cpu.met, log.met) == (False, False)


def test_rows_absent_from_the_run_derive_nothing() -> None:
    only_log = [r for r in rows(39.0, 30.0, 0.85) if r.scenario == "cvm-log"]
    assert derive(only_log) == []
    no_numbers = rows(39.0, 30.0, 0.85)
    no_numbers[0].ours = Side("clbscf-proxy")
    cpu, log = derive(no_numbers)
    assert cpu.ours.value is None and cpu.met is None and log.met is None
