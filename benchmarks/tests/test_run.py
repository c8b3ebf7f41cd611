"""The command line's defaults and the CPU plan."""

from __future__ import annotations

import os

import pytest

from benchmarks.run import build_parser, cpu_plan
from benchmarks.scenarios import SCENARIOS


def test_defaults_are_the_issues_ten_seconds_fifty_connections() -> None:
    args = build_parser().parse_args([])
    assert (args.duration, args.connections, args.rounds) == (10.0, 50, 2)
    assert args.only is None and args.out is None and not args.markdown
    assert args.idle_connections == 10_000
    assert args.statistic == "median"  # issue 12's targets are medians of the rounds
    assert build_parser().parse_args(["--statistic", "best"]).statistic == "best"


def test_only_takes_several_known_scenarios() -> None:
    assert build_parser().parse_args(["--only", "cvm", "idle"]).only == ["cvm", "idle"]
    assert set(SCENARIOS) == {"cvm", "cvm-log", "scf", "scf2", "https", "https-resume",
                              "h2", "rules", "match", "idle"}


def test_unknown_scenario_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--only", "http3"])
    assert info.value.code == 2
    assert "invalid choice: 'http3'" in capsys.readouterr().err


def test_server_and_load_get_separate_cpus_unless_told_not_to() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    sut, load = cpu_plan(no_pin=False)
    if len(cpus) >= 2:
        assert sut == {cpus[0]} and load == set(cpus[1:])
    else:
        assert (sut, load) == (None, None)
    assert cpu_plan(no_pin=True) == (None, None)


def test_proxy_root_is_a_directory_option() -> None:
    args = build_parser().parse_args(["--proxy-root", "/work/base", "--only", "cvm-log"])
    assert str(args.proxy_root) == "/work/base" and args.only == ["cvm-log"]
    assert build_parser().parse_args([]).proxy_root is None


def test_profile_defaults_cover_every_path() -> None:
    from benchmarks import profile

    args = profile.build_parser().parse_args([])
    assert (args.duration, args.connections, args.top) == (15.0, 50, 15)
    assert args.paths == ["cvm", "scf", "https", "https-handshake"] == list(profile.PATHS)
    assert profile.PATHS["https-handshake"][1].closing  # a new TLS connection per request
    assert profile.PATHS["scf"][2] is True  # py-spy follows the function instances
