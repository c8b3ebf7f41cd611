"""CPU time per request from /proc/PID/stat, for a process tree that changes during the run."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from benchmarks import proctree

# burns CPU for a while, then starts a child that burns CPU too (and says so on the same
# stdout); both stay until killed
BURN = "t = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"
CHILD = "import time\n" + BURN.format(s=0.3) + "print('burned', flush=True)\ntime.sleep(30)\n"
PARENT = ("import subprocess, sys, time\n" + BURN.format(s=0.4)
          + f"c = subprocess.Popen([sys.executable, '-c', {CHILD!r}])\n"
          + "print(c.pid, flush=True)\ntime.sleep(30)\n")


def test_stat_line_with_spaces_and_parentheses_in_the_name() -> None:
    fields = " ".join(str(n) for n in range(3, 53))
    stat = proctree.parse_stat(42, f"42 (my (odd) name) S {fields[2:]}")
    assert stat.comm == "my (odd) name"
    assert stat.ppid == 4
    assert stat.ticks == 14 + 15  # utime + stime
    assert stat.system == 15  # stime
    assert stat.start == 22


def test_own_stat_matches_os_times() -> None:
    stat = proctree.all_stats()[os.getpid()]
    assert stat.ppid == os.getppid()
    times = os.times()
    assert abs(stat.ticks / proctree.TICKS_PER_S - (times.user + times.system)) < 0.1
    assert abs(stat.system / proctree.TICKS_PER_S - times.system) < 0.1


def test_a_child_started_during_the_run_counts_from_zero() -> None:
    proc = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        time.sleep(0.15)
        before = proctree.snapshot([("server", proc.pid)])
        assert [name for name, _ in before.values()] == ["server"]
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        assert proc.stdout.readline().strip() == "burned"
        after = proctree.snapshot([("server", proc.pid)])
    finally:
        for pid in (child, proc.pid):
            if pid:
                os.kill(pid, 9)
        proc.wait()
    cpu = {p.pid: p for p in proctree.per_request(before, after, requests=1000)}
    assert set(cpu) == {proc.pid, child}
    assert cpu[proc.pid].name == cpu[child].name == "server"
    # per 1,000 requests: the part of the parent's 0.4 s after the first snapshot, the
    # child's 0.3 s (and its start-up)
    assert 50 < cpu[proc.pid].us_per_request < 450
    assert 280 < cpu[child].us_per_request < 600
    assert proctree.total(list(cpu.values())) == sum(p.us_per_request for p in cpu.values())


def test_a_reused_pid_is_a_new_process() -> None:
    old = proctree.Stat(pid=7, comm="old", ppid=1, ticks=500, start=10, system=100)
    new = proctree.Stat(pid=7, comm="new", ppid=1, ticks=20, start=99, system=5)
    before: proctree.Snapshot = {(7, 10): ("s", old)}
    after: proctree.Snapshot = {(7, 99): ("s", new)}
    (cpu,) = proctree.per_request(before, after, requests=10)
    assert cpu.comm == "new"
    assert cpu.us_per_request == 20 * 1e6 / proctree.TICKS_PER_S / 10
    assert cpu.system_us_per_request == 5 * 1e6 / proctree.TICKS_PER_S / 10
    assert proctree.system_total([cpu]) == cpu.system_us_per_request
