"""CVM health: CLB's HTTP check (thresholds, status bitmask, probes) and passive ejection."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from proxy.backends.cvm import check_host
from proxy.backends.health import ActiveCheck, PassiveEjection, status_passes
from proxy.config import HealthCheck, Rule


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _check(**knobs: object) -> ActiveCheck:
    config = HealthCheck(**knobs)  # type: ignore[arg-type]
    return ActiveCheck("CVM:10.0.0.1:80", "10.0.0.1", 80, config, "example.com")


# --- the status bitmask ------------------------------------------------------------------

@pytest.mark.parametrize("status,codes,ok", [
    (200, 31, True), (101, 1, True), (101, 2, False), (204, 2, True), (302, 4, True),
    (302, 2, False), (404, 8, True), (404, 7, False), (503, 16, True), (503, 15, False),
    (200, 29, False), (600, 31, False), (99, 31, False),
])
def test_status_class_bits_follow_clb_httpcode(status: int, codes: int, ok: bool) -> None:
    assert status_passes(status, codes) is ok


# --- thresholds ------------------------------------------------------------------------------

def test_target_starts_healthy_and_goes_down_after_unhealthy_threshold() -> None:
    check = _check(unhealthy_threshold=3)
    assert check.healthy
    check.record(False)
    check.record(False)
    assert check.healthy
    check.record(False)
    assert not check.healthy


def test_a_success_resets_the_failure_count() -> None:
    check = _check(unhealthy_threshold=2)
    for ok in (False, True, False, True, False):
        check.record(ok)
    assert check.healthy


def test_down_target_comes_back_after_healthy_threshold_successes() -> None:
    check = _check(unhealthy_threshold=2, healthy_threshold=3)
    check.record(False)
    check.record(False)
    check.record(True)
    check.record(True)
    assert not check.healthy
    check.record(False)  # interrupts the run of successes
    check.record(True)
    check.record(True)
    assert not check.healthy
    check.record(True)
    assert check.healthy


def test_state_changes_are_logged_as_warnings(caplog: pytest.LogCaptureFixture) -> None:
    check = _check(unhealthy_threshold=2, healthy_threshold=2)
    with caplog.at_level(logging.WARNING, logger="proxy.error"):
        for ok in (False, False, True, True):
            check.record(ok)
    messages = [r.getMessage() for r in caplog.records if r.name == "proxy.error"]
    assert any("is down" in m for m in messages)
    assert any("is up again" in m for m in messages)


def test_disabling_the_check_makes_the_target_healthy() -> None:
    check = _check(unhealthy_threshold=2)
    check.record(False)
    check.record(False)
    check.reconfigure(HealthCheck(enabled=False), "example.com")
    assert check.healthy


def test_request_uses_method_path_and_host() -> None:
    check = _check(method="GET", path="/ping?x=1")
    data = check.request_bytes()
    assert data.startswith(b"GET /ping?x=1 HTTP/1.1\r\nHost: example.com\r\n")
    assert b"Connection: close\r\n" in data and data.endswith(b"\r\n\r\n")


# --- the health check's Host -----------------------------------------------------------------

@pytest.mark.parametrize("domain,check_domain,expected", [
    ("www.example.com", "", "www.example.com"),
    ("*.example.com", "", "10.0.0.1:80"),
    ("www.example.*", "", "10.0.0.1:80"),
    ("~^a\\d+$", "", "10.0.0.1:80"),
    ("*.example.com", "health.example.com", "health.example.com"),
])
def test_check_host_is_the_rule_domain_unless_it_names_no_host(
        domain: str, check_domain: str, expected: str) -> None:
    rule = Rule(domain=domain, url="/", health_check=HealthCheck(domain=check_domain))
    assert check_host(rule, "10.0.0.1:80") == expected


# --- probes against a real socket ------------------------------------------------------------

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _probe(answer: Answer | None, **knobs: object) -> tuple[bool, ActiveCheck, list[bytes]]:
    seen: list[bytes] = []

    async def main() -> tuple[bool, ActiveCheck]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(await reader.readuntil(b"\r\n\r\n"))
            assert answer is not None
            await answer(reader, writer)
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        if answer is None:  # nothing listens there
            server.close()
            await server.wait_closed()
        check = ActiveCheck("t", "127.0.0.1", port, HealthCheck(**knobs),  # type: ignore[arg-type]
                            "h.test")
        ok = await check.probe()
        server.close()
        return ok, check

    ok, check = uvloop.run(main())
    return ok, check, seen


def _status(code: int) -> Answer:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % code)
        await writer.drain()
    return answer


def test_probe_succeeds_on_a_status_in_http_codes() -> None:
    ok, check, seen = _probe(_status(200))
    assert ok and check.last_status == 200
    assert seen[0].startswith(b"HEAD / HTTP/1.1\r\nHost: h.test\r\n")


def test_probe_fails_on_a_status_outside_http_codes() -> None:
    ok, check, _ = _probe(_status(503), http_codes=15)
    assert not ok and check.last_status == 503 and "503" in check.last_error


def test_probe_fails_when_nothing_listens() -> None:
    ok, check, _ = _probe(None)
    assert not ok and check.last_status == 0 and check.last_error


def test_probe_fails_when_the_answer_is_late() -> None:
    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3)

    ok, check, _ = _probe(never, timeout=1, interval=2)
    assert not ok and "Timeout" in check.last_error


def test_probe_fails_on_a_non_http_answer() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH\r\n")
        await writer.drain()

    ok, _, _ = _probe(garbage)
    assert not ok


@pytest.mark.parametrize("head,status", [(b"HTTP/1.1 204 No Content\r\n\r\n", 204),
                                         (b"HTTP/1.0 500\r\n\r\n", 500)])
def test_probe_reads_the_status_of_the_answer(head: bytes, status: int) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(head)
        await writer.drain()

    _, check, _ = _probe(answer)
    assert check.last_status == status


@pytest.mark.parametrize("line", [b"", b"garbage\r\n", b"HTTP/1.1 2000 OK\r\n",
                                  b"HTTP/2 200\r\n", b"HTTP/1.1 abc\r\n",
                                  b"HTTP/1.1 099 X\r\n\r\n"])
def test_anything_but_an_http_1_answer_fails_the_probe(line: bytes) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(line)
        await writer.drain()

    ok, check, _ = _probe(answer)
    assert not ok and check.last_status == 0 and check.last_error


def test_probe_of_a_get_check_reads_only_the_head() -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 1000)
        await writer.drain()
        await asyncio.sleep(3)  # the rest never comes: a check waiting for it would time out

    ok, check, seen = _probe(endless, method="GET", timeout=1, interval=2)
    assert ok and check.last_status == 200 and seen[0].startswith(b"GET / HTTP/1.1\r\n")


def test_check_loop_marks_a_dead_target_down_and_stops_on_close() -> None:
    async def main() -> tuple[bool, int, bool]:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        check = ActiveCheck("t", "127.0.0.1", port,
                            HealthCheck(interval=1, unhealthy_threshold=2, timeout=1), "h")
        check.start()  # the first probe at once, the second one interval later
        deadline = asyncio.get_running_loop().time() + 5
        while check.healthy and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        await check.close()
        return check.healthy, check.checks, check.running

    healthy, checks, running = uvloop.run(main())
    assert not healthy and checks == 2 and not running


def test_retired_check_does_not_start_again() -> None:
    async def main() -> bool:
        check = _check()
        check.stop(retire=True)
        check.start()
        return check.running

    assert uvloop.run(main()) is False


# --- passive ejection ------------------------------------------------------------------------

def test_consecutive_failures_eject_for_the_base_period() -> None:
    clock = Clock()
    passive = PassiveEjection("t", threshold=3, base=10, clock=clock)
    passive.failure()
    passive.failure()
    assert not passive.ejected
    passive.failure()
    assert passive.ejected
    clock.now += 9.9
    assert passive.ejected
    clock.now += 0.2
    assert not passive.ejected


def test_ejection_doubles_until_a_success() -> None:
    clock = Clock()
    passive = PassiveEjection("t", threshold=2, base=10, cap=25, clock=clock)
    periods = []
    for _ in range(3):
        passive.failure()
        passive.failure()
        periods.append(passive.until - clock.now)
        clock.now = passive.until
    assert periods == [10, 20, 25]
    passive.success()
    passive.failure()
    passive.failure()
    assert passive.until - clock.now == 10


def test_a_success_between_failures_prevents_ejection() -> None:
    passive = PassiveEjection("t", threshold=2, clock=Clock())
    for _ in range(5):
        passive.failure()
        passive.success()
    assert not passive.ejected
    assert passive.state()["consecutive_failures"] == 0
