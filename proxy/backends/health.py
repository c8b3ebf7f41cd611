"""Whether a CVM target may take new requests: active HTTP health checks and passive ejection.

Owns two kinds of state, both readable as plain dicts for metrics:

- ``ActiveCheck``: CLB's per-rule HTTP health check (clb-scf-facts.md §6.2). Every ``interval``
  seconds it opens a fresh connection to the target (TLS when the rule forwards HTTPS; the
  outgoing layer's ``Pool`` and ``exchange``, h1client.py: llhttp reads the answer's head),
  sends ``method path`` with the check's ``Host``, and counts the answer a success when its
  status class is in the ``http_codes`` bitmask (1=1xx 2=2xx 4=3xx 8=4xx 16=5xx) and it arrived
  within ``timeout``. A target goes down after ``unhealthy_threshold`` consecutive failures and
  up again after ``healthy_threshold`` consecutive successes.
- ``PassiveEjection``: real traffic's verdict on one address. ``threshold`` consecutive
  connect failures (refused, unreachable, timed out) eject it for ``base`` seconds, doubled
  at each ejection that follows without a success in between (capped at ``cap``); when the
  period is over it takes requests again, and one success clears everything.

Decisions where CLB is silent (ours): a target starts *healthy* (as in nginx and HAProxy: a
freshly added server is tried at once; a dead one is caught within ``threshold`` requests by
passive ejection, or within ``unhealthy_threshold`` intervals by the check); the first check
runs as soon as its task starts; the check's request says ``Connection: close`` and
``User-Agent: clbscf-proxy-health-check``; only the head is read, and the connection is closed
after it (the check's pool keeps no idle connection).

State changes are logged at WARNING on ``proxy.error``. This module must not know the CVM
targets' pools, routing or the client side; the clock is injectable so the threshold logic is
unit-tested without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable

from ..config import HealthCheck
from ..errors import ProxyError
from .h1client import exchange
from .pool import Pool

error_log = logging.getLogger("proxy.error")

#: HTTP status class (status // 100) -> CLB's HttpCode bit (clb-scf-facts.md §6.2)
STATUS_CLASS_BITS = {1: 1, 2: 2, 3: 4, 4: 8, 5: 16}
USER_AGENT = "clbscf-proxy-health-check"


def status_passes(status: int, http_codes: int) -> bool:
    """Whether ``status`` counts as healthy under CLB's ``HttpCode`` bitmask."""
    return bool(STATUS_CLASS_BITS.get(status // 100, 0) & http_codes)


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    detail = exc.log_detail if isinstance(exc, ProxyError) else ""
    return f"{text} ({detail})" if detail else text


class ActiveCheck:
    """CLB's HTTP health check of one target of one rule."""

    def __init__(self, label: str, host: str, port: int, config: HealthCheck,
                 host_header: str, ssl_context: ssl.SSLContext | None = None) -> None:
        self.label = label
        self.host = host
        self.port = port
        self.config = config
        self.host_header = host_header
        #: the rule forwards HTTPS: the check goes over TLS too (CLB: an HTTPS rule's check
        #: defaults to the forward protocol, clb-features.md §2.4), SNI the target's host
        self.ssl_context = ssl_context
        self.healthy = True
        self.successes = 0
        self.failures = 0
        self.checks = 0
        self.last_status = 0
        self.last_error = ""
        self.retired = False
        self._task: asyncio.Task[None] | None = None

    def reconfigure(self, config: HealthCheck, host_header: str,
                    ssl_context: ssl.SSLContext | None = None) -> None:
        """A reload changed the rule's check: the next round uses the new knobs."""
        if not config.enabled and self.config.enabled:
            self.stop()
        self.config = config
        self.host_header = host_header
        self.ssl_context = ssl_context
        if not config.enabled:
            self.healthy = True  # a disabled check says nothing against a target

    def record(self, ok: bool) -> None:
        """Count one check result and move between up and down at the thresholds."""
        self.checks += 1
        if ok:
            self.successes += 1
            self.failures = 0
            if not self.healthy and self.successes >= self.config.healthy_threshold:
                self.healthy = True
                error_log.warning("health check: %s is up again (%d successes)", self.label,
                                  self.successes)
        else:
            self.failures += 1
            self.successes = 0
            if self.healthy and self.failures >= self.config.unhealthy_threshold:
                self.healthy = False
                error_log.warning("health check: %s is down (%d failures, last: %s)",
                                  self.label, self.failures, self.last_error or "?")

    def request_bytes(self) -> bytes:
        cfg = self.config
        return (f"{cfg.method} {cfg.path} HTTP/1.1\r\nHost: {self.host_header}\r\n"
                f"User-Agent: {USER_AGENT}\r\nConnection: close\r\n\r\n").encode("latin-1")

    async def probe(self) -> bool:
        """One check: True when a status in ``http_codes`` came back within ``timeout``."""
        timeout = self.config.timeout
        host = f"[{self.host}]" if ":" in self.host else self.host
        # a fresh connection, closed after
        pool = Pool(f"{host}:{self.port}", max_idle=0, ssl_context=self.ssl_context)
        conn = None
        try:
            async with asyncio.timeout(timeout):
                conn = await pool.connect(timeout)
                response = await exchange(conn, self.request_bytes(), timeout, head_only=True)
        except (ProxyError, TimeoutError) as exc:
            self.last_status = 0
            self.last_error = _describe(exc)
            return False
        finally:
            if conn is not None:
                pool.release(conn, False)
        status = self.last_status = response.status
        ok = status_passes(status, self.config.http_codes)
        self.last_error = "" if ok else f"status {status} not in http_codes " \
                                        f"{self.config.http_codes}"
        return ok

    def start(self) -> None:
        """Start the check loop on the running loop (no-op when disabled, running or retired)."""
        if self.config.enabled and self._task is None and not self.retired:
            self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def running(self) -> bool:
        return self._task is not None

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                ok = await self.probe()
            except Exception:  # a bug must not end the checking silently
                error_log.exception("health check: %s: probe failed", self.label)
                ok = False
            self.record(ok)
            await asyncio.sleep(max(0.0, self.config.interval - (time.monotonic() - started)))

    def stop(self, retire: bool = False) -> None:
        """Stop checking; ``retire``: for good (no rule has this target any more)."""
        self.retired = self.retired or retire
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    async def close(self) -> None:
        self.retired = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def state(self) -> dict[str, object]:
        return {"healthy": self.healthy, "enabled": self.config.enabled,
                "successes": self.successes, "failures": self.failures, "checks": self.checks,
                "last_status": self.last_status, "last_error": self.last_error}


class PassiveEjection:
    """Real traffic's verdict on one upstream address."""

    def __init__(self, label: str, threshold: int = 3, base: float = 10.0, cap: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.threshold = threshold
        self.base = base
        self.cap = cap
        self.clock = clock
        self.failures = 0
        self.ejections = 0  # ejections since the last success (the backoff exponent)
        self.until = 0.0

    @property
    def ejected(self) -> bool:
        return self.until > 0.0 and self.clock() < self.until

    def failure(self) -> None:
        """A connect failure on real traffic."""
        self.failures += 1
        if self.failures >= self.threshold and not self.ejected:
            period = min(self.cap, self.base * (2 ** self.ejections))
            self.ejections += 1
            self.until = self.clock() + period
            self.failures = 0  # after the period it must fail ``threshold`` times again
            error_log.warning("passive health: %s ejected for %.0f s after %d consecutive "
                              "failures", self.label, period, self.threshold)

    def success(self) -> None:
        if self.ejections or self.failures:
            if self.ejections:
                error_log.warning("passive health: %s answers again", self.label)
            self.failures = 0
            self.ejections = 0
            self.until = 0.0

    def state(self) -> dict[str, object]:
        remaining = max(0.0, self.until - self.clock()) if self.ejected else 0.0
        return {"ejected": self.ejected, "consecutive_failures": self.failures,
                "ejections": self.ejections, "ejected_for_s": round(remaining, 3)}
