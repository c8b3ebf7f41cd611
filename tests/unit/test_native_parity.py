"""The native twins (native/*.pyx) agree with the pure-Python ones, and the swap is what it says.

Hypothesis properties compare, on random input, the built native module with the pure twin:
rule tables (exact, ``*.`` and ``.*`` wildcard, regex domains; ``=``, ``^~``, ``~``, ``~*`` and
prefix urls) with random hosts and paths, random requests through ``encode_event`` and random
results through ``decode_response``: the same answer, or the same exception with the same log
detail. They compare the *built* module even when PROXY_NO_NATIVE keeps it inactive, so the CI
run with PROXY_NO_NATIVE=1 still checks parity; with nothing built they assert that the active
implementation is the pure one instead. Other tests check what ``proxy._native`` installs.
"""

from __future__ import annotations

import base64
import importlib
import importlib.util
import os
import re
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import _native, rules
from proxy.config import Listener, Rule, Target
from proxy.errors import ConfigError, PayloadTooLarge, ProxyError
from proxy.messages import Headers, Request, Route
from proxy.scf import event

ROOT = Path(__file__).resolve().parents[2]


def built(name: str) -> types.ModuleType | None:
    """The compiled module ``proxy._speedups.<name>`` if it was built from the sources as they
    are (not stale: test_native_build.py), active or not."""
    qualified = f"proxy._speedups.{name}"
    spec = importlib.util.find_spec(qualified)
    if spec is None or spec.origin is None or _native.stale(spec.origin) is not None:
        return None
    return importlib.import_module(qualified)


NATIVE_RULES = built("rules")
NATIVE_EVENT = built("event")


def _assert_pure_rules_active() -> None:
    assert rules.RuleTable.match is rules.RuleTablePy.match
    assert not _native.ACTIVE["rules"]


def _assert_pure_event_active() -> None:
    assert event.encode_event is event.encode_event_py
    assert event.decode_response is event.decode_response_py
    assert not _native.ACTIVE["event"]


# --- what is active ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(_native.SWAPS))
def test_native_module_is_active_exactly_where_built_and_allowed(name: str) -> None:
    expected = built(name) is not None and not _native.DISABLED
    assert _native.ACTIVE[name] is expected
    assert (_native.native_module(name) is not None) is expected


def test_swapped_names_are_the_native_functions_when_active() -> None:
    if NATIVE_RULES is None or _native.DISABLED:
        _assert_pure_rules_active()
    else:
        assert rules.RuleTable.match is NATIVE_RULES.match
        assert rules.RuleTablePy.match is not NATIVE_RULES.match  # the pure twin stays
    if NATIVE_EVENT is None or _native.DISABLED:
        _assert_pure_event_active()
    else:
        assert event.encode_event is NATIVE_EVENT.encode_event
        assert event.decode_response is NATIVE_EVENT.decode_response
        assert event.encode_event_py is not NATIVE_EVENT.encode_event


def test_describe_names_the_active_modules_or_why_none() -> None:
    text = _native.describe()
    if _native.DISABLED:
        assert text == f"native: none (PROXY_NO_NATIVE={_native.NO_NATIVE_VALUE})"
    elif NATIVE_RULES is not None and NATIVE_EVENT is not None:
        assert text == "native: rules, event"
    elif NATIVE_RULES is None and NATIVE_EVENT is None:
        assert text == "native: none (not built)"
    else:
        assert "not built" in text


def _describe_in_fresh_interpreter(no_native: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PROXY_NO_NATIVE"}
    if no_native is not None:
        env["PROXY_NO_NATIVE"] = no_native
    # only _native is imported first: describe() must still run every install hook
    code = "from proxy import _native; print(_native.describe())"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    return done.stdout.strip()


def test_proxy_no_native_1_keeps_every_pure_twin() -> None:
    assert _describe_in_fresh_interpreter("1") == "native: none (PROXY_NO_NATIVE=1)"


@pytest.mark.parametrize("value", [None, "", "0"])
def test_proxy_no_native_unset_empty_or_0_allows_native(value: str | None) -> None:
    text = _describe_in_fresh_interpreter(value)
    if NATIVE_RULES is not None and NATIVE_EVENT is not None:
        assert text == "native: rules, event"
    else:
        assert "PROXY_NO_NATIVE" not in text


_BOUND_NAMES = """
import json
import sys
import proxy.router  # the request path: router, rules, SCF backend, event
from proxy import rules
from proxy.scf import event
bound = {f"{m.__name__}.{name}": value.__module__
         for m in list(sys.modules.values()) if getattr(m, "__name__", "").startswith("proxy")
         for name, value in vars(m).items() if name in ("encode_event", "decode_response")}
bound["RuleTable.match"] = rules.RuleTable.match.__module__
print(json.dumps({"modules": sorted(set(bound.values())), "count": len(bound)}))
"""


def test_request_path_binds_the_active_twins_everywhere() -> None:
    # in a fresh interpreter: whichever module imports them first, no importer keeps a pure
    # function the swap replaced (the hook runs before anyone can bind the names)
    done = subprocess.run([sys.executable, "-c", _BOUND_NAMES], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=True)
    found = orjson.loads(done.stdout)
    assert found["count"] >= 5  # event's own two, the backend's two, RuleTable.match
    if NATIVE_RULES is not None and NATIVE_EVENT is not None and not _native.DISABLED:
        assert found["modules"] == ["proxy._speedups.event", "proxy._speedups.rules"]
    else:
        assert found["modules"] == ["proxy.rules", "proxy.scf.event"]


def test_module_that_is_not_built_leaves_the_pure_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_native, "REQUIRED", False)  # as CI's native pass sets it
    monkeypatch.setitem(_native.SWAPS, "nosuch", ("proxy.nosuch", {"f": "f"}))
    monkeypatch.setitem(_native.ACTIVE, "nosuch", False)
    namespace: dict[str, Any] = {"f": "pure"}
    assert _native.install("nosuch", namespace) is False
    assert namespace == {"f": "pure"} and not _native.ACTIVE["nosuch"]
    expected = (f"PROXY_NO_NATIVE={_native.NO_NATIVE_VALUE}" if _native.DISABLED
                else "not built")
    assert _native.REASONS.pop("nosuch") == expected


def test_module_that_is_not_built_is_an_error_when_native_is_required(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_native, "DISABLED", False)
    monkeypatch.setattr(_native, "REQUIRED", True)
    monkeypatch.setitem(_native.SWAPS, "nosuch", ("proxy.nosuch", {"f": "f"}))
    monkeypatch.setitem(_native.ACTIVE, "nosuch", False)
    namespace: dict[str, Any] = {"f": "pure"}
    with pytest.raises(_native.NativeRequiredError,
                       match=r"proxy\._speedups\.nosuch is not built; rebuild it with `make`"):
        _native.install("nosuch", namespace)
    assert namespace == {"f": "pure"} and not _native.ACTIVE["nosuch"]
    _native.REASONS.pop("nosuch")


def test_stale_build_missing_a_name_swaps_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_native, "REQUIRED", False)
    stale = types.ModuleType("proxy._speedups.stale")
    stale.f = lambda: "native"  # type: ignore[attr-defined]  # but no "g"
    monkeypatch.setitem(_native.SWAPS, "stale", ("proxy.stale", {"f": "f", "C.g": "g"}))
    monkeypatch.setitem(_native.ACTIVE, "stale", False)
    monkeypatch.setitem(_native._LOADED, "stale", stale)

    class Holder:
        g = "pure"

    namespace: dict[str, Any] = {"f": "pure", "C": Holder}
    assert _native.install("stale", namespace) is False
    assert namespace["f"] == "pure" and Holder.g == "pure"  # all or none
    assert not _native.ACTIVE["stale"]
    _native.REASONS.pop("stale")


# --- rules: random tables, hosts and paths ----------------------------------------------------

TARGETS = (Target(type="SCF", function="f"),)

# regexes made of pieces the literal prefilter must read right: anchors (^ \A, and ^ under
# MULTILINE, which is no anchor), global flags, literal runs broken by classes, repeats,
# groups, alternation at the top, lookarounds, escapes and a literal newline
_FLAGS = st.sampled_from(["", "", "", "(?i)", "(?m)", "(?s)", "(?x)"])
_ANCHORS = st.sampled_from(["", "", "^", "^", "\\A", "\\b"])
_PIECES = st.sampled_from([
    "a", "b", "ab", "A", "x", "1", "-", ".", "\\.", "/", "[ab]", "[^a]", "a?", "b*", "a+",
    "(a|b)", "(?:ab)?", "\\d", "$", "\\Z", "(?=a)", "(?!b)", "(?<=a)", "|", "\n", " ", "é",
])
_regexes = st.builds(lambda flags, anchor, pieces: flags + anchor + "".join(pieces),
                     _FLAGS, _ANCHORS, st.lists(_PIECES, max_size=6))
# subjects drawn from the same bits as the regexes, so that they match them often
_HOST_TEXT = st.lists(st.sampled_from(["a", "b", "ab", "x", "A", "B", "1", "-", ".", "é", "\n",
                                       ":", "[", "]", " "]), max_size=8).map("".join)
_PATH_TEXT = st.lists(st.sampled_from(["a", "b", "ab", "x", "A", "1", "-", ".", "/", "é", "\n",
                                       " "]), max_size=8).map(lambda p: "/" + "".join(p))

_domains = st.one_of(
    st.sampled_from(["a", "ab", "a.b", "x.ab", "*.b", "*.a.b", "a.*", "ab.*", "*.", ".*"]),
    _HOST_TEXT, _HOST_TEXT.map(lambda h: "*." + h), _HOST_TEXT.map(lambda h: h + ".*"),
    _regexes.map(lambda r: "~" + r),
)
_urls = st.one_of(
    st.sampled_from(["/", "/a", "/a/", "^~/a", "^~/a/", "=/a", "=/a/", "/ab", "/a/b"]),
    _PATH_TEXT, _PATH_TEXT.map(lambda p: "=" + p), _PATH_TEXT.map(lambda p: "^~" + p),
    _regexes.map(lambda r: "~" + r), _regexes.map(lambda r: "~*" + r),
)
# several regex domains with literal prefixes, so the native prefix index (8 or more) is built
_indexed_domains = st.lists(st.sampled_from(["~^a", "~^ab", "~^a\\.", "~^b", "~^ab-1", "~^x",
                                             "~^é", "~a$", "~^[ab]", "~(?m)^b", "~\\Aab"]),
                            min_size=0, max_size=11)
_rule_lists = st.tuples(st.lists(_domains, min_size=1, max_size=4), _indexed_domains).flatmap(
    lambda pools: st.lists(st.tuples(st.sampled_from(pools[0] + pools[1]), _urls),
                           max_size=16))
_requests = st.lists(st.tuples(
    st.one_of(_HOST_TEXT, _HOST_TEXT.map(str.upper),
              st.tuples(_HOST_TEXT, st.sampled_from(["", ":80", "."])).map("".join)),
    st.one_of(_PATH_TEXT, st.sampled_from(["/", "/a", "/a/", "/ab", "/a/b", "/A"]))),
    min_size=1, max_size=10)


def _listener(rule_list: list[tuple[str, str]], default_domain: str) -> Listener:
    return Listener(name="t", protocol="HTTP", port=0, default_domain=default_domain,
                    rules=tuple(Rule(domain=d, url=u, targets=TARGETS) for d, u in rule_list))


def _native_matcher(table: rules.RuleTablePy) -> Callable[[str, str], tuple[int, bool]]:
    """The built native match over ``table``'s compiled attributes, active or not."""
    assert NATIVE_RULES is not None
    holder = types.SimpleNamespace(accel=NATIVE_RULES.build(table))
    return lambda host, path: NATIVE_RULES.match(holder, host, path)


@settings(max_examples=400, deadline=None)
@given(rule_list=_rule_lists, default_pick=st.integers(0, 16), requests=_requests)
def test_native_match_agrees_with_pure_on_random_tables(
        rule_list: list[tuple[str, str]], default_pick: int,
        requests: list[tuple[str, str]]) -> None:
    if NATIVE_RULES is None:
        _assert_pure_rules_active()
        return
    defaults = [""] + [d for d, _ in rule_list]
    listener = _listener(rule_list, defaults[default_pick % len(defaults)])
    try:
        table = rules.RuleTablePy(listener)
    except ConfigError:  # a piece sequence that is no valid regex: both refuse it alike
        with pytest.raises(ConfigError):
            rules.RuleTable(listener)
        return
    native = _native_matcher(table)
    # the table the router builds: the native match when active, else the pure one
    swapped = rules.RuleTable(listener)
    for host, path in requests + [(d, u.lstrip("=^~*")) for d, u in rule_list]:
        expected = table.match(host, path)
        assert native(host, path) == expected, (host, path)
        assert swapped.match(host, path) == expected, (host, path)


@settings(max_examples=400, deadline=None)
@given(pattern=_regexes, subjects=st.lists(st.one_of(_HOST_TEXT, _PATH_TEXT), max_size=6),
       data=st.data())
def test_literal_prefilter_never_skips_a_regex_that_would_match(
        pattern: str, subjects: list[str], data: st.DataObject) -> None:
    if NATIVE_RULES is None:
        _assert_pure_rules_active()
        return
    try:
        compiled = re.compile(pattern)
    except re.error:
        return
    prefix, required = NATIVE_RULES.literal_filter(compiled)
    # strings the regex finds itself in, and each after a newline (where only a MULTILINE "^"
    # still finds it)
    subjects += data.draw(st.lists(st.from_regex(compiled), max_size=4), label="matching")
    for subject in subjects + ["x\n" + s for s in subjects]:
        if compiled.search(subject):
            assert subject.startswith(prefix) and required in subject, (subject, prefix,
                                                                        required)


@pytest.mark.parametrize("pattern,expected", [
    (r"^api12-[a-z0-9]+\.example\.org$", ("api12-", ".example.org")),
    (r"^/v[0-9]+/items/[0-9]+$", ("/v", "/items/")),
    (r"\.php$", ("", ".php")),
    (r"\Aab", ("ab", "")),
    (r"(?m)^ab", ("", "ab")),  # MULTILINE: "^" may follow a newline, so no prefix
    (r"(?i)^ab", ("", "")),  # case-insensitive: no literal is safe
    (r"a|b", ("", "")),
    (r"ab|ac", ("", "a")),
])
def test_literal_prefilter_reads_prefix_and_required_text(pattern: str,
                                                          expected: tuple[str, str]) -> None:
    if NATIVE_RULES is None:
        _assert_pure_rules_active()
        return
    assert NATIVE_RULES.literal_filter(re.compile(pattern)) == expected


def test_many_regex_domains_first_in_config_order_wins_across_prefixes() -> None:
    domains = ["~^ab-1", "~^a", "~^x", "~^y", "~^z", "~b$", "~^ab", "~^q", "~^r", "~^s"]
    listener = _listener([(d, "/") for d in domains], "")
    table = rules.RuleTablePy(listener)
    for host, expected in [("ab-1.b", 0), ("ab", 1), ("cb", 5), ("xb", 2), ("nothing", -1)]:
        assert table.match(host, "/") == (expected, False)
        if NATIVE_RULES is None:
            _assert_pure_rules_active()
        else:
            assert _native_matcher(table)(host, "/") == (expected, False)


def test_native_match_refuses_a_table_without_native_index() -> None:
    if NATIVE_RULES is None:
        _assert_pure_rules_active()
        return
    with pytest.raises(TypeError, match="no native index"):
        NATIVE_RULES.match(types.SimpleNamespace(accel=None), "a", "/")


# --- event: random requests -------------------------------------------------------------------

ROUTE = Route(listener="web", domain="ev.test", url="/", location_id="loc-1",
              target="SCF:default/echo")


def _outcome(call: Callable[[], Any]) -> tuple[Any, ...]:
    """("ok", value) or the exception as comparable data: type, args, log detail, cause."""
    try:
        return ("ok", call())
    except ProxyError as exc:
        cause = type(exc.__cause__).__name__ if exc.__cause__ is not None else None
        return ("error", type(exc), exc.args, exc.log_detail, cause)
    except Exception as exc:  # noqa: BLE001 - a foreign error must be the same one too
        return ("foreign", type(exc), str(exc))


# header values as the parser hands them over (latin-1 decoded); some are UTF-8 on the wire
_latin1_text = st.text(alphabet=st.characters(max_codepoint=255), max_size=12)
_header_values = st.one_of(_latin1_text, st.text(max_size=6).map(
    lambda t: t.encode("utf-8", "surrogatepass").decode("latin-1")))
_header_names = st.sampled_from(["Host", "Content-Type", "content-type", "Cookie", "cookie",
                                 "X-A", "x-a", "X-Multi", "Accept", "COOKIE"])
_content_types = st.sampled_from([
    "application/json", "Application/JSON; charset=utf-8", "text/plain", "TEXT/html;x=1",
    " text/xml ", "application/javascript", "application/xml", "image/png",
    "application/x-www-form-urlencoded", "", "text",
])
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
_bodies = st.one_of(
    st.binary(max_size=48),
    _json_values.map(orjson.dumps),
    st.text(max_size=24).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"", b'{"broken": ', b"123456789012345678901234567890", b"\xff\xfe"]),
)
_event_requests = st.builds(
    lambda method, path, query, headers, content_type, body, port, at: (Request(
        method=method, path=path, query=query,
        headers=tuple(headers) + ((("Content-Type", content_type),) if content_type else ()),
        body=body, http_version="1.1", client_ip="203.0.113.7", client_port=port,
        scheme="https", listener="web", received_at=at)),
    st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    st.text(alphabet="/a%E4B", max_size=10).map(lambda p: "/" + p),
    st.text(alphabet="ab=&%+2E4Fx;ü ", max_size=30),
    st.lists(st.tuples(_header_names, _header_values), max_size=8),
    st.one_of(st.none(), _content_types),
    _bodies,
    st.integers(0, 65535),
    st.floats(min_value=0, max_value=4e9, allow_nan=False),
)


@settings(max_examples=400, deadline=None)
@given(request=_event_requests, request_id=st.text(max_size=8))
def test_native_encode_event_gives_the_same_bytes(request: Request, request_id: str) -> None:
    if NATIVE_EVENT is None:
        _assert_pure_event_active()
        return
    forwarded: Headers = request.headers
    assert (_outcome(lambda: NATIVE_EVENT.encode_event(request, forwarded, ROUTE, request_id))
            == _outcome(lambda: event.encode_event_py(request, forwarded, ROUTE, request_id)))


def _big_request(content_type: str, size: int, fill: bytes = b"a") -> Request:
    return Request(method="POST", path="/", query="", body=fill * size,
                   headers=(("Content-Type", content_type),), http_version="1.1",
                   client_ip="203.0.113.7", client_port=1, scheme="http", listener="web",
                   received_at=1.0)


@pytest.mark.parametrize("content_type,size,fill", [
    ("text/plain", event.MAX_EVENT_BYTES // 2, b"a"),  # at the cheap bound
    ("text/plain", event.MAX_EVENT_BYTES // 2 + 1, b"a"),  # over it, before any work
    ("text/plain", event.MAX_EVENT_BYTES // 2 - 1000, b'"'),  # over only once escaped
    ("image/png", event.MAX_EVENT_BYTES // 3 - 10, b"\0"),  # Base64 grows it over
    ("image/png", 2 * 1024 * 1024, b"\0"),  # under
])
def test_native_encode_event_has_the_same_6mb_limit(content_type: str, size: int,
                                                    fill: bytes) -> None:
    request = _big_request(content_type, size, fill)
    pure = _outcome(lambda: event.encode_event_py(request, request.headers, ROUTE, "r"))
    if NATIVE_EVENT is None:
        _assert_pure_event_active()
    else:
        assert _outcome(lambda: NATIVE_EVENT.encode_event(request, request.headers, ROUTE,
                                                          "r")) == pure
    if size > event.MAX_EVENT_BYTES // 2 - 2000 and content_type.startswith("text"):
        assert pure[0] == "error" and pure[1] is PayloadTooLarge


# --- event: random results --------------------------------------------------------------------

_response_like = st.fixed_dictionaries(
    {"statusCode": st.one_of(st.integers(0, 700), _json_values)},
    optional={
        "headers": st.one_of(_json_values, st.dictionaries(
            st.one_of(st.text(max_size=8), _header_names, st.sampled_from(
                ["Connection", "Date", "Server", "content-length", "Set-Cookie", "X A"])),
            st.one_of(st.text(max_size=8), st.lists(st.text(max_size=8), max_size=3),
                      _json_values),
            max_size=4)),
        "isBase64Encoded": st.one_of(st.booleans(), _json_values),
        "body": st.one_of(st.text(max_size=16), st.binary(max_size=16).map(
            lambda b: base64.b64encode(b).decode()),
            st.sampled_from(["YQ", "YQ==YQ==", "%%", "YWJj\nYWJj", "YWJj你"]), _json_values),
    },
)


@settings(max_examples=400, deadline=None)
@given(raw=st.one_of(_response_like.map(orjson.dumps), _json_values.map(orjson.dumps),
                     st.binary(max_size=64)))
def test_native_decode_response_gives_the_same_response_or_error(raw: bytes) -> None:
    if NATIVE_EVENT is None:
        _assert_pure_event_active()
        return
    assert (_outcome(lambda: NATIVE_EVENT.decode_response(raw))
            == _outcome(lambda: event.decode_response_py(raw)))


@pytest.mark.parametrize("raw", [
    orjson.dumps({"statusCode": 200, "body": "x" * event.MAX_RESPONSE_BYTES}),  # over 6 MB
    b'{"statusCode": 200, "headers": {"X-A": "\\ud800"}}',  # a lone surrogate
    b'{"statusCode": 200, "headers": {"X-A": " \\tv a l\\t "}}',
    b'{"statusCode": 200, "headers": {"X-Name": "\\u4f60\\u597d"}}',
])
def test_native_decode_response_edge_cases(raw: bytes) -> None:
    if NATIVE_EVENT is None:
        _assert_pure_event_active()
        return
    assert (_outcome(lambda: NATIVE_EVENT.decode_response(raw))
            == _outcome(lambda: event.decode_response_py(raw)))
