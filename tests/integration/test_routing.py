"""SPEC §3 rule matching through the real proxy process, for every domain and URL form.

Every rule is bound to the echo function, whose body is the event it received; the event's
``requestContext`` says which rule (domain, url) served the request.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import pytest

from tests.configs import function, listener, scf_rule
from tests.proxyproc import ProxyProcess


RULES = [
    ("default.test", "/"),
    ("exact.test", "/"),
    ("exact.test", "=/exact"),
    ("exact.test", "^~/static/"),
    ("exact.test", "~ \\.php$"),
    ("exact.test", "~* \\.PNG$"),
    ("exact.test", "/abc/"),
    ("exact.test", "/api"),
    ("exact.test", "/api/v1"),
    ("*.wild.test", "/"),
    ("*.a.wild.test", "/"),
    ("www.pre.*", "/"),
    ("www.pre.foo.*", "/"),
    ("~^re\\d+\\.test$", "/"),
    ("only.test", "/only"),
]


def _config() -> str:
    return (listener(default_domain="default.test")
            + "".join(scf_rule(domain, url, "echo") for domain, url in RULES)
            + function("echo", concurrency=2))


@pytest.fixture(scope="module", params=["httptools", "h11"])
def proxy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[ProxyProcess]:
    tmp = tmp_path_factory.mktemp("routing")
    with ProxyProcess.with_config(_config(), tmp, "--http", request.param) as proc:
        yield proc


def _get(proxy: ProxyProcess, host: str, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port(), timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def _rule(proxy: ProxyProcess, host: str, path: str) -> tuple[str, str]:
    status, _, body = _get(proxy, host, path)
    assert status == 200, body
    ctx = json.loads(body)["requestContext"]
    return ctx["domain"], ctx["url"]


@pytest.mark.parametrize("host,path,expected", [
    # domains: exact, longest *.suffix, *. before .*, longest prefix.*, regex, default
    ("exact.test", "/x", ("exact.test", "/")),
    ("EXACT.TEST:8080", "/x", ("exact.test", "/")),
    ("b.wild.test", "/", ("*.wild.test", "/")),
    ("x.y.wild.test", "/", ("*.wild.test", "/")),
    ("b.a.wild.test", "/", ("*.a.wild.test", "/")),
    ("www.pre.com", "/", ("www.pre.*", "/")),
    ("www.pre.foo.com", "/", ("www.pre.foo.*", "/")),
    ("re42.test", "/", ("~^re\\d+\\.test$", "/")),
    ("nothing.test", "/", ("default.test", "/")),
    ("wild.test", "/", ("default.test", "/")),
    # urls: = exact, ^~ beats regex, regex in order, ~* case-insensitive, longest prefix
    ("exact.test", "/exact", ("exact.test", "=/exact")),
    ("exact.test", "/exact/more", ("exact.test", "/")),
    ("exact.test", "/static/a.php", ("exact.test", "^~/static/")),
    ("exact.test", "/x/a.php", ("exact.test", "~\\.php$")),
    ("exact.test", "/x/a.PHP", ("exact.test", "/")),
    ("exact.test", "/x/a.png", ("exact.test", "~*\\.PNG$")),
    ("exact.test", "/api/v1/users", ("exact.test", "/api/v1")),
    ("exact.test", "/api/v2", ("exact.test", "/api")),
    ("exact.test", "/api/v1/x.php", ("exact.test", "~\\.php$")),
    ("exact.test", "/abc/", ("exact.test", "/abc/")),
    # matching uses the decoded, dot-resolved path
    ("exact.test", "/%65xact", ("exact.test", "=/exact")),
    ("exact.test", "/x/../exact", ("exact.test", "=/exact")),
])
def test_rule_chosen_as_clb_does(proxy: ProxyProcess, host: str, path: str,
                                 expected: tuple[str, str]) -> None:
    assert _rule(proxy, host, path) == expected


def test_trailing_slash_rule_redirects_with_query_kept(proxy: ProxyProcess) -> None:
    status, headers, _ = _get(proxy, "exact.test", "/abc?x=1&y=2")
    assert status == 301
    assert headers["Location"] == "/abc/?x=1&y=2"


def test_no_matching_url_in_the_domain_is_404(proxy: ProxyProcess) -> None:
    status, _, _ = _get(proxy, "only.test", "/elsewhere")
    assert status == 404


def test_path_escaping_the_root_is_400(proxy: ProxyProcess) -> None:
    status, _, _ = _get(proxy, "exact.test", "/a/../../etc/passwd")
    assert status == 400


def test_event_path_is_the_path_as_sent(proxy: ProxyProcess) -> None:
    status, _, body = _get(proxy, "exact.test", "/x/%41b?q=1")
    assert status == 200
    event = json.loads(body)
    assert event["path"] == "/x/%41b"
    assert event["requestContext"]["listener"] == "web"
