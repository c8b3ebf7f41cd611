"""The access-log record's pieces that are pure: rounding to milliseconds, request_length
worked out from the fields (HTTP/2, where no head bytes were received)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from proxy.messages import Request
from proxy.recording import _ms3, request_length


@given(st.floats(min_value=0.0, max_value=1e7, allow_nan=False))
def test_ms3_is_round_to_three_decimals(value: float) -> None:
    got = _ms3(value)
    assert math.isclose(got, round(value, 3), rel_tol=0, abs_tol=0.0005 + 1e-9 * value)
    # it prints as at most three decimals, as round(value, 3) does
    text = repr(got)
    assert "e" in text or len(text.partition(".")[2]) <= 3


def test_ms3_of_exact_figures() -> None:
    assert _ms3(0.3721) == 0.372 and _ms3(0.0004) == 0.0 and _ms3(12.0) == 12.0
    assert repr(_ms3(1.23456 * 1000)) == "1234.56"


def test_request_length_from_the_fields_when_no_head_was_received() -> None:
    request = Request("GET", "/a", "x=1", (("Host", "h"), ("Accept", "*/*")), b"", "2.0",
                      "203.0.113.7", 1, "https", "web", 0.0)
    # "GET /a?x=1 HTTP/1.1\r\n" + "Host: h\r\n" + "Accept: */*\r\n" + "\r\n" + body
    assert request_length(request, 5) == 21 + 9 + 13 + 2 + 5
