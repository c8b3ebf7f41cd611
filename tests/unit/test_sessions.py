"""Session persistence's pure parts (proxy/sessions.py) and its config keys: the cookie's
ids name only the rule's current targets, drained and unusable targets are not sticky, and
the loader checks CLB's ranges."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import SESSION_COOKIE, Rule, Target
from proxy.messages import Request
from proxy.sessions import Session, for_rule, session_id
from tests.unit.test_config import error_of, folder, one_rule, parse  # noqa: F401

CVM = Target(type="CVM", address="10.0.0.1:80")
SCF = Target(type="SCF", function="shop")


def _rule(**settings: object) -> Rule:
    fields: dict[str, object] = {"domain": "a.test", "url": "/", "targets": (CVM, SCF),
                                 "location_id": "loc-1", "session_expire_time": 60, **settings}
    return Rule(**fields)  # type: ignore[arg-type]


def _request(*cookies: str) -> Request:
    return Request("GET", "/", "", tuple(("Cookie", c) for c in cookies), b"", "1.1",
                   "127.0.0.1", 1, "http", "web", 0.0)


def test_cookie_names_a_current_target_by_an_opaque_id() -> None:
    session = Session(_rule(), secure=False)
    value = session_id("loc-1", SCF)
    assert session.set_cookie[1] == ("Set-Cookie", f"{SESSION_COOKIE}={value}; Max-Age=60; "
                                     "Path=/; HttpOnly")
    assert "10.0.0.1" not in value and len(value) == 16
    assert session.lookup(_request(f"a=b; {SESSION_COOKIE}={value}")) == 1
    assert session.lookup(_request("a=b", f"{SESSION_COOKIE}={session_id('loc-1', CVM)}")) == 0
    # another rule's id, an address, garbage, nothing: not ours
    for cookie in (f"{SESSION_COOKIE}={session_id('loc-2', SCF)}",
                   f"{SESSION_COOKIE}=10.0.0.1:80", f"{SESSION_COOKIE}", "x=1"):
        assert session.lookup(_request(cookie)) == -1
    assert session.lookup(_request()) == -1


def test_drained_and_unusable_targets_are_not_sticky() -> None:
    session = Session(_rule(cookie_name="cart"), secure=True)
    assert session.set_cookie[0][1].endswith("; Secure")
    request = _request(f"cart={session_id('loc-1', CVM)}")
    assert session.sticky(request, (10, 10), None) == 0
    assert session.sticky(request, (0, 10), None) == -1
    assert session.sticky(request, (10, 10), (False, True)) == -1
    # a removed target: the rule rebuilt without it has no id for the old cookie
    assert Session(_rule(targets=(SCF,), cookie_name="cart"), False).lookup(request) == -1


def test_no_session_without_a_time() -> None:
    assert for_rule(_rule(session_expire_time=0), False) is None


@pytest.mark.parametrize(("rule", "message"), [
    ("session_expire_time = 29", "session_expire_time: must be 0 (off) or 30..86400, got 29"),
    ("session_expire_time = 86401", "session_expire_time: must be 0..86400, got 86401"),
    ('session_expire_time = 60\nscheduler = "IP_HASH"', "needs scheduler WRR"),
    ('cookie_name = "x"', "cookie_name: needs session_expire_time > 0"),
    ('session_expire_time = 60\ncookie_name = "a;b"', "cookie_name: must be a cookie name"),
])
def test_loader_checks_the_session_keys(folder: Path, rule: str, message: str) -> None:  # noqa: F811
    assert message in error_of(one_rule(rule=rule), folder)


def test_loader_reads_the_session_keys(folder: Path) -> None:  # noqa: F811
    config = parse(one_rule(rule='session_expire_time = 86400\ncookie_name = "cart"'), folder)
    rule = config.listeners[0].rules[0]
    assert (rule.session_expire_time, rule.cookie_name) == (86400, "cart")
