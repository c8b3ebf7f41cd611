"""The HTTP/1.1 request parser: one corpus, both engines, three ways of feeding.

Every corpus case runs on httptools and on h11, fed whole, one byte at a time (h11's ``tr()``
habit) and split at seeded random points; all must give the expected outcome. Hypothesis then
throws arbitrary bytes and mutated requests at both engines and checks they agree.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.errors import (
    BadRequest,
    HeadersTooLarge,
    NotImplementedCoding,
    PayloadTooLarge,
    ProxyError,
    UriTooLong,
)
from proxy.http1 import (
    END,
    PARSERS,
    Event,
    H11Parser,
    HttptoolsParser,
    MAX_CHUNK_LINE,
    Limits,
    RequestHead,
    make_parser,
)

KINDS = ["httptools", "h11"]
Feeding = Callable[[bytes], list[bytes]]


def whole(data: bytes) -> list[bytes]:
    return [data]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


def random_splits(data: bytes, seed: int = 1234) -> list[bytes]:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 6))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


FEEDINGS: dict[str, Feeding] = {"whole": whole, "bytewise": bytewise, "random": random_splits}


@dataclass
class Outcome:
    """What a parser made of a byte stream: the requests (head + joined body), how many of them
    ended, and the error class that stopped it (None if nothing did)."""

    requests: list[tuple[RequestHead, bytes]] = field(default_factory=list)
    ended: int = 0
    error: type[ProxyError] | None = None


def run(kind: str, chunks: list[bytes], limits: Limits | None = None) -> Outcome:
    parser = make_parser(kind, limits or Limits())
    out = Outcome()

    def take(events: list[Event]) -> None:
        for event in events:
            if isinstance(event, RequestHead):
                out.requests.append((event, b""))
            elif isinstance(event, bytes):
                head, body = out.requests[-1]
                out.requests[-1] = (head, body + event)
            else:
                assert event is END
                out.ended += 1

    try:
        for chunk in chunks:
            take(parser.feed(chunk))
        parser.feed_eof()
    except ProxyError as exc:
        out.error = type(exc)
        # a dead parser stays dead, with the same error class
        with pytest.raises(out.error):
            parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    return out


# -- the corpus -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Req:
    """An expected request; ``headers`` None means not checked."""

    method: str
    path: str
    query: str = ""
    headers: tuple[tuple[str, str], ...] | None = None
    body: bytes = b""
    keep_alive: bool = True


@dataclass(frozen=True)
class Err:
    error: type[ProxyError]
    before: tuple[Req, ...] = ()  # requests completed before the error


def H(*lines: str, body: bytes = b"") -> bytes:
    return "".join(line + "\r\n" for line in lines).encode("latin-1") + b"\r\n" + body


GET = "GET / HTTP/1.1"
HOST = "Host: a.test"
POST = "POST /p HTTP/1.1"
CHUNKED = H(POST, HOST, "Transfer-Encoding: chunked")
#: a POST whose head was fine and whose chunked body was not
BROKEN_BODY = Err(BadRequest, before=(Req("POST", "/p"),))
LONG_PATH = "/" + "a" * (8000 - len("GET / HTTP/1.1"))  # a request line of 8000 bytes
TOO_LONG_PATH = "/" + "a" * (8193 - len("GET / HTTP/1.1"))  # 8193: one over the limit

CORPUS: list[tuple[str, bytes, list[Req] | Err]] = [
    ("simple_get", H(GET, HOST), [Req("GET", "/", headers=(("Host", "a.test"),))]),
    ("head", H("HEAD /x HTTP/1.1", HOST), [Req("HEAD", "/x")]),
    ("keep_alive_default", H(GET, HOST, "Connection: keep-alive"), [Req("GET", "/")]),
    ("connection_close", H(GET, HOST, "Connection: close"), [Req("GET", "/", keep_alive=False)]),
    ("close_among_tokens", H(GET, HOST, "Connection: foo, Close"),
     [Req("GET", "/", keep_alive=False)]),
    ("close_stops_parsing", H(GET, HOST, "Connection: close") + H(GET, HOST),
     [Req("GET", "/", keep_alive=False)]),
    ("http10", H("GET /old HTTP/1.0"), [Req("GET", "/old", keep_alive=False)]),
    # RFC 9112 §9.3 / Appendix C.2.2: an HTTP/1.0 connection persists with "keep-alive"
    ("http10_keep_alive_persists",
     H("GET / HTTP/1.0", "Connection: keep-alive") + H(GET, HOST),
     [Req("GET", "/"), Req("GET", "/")]),
    ("http10_keep_alive_among_tokens_any_case",
     H("GET /a HTTP/1.0", "Connection: foo, Keep-Alive") + H("GET /b HTTP/1.0"),
     [Req("GET", "/a"), Req("GET", "/b", keep_alive=False)]),
    ("http10_keep_alive_with_body_then_pipelined",
     H("POST /p HTTP/1.0", "Connection: keep-alive", "Content-Length: 5", body=b"hello")
     + H("GET /n HTTP/1.0", "Connection: keep-alive") + H("GET /last HTTP/1.0") + H(GET, HOST),
     [Req("POST", "/p", body=b"hello"), Req("GET", "/n"), Req("GET", "/last", keep_alive=False)]),
    ("http10_close_beats_keep_alive",
     H("GET / HTTP/1.0", "Connection: keep-alive, close") + H(GET, HOST),
     [Req("GET", "/", keep_alive=False)]),
    ("http10_keep_alive_on_another_line",
     H("GET / HTTP/1.0", "Connection: foo", "Connection: keep-alive") + H(GET, HOST),
     [Req("GET", "/"), Req("GET", "/")]),
    ("http10_keep_alive_header_alone_is_not_enough",
     H("GET / HTTP/1.0", "Keep-Alive: timeout=5") + H(GET, HOST),
     [Req("GET", "/", keep_alive=False)]),
    ("pipelined_three", H("GET /1 HTTP/1.1", HOST)
     + H(POST, HOST, "Content-Length: 5", body=b"hello") + H("GET /3 HTTP/1.1", HOST),
     [Req("GET", "/1"), Req("POST", "/p", body=b"hello"), Req("GET", "/3")]),
    ("content_length_body", H(POST, HOST, "Content-Length: 11", body=b"hello world"),
     [Req("POST", "/p", body=b"hello world")]),
    ("content_length_zero", H(POST, HOST, "Content-Length: 0"), [Req("POST", "/p")]),
    ("content_length_leading_zeros", H(POST, HOST, "Content-Length: 005", body=b"hello"),
     [Req("POST", "/p", body=b"hello")]),
    ("chunked_with_extensions_and_trailers", CHUNKED
     + b"5;name=val;q=\"a b\"\r\nhello\r\n6 ; x\r\n world\r\n0\r\nTrailer-A: 1\r\n\r\n",
     [Req("POST", "/p", body=b"hello world")]),
    ("chunked_upper_case_coding", H(POST, HOST, "Transfer-Encoding: Chunked",
                                    body=b"A\r\n0123456789\r\n0\r\n\r\n"),
     [Req("POST", "/p", body=b"0123456789")]),
    ("chunked_then_pipelined", CHUNKED + b"3\r\nabc\r\n0\r\n\r\n" + H("GET /n HTTP/1.1", HOST),
     [Req("POST", "/p", body=b"abc"), Req("GET", "/n")]),
    ("chunked_bad_size", CHUNKED + b"zz\r\nhi\r\n0\r\n\r\n", BROKEN_BODY),
    ("chunked_negative_size", CHUNKED + b"-5\r\nhello\r\n0\r\n\r\n", BROKEN_BODY),
    ("chunked_size_17_digits", CHUNKED + b"00000000000000005\r\nhello\r\n0\r\n\r\n", BROKEN_BODY),
    ("chunked_size_16_digits_ok", CHUNKED + b"0000000000000005\r\nhello\r\n0\r\n\r\n",
     [Req("POST", "/p", body=b"hello")]),
    ("chunked_size_bare_lf", CHUNKED + b"5\nhello\r\n0\r\n\r\n", BROKEN_BODY),
    ("chunked_size_trailing_space", CHUNKED + b"5 \r\nhello\r\n0\r\n\r\n", BROKEN_BODY),
    ("chunked_bad_trailer", CHUNKED + b"0\r\nBad Trailer: x\r\n\r\n", BROKEN_BODY),
    ("chunked_data_not_followed_by_crlf", CHUNKED + b"5\r\nhelloXX0\r\n\r\n",
     Err(BadRequest, before=(Req("POST", "/p", body=b"hello"),))),
    ("cl_and_te", H(POST, HOST, "Content-Length: 5", "Transfer-Encoding: chunked",
                    body=b"0\r\n\r\n"), Err(BadRequest)),
    ("te_and_cl", H(POST, HOST, "Transfer-Encoding: gzip", "Content-Length: 5"), Err(BadRequest)),
    ("duplicate_differing_cl", H(POST, HOST, "Content-Length: 5", "Content-Length: 6",
                                 body=b"hello!"), Err(BadRequest)),
    ("duplicate_identical_cl_lines", H(POST, HOST, "Content-Length: 5", "Content-Length: 5",
                                       body=b"hello"), Err(BadRequest)),
    ("cl_list_5_5", H(POST, HOST, "Content-Length: 5, 5", body=b"hello"), Err(BadRequest)),
    *[(f"bad_cl_{name}", H(POST, HOST, f"Content-Length: {value}", body=b"hello"), Err(BadRequest))
      for name, value in [("plus", "+5"), ("minus", "-1"), ("hex", "0x5"), ("empty", ""),
                          ("underscore", "1_0"), ("overflow", "18446744073709551616"),
                          ("21_digits", "0" * 20 + "5"), ("inner_space", "5 5")]],
    ("te_gzip", H(POST, HOST, "Transfer-Encoding: gzip"), Err(NotImplementedCoding)),
    ("te_identity", H(POST, HOST, "Transfer-Encoding: identity"), Err(NotImplementedCoding)),
    ("te_xchunked", H(POST, HOST, "Transfer-Encoding: xchunked"), Err(NotImplementedCoding)),
    ("te_gzip_chunked", H(POST, HOST, "Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"),
     Err(NotImplementedCoding)),
    ("te_chunked_gzip", H(POST, HOST, "Transfer-Encoding: chunked, gzip"), Err(BadRequest)),
    ("te_chunked_twice", H(POST, HOST, "Transfer-Encoding: chunked", "Transfer-Encoding: chunked"),
     Err(BadRequest)),
    ("te_empty", H(POST, HOST, "Transfer-Encoding: "), Err(BadRequest)),
    ("http10_with_te", H("POST / HTTP/1.0", "Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
     Err(BadRequest)),
    ("bare_lf_everywhere", b"GET / HTTP/1.1\nHost: a\n\n", Err(BadRequest)),
    ("bare_lf_after_field", b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", Err(BadRequest)),
    ("bare_cr_after_field", b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", Err(BadRequest)),
    ("bare_cr_in_request_line", b"GET /\r HTTP/1.1\r\nHost: a\r\n\r\n", Err(BadRequest)),
    ("obs_fold", H(GET, HOST, "X: a", " folded"), Err(BadRequest)),
    ("whitespace_before_first_field", H(GET, " Host: a.test"), Err(BadRequest)),
    ("space_before_colon", H(GET, "Host : a.test"), Err(BadRequest)),
    ("nul_in_value", H(GET, HOST, "X: a\x00b"), Err(BadRequest)),
    ("ctl_in_value", H(GET, HOST, "X: a\x01b"), Err(BadRequest)),
    ("del_in_value", H(GET, HOST, "X: a\x7fb"), Err(BadRequest)),
    ("ctl_in_target", H("GET /a\x01 HTTP/1.1", HOST), Err(BadRequest)),
    ("bad_name_char", H(GET, HOST, "X(y): 1"), Err(BadRequest)),
    ("missing_host", H(GET), Err(BadRequest)),
    ("two_hosts", H(GET, HOST, "Host: b.test"), Err(BadRequest)),
    ("invalid_host", H(GET, "Host: a b"), Err(BadRequest)),
    ("userinfo_host", H(GET, "Host: u@a.test"), Err(BadRequest)),
    # an empty host makes the target URI http:///... (RFC 9110 §4.2.1: invalid); nginx: 400
    ("empty_host", H(GET, "Host:"), Err(BadRequest)),
    ("empty_host_after_ows", H(GET, "Host: \t "), Err(BadRequest)),
    ("port_only_host", H(GET, "Host: :8080"), Err(BadRequest)),
    ("colon_only_host", H(GET, "Host: :"), Err(BadRequest)),
    ("http10_empty_host", H("GET / HTTP/1.0", "Host:"), Err(BadRequest)),
    ("http10_without_host", H("GET / HTTP/1.0", "X: 1"), [Req("GET", "/", keep_alive=False)]),
    ("good_then_empty_host_pipelined", H("GET /ok HTTP/1.1", HOST) + H(GET, "Host:"),
     Err(BadRequest, before=(Req("GET", "/ok"),))),
    ("ipv6_host", H(GET, "Host: [::1]:8080"),
     [Req("GET", "/", headers=(("Host", "[::1]:8080"),))]),
    ("one_char_host", H(GET, "Host: a"), [Req("GET", "/", headers=(("Host", "a"),))]),
    # RFC 9112 §3.2.2: with an absolute-form target the Host field is ignored, so its being
    # empty does not matter (nginx differs: it answers 400, see docs/BEHAVIOUR.md)
    ("absolute_form_with_empty_host", H("GET http://b.test/x HTTP/1.1", "Host:"),
     [Req("GET", "/x", headers=(("Host", "b.test"),))]),
    ("absolute_form_with_port_only_host", H("GET http://b.test:81/ HTTP/1.1", "Host: :81"),
     [Req("GET", "/", headers=(("Host", "b.test:81"),))]),
    ("absolute_form_with_invalid_host", H("GET http://b.test/ HTTP/1.1", "Host: a b"),
     Err(BadRequest)),
    ("http2_version", H("GET / HTTP/2.0", HOST), Err(BadRequest)),
    ("http12_version", H("GET / HTTP/1.2", HOST), Err(BadRequest)),
    ("http09_line", b"GET /\r\n\r\n", Err(BadRequest)),
    ("lowercase_method", H("get / HTTP/1.1", HOST), Err(BadRequest)),
    ("unknown_method", H("BREW / HTTP/1.1", HOST), Err(BadRequest)),
    ("connect_refused", H("CONNECT a.test:443 HTTP/1.1", HOST), Err(BadRequest)),
    ("double_space_in_request_line", H("GET  / HTTP/1.1", HOST), Err(BadRequest)),
    ("relative_target", H("GET a/b HTTP/1.1", HOST), Err(BadRequest)),
    ("fragment_in_target", H("GET /a#f HTTP/1.1", HOST), Err(BadRequest)),
    ("asterisk_for_get", H("GET * HTTP/1.1", HOST), Err(BadRequest)),
    ("asterisk_for_options", H("OPTIONS * HTTP/1.1", HOST), [Req("OPTIONS", "*")]),
    ("absolute_form", H("GET http://b.test:8080/x/y?q=1 HTTP/1.1", HOST),
     [Req("GET", "/x/y", "q=1", headers=(("Host", "b.test:8080"),))]),
    ("absolute_form_no_path", H("GET HTTPS://B.test HTTP/1.1", HOST),
     [Req("GET", "/", headers=(("Host", "B.test"),))]),
    ("absolute_form_empty_host", H("GET http:///x HTTP/1.1", HOST), Err(BadRequest)),
    ("absolute_form_userinfo", H("GET http://u@b.test/ HTTP/1.1", HOST), Err(BadRequest)),
    ("absolute_form_ftp", H("GET ftp://b.test/ HTTP/1.1", HOST), Err(BadRequest)),
    ("query_split", H("GET /s?a=1&b=2?c HTTP/1.1", HOST), [Req("GET", "/s", "a=1&b=2?c")]),
    ("empty_query", H("GET /s? HTTP/1.1", HOST), [Req("GET", "/s", "")]),
    ("percent_encoded_path_kept", H("GET /a%2Fb/%7Euser/../c HTTP/1.1", HOST),
     [Req("GET", "/a%2Fb/%7Euser/../c")]),
    ("ows_trimmed", H(GET, "Host:\t a.test \t", "X-Empty:", "X-Inner: a  b"),
     [Req("GET", "/", headers=(("Host", "a.test"), ("X-Empty", ""), ("X-Inner", "a  b")))]),
    ("obs_text_value_latin1", H(GET, HOST, "X: caf\xe9"),
     [Req("GET", "/", headers=(("Host", "a.test"), ("X", "caf\xe9")))]),
    ("leading_empty_lines_ignored", b"\r\n\r\n" + H(GET, HOST), [Req("GET", "/")]),
    ("request_line_8000_ok", H(f"GET {LONG_PATH} HTTP/1.1", HOST), [Req("GET", LONG_PATH)]),
    ("request_line_8193", H(f"GET {TOO_LONG_PATH} HTTP/1.1", HOST), Err(UriTooLong)),
    ("request_line_endless", b"GET /" + b"a" * 9000, Err(UriTooLong)),
    ("header_section_too_large", H(GET, HOST, *[f"X-{i}: {'v' * 1000}" for i in range(70)]),
     Err(HeadersTooLarge)),
    ("header_line_endless", H(GET, HOST)[:-2] + b"X: " + b"v" * 70000, Err(HeadersTooLarge)),
    ("header_lines_101", H(GET, HOST, *[f"X-{i}: v" for i in range(100)]), Err(HeadersTooLarge)),
    ("header_lines_100_ok", H(GET, HOST, *[f"X-{i}: v" for i in range(99)]), [Req("GET", "/")]),
    ("cl_over_max_body_before_body", H(POST, HOST, "Content-Length: 62914561"),
     Err(PayloadTooLarge)),
    ("cl_at_max_body_is_fine_until_eof", H(POST, HOST, "Content-Length: 62914560"),
     Err(BadRequest, before=(Req("POST", "/p"),))),
    ("eof_mid_body", H(POST, HOST, "Content-Length: 10", body=b"hello"),
     Err(BadRequest, before=(Req("POST", "/p", body=b"hello"),))),
    ("eof_mid_head", b"GET / HTTP/1.1\r\nHost: a", Err(BadRequest)),
    ("eof_mid_chunked", H(POST, HOST, "Transfer-Encoding: chunked", body=b"5\r\nhel"),
     Err(BadRequest, before=(Req("POST", "/p", body=b"hel"),))),
    ("good_then_bad_pipelined", H("GET /ok HTTP/1.1", HOST) + H("GET /bad HTTP/1.1"),
     Err(BadRequest, before=(Req("GET", "/ok"),))),
    ("arbitrary_garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", Err(BadRequest)),
]


def _check(out: Outcome, expected: list[Req] | Err) -> None:
    wanted = list(expected.before) if isinstance(expected, Err) else expected
    assert out.error is (expected.error if isinstance(expected, Err) else None)
    assert len(out.requests) == len(wanted)
    for (head, body), want in zip(out.requests, wanted):
        assert (head.method, head.path, head.query, body, head.keep_alive) == (
            want.method, want.path, want.query, want.body, want.keep_alive)
        if want.headers is not None:
            assert head.headers == want.headers
    if not isinstance(expected, Err):
        assert out.ended == len(wanted)


@pytest.mark.parametrize("feeding", FEEDINGS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("name", "raw", "expected"), CORPUS, ids=[c[0] for c in CORPUS])
def test_corpus(name: str, raw: bytes, expected: list[Req] | Err, kind: str,
                feeding: str) -> None:
    _check(run(kind, FEEDINGS[feeding](raw)), expected)


@pytest.mark.parametrize(("name", "raw", "expected"), CORPUS, ids=[c[0] for c in CORPUS])
def test_corpus_engines_agree_on_every_field(name: str, raw: bytes,
                                             expected: list[Req] | Err) -> None:
    outcomes = [run(kind, feed(raw)) for kind in KINDS for feed in FEEDINGS.values()]
    assert all(o == outcomes[0] for o in outcomes[1:])


# -- flags and framing details ------------------------------------------------------------------


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def heads(kind: str, raw: bytes, limits: Limits | None = None) -> list[RequestHead]:
    return [head for head, _ in run(kind, [raw], limits).requests]


def test_expect_continue_flag_only_on_http11(kind: str) -> None:
    raw = H(POST, HOST, "Expect: 100-Continue", "Content-Length: 1", body=b"x")
    assert heads(kind, raw)[0].expect_continue
    raw10 = H("POST / HTTP/1.0", "Expect: 100-continue", "Content-Length: 1", body=b"x")
    assert not heads(kind, raw10)[0].expect_continue
    assert not heads(kind, H(GET, HOST))[0].expect_continue


def test_websocket_upgrade_is_reported_and_ends_parsing(kind: str) -> None:
    raw = H("GET /ws HTTP/1.1", HOST, "Connection: keep-alive, Upgrade", "Upgrade: websocket")
    parser = make_parser(kind, Limits())
    events = parser.feed(raw + b"\x81\x05hello")
    assert isinstance(events[0], RequestHead) and events[0].upgrade == "websocket"
    assert events[1:] == [END]
    assert parser.trailing == b"\x81\x05hello"  # the new protocol's bytes, not parsed
    assert parser.feed(b"GET / HTTP/1.1\r\n\r\n") == []
    parser.feed_eof()


def test_upgrade_needs_the_connection_option_and_http11(kind: str) -> None:
    assert heads(kind, H(GET, HOST, "Upgrade: websocket"))[0].upgrade == ""
    raw10 = H("GET / HTTP/1.0", "Connection: Upgrade", "Upgrade: websocket")
    assert heads(kind, raw10)[0].upgrade == ""


def test_framing_fields(kind: str) -> None:
    head = heads(kind, H(POST, HOST, "Content-Length: 3", body=b"abc"))[0]
    assert (head.content_length, head.chunked, head.http_version) == (3, False, "1.1")
    head = heads(kind, H(POST, HOST, "Transfer-Encoding: chunked", body=b"0\r\n\r\n"))[0]
    assert (head.content_length, head.chunked) == (None, True)
    assert heads(kind, H("GET / HTTP/1.0"))[0].http_version == "1.0"


def test_absolute_form_supplies_host_for_http10(kind: str) -> None:
    head = heads(kind, H("GET http://b.test/x HTTP/1.0"))[0]
    assert head.headers == (("Host", "b.test"),) and head.path == "/x"


def test_payload_too_large_is_raised_with_the_head_before_any_body(kind: str) -> None:
    parser = make_parser(kind, Limits(max_body_size=10))
    with pytest.raises(PayloadTooLarge):
        parser.feed(H(POST, HOST, "Content-Length: 11"))  # no body byte sent yet


TINY_BODY = Limits(max_body_size=10)
LIMITED: list[tuple[str, bytes, list[Req] | Err]] = [
    ("cl_at_max", H(POST, HOST, "Content-Length: 10", body=b"0123456789"),
     [Req("POST", "/p", body=b"0123456789")]),
    ("cl_over_max", H(POST, HOST, "Content-Length: 11", body=b"0123456789X"),
     Err(PayloadTooLarge)),
    ("chunked_at_max", CHUNKED + b"5\r\nabcde\r\n5\r\nfghij\r\n0\r\n\r\n",
     [Req("POST", "/p", body=b"abcdefghij")]),
    # 413 at the chunk-size line that crosses the limit, after the data before it
    ("chunked_over_max", CHUNKED + b"6\r\nabcdef\r\n5\r\nghijk\r\n0\r\n\r\n",
     Err(PayloadTooLarge, before=(Req("POST", "/p", body=b"abcdef"),))),
]


@pytest.mark.parametrize("feeding", FEEDINGS)
@pytest.mark.parametrize(("name", "raw", "expected"), LIMITED, ids=[c[0] for c in LIMITED])
def test_body_size_limit(name: str, raw: bytes, expected: list[Req] | Err, kind: str,
                         feeding: str) -> None:
    _check(run(kind, FEEDINGS[feeding](raw), TINY_BODY), expected)


def test_error_after_good_request_is_held_for_the_next_call(kind: str) -> None:
    parser = make_parser(kind, Limits())
    events = parser.feed(H("GET /ok HTTP/1.1", HOST) + H("GET /bad HTTP/1.1"))
    assert [type(e) for e in events] == [RequestHead, type(END)]
    assert isinstance(parser.error, BadRequest)
    with pytest.raises(BadRequest):
        parser.feed(b"")
    with pytest.raises(BadRequest):
        parser.feed_eof()


def test_eof_between_requests_is_fine(kind: str) -> None:
    parser = make_parser(kind, Limits())
    assert len(parser.feed(H(GET, HOST) + b"\r\n")) == 2
    parser.feed_eof()


def test_body_bytes_are_bytes_not_bytearray(kind: str) -> None:
    parser = make_parser(kind, Limits())
    parser.feed(H(POST, HOST, "Content-Length: 6")[:-1])
    events = parser.feed(b"\nabc") + parser.feed(b"def")
    assert [type(e) for e in events] == [RequestHead, bytes, bytes, type(END)]


def test_small_limits_are_exact(kind: str) -> None:
    limits = Limits(max_request_line=20, max_header_size=30, max_header_count=2)
    line = "GET /" + "a" * 6 + " HTTP/1.1"  # exactly 20
    assert run(kind, bytewise(H(line, "Host: a")), limits).error is None
    assert run(kind, [H(line.replace("/", "/a"), "Host: a")], limits).error is UriTooLong
    # header section: field lines plus the final CRLF, 30 bytes exactly
    fields = ("Host: a", "X: " + "v" * 14)  # 9 + 19 + 2 = 30
    assert run(kind, [H("GET / HTTP/1.1", *fields)], limits).error is None
    assert run(kind, [H("GET / HTTP/1.1", fields[0], fields[1] + "v")],
               limits).error is HeadersTooLarge
    assert run(kind, [H("GET / HTTP/1.1", "Host: a", "A: 1", "B: 2")],
               limits).error is HeadersTooLarge


def test_trailer_section_has_the_header_limits(kind: str) -> None:
    limits = Limits(max_header_size=50, max_header_count=2)  # the head has 44 bytes, 2 fields
    body = b"0\r\nA: 1\r\nB: 2\r\n\r\n"
    assert run(kind, bytewise(CHUNKED + body), limits).error is None
    assert run(kind, [CHUNKED + b"0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"],
               limits).error is HeadersTooLarge
    assert run(kind, [CHUNKED + b"0\r\nA: " + b"x" * 45 + b"\r\n\r\n"],
               limits).error is HeadersTooLarge


@pytest.mark.parametrize("feeding", FEEDINGS)
def test_chunk_size_line_is_bounded(kind: str, feeding: str) -> None:
    def line(size: int) -> bytes:  # a chunk-size line of ``size`` bytes, CRLF included
        return b"1;e=" + b"x" * (size - 6) + b"\r\n"

    ok = run(kind, FEEDINGS[feeding](CHUNKED + line(MAX_CHUNK_LINE) + b"a\r\n0\r\n\r\n"))
    assert ok.error is None and ok.requests[0][1] == b"a"
    long = run(kind, FEEDINGS[feeding](CHUNKED + line(MAX_CHUNK_LINE + 1) + b"a\r\n0\r\n\r\n"))
    assert long.error is BadRequest


# -- parser selection ----------------------------------------------------------------------------


def test_make_parser_kinds() -> None:
    assert isinstance(make_parser("httptools", Limits()), HttptoolsParser)
    assert isinstance(make_parser("h11", Limits()), H11Parser)
    assert PARSERS["auto"] is HttptoolsParser  # httptools is installed here
    with pytest.raises(ValueError, match="unknown parser"):
        make_parser("picohttp", Limits())


# -- the engines agree on anything ---------------------------------------------------------------

SMALL = Limits(max_request_line=48, max_header_size=96, max_header_count=4, max_body_size=24)


def agree(data: bytes, cuts: list[int], limits: Limits) -> None:
    points = sorted({c % (len(data) + 1) for c in cuts})
    split = [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]
    outcomes = [run(kind, chunks, limits) for kind in KINDS for chunks in ([data], split)]
    assert all(o == outcomes[0] for o in outcomes[1:]), outcomes


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=6))
def test_arbitrary_bytes_get_the_same_verdict(data: bytes, cuts: list[int]) -> None:
    agree(data, cuts, SMALL)


GOOD = {
    "method": ["GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE"],
    "target": ["/", "/a?b=1", "/a%20b/", "//x", "/?", "http://h/x?y", "HTTPS://h:8"],
    "version": ["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"],
    "field": ["Accept: */*", "X-A:  v ", "X-B:\tv\xe9", "Connection: keep-alive",
              "Connection: close", "Connection: Upgrade", "Upgrade: websocket",
              "Expect: 100-continue", "X-Empty:"],
}
BAD = {
    "method": ["get", "FOO", "CONNECT", "PRI", "", "G T", "GET "],
    "target": ["*", "h:1", "a/b", "/#f", "http://", "/\x01", "/\x80", "/ /", "?",
               "http://u@h/"],
    "version": ["HTTP/1.2", "HTTP/2.0", "http/1.1", "HTTP/1.10", "", "HTTP/1.1 "],
    "field": ["Host: h", "Host: a b", "Content-Length: 3, 3", "Content-Length: +3",
              "Content-Length: 000000000000000000003", "Transfer-Encoding: gzip",
              "Transfer-Encoding: chunked, gzip", "Transfer-Encoding: gzip, chunked",
              "Transfer-Encoding: , chunked", "Transfer-Encoding:", " fold", "X : y",
              "X: \x01", "X: \x7f", "X:\x00", "(: y", ": y", "X", "X: a\rb", "X: a\nb"],
}
#: bytes a mutation inserts: line ends, separators, digits and controls
NOISE = b"\r\n \t:;,0aF\x00\x7f\x80\""


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """One to three mostly valid pipelined requests (each part is wrong one time in ten),
    with matching bodies, then up to three byte-level mutations."""

    def pick(name: str) -> str:
        bad = draw(st.integers(0, 9)) == 0
        return draw(st.sampled_from((BAD if bad else GOOD)[name]))

    out = b""
    for _ in range(draw(st.integers(1, 3))):
        fields = [pick("field") for _ in range(draw(st.integers(0, 3)))]
        fields.insert(draw(st.integers(0, len(fields))), "Host: h")
        body = draw(st.binary(max_size=30))
        framing = draw(st.sampled_from(["none", "length", "chunked"]))
        if framing == "length":
            fields.append(f"Content-Length: {len(body)}")
        elif framing == "chunked":
            fields.append("Transfer-Encoding: chunked")
            size = draw(st.integers(1, 8))
            parts = [body[i:i + size] for i in range(0, len(body), size)]
            ext = draw(st.sampled_from(["", ";a=b", ' ; q="x y"']))
            trailer = draw(st.sampled_from(["", "T: 1\r\n"]))
            body = b"".join(b"%x%s\r\n%s\r\n" % (len(p), ext.encode(), p) for p in parts)
            body += b"0\r\n" + trailer.encode() + b"\r\n"
        else:
            body = b""
        line = f"{pick('method')} {pick('target')} {pick('version')}"
        out += "".join(f + "\r\n" for f in [line, *fields, ""]).encode("latin-1") + body
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(out)))
        how = draw(st.sampled_from(["insert", "delete", "replace"]))
        noise = bytes([draw(st.sampled_from(NOISE))])
        out = out[:at] + (b"" if how == "delete" else noise) + out[at + (how != "insert"):]
    return out


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.lists(st.integers(0, 600), max_size=8), st.booleans())
def test_request_like_input_gets_the_same_verdict(data: bytes, cuts: list[int],
                                                  small: bool) -> None:
    agree(data, cuts, SMALL if small else Limits())
