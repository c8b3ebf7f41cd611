"""The status page's pure parts and its token rules (proxy/statuspage.py, proxy/traffic.py):
the last minute from traffic rings (one process and several), the snapshot's merge of worker
views, the HTML with every value escaped, the CSP hashes, and the cookie flow through AdminApp.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import time
from typing import Any

from proxy.admin import AdminApp
from proxy.config import Config, Function, Listener, Rule, Target
from proxy.messages import Request
from proxy.metrics import ProxyMetrics, Registry
from proxy.statuspage import COOKIE, StatusPage, process_view, render, snapshot, sparkline
from proxy.traffic import FIELDS, WINDOW, TrafficRing, totals, window

EVIL = '<script>alert("x")</script>&\'"'


def _config(name: str = "web", domain: str = "a.test") -> Config:
    targets = (Target("CVM", weight=7, address="127.0.0.1:8001"),
               Target("CVM", weight=0, address="127.0.0.1:8002"),
               Target("SCF", weight=3, function="hello"))
    rule = Rule(domain, "/api", targets=targets, location_id="loc-00000001")
    empty = Rule(domain, "/none", location_id="loc-00000002")
    return Config(listeners=(Listener(name, "HTTP", 8080, host="127.0.0.1",
                                      rules=(rule, empty)),),
                  functions=(Function("default", "hello", "index.main_handler",
                                      code=__import__("pathlib").Path("/tmp")),))


def _ring(start: int, running: list[int]) -> list[list[int]]:
    """Samples at start, start+1, ... whose request totals are ``running`` (errors 0)."""
    return [[start + i, total, 0, 0, 0, 0] for i, total in enumerate(running)]


# --- traffic ----------------------------------------------------------------------------------

def test_the_last_minute_is_differences_of_neighbouring_samples() -> None:
    answer = window([_ring(1000, [5, 7, 7, 10])], now=1003.4)
    assert answer["requests"] == 5 and answer["seconds"] == 3
    assert answer["rate"] == round(5 / 3, 2)
    assert len(answer["series"]) == WINDOW and answer["series"][-3:] == [2, 0, 3]


def test_samples_older_than_the_minute_are_left_out() -> None:
    running = list(range(0, 200, 2))  # 2 requests a second for 100 s
    answer = window([_ring(1000, running)], now=1099)
    assert answer["seconds"] == WINDOW and answer["requests"] == 2 * WINDOW
    assert answer["series"] == [2] * WINDOW


def test_rings_of_several_workers_are_summed_second_by_second() -> None:
    one = _ring(1000, [0, 1, 2, 3])
    two = _ring(1002, [10, 20])  # started later: covers less
    answer = window([one, two], now=1003)
    assert answer["requests"] == 3 + 10
    assert answer["series"][-3:] == [1, 1, 11]
    assert answer["seconds"] == 3  # the longest coverage of any ring


def test_an_empty_window_is_zero() -> None:
    answer = window([[], _ring(1000, [4])], now=1000)
    assert answer["requests"] == 0 and answer["seconds"] == 0 and answer["rate"] == 0.0


def test_totals_split_the_request_counter_by_status_class() -> None:
    metrics = ProxyMetrics()
    for status in (200, 200, 404, 502, 503):
        metrics.observe_request("web", "a.test/", "CVM:h:1", status, 0.01, 10)
    metrics.observe_upstream_error("h:1", "connect")
    metrics.observe_invocation("default/hello", False, "timeout")
    metrics.observe_invocation("default/hello", False, "ok")
    assert dict(zip(FIELDS, totals(metrics))) == {
        "requests": 5, "client_errors": 1, "server_errors": 2, "upstream_errors": 1,
        "function_errors": 1}


def test_the_ring_keeps_one_sample_per_second_and_a_minute_of_them() -> None:
    now = [500.2]
    count = [0]
    ring = TrafficRing(lambda: (count[0], 0, 0, 0, 0), clock=lambda: now[0])
    ring.sample()
    count[0], now[0] = 3, 500.9  # a second tick in the same second replaces the first
    ring.sample()
    assert ring.samples() == [[500, 3, 0, 0, 0, 0]]
    for i in range(1, 100):
        now[0] = 500.1 + i
        ring.sample()
    assert len(ring.samples()) == WINDOW + 1 and ring.samples()[-1][0] == 599
    now[0] = 300.0  # the wall clock went back: the samples no longer line up
    ring.sample()
    assert ring.samples() == [[300, 3, 0, 0, 0, 0]]


def test_the_ring_samples_on_a_timer_until_stopped() -> None:
    async def main() -> None:
        ring = TrafficRing(lambda: (0, 0, 0, 0, 0))
        ring.start(asyncio.get_running_loop())
        deadline = time.monotonic() + 30
        while len(ring.samples()) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        ring.stop()
        seconds = [sample[0] for sample in ring.samples()]
        assert len(seconds) >= 3 and seconds == sorted(set(seconds))
        await asyncio.sleep(1.5)
        assert len(ring.samples()) == len(seconds)  # stopped
    asyncio.run(main())


def test_sparkline_scales_to_the_busiest_second() -> None:
    assert sparkline([0, 0]) == "▁▁"
    assert sparkline([0, 1, 8]) == "▁▂█"


# --- snapshot ---------------------------------------------------------------------------------

def _view(health: str, busy: int, idle: int) -> dict[str, Any]:
    ring = TrafficRing(lambda: (0, 0, 0, 0, 0))
    view = process_view(_config(), {"default/hello": {"busy": busy, "idle": idle,
                                                       "starting": 0, "queued": 0,
                                                       "invocations": 99}},
                        lambda lst, loc, address: health if address.endswith("8001")
                        else "Unknown", ring)
    assert "invocations" not in view["functions"]["default/hello"]  # totals are not states
    return view


def test_snapshot_merges_worker_views() -> None:
    snap = snapshot(_config(), [_view("Alive", 1, 0), _view("Dead", 0, 2)],
                    {"mode": "file", "state": "ok", "revision": "r1", "last_error": ""},
                    {"pid": 1}, time.time())
    targets = snap["listeners"][0]["rules"][0]["targets"]
    assert [(t["type"], t["target"], t["weight"], t["health"]) for t in targets] == [
        ("CVM", "127.0.0.1:8001", 7, "Dead"),  # one worker sees it dead: dead
        ("CVM", "127.0.0.1:8002", 0, "Unknown"),
        ("SCF", "default/hello", 3, None)]  # CLB reports no health for functions
    assert snap["functions"] == {"default/hello": {"busy": 1, "idle": 2, "starting": 0,
                                                   "queued": 0}}
    assert snap["listeners"][0]["rules"][1]["targets"] == []
    json.dumps(snap)  # it is what /status.json answers


def test_alive_wins_over_unknown_and_functions_without_instances_show_zero() -> None:
    snap = snapshot(_config(), [_view("Alive", 0, 0), _view("Unknown", 0, 0)], {}, {"pid": 1},
                    time.time())
    assert snap["listeners"][0]["rules"][0]["targets"][0]["health"] == "Alive"
    assert snapshot(_config(), [], {}, {"pid": 1}, 0.0)["functions"]["default/hello"] == {
        "busy": 0, "idle": 0, "starting": 0, "queued": 0}


# --- HTML -------------------------------------------------------------------------------------

def _page(config: Config, store: dict[str, Any] | None = None) -> str:
    return render(snapshot(config, [_view("Alive", 1, 0)],
                           store or {"mode": "etcd", "state": "unreachable", "revision": "42",
                                     "last_error": "connection refused"},
                           {"pid": 9, "workers": [{"pid": 10, "serving": True},
                                                  {"pid": 11, "serving": False}]},
                           1_800_000_000.0))


def test_the_page_shows_every_figure_without_javascript() -> None:
    page = _page(_config())
    for shown in ("a.test", "/api", "loc-00000001", "CVM 127.0.0.1:8001", "SCF default/hello",
                  '<td class="good">Alive</td>', '<td class="off">0</td>', "no targets",
                  "etcd", '<td class="bad">unreachable</td>', "connection refused",
                  "default/hello", "1 of 2 workers serving", "web <small>HTTP 127.0.0.1:8080",
                  "rendered 08:00:00 UTC", "<noscript>"):
        assert shown in page, shown


def test_every_value_from_the_config_is_escaped() -> None:
    page = _page(_config(name=EVIL, domain=EVIL),
                 {"mode": "file", "state": EVIL, "revision": EVIL, "last_error": EVIL})
    assert "alert" in page
    assert '<script>alert' not in page and '"x"' not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#x27;&quot;" in page
    assert page.count("<script>") == 1  # the page's own
    assert 'class="' + EVIL not in page  # css classes come from fixed words only


def _csp_source(headers: dict[str, str], kind: str) -> str:
    match = re.search(kind + r"-src '(sha256-[^']+)'", headers["Content-Security-Policy"])
    assert match
    return match.group(1)


def _sha(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


# --- the handler through AdminApp -----------------------------------------------------------

TOKEN = "s3cret-token"


class Admin:
    def __init__(self, token: str | None = TOKEN) -> None:
        async def views() -> list[dict[str, Any]]:
            return [_view("Alive", 0, 1)]

        self.status = StatusPage(_config, views, lambda: {"mode": "file", "state": "ok",
                                                          "revision": "r", "last_error": ""},
                                 lambda: {"pid": 1}, token=token)

        async def commit(change: Any) -> Any:
            raise AssertionError("nothing here changes the table")
        self.app = AdminApp(_config, commit, Registry(), token=token, environ={},
                            status=self.status)

    def get(self, path: str, query: str = "", headers: tuple[tuple[str, str], ...] = (),
            method: str = "GET") -> Any:
        request = Request(method, path, query, (("Host", "127.0.0.1:9000"),) + headers,
                          b"{}" if method == "POST" else b"", "1.1", "127.0.0.1", 40000,
                          "http", "admin", time.time())
        return asyncio.run(self.app.handle(request)).response


def test_without_a_token_a_browser_gets_a_form_that_sends_it_once() -> None:
    response = Admin().get("/")
    headers = dict(response.headers)
    assert response.status == 401 and headers["Content-Type"].startswith("text/html")
    assert headers["WWW-Authenticate"] == 'Bearer realm="clbscf-proxy admin"'
    assert b'<form method="get" action="/">' in response.body
    assert b'name="token"' in response.body and b"<script>" not in response.body
    api = Admin().get("/status.json")
    assert api.status == 401 and json.loads(api.body)["error"].startswith("unauthorized")


def test_the_token_in_the_address_sets_an_httponly_strict_cookie_and_leaves_the_address() -> None:
    admin = Admin()
    wrong = admin.get("/", "token=nope")
    assert wrong.status == 401 and b"not the admin token" in wrong.body
    assert dict(wrong.headers)["WWW-Authenticate"].endswith('error="invalid_token"')
    right = admin.get("/", f"token={TOKEN}")
    headers = dict(right.headers)
    assert right.status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    name_value, *attributes = [part.strip() for part in cookie.split(";")]
    assert set(attributes) == {"Path=/", "HttpOnly", "SameSite=Strict"}
    name, _, value = name_value.partition("=")
    assert name == COOKIE and TOKEN not in value and len(value) == 64
    with_cookie = (("Cookie", f"other=1; {name_value}"),)
    page = admin.get("/", headers=with_cookie)
    assert page.status == 200 and b"a.test" in page.body
    figures = admin.get("/status.json", headers=with_cookie)
    assert figures.status == 200
    assert json.loads(figures.body)["listeners"][0]["name"] == "web"
    # the cookie opens the page only: not /metrics, not the API
    assert admin.get("/metrics", headers=with_cookie).status == 401
    assert admin.get("/", headers=with_cookie + (("X-TC-Action", "DescribeListeners"),
                                                 ("Content-Type", "application/json")),
                     method="POST").status == 401
    assert admin.get("/", headers=(("Cookie", f"{COOKIE}={'0' * 64}"),)).status == 401


def test_a_bearer_token_opens_the_page_and_the_json() -> None:
    auth = (("Authorization", f"Bearer {TOKEN}"),)
    page = Admin().get("/", headers=auth)
    assert page.status == 200
    figures = Admin().get("/status.json", headers=auth)
    assert figures.status == 200 and dict(figures.headers)["Cache-Control"] == "no-store"
    assert json.loads(figures.body)["store"]["revision"] == "r"


def test_without_a_configured_token_the_page_is_open() -> None:
    assert Admin(token=None).get("/").status == 200
    assert Admin(token=None).get("/status.json").status == 200


def test_a_signature_v1_get_is_still_an_api_call() -> None:
    response = Admin(token=None).get("/", "Action=DescribeListeners&Signature=x&SecretId=admin")
    assert dict(response.headers)["Content-Type"] == "application/json"
    assert "Response" in json.loads(response.body)


def test_the_policy_allows_exactly_the_inline_script_and_styles() -> None:
    response = Admin(token=None).get("/")
    headers = dict(response.headers)
    page = response.body.decode()
    script = page.split("<script>", 1)[1].split("</script>", 1)[0]
    style = page.split("<style>", 1)[1].split("</style>", 1)[0]
    assert _csp_source(headers, "script") == _sha(script)
    assert _csp_source(headers, "style") == _sha(style)
    policy = headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy and headers["X-Frame-Options"] == "DENY"
    assert "fetch(\"/status.json\"" in script and "innerHTML" not in script
