"""py-spy's collapsed stacks read into self, inclusive and per-process counts."""

from __future__ import annotations

from benchmarks import stacks

PARENT = 'process 10:"python clbscf-proxy --config a.toml"'
CHILD = 'process 11:"python -c import sys; sys.path.insert(0, x); main()"'
RAW = [
    "<module> (cli.py:1);main (cli.py:9);handle (http1.py:40) 6",
    "<module> (cli.py:1);main (cli.py:9);handle (http1.py:52) 2",
    "<module> (cli.py:1);walk (rules.py:3);walk (rules.py:5);walk (rules.py:5) 2",
    f"{PARENT};<module> (cli.py:1);main (cli.py:9) 3",
    f"{PARENT};{CHILD};<module> (<string>:1);invoke (runtime.py:230) 7",
    "not a stack line",
]


def test_self_time_is_the_innermost_frame_without_its_line_number() -> None:
    found = stacks.parse(RAW[:3])
    assert found.samples == 10
    assert found.own == {"handle (http1.py)": 8, "walk (rules.py)": 2}


def test_inclusive_time_counts_a_recursive_function_once_per_stack() -> None:
    found = stacks.parse(RAW[:3])
    assert found.inclusive["<module> (cli.py)"] == 10
    assert found.inclusive["main (cli.py)"] == 8
    assert found.inclusive["walk (rules.py)"] == 2


def test_process_frames_with_semicolons_in_the_command_line() -> None:
    found = stacks.parse(RAW[3:])
    assert found.samples == 10
    assert found.own == {"main (cli.py)": 3, "invoke (runtime.py)": 7}
    assert {name.split()[0]: n for name, n in found.processes.items()} == {"10": 3, "11": 7}
    assert not any(name.startswith(("process", "sys.")) for name in found.inclusive)


def test_summary_tables_are_sorted_with_shares() -> None:
    text = "\n".join(stacks.summary(stacks.parse(RAW), top=2))
    assert "20 samples" in text and "by process" in text
    self_table = text.split("top 2 by self time")[1].split("top 2 by inclusive")[0]
    lines = [line.split() for line in self_table.strip().splitlines()[1:]]
    assert lines[0][:3] == ["40.0", "8", "handle"]
    assert lines[1][:3] == ["35.0", "7", "invoke"]
    assert len(lines) == 2
