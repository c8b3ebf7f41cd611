"""A Hypothesis property over arbitrary bytes and arbitrary segmentation, through the real
proxy, on both parsers.

Whatever a client sends, the proxy answers with responses (the upstream's, or a 4xx/501 of its
own followed by the close), never an unhandled exception or a 500, and its verdict does not
depend on how the bytes were split on the way: the same bytes sent in one write and in random
segments that arrive separately (TCP_NODELAY, a short pause between them) get the same status
lines, the same connection handling, and the same requests (method, target, body) reach the
recording upstream. Our side is shut after the last byte, so every exchange ends (an
incomplete request is answered 400 at the EOF) and the proxy must end it with a clean close.

Inputs: arbitrary bytes, and requests assembled from fragments that sit near the edges of
RFC 9112 (framing headers, folds, bare CR/LF, control bytes, bad chunks), pipelined and then
mutated byte-wise. One decision keeps the property exact: the rule table has a single rule
``/`` in front of a recording upstream that reads every body whole, and targets that the
router refuses early (``..`` climbing above the root) are not generated with a body, because
whether such an early answer comes before or after the body arrived legitimately decides
whether the connection can go on (RFC 9112 §9.3).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hardening.stage import PARSERS, assert_alive, cvm_rule, listener, log_mark
from tests.hardening.wire import EOF, Exchange, send, split_at
from tests.proxyproc import ProxyProcess
from tests.upstreams import RecordingUpstream

#: what the proxy may answer here: the upstream's 200, or its own verdict on the request
ALLOWED = {200, 400, 408, 413, 414, 431, 501}


@dataclass
class Stage:
    proxy: ProxyProcess
    upstream: RecordingUpstream


@pytest.fixture(scope="module", params=PARSERS)
def stage(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stage]:
    with RecordingUpstream() as up:
        config = listener("web", cvm_rule("s.test", "/", up.address),
                          client_header_timeout=10, client_body_timeout=10,
                          keepalive_timeout=10, proxy_read_timeout=10,
                          max_request_line=256, max_header_size=1024, max_header_count=12,
                          client_max_body_size=50)
        with ProxyProcess.with_config(config, tmp_path_factory.mktemp("fuzz"), "--http",
                                      request.param, "--no-access-log") as proc:
            yield Stage(proc, up)


# --- inputs --------------------------------------------------------------------------------

LINES = [
    b"GET / HTTP/1.1", b"GET /a?b=c&b=d HTTP/1.1", b"POST /p HTTP/1.1", b"PUT /p HTTP/1.1",
    b"HEAD /h HTTP/1.1", b"GET / HTTP/1.0", b"POST /p HTTP/1.0", b"OPTIONS * HTTP/1.1",
    b"GET http://s.test/abs HTTP/1.1", b"DELETE /d HTTP/1.1", b"CONNECT s.test:80 HTTP/1.1",
    b"GET / HTTP/2.0", b"get / HTTP/1.1", b"GET  / HTTP/1.1", b"GET / HTTP/1.1 ",
    b"GET /%41%zz HTTP/1.1", b"GET /" + b"a" * 260 + b" HTTP/1.1", b"GET /a#frag HTTP/1.1",
    b"PRI * HTTP/2.0", b"GET http://u@s.test/ HTTP/1.1",
]
#: refused by the router before the body is read (see the module docstring)
EARLY_LINES = [b"GET /../x HTTP/1.1", b"GET /a/%2e%2e/%2e%2e/x HTTP/1.1"]
FIELDS = [
    b"Host: s.test", b"Host: s.test", b"Host: s.test:80", b"Host: other.test", b"Host:",
    b"Host: a b", b"Host: u@s.test", b"Content-Length: 5", b"Content-Length: 0",
    b"Content-Length: 3", b"Content-Length: 60", b"Content-Length: -1", b"Content-Length: 5, 5",
    b"Content-Length: 5", b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked, gzip",
    b"Transfer-Encoding: gzip, chunked", b"Transfer-Encoding : chunked",
    b"Transfer-Encoding:\tchunked", b"Connection: close", b"Connection: keep-alive",
    b"Connection: upgrade", b"Upgrade: websocket", b"Expect: 100-continue", b"X_Under: 1",
    b"Transfer_Encoding: chunked", b"X-A: a\x00b", b"X-A: a\x7f", b"X-Fold: a\r\n b",
    b" X-Lead: 1", b"X-Sp : 1", b"X-Long: " + b"v" * 1100, b"Cookie: a=1", b"TE: trailers",
    b"Keep-Alive: 5", b"X-Empty:", b"\xff\xfe: x", b"X-Latin: caf\xe9",
]
BODIES = [
    b"", b"", b"hello", b"abc", b"5\r\nhello\r\n0\r\n\r\n", b"0\r\n\r\n",
    b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n", b"zz\r\n", b"5\r\nhel", b"5;ext=1\r\nhello\r\n0\r\n\r\n",
    b"-1\r\n", b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: s.test\r\n\r\n",
    b"40\r\n" + b"x" * 64 + b"\r\n0\r\n\r\n", b"5\r\nhello\r\n0\r\nX bad\r\n\r\n",
]
EOLS = [b"\r\n"] * 10 + [b"\n", b"\r"]


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    eol = draw(st.sampled_from(EOLS))
    if draw(st.integers(0, 9)) == 0:
        line = draw(st.sampled_from(EARLY_LINES))
        return line + eol + b"Host: s.test" + eol + eol
    line = draw(st.sampled_from(LINES))
    fields = draw(st.lists(st.sampled_from(FIELDS), max_size=5))
    body = draw(st.sampled_from(BODIES))
    head = eol.join([line, *fields]) + eol + eol
    return head + body


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(min_size=1, max_size=300))
    data = bytearray(b"".join(draw(st.lists(requests(), min_size=1, max_size=3))))
    for _ in range(draw(st.integers(0, 2))):  # byte-wise mutations
        at = draw(st.integers(0, len(data)))
        new = draw(st.binary(max_size=3))
        removed = draw(st.integers(0, 2))  # insert (0 removed), delete (no new), replace
        data[at:at + removed] = new
    return bytes(data) or b"\r\n"


@st.composite
def split_messages(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    data = draw(messages())
    cuts = draw(st.lists(st.integers(1, max(1, len(data) - 1)), min_size=1, max_size=8))
    return data, split_at(data, cuts)


# --- the property ------------------------------------------------------------------------------

def verdict(ex: Exchange) -> tuple[object, ...]:
    """What must not depend on the segmentation: the statuses, and the Connection header of
    every response but the last (the last one's may depend on whether our EOF came before it
    was written)."""
    return (tuple(ex.statuses), tuple(r.closes for r in ex.replies[:-1]), ex.end)


def check(ex: Exchange) -> None:
    assert ex.end == EOF, ex  # never a reset that could eat the answer, never left hanging
    assert not ex.leftover, ex  # whole responses only
    assert set(ex.statuses) <= ALLOWED, ex
    # nothing comes after a response that says close (a verdict on the framing always does;
    # the router's 400 for a path above the root answers a whole request and may not)
    closing = [i for i, r in enumerate(ex.replies) if r.closes]
    assert closing in ([], [len(ex.replies) - 1]), ex


def exchange(stage: Stage, segments: list[bytes], gap: float
             ) -> tuple[Exchange, list[tuple[str, str, bytes]]]:
    """The client's exchange, and the whole requests the upstream received for it (each 200
    is one of them: the proxy answers only after the upstream did)."""
    stage.upstream.clear()
    ex = send(stage.proxy.port(), segments, gap=gap, half_close=True)
    check(ex)
    forwarded = [(r.method, r.target, r.body) for r in stage.upstream.requests()]
    assert len(forwarded) == ex.statuses.count(200), (ex, forwarded)
    assert not stage.upstream.problems()  # everything forwarded was well-formed HTTP/1.1
    return ex, forwarded


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=split_messages())
def test_any_bytes_get_the_same_answer_however_they_are_split(
        stage: Stage, case: tuple[bytes, list[bytes]]) -> None:
    data, segments = case
    mark = log_mark(stage.proxy)
    whole, forwarded_whole = exchange(stage, [data], 0.0)
    split, forwarded_split = exchange(stage, segments, 0.002)
    assert verdict(whole) == verdict(split), (data, segments, whole, split)
    # and the same requests went upstream, framed the same way (no desync either side)
    assert forwarded_whole == forwarded_split, (data, segments)
    assert_alive(stage.proxy, mark)
