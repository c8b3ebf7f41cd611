"""The status page through the real proxy (issue 13 item 5), with one process and with a
supervisor and two workers: ``GET /`` is complete HTML without JavaScript (read here by a plain
HTTP client), ``GET /status.json`` has the figures (the last minute's requests and errors
summed over the workers, instances, target health), and the admin token guards both (Bearer,
or ``?token=`` once setting the page's cookie).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.proxyproc import ProxyProcess, free_port, http_get
from tests.statusdemo import BEARER, TOKEN, admin_get, health, status_config, wait_for
from tests.upstreams import Upstream


@pytest.fixture(params=[1, 2], ids=["1-process", "2-workers"])
def proxy(request: pytest.FixtureRequest, tmp_path: Path,
          cvm: Upstream) -> Iterator[ProxyProcess]:
    config = status_config(cvm.address, f"127.0.0.1:{free_port()}")
    with ProxyProcess.with_config(config, tmp_path, "--admin", "127.0.0.1:0", "--workers",
                                  str(request.param), env={"CLBSCF_ADMIN_TOKEN": TOKEN}) as proc:
        yield proc


def test_the_page_without_javascript_shows_rules_targets_and_health(proxy: ProxyProcess,
                                                                    cvm: Upstream) -> None:
    snap = wait_for(proxy, lambda s: health(s, "ops.test") == "Alive"
                    and health(s, "dead.test") == "Dead")
    assert (health(snap, "ops.test"), health(snap, "dead.test")) == ("Alive", "Dead")
    status, headers, body = admin_get(proxy, "/", BEARER)
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    page = body.decode()
    table = page.split('<section id="listeners">', 1)[1]
    # each target's row: domain, url, rule, scheduler, target, weight, health
    assert (f"<td>ops.test</td><td>/</td><td>{snap['listeners'][0]['rules'][0]['location_id']}"
            f'</td><td>WRR</td><td>CVM {cvm.address}</td><td>7</td><td class="good">Alive</td>'
            ) in table
    assert '<td class="bad">Dead</td>' in table
    assert "<td>SCF default/echo</td><td>3</td><td>—</td>" in table
    assert '<section id="store"><h2>Store</h2>' in page and "<td>file</td>" in page
    assert snap["store"]["mode"] == "file" and len(snap["store"]["revision"]) == 64
    assert snap["store"]["revision"] in page


def test_the_json_counts_the_last_minute_over_every_process(proxy: ProxyProcess) -> None:
    port = proxy.ports["web"]
    for _ in range(6):  # each on a new connection: spread over the workers
        assert http_get(port, "ops.test")[0] == 200
    for code in (404, 404, 503):
        assert http_get(port, "ops.test", f"/status?code={code}")[0] == code
    assert http_get(port, "dead.test")[0] == 502  # an upstream (connect) failure
    assert http_get(port, "fn.test")[0] == 200
    raised = http_get(port, "bad.test")[0]  # the function raised: an error answer
    assert raised >= 400
    expected = {"requests": 12, "client_errors": 2 + (raised < 500),
                "server_errors": 2 + (raised >= 500), "upstream_errors": 1,
                "function_errors": 1}
    snap = wait_for(proxy, lambda s: {k: s["traffic"][k] for k in expected} == expected,
                    timeout=30)
    assert {k: snap["traffic"][k] for k in expected} == expected
    assert snap["traffic"]["seconds"] > 0 and sum(snap["traffic"]["series"]) == 12
    echo = snap["functions"]["default/echo"]
    assert echo["idle"] + echo["busy"] >= 1 and set(echo) == {"busy", "idle", "starting",
                                                              "queued"}
    workers = snap["process"].get("workers")
    assert workers is None or sum(1 for w in workers if w["serving"]) == 2


def test_the_token_guards_the_page_and_the_address_token_sets_a_cookie(
        proxy: ProxyProcess) -> None:
    status, headers, body = admin_get(proxy, "/")
    assert status == 401 and b'<form method="get" action="/">' in body
    assert headers["www-authenticate"].startswith("Bearer")
    assert admin_get(proxy, "/status.json")[0] == 401
    assert admin_get(proxy, "/?token=wrong")[0] == 401
    status, headers, _ = admin_get(proxy, f"/?token={TOKEN}")
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    jar = {"Cookie": cookie.split(";", 1)[0]}
    status, _, body = admin_get(proxy, "/", jar)
    assert status == 200 and b"ops.test" in body
    assert admin_get(proxy, "/status.json", jar)[0] == 200
    assert admin_get(proxy, "/metrics", jar)[0] == 401  # the cookie opens the page only
    assert admin_get(proxy, "/metrics", BEARER)[0] == 200
