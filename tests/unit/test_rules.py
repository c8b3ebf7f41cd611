"""SPEC §3 rule matching: host and path normalisation, domain choice, nginx location order.

Table-driven cases for every example of SPEC §3 and clb-scf-facts.md §5.1-5.2, then a
Hypothesis property comparing ``RuleTable.match`` with a slow reference written here as plain
linear scans of the rule list. Every matching test runs on the pure ``RuleTablePy`` and, when
the native twin is active, on ``RuleTable`` with its native ``match`` (the ``table_class``
fixture); test_native_parity.py compares the two directly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import _native
from proxy.config import Listener, Rule, Target
from proxy.errors import BadRequest, ConfigError
from proxy.rules import RuleTable, RuleTablePy, normalize_host, normalize_path

TARGETS = (Target(type="SCF", function="f"),)


def _listener(rules: Sequence[tuple[str, str]], default_domain: str = "") -> Listener:
    return Listener(name="t", protocol="HTTP", port=0, default_domain=default_domain,
                    rules=tuple(Rule(domain=d, url=u, targets=TARGETS) for d, u in rules))


TableClass = type[RuleTablePy]
#: "native" only where the native match is installed (built, and PROXY_NO_NATIVE unset)
IMPLEMENTATIONS = ["pure", "native"] if _native.ACTIVE["rules"] else ["pure"]


@pytest.fixture(scope="module", params=IMPLEMENTATIONS)
def table_class(request: pytest.FixtureRequest) -> TableClass:
    """The pure RuleTablePy, or RuleTable with the native match the router then uses."""
    if request.param == "native":
        assert RuleTable.match is not RuleTablePy.match
        return RuleTable
    return RuleTablePy


def _matched(table_class: TableClass, rules: Sequence[tuple[str, str]], host: str, path: str,
             default_domain: str = "") -> tuple[tuple[str, str] | None, bool]:
    index, redirect = table_class(_listener(rules, default_domain)).match(host, path)
    return (rules[index] if index >= 0 else None), redirect


# --- normalize_host -------------------------------------------------------------------------


@pytest.mark.parametrize("header,host", [
    ("example.com", "example.com"),
    ("EXAMPLE.Com", "example.com"),
    ("example.com:8080", "example.com"),
    ("example.com.", "example.com"),
    ("Example.COM.:443", "example.com"),
    ("10.0.0.7:80", "10.0.0.7"),
    ("[::1]:8080", "[::1]"),
    ("[2001:DB8::1]", "[2001:db8::1]"),
    ("2001:db8::1", "2001:db8::1"),  # bare IPv6 literal: every colon belongs to the address
    ("", ""),
])
def test_normalize_host_lowercases_and_drops_port_and_trailing_dot(header: str,
                                                                   host: str) -> None:
    assert normalize_host(header) == host


# --- normalize_path -------------------------------------------------------------------------


@pytest.mark.parametrize("raw,path", [
    ("/", "/"),
    ("/a/b", "/a/b"),
    ("/a/./b/../c", "/a/c"),
    ("/%2541", "/%41"),  # decoded once only
    ("/%65xact", "/exact"),
    ("/x/%2e%2e/exact", "/exact"),  # escaped dots are dots after decoding
    ("/a%2Fb", "/a/b"),
    ("/%C3%A9t%C3%A9", "/été"),  # a run of escapes decodes as UTF-8
    ("/%FF", "/\udcff"),  # not UTF-8: kept as a lone surrogate, not refused
    ("/a//b///c", "/a/b/c"),  # merge_slashes, as nginx by default
    ("/a//../b", "/b"),  # slashes merged before dot segments resolve
    ("/a/b/..", "/a/"),
    ("/a/b/.", "/a/b/"),
    ("/.", "/"),
    ("/a/..", "/"),
    ("/a/...", "/a/..."),  # three dots are a name, not a dot segment
    ("/a/.b/..c", "/a/.b/..c"),
    ("/abc/", "/abc/"),
])
def test_normalize_path_decodes_once_and_resolves_dots(raw: str, path: str) -> None:
    assert normalize_path(raw) == path


@pytest.mark.parametrize("raw", [
    "/..", "/../etc/passwd", "/a/../../etc/passwd", "/%2e%2e/x", "/a/%2E%2E/%2e%2e",
    "/a/.%2e/..", "", "*", "a/b", "%2Fa", "/a%00b", "/%zz", "/a%4", "/a%",
])
def test_normalize_path_refuses_escapes_and_malformed_paths(raw: str) -> None:
    with pytest.raises(BadRequest):
        normalize_path(raw)


# --- domains --------------------------------------------------------------------------------

DOMAIN_RULES = [
    ("default.test", "/"),
    ("exact.test", "/"),
    ("*.test", "/"),
    ("*.wild.test", "/"),
    ("*.a.wild.test", "/"),
    ("www.pre.*", "/"),
    ("www.pre.foo.*", "/"),
    ("www.*", "/"),
    ("~^re\\d+\\.", "/"),
    ("~^re1", "/"),
    ("~^www\\d+\\.example\\.com$", "/"),
    ("10.0.0.7", "/"),
]


@pytest.mark.parametrize("host,domain", [
    ("exact.test", "exact.test"),  # exact beats *.test
    ("EXACT.Test:8080", "exact.test"),  # case and port ignored
    ("exact.test.", "exact.test"),
    ("b.wild.test", "*.wild.test"),  # longest *. suffix beats *.test
    ("x.y.wild.test", "*.wild.test"),  # *. covers several labels
    ("b.a.wild.test", "*.a.wild.test"),
    ("a.wild.test", "*.wild.test"),  # *.a.wild.test needs a label before a.wild.test
    ("wild.test", "*.test"),
    ("other.test", "*.test"),
    ("www.test", "*.test"),  # *. beats .*
    ("www.pre.com", "www.pre.*"),
    ("www.pre.foo.com", "www.pre.foo.*"),  # longest .* prefix
    ("www.pre.foo.co.uk", "www.pre.foo.*"),
    ("www.pre.foo", "www.pre.*"),
    ("www.example.org", "www.*"),
    ("re12.example.org", "~^re\\d+\\."),  # regexes in config order: the first hit wins
    ("re1x.example.org", "~^re1"),
    ("WWW42.Example.COM", "~^www\\d+\\.example\\.com$"),  # matched on the lower-cased host
    ("10.0.0.7:80", "10.0.0.7"),
    ("nothing.org", "default.test"),  # no domain: the listener's default domain
    ("www", "default.test"),  # www.* needs something after the dot
    ("", "default.test"),
    ("[::1]:80", "default.test"),
])
def test_domain_chosen_as_nginx_server_name(table_class: TableClass, host: str,
                                            domain: str) -> None:
    rule, redirect = _matched(table_class, DOMAIN_RULES, host, "/x",
                              default_domain="default.test")
    assert rule == (domain, "/") and not redirect


def test_wildcard_suffix_does_not_match_the_bare_suffix(table_class: TableClass) -> None:
    rules = [("*.example.com", "/")]
    assert _matched(table_class, rules, "example.com", "/") == (None, False)
    assert _matched(table_class, rules, "a.example.com", "/") == (("*.example.com", "/"), False)
    assert _matched(table_class, rules, "a.b.example.com", "/") == (("*.example.com", "/"),
                                                                    False)


def test_no_domain_and_no_default_is_no_match(table_class: TableClass) -> None:
    assert _matched(table_class, [("a.test", "/")], "b.test", "/") == (None, False)


def test_empty_listener_matches_nothing(table_class: TableClass) -> None:
    assert table_class(_listener([])).match("a.test", "/") == (-1, False)


def test_default_domain_may_be_a_wildcard(table_class: TableClass) -> None:
    rules = [("a.test", "/"), ("*.w.test", "/w")]
    assert _matched(table_class, rules, "b.test", "/w/x",
                    default_domain="*.w.test") == (rules[1], False)


def test_rule_domains_compare_case_insensitively(table_class: TableClass) -> None:
    assert _matched(table_class, [("Upper.TEST", "/")], "upper.test", "/") == (
        ("Upper.TEST", "/"), False)


def test_regex_domain_is_case_sensitive_on_the_lowercased_host(table_class: TableClass) -> None:
    assert _matched(table_class, [("~^ABC", "/")], "ABC.test", "/") == (None, False)
    assert _matched(table_class, [("~^abc", "/")], "ABC.test", "/") == (("~^abc", "/"), False)


def test_path_is_not_searched_in_another_domain(table_class: TableClass) -> None:
    rules = [("a.test", "/only"), ("default.test", "/")]
    assert _matched(table_class, rules, "a.test", "/elsewhere",
                    default_domain="default.test") == (None, False)


# --- urls -----------------------------------------------------------------------------------

URL_CASES = [
    # clb-scf-facts.md §5.2, the black-stone LB examples
    (["=/test1", "^~/test1", "~/test1", "~*/test1", "/test1"], "/test1", "=/test1"),
    (["~/11_*", "~/*_1"], "/11_1", "~/11_*"),
    (["/test1", "/test1/test2"], "/test1", "/test1"),
    (["/test1/test2", "/test3"], "/test1/test2/test3", "/test1/test2"),
    # = beats everything, and only on the whole path
    (["/", "=/exact", "~exact"], "/exact", "=/exact"),
    (["/", "=/exact"], "/exact/more", "/"),
    # ^~ as the longest prefix stops the regex search; as a shorter prefix it does not
    (["^~/static/", "~\\.php$"], "/static/a.php", "^~/static/"),
    (["^~/static/", "/static/x/", "~\\.php$"], "/static/x/a.php", "~\\.php$"),
    # regexes in config order, before the longest plain prefix
    (["/", "~\\.php$", "~a"], "/x/a.php", "~\\.php$"),
    (["/", "~a", "~\\.php$"], "/x/a.php", "~a"),
    (["/api/v1", "~\\.php$"], "/api/v1/x.php", "~\\.php$"),
    # ~ is case-sensitive, ~* is not; regexes search anywhere in the path
    (["/", "~\\.php$"], "/x/a.PHP", "/"),
    (["/", "~*\\.PNG$"], "/x/a.png", "~*\\.PNG$"),
    (["/", "~* \\.png$"], "/x/A.PNG", "~* \\.png$"),  # CLB's own example, with its space
    (["/", "~b/c"], "/a/b/c/d", "~b/c"),
    # the longest prefix; a prefix is a string prefix, not a segment prefix
    (["/", "/api", "/api/v1"], "/api/v1/users", "/api/v1"),
    (["/", "/api", "/api/v1"], "/api/v2", "/api"),
    (["/abc"], "/abcdef", "/abc"),
    (["/abc"], "/abc/", "/abc"),
    (["/abc"], "/abc", "/abc"),
    (["/abc/"], "/abc/", "/abc/"),
    (["/abc/"], "/abc/d", "/abc/"),
    # prefixes are case-sensitive
    (["/", "/Api"], "/api", "/"),
]


@pytest.mark.parametrize("urls,path,expected", URL_CASES)
def test_url_chosen_as_nginx_location(table_class: TableClass, urls: list[str], path: str,
                                      expected: str) -> None:
    rules = [("h.test", url) for url in urls]
    assert _matched(table_class, rules, "h.test", path) == (("h.test", expected), False)


@pytest.mark.parametrize("urls,path,expected", [
    (["/abc/"], "/abc", "/abc/"),
    (["/", "/abc/"], "/abc", "/abc/"),
    (["^~/abc/"], "/abc", "^~/abc/"),
    (["/", "/abc/", "~abc"], "/abc", "/abc/"),  # decided before the regexes
    (["/a/b/"], "/a/b", "/a/b/"),
])
def test_trailing_slash_rule_redirects_the_path_without_it(table_class: TableClass,
                                                           urls: list[str], path: str,
                                                           expected: str) -> None:
    rules = [("h.test", url) for url in urls]
    assert _matched(table_class, rules, "h.test", path) == (("h.test", expected), True)


@pytest.mark.parametrize("urls,path,expected", [
    (["/abc", "/abc/"], "/abc", "/abc"),  # an existing /abc rule prevents the redirect
    (["/abc/", "/abc"], "/abc", "/abc"),
    (["/abc/", "=/abc"], "/abc", "=/abc"),
    (["/", "=/abc/"], "/abc", "/"),  # "=" rules never redirect
    (["/abc/"], "/abc/", "/abc/"),
])
def test_no_redirect_when_a_rule_names_the_path(table_class: TableClass, urls: list[str],
                                                path: str, expected: str) -> None:
    rules = [("h.test", url) for url in urls]
    assert _matched(table_class, rules, "h.test", path) == (("h.test", expected), False)


@pytest.mark.parametrize("urls,path", [
    (["/only"], "/elsewhere"),
    (["/abc/"], "/ab"),
    (["=/exact"], "/exact/"),
    (["~\\.php$"], "/a.PHP"),
    (["/Api"], "/api"),
])
def test_no_rule_of_the_domain_matches(table_class: TableClass, urls: list[str],
                                       path: str) -> None:
    rules = [("h.test", url) for url in urls]
    assert _matched(table_class, rules, "h.test", path) == (None, False)


def test_same_prefix_under_two_modifiers_first_in_config_wins(table_class: TableClass) -> None:
    rules = [("h.test", "^~/a"), ("h.test", "/a"), ("h.test", "~a")]
    assert _matched(table_class, rules, "h.test", "/a/x") == (rules[0], False)
    assert _matched(table_class, rules[1:] + rules[:1], "h.test", "/a/x") == (
        ("h.test", "~a"), False)


def test_invalid_regex_rule_is_a_config_error(table_class: TableClass) -> None:
    with pytest.raises(ConfigError, match="invalid regular expression"):
        table_class(_listener([("h.test", "~(unclosed")]))


def test_matches_among_ten_thousand_rules(table_class: TableClass) -> None:
    rules = [(f"d{i % 100}.test", f"/svc{i}/api") for i in range(10_000)]
    rules += [("*.wild.test", "/"), ("d7.test", "~\\.png$")]
    table = table_class(_listener(rules, default_domain="d0.test"))
    assert table.match("d7.test", "/svc9907/api/users") == (9907, False)
    assert table.match("D42.test:8080", "/svc1042/api") == (1042, False)
    assert table.match("d7.test", "/svc9907/api/a.png") == (10_001, False)
    assert table.match("d7.test", "/svc9908/api") == (-1, False)  # 9908 is in d8.test
    assert table.match("x.wild.test", "/svc1/api") == (10_000, False)
    assert table.match("nowhere", "/svc100/api") == (100, False)


def test_compiled_form_is_plain_data_for_the_native_twin() -> None:
    """Only dicts, tuples, str, int, bool and re.Pattern: what a Cython match can read."""
    table = RuleTablePy(_listener(DOMAIN_RULES + [("exact.test", u) for u in
                                                  ("=/e", "^~/s/", "~x", "~*y", "/p/")]))

    def plain(value: object) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, tuple):
            return all(plain(v) for v in value)
        return isinstance(value, (str, int, re.Pattern))

    for name in RuleTablePy.__slots__:
        assert plain(getattr(table, name)), name


# --- property: the table agrees with a slow, obviously correct reference ----------------------


def _ref_host(header: str) -> str:
    host = re.sub(r":[0-9]*$", "", header.lower())
    return host[:-1] if host.endswith(".") else host


def _ref_domain(domains: list[str], default: str, host: str) -> str | None:
    plain = [d for d in domains if not d.startswith(("~", "*.")) and not d.endswith(".*")]
    if host in plain:
        return host
    suffixes = [d for d in domains if d.startswith("*.")
                and host.endswith(d[1:]) and len(host) > len(d) - 1]
    if suffixes:
        return max(suffixes, key=len)
    prefixes = [d for d in domains if d.endswith(".*")
                and host.startswith(d[:-1]) and len(host) > len(d) - 1]
    if prefixes:
        return max(prefixes, key=len)
    for d in domains:
        if d.startswith("~") and re.search(d[1:], host):
            return d
    return default if default in domains else None


def _ref_url(rules: list[tuple[int, str]], path: str) -> tuple[int, bool]:
    for i, url in rules:
        if url.startswith("=") and url[1:] == path:
            return i, False
    prefix_rules = [(i, url.removeprefix("^~"), url.startswith("^~")) for i, url in rules
                    if url.startswith(("/", "^~"))]
    hits = [r for r in prefix_rules if path.startswith(r[1])]
    best = min(hits, key=lambda r: (-len(r[1]), r[0])) if hits else None
    if best is None or best[1] != path:
        for i, prefix, _ in prefix_rules:
            if prefix == path + "/":
                return i, True
    if best is not None and best[2]:
        return best[0], False
    for i, url in rules:
        if url.startswith("~*") and re.search(url[2:], path, re.IGNORECASE):
            return i, False
        if url.startswith("~") and not url.startswith("~*") and re.search(url[1:], path):
            return i, False
    return (best[0] if best else -1), False


def _reference_match(rules: list[tuple[str, str]], default: str, host: str,
                     path: str) -> tuple[int, bool]:
    def keyed(domain: str) -> str:
        return domain if domain.startswith("~") else domain.lower()

    key = [keyed(d) for d, _ in rules]
    chosen = _ref_domain(key, keyed(default), _ref_host(host))
    if chosen is None:
        return -1, False
    return _ref_url([(i, url) for i, (url, k) in enumerate(zip((u for _, u in rules), key))
                     if k == chosen], path)


_labels = st.lists(st.sampled_from(["a", "b", "ab", "c"]), min_size=1, max_size=3)
_names = _labels.map(".".join)
# a few fixed domains make rules share a domain often; random ones cover the rest
_domains = st.one_of(
    st.sampled_from(["a", "a.b", "*.b", "*.a.b", "a.*", "a.b.*", "~^a", "~b$"]),
    _names, _names.map(lambda n: "*." + n), _names.map(lambda n: n + ".*"),
    st.sampled_from(["~\\.c\\.", "~^[ab]+$", "~a\\.b"]),
)
_paths = st.builds(
    lambda segs, slash: "/" + "/".join(segs) + ("/" if slash and segs else ""),
    st.lists(st.sampled_from(["a", "b", "ab", "A", "x.p"]), max_size=3), st.booleans(),
)
_urls = st.one_of(
    # half from a small pool, so the interesting neighbours (/a next to /a/, ^~/a, =/a, ~a)
    # meet often; half random
    st.sampled_from(["/", "/a", "/a/", "^~/a", "^~/a/", "=/a", "=/a/", "/a/b", "/ab", "~a",
                     "~*A/$"]),
    st.one_of(_paths, _paths.map(lambda p: "=" + p), _paths.map(lambda p: "^~" + p),
              st.sampled_from(["~^/a", "~b$", "~/a/", "~A", "~^/ab?/", "~\\.p$"]).flatmap(
                  lambda r: st.sampled_from(["", "*"]).map(lambda m: "~" + m + r[1:]))),
)
# each example draws 1..3 domains first, so several rules share a domain
_rule_lists = st.lists(_domains, min_size=1, max_size=3).flatmap(
    lambda domains: st.lists(st.tuples(st.sampled_from(domains), _urls), max_size=14,
                             unique_by=lambda r: (r[0].lower(), r[1])))


def _near_host(domain: str, variant: int, name: str) -> str:
    """A name the domain matches or nearly matches (wildcard filled in, or left bare)."""
    if domain.startswith("~"):
        return name
    if domain.startswith("*."):
        return ("", "a.", "c.b.", ".")[variant % 4] + domain[2:]
    if domain.endswith(".*"):
        return domain[:-2] + ("", ".c", ".b.c", ".")[variant % 4]
    return domain


def _near_path(url: str, variant: int, path: str) -> str:
    """A path equal to the rule's, one "/" shorter or longer, or extended; normalised (no
    "//"), as normalize_path leaves paths."""
    body = url.lstrip("=^~")
    if not body.startswith("/"):
        return path
    near = (body, body + "/", body.rstrip("/") or "/", body + "a", body + "/x.p", body + "b/")
    return re.sub("/+", "/", near[variant % len(near)])


# one request, drawn with static strategies (fast) and resolved against the rules in Python:
# (near a rule?, host's rule, path's rule, host variant, path variant, random name,
#  random path, port, trailing dot, upper-case)
_requests = st.lists(st.tuples(
    st.booleans(), st.integers(0, 13), st.integers(0, 13), st.integers(0, 3), st.integers(0, 5),
    _names, _paths, st.sampled_from(["", ":80", ":8443"]), st.sampled_from(["", "."]),
    st.booleans()), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(rules=_rule_lists, default_pick=st.integers(0, 14), requests=_requests)
def test_match_agrees_with_linear_reference(
        table_class: TableClass, rules: list[tuple[str, str]], default_pick: int,
        requests: list[tuple[bool, int, int, int, int, str, str, str, str, bool]]) -> None:
    defaults = [""] + [d for d, _ in rules]
    default = defaults[default_pick % len(defaults)]
    table = table_class(_listener(rules, default))
    for near, hi, pi, hv, pv, name, path, port, dot, upper in requests:
        if near and rules:
            name = _near_host(rules[hi % len(rules)][0], hv, name)
            path = _near_path(rules[pi % len(rules)][1], pv, path)
        host = (name.upper() if upper else name) + dot + port
        assert table.match(host, path) == _reference_match(rules, default, host, path), (
            host, path)
