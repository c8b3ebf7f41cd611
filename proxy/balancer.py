"""The schedulers of one rule's targets (SPEC §4): WRR, LEAST_CONN and IP_HASH.

Owns the choice of a target index and the per-target in-flight counts. Strategy: one
``Balancer`` per rule, built from the targets' weights; ``pick`` dispatches through a table of
scheduler functions, counts the pick as in flight, and ``release`` ends it, whatever the
scheduler, so the caller's bookkeeping is uniform (pick ... finally release).

Pure: no asyncio, no logging, no I/O, and no knowledge of what a target is. Health (and any
other reason a target may not take requests now) comes in as the ``usable`` mask.

Decisions where the SPEC is silent (ours):
- WRR is nginx's smooth weighted round robin on the configured weights (nginx's
  ``effective_weight`` failure back-off is left to health checks, which feed ``usable``);
  ties go to the lowest index, as in nginx.
- LEAST_CONN compares raw in-flight counts (not count / weight); ties go to the higher weight,
  then to the first in a rotating order so that equal targets share the load.
- IP_HASH is weighted rendezvous hashing of the client address: every target scores
  ``weight / -ln(u)`` with ``u`` a fixed hash of (address, target index), the best usable
  score wins. The same address gets the same target while the targets and weights are
  unchanged; when that target is unusable, the next best score is the deterministic fallback,
  which spreads its clients over the others by weight; a weight change moves only the clients
  it must. Hashes are crc32 + splitmix64, never Python's per-process randomised ``hash()``.
- ``release`` of a target with nothing in flight is a caller bug and raises ValueError.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence

_MASK64 = (1 << 64) - 1
_GOLDEN64 = 0x9E3779B97F4A7C15  # splitmix64's increment: 2**64 / golden ratio
#: IP_HASH remembers this many client addresses' targets (a recomputation costs ~1 us/target)
AFFINITY_CACHE_SIZE = 4096


def _mix64(value: int) -> int:
    """splitmix64's finaliser: a fixed, well-spread 64-bit mix (Steele et al., 2014)."""
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def _unit(value: int) -> float:
    """A 64-bit hash as a float strictly inside (0, 1)."""
    return ((value >> 11) + 0.5) * (1.0 / (1 << 53))


class Balancer:
    """Picks a target of one rule; ``pick`` -> index or -1, ``release(index)`` after each pick."""

    __slots__ = ("scheduler", "weights", "_pick", "_current", "_in_flight", "_next", "_salts",
                 "_affinity")

    def __init__(self, scheduler: str, weights: Sequence[int]) -> None:
        if scheduler not in _SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}, expected one of "
                             f"{', '.join(_SCHEDULERS)}")
        if any(w < 0 for w in weights):
            raise ValueError(f"weights must be >= 0, got {list(weights)}")
        self.scheduler = scheduler
        self.weights: tuple[int, ...] = tuple(weights)
        self._pick = _SCHEDULERS[scheduler]
        count = len(self.weights)
        self._current = [0] * count  # WRR: nginx's current_weight per target
        self._in_flight = [0] * count
        self._next = 0  # LEAST_CONN: where the rotating tie-break starts
        # IP_HASH: a fixed salt per target index, so its score depends on (address, index)
        self._salts = tuple(((i + 1) * _GOLDEN64) & _MASK64 for i in range(count))
        self._affinity: dict[str, int] = {}  # IP_HASH: address -> best of all weighted targets

    def pick(self, client_ip: str, usable: Sequence[bool] | None = None) -> int:
        """The target for a new request, counted in flight; -1 when none may take it.

        ``usable[i]`` false (unhealthy) and weight 0 (draining) both exclude target i.
        """
        index = self._pick(self, client_ip, usable)
        if index >= 0:
            self._in_flight[index] += 1
        return index

    def take(self, index: int) -> int:
        """Counts a request sent to ``index`` by other means (a session cookie) as in flight."""
        self._in_flight[index] += 1
        return index

    def release(self, index: int) -> None:
        """The request that ``pick`` sent to ``index`` has ended."""
        if self._in_flight[index] <= 0:
            raise ValueError(f"release({index}) without a request in flight there")
        self._in_flight[index] -= 1

    def in_flight(self, index: int) -> int:
        """How many picked requests target ``index`` has not released yet."""
        return self._in_flight[index]

    # --- schedulers (dispatched through _SCHEDULERS) ---------------------------------------

    def _wrr(self, client_ip: str, usable: Sequence[bool] | None) -> int:
        # nginx ngx_http_upstream_get_peer: every candidate gains its weight, the highest
        # current weight wins and pays back the total, so picks interleave (5,1,1: aabacaa).
        current = self._current
        best, total = -1, 0
        for i, weight in enumerate(self.weights):
            if weight == 0 or (usable is not None and not usable[i]):
                continue
            current[i] += weight
            total += weight
            if best < 0 or current[i] > current[best]:
                best = i
        if best >= 0:
            current[best] -= total
        return best

    def _least_conn(self, client_ip: str, usable: Sequence[bool] | None) -> int:
        weights, in_flight = self.weights, self._in_flight
        count = len(weights)
        best = -1
        for step in range(count):
            i = (self._next + step) % count
            if weights[i] == 0 or (usable is not None and not usable[i]):
                continue
            # strictly better only, so the rotation order breaks the remaining ties
            if best < 0 or (in_flight[i], -weights[i]) < (in_flight[best], -weights[best]):
                best = i
        if best >= 0:
            self._next = (best + 1) % count
        return best

    def _ip_hash(self, client_ip: str, usable: Sequence[bool] | None) -> int:
        # The best target among all weighted ones is also the best among the usable ones
        # whenever it is usable itself, so it is cached per address (bounded: cleared when
        # full, which costs only a recomputation) and the scan runs again only when it is not.
        affinity = self._affinity
        best = affinity.get(client_ip)
        if best is None:
            best = self._rendezvous(client_ip, None)
            if len(affinity) >= AFFINITY_CACHE_SIZE:
                affinity.clear()
            affinity[client_ip] = best
        if best < 0 or usable is None or usable[best]:
            return best
        return self._rendezvous(client_ip, usable)

    def _rendezvous(self, client_ip: str, usable: Sequence[bool] | None) -> int:
        key = zlib.crc32(client_ip.encode("utf-8", "surrogateescape"))
        best, best_score = -1, 0.0
        for i, weight in enumerate(self.weights):
            if weight == 0 or (usable is not None and not usable[i]):
                continue
            # weighted rendezvous: P(target i has the top score) = weight_i / total weight
            score = weight / -math.log(_unit(_mix64((key + self._salts[i]) & _MASK64)))
            if best < 0 or score > best_score:
                best, best_score = i, score
        return best

_SCHEDULERS: dict[str, Callable[[Balancer, str, Sequence[bool] | None], int]] = {
    "WRR": Balancer._wrr,
    "LEAST_CONN": Balancer._least_conn,
    "IP_HASH": Balancer._ip_hash,
}
