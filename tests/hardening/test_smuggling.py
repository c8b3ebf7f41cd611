"""Request smuggling and malformed input, through the real proxy, on both parsers.

Every case goes over a real socket to the proxy process, which forwards to a recording
upstream (tests/upstreams.py ``RecordingUpstream``) that keeps every byte it got. Each case
checks what the client got *and* what reached the upstream. "Nothing unintended reached the
upstream" means, per kind of case (our reading of RFC 9112 §6.1/§6.3/§9.3/§9.6):

* a request refused for its head or framing (400/413/501): the upstream received nothing at
  all, not even a partial head (checked after a probe request has gone through, so anything
  the proxy was going to send has been sent);
* a request whose body broke after it was dispatched: the upstream saw at most a head and part
  of a body, never the end of the message, and its connection was closed;
* ``Connection: close`` and HTTP/1.0: exactly the one request before it, whatever follows;
* an early answer (by the proxy or the upstream): the body never reaches the upstream as a
  request of its own (no ``/smuggled`` request line is ever parsed there);
* a broken upstream response: the client gets 502 (or, for bytes after a complete response,
  only that response), the next request on the same client connection gets its own answer,
  and the upstream connection that misbehaved is never used again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.hardening.stage import PARSERS, assert_alive, cvm_rule, listener, log_mark
from tests.hardening.wire import EOF, Exchange, connect, read_until, send
from tests.proxyproc import ProxyProcess
from tests.upstreams import RecordingUpstream, Script

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: s.test\r\n\r\n"
LAST_CHUNK_THEN_SMUGGLED = b"0\r\n\r\n" + SMUGGLED
MAX_BODY = 100000
BIG_BODY = 90000


@dataclass
class Stage:
    proxy: ProxyProcess
    upstream: RecordingUpstream

    @property
    def port(self) -> int:
        return self.proxy.port("web")

    @property
    def stream_port(self) -> int:
        """The listener with proxy_request_buffering off."""
        return self.proxy.port("stream")


@pytest.fixture(scope="module", params=PARSERS)
def stage(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stage]:
    with RecordingUpstream() as up:
        rules = cvm_rule("s.test", "/", up.address) + cvm_rule("n.test", "/only/", up.address)
        knobs: dict[str, object] = dict(
            default_domain="s.test", client_header_timeout=2, client_body_timeout=2,
            keepalive_timeout=5, proxy_read_timeout=2, client_max_body_size=MAX_BODY)
        # "web" buffers request bodies (the default); "stream" streams them as they come
        config = listener("web", rules, **knobs) + listener(
            "stream", rules, proxy_request_buffering=False, **knobs)
        with ProxyProcess.with_config(config, tmp_path_factory.mktemp("smuggling"),
                                      "--http", request.param, "--no-access-log") as proc:
            yield Stage(proc, up)


@pytest.fixture
def st(stage: Stage) -> Iterator[Stage]:
    """The module's stage, with the recording cleared; the proxy must stay healthy."""
    stage.upstream.scripts.clear()
    stage.upstream.clear()
    mark = log_mark(stage.proxy)
    yield stage
    assert_alive(stage.proxy, mark)


def req(*fields: bytes, body: bytes = b"", line: bytes = b"POST / HTTP/1.1",
        host: bytes | None = b"Host: s.test") -> bytes:
    lines = [line] + ([host] if host is not None else []) + list(fields)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def get(target: bytes, *fields: bytes) -> bytes:
    return req(*fields, line=b"GET " + target + b" HTTP/1.1")


def after_probe(st: Stage) -> tuple[list[str], bytes]:
    """Send a probe through the proxy and wait for it: then every byte the proxy was going to
    send for earlier requests has been sent. The targets that reached the upstream besides the
    probe, and every raw byte it received."""
    ex = send(st.port, get(b"/probe"), expect=1)
    assert ex.statuses == [200], ex
    requests = st.upstream.wait_requests(1)
    return [r.target for r in requests if r.target != "/probe"], st.upstream.raw()


def wait_for_raw(st: Stage, needle: bytes, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while needle not in st.upstream.raw():
        assert time.monotonic() < deadline, st.upstream.raw()
        time.sleep(0.01)


def assert_refused(ex: Exchange, status: int) -> None:
    assert ex.statuses == [status], ex
    assert ex.replies[0].closes and ex.end == EOF and not ex.leftover, ex


def assert_nothing_reached(st: Stage) -> None:
    targets, raw = after_probe(st)
    assert targets == []
    # the probe's head and nothing else: no partial head, no body bytes
    assert raw.startswith(b"GET /probe HTTP/1.1\r\n") and raw.count(b"\r\n\r\n") == 1, raw


# --- requests refused for their head or framing ----------------------------------------------

CHUNKED = b"Transfer-Encoding: chunked"
CL_SMUGGLE = b"Content-Length: %d" % len(LAST_CHUNK_THEN_SMUGGLED)

REFUSED: dict[str, tuple[bytes, int]] = {
    # RFC 9112 §6.1: Content-Length with Transfer-Encoding (SPEC §9: refused)
    "cl_then_te": (req(CL_SMUGGLE, CHUNKED, body=LAST_CHUNK_THEN_SMUGGLED), 400),
    "te_then_cl": (req(CHUNKED, CL_SMUGGLE, body=LAST_CHUNK_THEN_SMUGGLED), 400),
    "te_and_cl_zero": (req(CHUNKED, b"Content-Length: 0", body=LAST_CHUNK_THEN_SMUGGLED), 400),
    "te_with_tab_and_cl": (req(CL_SMUGGLE, b"Transfer-Encoding:\tchunked",
                               body=LAST_CHUNK_THEN_SMUGGLED), 400),
    # §6.1: Transfer-Encoding in HTTP/1.0 is faulty framing
    "te_in_http10": (req(CHUNKED, body=LAST_CHUNK_THEN_SMUGGLED, line=b"POST / HTTP/1.0"),
                     400),
    "te_and_cl_in_http10": (req(CHUNKED, CL_SMUGGLE, body=LAST_CHUNK_THEN_SMUGGLED,
                                line=b"POST / HTTP/1.0"), 400),
    # §6.3: chunked must be final (and applied once); other codings are not implemented (§6.1)
    "te_chunked_not_final": (req(b"Transfer-Encoding: chunked, identity",
                                 body=LAST_CHUNK_THEN_SMUGGLED), 400),
    "te_chunked_twice": (req(CHUNKED, CHUNKED, body=LAST_CHUNK_THEN_SMUGGLED), 400),
    "te_gzip": (req(b"Transfer-Encoding: gzip", body=SMUGGLED), 501),
    "te_gzip_then_chunked": (req(b"Transfer-Encoding: gzip, chunked",
                                 body=LAST_CHUNK_THEN_SMUGGLED), 501),
    "te_xchunked": (req(b"Transfer-Encoding: xchunked", body=SMUGGLED), 501),
    "te_empty": (req(b"Transfer-Encoding: ", body=SMUGGLED), 400),
    "te_vertical_tab": (req(b"Transfer-Encoding: chunked\x0b", body=LAST_CHUNK_THEN_SMUGGLED),
                        400),
    "te_space_before_colon": (req(b"Transfer-Encoding : chunked", CL_SMUGGLE,
                                  body=LAST_CHUNK_THEN_SMUGGLED), 400),
    "te_folded": (req(b"Transfer-Encoding:\r\n chunked", CL_SMUGGLE,
                      body=LAST_CHUNK_THEN_SMUGGLED), 400),
    "te_behind_tab_fold": (req(CL_SMUGGLE, b"X-A: 1\r\n\tTransfer-Encoding: chunked",
                               body=LAST_CHUNK_THEN_SMUGGLED), 400),
    # §6.3: duplicate or malformed Content-Length
    "cl_twice_differing": (req(b"Content-Length: 5", b"Content-Length: %d" % len(SMUGGLED),
                               body=SMUGGLED), 400),
    "cl_twice_same": (req(b"Content-Length: 5", b"Content-Length: 5", body=SMUGGLED), 400),
    "cl_list_same": (req(b"Content-Length: 5, 5", body=SMUGGLED), 400),
    "cl_list_differing": (req(b"Content-Length: 5, %d" % len(SMUGGLED), body=SMUGGLED), 400),
    "cl_plus": (req(b"Content-Length: +5", body=SMUGGLED), 400),
    "cl_negative": (req(b"Content-Length: -1", body=SMUGGLED), 400),
    "cl_hex": (req(b"Content-Length: 0x5", body=SMUGGLED), 400),
    "cl_underscore": (req(b"Content-Length: 1_0", body=SMUGGLED), 400),
    "cl_empty": (req(b"Content-Length: ", body=SMUGGLED), 400),
    "cl_inner_space": (req(b"Content-Length: 5 5", body=SMUGGLED), 400),
    "cl_too_many_digits": (req(b"Content-Length: " + b"1" * 25, body=SMUGGLED), 400),
    "cl_space_before_colon": (req(b"Content-Length : 5", body=SMUGGLED), 400),
    "cl_over_the_limit": (req(b"Content-Length: %d" % (MAX_BODY + 1), body=SMUGGLED), 413),
    # §5.2 obs-fold, §2.2 bare CR / LF, RFC 9110 §5.5 control bytes, §5.1 space before colon
    "obs_fold": (get(b"/", b"X-A: a\r\n b") + SMUGGLED, 400),
    "whitespace_before_first_field": (b"GET / HTTP/1.1\r\n Host: s.test\r\n\r\n" + SMUGGLED,
                                      400),
    "bare_lf_after_request_line": (b"GET / HTTP/1.1\nHost: s.test\r\n\r\n" + SMUGGLED, 400),
    "bare_lf_after_field": (b"GET / HTTP/1.1\r\nHost: s.test\nX-A: 1\r\n\r\n" + SMUGGLED, 400),
    "bare_lf_end_of_head": (b"GET / HTTP/1.1\r\nHost: s.test\r\n\n" + SMUGGLED, 400),
    "bare_cr_in_value": (get(b"/", b"X-A: a\rb") + SMUGGLED, 400),
    "cr_cr_lf": (b"GET / HTTP/1.1\r\nHost: s.test\r\r\n\r\n" + SMUGGLED, 400),
    "nul_in_value": (get(b"/", b"X-A: a\x00b") + SMUGGLED, 400),
    "soh_in_value": (get(b"/", b"X-A: a\x01b") + SMUGGLED, 400),
    "del_in_value": (get(b"/", b"X-A: a\x7fb") + SMUGGLED, 400),
    "nul_in_name": (get(b"/", b"X-\x00A: 1") + SMUGGLED, 400),
    "control_in_target": (get(b"/a\x01b") + SMUGGLED, 400),
    "space_in_target": (get(b"/a b") + SMUGGLED, 400),
    "space_before_colon": (get(b"/", b"X-A : 1") + SMUGGLED, 400),
    # §3.2: Host missing (1.1), repeated or invalid; RFC 9110 §4.2.4 no userinfo
    "host_missing": (req(line=b"GET / HTTP/1.1", host=None) + SMUGGLED, 400),
    "host_twice": (get(b"/", b"Host: n.test") + SMUGGLED, 400),
    "host_twice_same": (get(b"/", b"Host: s.test") + SMUGGLED, 400),
    "host_with_space": (req(line=b"GET / HTTP/1.1", host=b"Host: s.test x") + SMUGGLED, 400),
    "host_with_userinfo": (req(line=b"GET / HTTP/1.1", host=b"Host: u@s.test") + SMUGGLED, 400),
    "host_with_path": (req(line=b"GET / HTTP/1.1", host=b"Host: s.test/x") + SMUGGLED, 400),
    "host_bad_port": (req(line=b"GET / HTTP/1.1", host=b"Host: s.test:8o") + SMUGGLED, 400),
    "absolute_form_userinfo": (get(b"http://u@s.test/") + SMUGGLED, 400),
    "connect": (req(line=b"CONNECT s.test:443 HTTP/1.1", host=b"Host: s.test:443") + SMUGGLED,
                400),
    # RFC 9112 §7.1: bad chunk sizes and lines; §7.1.2 bad trailer fields
    "chunk_size_not_hex": (req(CHUNKED, body=b"zz\r\n" + SMUGGLED), 400),
    "chunk_size_negative": (req(CHUNKED, body=b"-5\r\nhello\r\n" + LAST_CHUNK_THEN_SMUGGLED),
                            400),
    "chunk_size_0x": (req(CHUNKED, body=b"0x5\r\nhello\r\n" + LAST_CHUNK_THEN_SMUGGLED), 400),
    "chunk_size_space": (req(CHUNKED, body=b"5 \r\nhello\r\n" + LAST_CHUNK_THEN_SMUGGLED), 400),
    "chunk_size_17_digits": (req(CHUNKED, body=b"0" * 16 + b"5\r\nhello\r\n"
                                 + LAST_CHUNK_THEN_SMUGGLED), 400),
    "chunk_size_over_the_limit": (req(CHUNKED, body=b"f" * 16 + b"\r\nhello\r\n"), 413),
    "chunk_size_bare_lf": (req(CHUNKED, body=b"5\nhello\r\n" + LAST_CHUNK_THEN_SMUGGLED), 400),
    "chunk_data_too_long": (req(CHUNKED, body=b"5\r\nhelloX\r\n" + LAST_CHUNK_THEN_SMUGGLED),
                            400),
    "chunk_extension_too_long": (req(CHUNKED, body=b"5;" + b"a" * 5000 + b"\r\nhello\r\n"
                                     + LAST_CHUNK_THEN_SMUGGLED), 400),
    "chunk_extension_malformed": (req(CHUNKED, body=b"5;=\r\nhello\r\n"
                                      + LAST_CHUNK_THEN_SMUGGLED), 400),
    "trailer_without_colon": (req(CHUNKED, body=b"5\r\nhello\r\n0\r\nX-A b\r\n\r\n" + SMUGGLED),
                              400),
    "trailer_folded": (req(CHUNKED, body=b"5\r\nhello\r\n0\r\nX-A: a\r\n b\r\n\r\n" + SMUGGLED),
                       400),
    "trailer_nul": (req(CHUNKED, body=b"5\r\nhello\r\n0\r\nX-A: a\x00\r\n\r\n" + SMUGGLED), 400),
    "trailer_bare_lf": (req(CHUNKED, body=b"5\r\nhello\r\n0\r\nX-A: a\n\r\n" + SMUGGLED), 400),
    "trailer_space_before_colon": (req(CHUNKED, body=b"5\r\nhello\r\n0\r\nX-A : a\r\n\r\n"
                                       + SMUGGLED), 400),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_malformed_request_is_refused_and_nothing_reaches_the_upstream(st: Stage,
                                                                       case: str) -> None:
    raw, status = REFUSED[case]
    assert_refused(send(st.port, raw), status)
    assert_nothing_reached(st)


def test_a_good_request_before_a_malformed_one_is_answered_and_only_it_is_forwarded(
        st: Stage) -> None:
    raw = get(b"/first") + REFUSED["cl_then_te"][0]
    ex = send(st.port, raw)
    assert ex.statuses == [200, 400] and ex.replies[0].body == b"/first" and ex.end == EOF, ex
    targets, raw_up = after_probe(st)
    assert targets == ["/first"] and b"smuggled" not in raw_up


def test_buffered_chunked_body_broken_midway_reaches_nothing_upstream(st: Stage) -> None:
    with connect(st.port) as sock:
        sock.sendall(req(CHUNKED, line=b"POST /chunks HTTP/1.1") + b"5\r\nhello\r\n")
        time.sleep(0.3)  # time for a wrongly streamed chunk to go up
        sock.sendall(b"zz\r\n" + SMUGGLED)
        ex = read_until(sock, None)
    assert_refused(ex, 400)
    assert_nothing_reached(st)


def test_chunked_body_broken_after_dispatch_never_reaches_the_upstream_whole(st: Stage
                                                                             ) -> None:
    with connect(st.stream_port) as sock:
        sock.sendall(req(CHUNKED, line=b"POST /chunks HTTP/1.1") + b"5\r\nhello\r\n")
        # the head and the first chunk are on their way up before anything is wrong
        wait_for_raw(st, b"hello")
        sock.sendall(b"zz\r\n" + SMUGGLED)
        ex = read_until(sock, None)
    assert_refused(ex, 400)
    targets, raw = after_probe(st)
    assert targets == []  # the upstream never got the end of the message
    assert b"0\r\n\r\n" not in raw.split(b"POST /chunks")[1].split(b"GET /probe")[0]
    assert b"smuggled" not in raw
    chunks_conn = next(c for c in st.upstream.connections if b"POST /chunks" in c.raw)
    assert chunks_conn.closed


# --- header names with underscores (ours: ignored, as nginx's underscores_in_headers off) ----

def test_header_names_with_underscores_are_not_forwarded(st: Stage) -> None:
    body = b"hello"
    raw = req(b"Content-Length: 5", b"Transfer_Encoding: chunked", b"X_Real_IP: 6.6.6.6",
              b"X_Forwarded_For: 6.6.6.6", b"Content_Length: 99", b"X-Kept: yes",
              line=b"POST /under HTTP/1.1", body=body)
    ex = send(st.port, raw, expect=1)
    assert ex.statuses == [200], ex
    (got,) = st.upstream.wait_requests(1)
    names = [name for name, _ in got.headers]
    assert not [n for n in names if "_" in n], names
    assert got.body == body and got.header("content-length") == "5"
    assert got.header("transfer-encoding") is None and got.header("x-kept") == "yes"
    assert got.header("x-real-ip") == "127.0.0.1"


def test_absolute_form_authority_wins_over_host(st: Stage) -> None:
    ex = send(st.port, get(b"http://n.test/only/x"), expect=1)
    assert ex.statuses == [200], ex
    (got,) = st.upstream.wait_requests(1)
    assert got.target == "/only/x" and got.header("host") == "n.test"


# --- Connection: close and HTTP/1.0 -------------------------------------------------------

@pytest.mark.parametrize("first,tail", [
    (get(b"/one", b"Connection: close"), SMUGGLED),
    (get(b"/one", b"Connection: close"), SMUGGLED * 6000),  # more than one read's worth
    (b"GET /one HTTP/1.0\r\nHost: s.test\r\n\r\n", SMUGGLED),
    (req(b"Content-Length: 5", b"Connection: close", body=b"hello", line=b"POST /one HTTP/1.1"),
     SMUGGLED),
    (req(b"Content-Length: 5", body=b"hello", line=b"POST /one HTTP/1.0"), SMUGGLED),
    (req(CHUNKED, b"Connection: close", body=b"5\r\nhello\r\n0\r\n\r\n",
         line=b"POST /one HTTP/1.1"), SMUGGLED),
    (req(b"Content-Length: %d" % BIG_BODY, b"Connection: close", line=b"POST /one HTTP/1.1",
         body=b"b" * BIG_BODY), SMUGGLED),  # a body of many reads: reading goes on to its end
], ids=["close", "close_then_much_more", "http10", "close_with_body", "http10_with_body",
        "close_with_chunked_body", "close_with_big_body"])
def test_nothing_after_the_last_request_reaches_the_upstream(st: Stage, first: bytes,
                                                             tail: bytes) -> None:
    ex = send(st.port, first + tail)
    assert ex.statuses == [200] and ex.replies[0].body == b"/one", ex
    assert ex.replies[0].closes and ex.end == EOF, ex
    targets, raw = after_probe(st)
    assert targets == ["/one"] and b"smuggled" not in raw
    (one,) = [r for r in st.upstream.requests() if r.target == "/one"]
    body = first.partition(b"\r\n\r\n")[2]
    assert one.body == (b"hello" if b"hello" in body else body)


# --- early answers ---------------------------------------------------------------------------

EARLY: dict[str, tuple[bytes, int]] = {
    "404": (req(b"Content-Length: %d" % len(SMUGGLED), line=b"POST /elsewhere HTTP/1.1",
                host=b"Host: n.test"), 404),  # no rule
    "301": (req(b"Content-Length: %d" % len(SMUGGLED), line=b"POST /only HTTP/1.1",
                host=b"Host: n.test"), 301),  # the trailing-slash redirect
}


@pytest.mark.parametrize("case", sorted(EARLY))
def test_early_answer_from_the_proxy_after_the_whole_body_keeps_the_connection_in_step(
        st: Stage, case: str) -> None:
    # The body came with the head, so it was read (as a body) before the answer: the
    # connection may go on (RFC 9112 §9.3), and the next request is the one after the body.
    head, status = EARLY[case]
    ex = send(st.port, head + SMUGGLED + get(b"/after"), expect=2)
    assert ex.statuses == [status, 200] and ex.replies[1].body == b"/after", ex
    assert not ex.replies[0].closes
    targets, raw = after_probe(st)
    assert targets == ["/after"] and b"smuggled" not in raw


@pytest.mark.parametrize("case", sorted(EARLY))
def test_early_answer_from_the_proxy_before_the_body_closes_the_connection(
        st: Stage, case: str) -> None:
    # The answer goes out before the body arrived: the connection closes after it (§9.3),
    # so the late body is never read as a request (no CL.0 desync).
    head, status = EARLY[case]
    with connect(st.port) as sock:
        sock.sendall(head)
        ex = read_until(sock, 1)
        assert ex.statuses == [status] and ex.replies[0].closes, ex
        try:
            sock.sendall(SMUGGLED + get(b"/after"))
        except OSError:
            pass
        assert read_until(sock, None).end == EOF
    assert_nothing_reached(st)


def test_body_over_the_limit_is_refused_before_it_is_read(st: Stage) -> None:
    ex = send(st.port, req(b"Content-Length: %d" % (MAX_BODY * 2)) + SMUGGLED + get(b"/after"))
    assert_refused(ex, 413)
    assert_nothing_reached(st)


def test_early_answer_without_100_continue_closes_the_connection(st: Stage) -> None:
    head = req(b"Content-Length: %d" % len(SMUGGLED), b"Expect: 100-continue",
               line=b"POST /elsewhere HTTP/1.1", host=b"Host: n.test")
    with connect(st.port) as sock:
        sock.sendall(head)
        ex = read_until(sock, 1)
        assert ex.statuses == [404] and ex.replies[0].closes, ex  # no 100 Continue before it
        try:
            sock.sendall(SMUGGLED)  # a client that sends the body anyway
        except OSError:
            pass
        assert read_until(sock, None).end == EOF
    assert_nothing_reached(st)


@pytest.mark.parametrize("close", [False, True], ids=["keep_alive", "then_close"])
def test_early_answer_from_the_upstream_keeps_both_connections_in_step(st: Stage,
                                                                       close: bool) -> None:
    answer = (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n"
              + (b"Connection: close\r\n" if close else b"") + b"\r\ndenied")
    st.upstream.scripts["/early"] = Script(answer, early=True, close=close)
    raw = req(b"Content-Length: %d" % len(SMUGGLED), line=b"POST /early HTTP/1.1",
              body=SMUGGLED) + get(b"/after")
    ex = send(st.port, raw, expect=2)
    assert ex.statuses == [403, 200] and ex.replies[0].body == b"denied", ex
    assert ex.replies[1].body == b"/after"
    targets, _ = after_probe(st)
    assert "/smuggled" not in targets and "/after" in targets
    assert set(targets) <= {"/early", "/after"}


# --- upstream responses with broken framing ------------------------------------------------

SMUGGLED_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
BROKEN: dict[str, tuple[bytes, int]] = {
    "cl_and_te": (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"0\r\n\r\n" + SMUGGLED_RESPONSE, 502),
    "cl_twice_differing": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 10\r\n\r\n"
                           b"ok" + SMUGGLED_RESPONSE, 502),
    "cl_negative": (b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok", 502),
    "cl_not_a_number": (b"HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\nok", 502),
    "obs_fold": (b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok", 502),
    "bare_cr": (b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 2\r\n\r\nok", 502),
    "nul_in_field": (b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok", 502),
    "space_before_colon": (b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok", 502),
    "bad_status_line": (b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok", 502),
    "not_http": (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", 502),
    "bad_chunk_size": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n"
                       b"0\r\n\r\n", 502),
    "chunk_size_overflow": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"1" + b"0" * 20 + b"\r\n", 502),
    "unasked_101": (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: upgrade\r\n\r\n", 502),
    "head_too_large": (b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"b" * 70000 + b"\r\n"
                       b"Content-Length: 2\r\n\r\nok", 502),
    # complete answers followed by more than was asked for: only the answer goes through
    "extra_response": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + SMUGGLED_RESPONSE,
                       200),
    "204_with_body": (b"HTTP/1.1 204 No Content\r\nContent-Length: 8\r\n\r\nsmuggled", 204),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_upstream_response_is_contained(st: Stage, case: str) -> None:
    answer, status = BROKEN[case]
    st.upstream.scripts["/broken"] = Script(answer)
    ex = send(st.port, get(b"/broken") + get(b"/after"), expect=2)
    assert ex.statuses == [status, 200], ex
    assert b"smuggled" not in ex.raw
    assert ex.replies[1].body == b"/after", ex  # the next answer is its own, not a leftover
    if status == 200:
        assert ex.replies[0].body == b"ok"
    requests = st.upstream.wait_requests(2)
    broken = next(r for r in requests if r.target == "/broken")
    after = next(r for r in requests if r.target == "/after")
    # the connection that misbehaved is never used again (RFC 9112 §6.3: discard it)
    assert after.connection != broken.connection
    assert not [r for r in requests if r.connection == broken.connection and r is not broken]
