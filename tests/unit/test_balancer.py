"""SPEC §4 scheduling: smooth WRR, LEAST_CONN, IP_HASH, weight 0, the usable mask, in-flight."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.balancer import AFFINITY_CACHE_SIZE, Balancer

SCHEDULERS = ("WRR", "LEAST_CONN", "IP_HASH")
ROOT = Path(__file__).resolve().parents[2]


def _ips(count: int) -> list[str]:
    return [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(count)]


def _picks(balancer: Balancer, count: int, usable: list[bool] | None = None,
           ips: list[str] | None = None) -> list[int]:
    """``count`` picks, each released at once (requests that do not overlap)."""
    out = []
    for n in range(count):
        index = balancer.pick(ips[n] if ips else "192.0.2.1", usable)
        out.append(index)
        if index >= 0:
            balancer.release(index)
    return out


# --- WRR ------------------------------------------------------------------------------------


def test_wrr_is_smooth_like_nginx() -> None:
    picks = _picks(Balancer("WRR", [5, 1, 1]), 14)
    assert "".join("abc"[i] for i in picks) == "aabacaa" * 2


@pytest.mark.parametrize("weights", [[1], [3, 2, 1], [100, 1], [10, 10, 10, 10], [7, 0, 3]])
def test_wrr_distribution_is_exact_over_full_cycles(weights: list[int]) -> None:
    cycles = 3
    counts = Counter(_picks(Balancer("WRR", weights), cycles * sum(weights)))
    assert [counts[i] for i in range(len(weights))] == [cycles * w for w in weights]


def test_wrr_90_10_split_within_one_percent() -> None:
    counts = Counter(_picks(Balancer("WRR", [90, 10]), 10_000))
    assert abs(counts[0] / 10_000 - 0.9) <= 0.01
    assert abs(counts[1] / 10_000 - 0.1) <= 0.01


def test_wrr_skips_unusable_and_resumes_the_spread() -> None:
    balancer = Balancer("WRR", [1, 1, 1])
    assert set(_picks(balancer, 6, usable=[True, False, True])) == {0, 2}
    assert Counter(_picks(balancer, 30)) == {0: 10, 1: 10, 2: 10}


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 100), min_size=1, max_size=6).filter(lambda w: sum(w) > 0))
def test_wrr_every_prefix_stays_close_to_the_weights(weights: list[int]) -> None:
    total = sum(weights)
    balancer = Balancer("WRR", weights)
    counts = [0] * len(weights)
    for k in range(1, total + 1):
        counts[balancer.pick("x")] += 1
        # a burst (all of a's turns, then b's) would drift by up to ~max weight; smooth WRR
        # keeps every target within a pick or so of its share at every step
        assert all(abs(c - k * w / total) < len(weights) for c, w in zip(counts, weights))
    assert counts == weights  # one full cycle gives exactly the weights


# --- LEAST_CONN -----------------------------------------------------------------------------


def test_least_conn_picks_the_least_loaded_and_honours_release() -> None:
    balancer = Balancer("LEAST_CONN", [10, 10, 10])
    first = [balancer.pick("x") for _ in range(3)]
    assert sorted(first) == [0, 1, 2]  # one each while all are equally loaded
    balancer.pick("x")
    balancer.pick("x")  # two targets now hold 2, one holds 1
    light = next(i for i in range(3) if balancer.in_flight(i) == 1)
    assert balancer.pick("x") == light
    balancer.release(0)
    balancer.release(0)
    assert balancer.in_flight(0) == 0
    assert balancer.pick("x") == 0


def test_least_conn_ties_go_to_the_higher_weight() -> None:
    balancer = Balancer("LEAST_CONN", [10, 50, 20])
    assert balancer.pick("x") == 1
    assert balancer.pick("x") == 2  # 1 is busier now; 2 outweighs 0
    assert balancer.pick("x") == 0


def test_least_conn_equal_targets_share_when_requests_do_not_overlap() -> None:
    counts = Counter(_picks(Balancer("LEAST_CONN", [10, 10, 10, 10]), 400))
    assert counts == {0: 100, 1: 100, 2: 100, 3: 100}


def test_least_conn_respects_usable_mask() -> None:
    balancer = Balancer("LEAST_CONN", [10, 10])
    assert [balancer.pick("x", [False, True]) for _ in range(3)] == [1, 1, 1]
    assert balancer.pick("x") == 0  # idle once usable again


# --- IP_HASH --------------------------------------------------------------------------------


def test_ip_hash_is_stable_for_one_address() -> None:
    balancer = Balancer("IP_HASH", [10, 10, 10, 10])
    assert len(set(_picks(balancer, 50, ips=["203.0.113.7"] * 50))) == 1


def test_ip_hash_agrees_between_balancers_with_the_same_targets() -> None:
    ips = _ips(200)
    assert (_picks(Balancer("IP_HASH", [10, 20, 30]), 200, ips=ips)
            == _picks(Balancer("IP_HASH", [10, 20, 30]), 200, ips=ips))


def test_ip_hash_does_not_depend_on_pythons_hash_seed() -> None:
    code = ("from proxy.balancer import Balancer; b = Balancer('IP_HASH', [10, 10, 10, 10, 10]);"
            "print([b.pick(f'10.0.0.{i}') for i in range(64)])")
    outputs = {
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       check=True, env={"PYTHONHASHSEED": seed}).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1


@pytest.mark.parametrize("weights", [[10, 10, 10, 10], [30, 10], [50, 25, 25]])
def test_ip_hash_spreads_many_addresses_by_weight(weights: list[int]) -> None:
    count = 20_000
    counts = Counter(_picks(Balancer("IP_HASH", weights), count, ips=_ips(count)))
    for i, weight in enumerate(weights):
        assert abs(counts[i] / count - weight / sum(weights)) < 0.02, counts


def test_ip_hash_unusable_target_moves_only_its_clients_and_spreads_them() -> None:
    ips = _ips(4000)
    balancer = Balancer("IP_HASH", [10, 10, 10, 10])
    before = _picks(balancer, len(ips), ips=ips)
    after = _picks(balancer, len(ips), usable=[True, True, False, True], ips=ips)
    assert 2 not in after
    assert all(a == b for a, b in zip(after, before) if b != 2)
    moved = Counter(a for a, b in zip(after, before) if b == 2)
    assert set(moved) == {0, 1, 3} and min(moved.values()) > 0.2 * sum(moved.values())
    # deterministic: the same fallback every time
    assert _picks(balancer, len(ips), usable=[True, True, False, True], ips=ips) == after
    # back to the original target once it is usable again
    assert _picks(balancer, len(ips), ips=ips) == before


def test_ip_hash_weight_change_moves_only_clients_it_must() -> None:
    ips = _ips(4000)
    before = _picks(Balancer("IP_HASH", [10, 10, 10]), len(ips), ips=ips)
    after = _picks(Balancer("IP_HASH", [10, 10, 0]), len(ips), ips=ips)
    assert all(a == b for a, b in zip(after, before) if b != 2)


def test_ip_hash_stays_stable_past_its_address_cache() -> None:
    balancer = Balancer("IP_HASH", [10, 10, 10, 10, 10])
    ips = _ips(AFFINITY_CACHE_SIZE * 2 + 10)
    first = _picks(balancer, len(ips), ips=ips)
    assert _picks(balancer, len(ips), ips=ips) == first


# --- every scheduler ------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_weight_zero_is_never_picked(scheduler: str) -> None:
    balancer = Balancer(scheduler, [0, 10, 0, 5])
    # requests held (not released), so LEAST_CONN too spreads over the weighted targets
    picks = [balancer.pick(ip) for ip in _ips(600)]
    assert set(picks) == {1, 3}


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_usable_mask_is_respected(scheduler: str) -> None:
    usable = [False, True, False, True]
    balancer = Balancer(scheduler, [10, 10, 10, 10])
    picks = [balancer.pick(ip, usable) for ip in _ips(400)]
    assert set(picks) == {1, 3}


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("weights,usable", [
    ([0, 0], None), ([10, 10], [False, False]), ([10, 0], [False, True]), ([], None),
])
def test_nothing_available_gives_minus_one(scheduler: str, weights: list[int],
                                           usable: list[bool] | None) -> None:
    balancer = Balancer(scheduler, weights)
    assert balancer.pick("198.51.100.1", usable) == -1
    assert all(balancer.in_flight(i) == 0 for i in range(len(weights)))


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_pick_counts_in_flight_until_released(scheduler: str) -> None:
    balancer = Balancer(scheduler, [10, 10])
    picks = [balancer.pick(ip) for ip in _ips(6)]
    assert sum(balancer.in_flight(i) for i in range(2)) == 6
    for index in picks:
        balancer.release(index)
    assert balancer.in_flight(0) == balancer.in_flight(1) == 0


def test_release_without_a_pick_is_an_error() -> None:
    balancer = Balancer("WRR", [10])
    with pytest.raises(ValueError, match="without a request in flight"):
        balancer.release(0)


@pytest.mark.parametrize("scheduler,weights", [("ROUND_ROBIN", [10]), ("WRR", [10, -1])])
def test_bad_scheduler_or_weight_is_refused(scheduler: str, weights: list[int]) -> None:
    with pytest.raises(ValueError):
        Balancer(scheduler, weights)
