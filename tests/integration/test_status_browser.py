"""The status page in headless Chromium (tests/browser.py; Debian's package, installed by the
test when missing): the token in the address once, then the cookie; the page's script polls
/status.json and its figures appear without a reload (requests sent, a target registered
through the API, its health), the sections it draws are the ones the server renders, and the
Content-Security-Policy lets the inline script run and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser import Browser
from tests.clbcall import clb
from tests.proxyproc import ProxyProcess, free_port, http_get
from tests.statusdemo import TOKEN, figures, status_config
from tests.upstreams import Upstream

#: the server's rendering of each section, parsed by the browser, beside the script's
SAME_AS_SERVER = """(async () => {
  const html = await (await fetch('/', {cache: 'no-store'})).text();
  const server = new DOMParser().parseFromString(html, 'text/html');
  return ['store', 'functions', 'listeners'].map(
    id => [server.getElementById(id).outerHTML, document.getElementById(id).outerHTML]);
})()"""


@pytest.fixture
def proxy(tmp_path: Path, cvm: Upstream) -> Iterator[ProxyProcess]:
    config = status_config(cvm.address, f"127.0.0.1:{free_port()}")
    with ProxyProcess.with_config(config, tmp_path, "--admin", "127.0.0.1:0",
                                  env={"CLBSCF_ADMIN_TOKEN": TOKEN}) as proc:
        yield proc


def _cell(section: str, column: int) -> str:
    return f"document.querySelector('#{section} tbody td:nth-child({column})').textContent"


def test_the_page_polls_its_figures_in_a_real_browser(proxy: ProxyProcess,
                                                      tmp_path: Path) -> None:
    with Browser(tmp_path / "profile") as browser:
        browser.goto(f"http://127.0.0.1:{proxy.admin_port}/?token={TOKEN}")
        # the 303 took the token out of the address; the cookie is not readable by scripts
        assert browser.evaluate("location.pathname + location.search") == "/"
        assert browser.evaluate("document.cookie") == ""
        assert "ops.test" in browser.evaluate("document.getElementById('listeners').innerText")
        browser.evaluate("window.sameDocument = true")  # gone if the page is ever reloaded
        browser.wait_for("document.body.dataset.polls >= 1")
        assert browser.evaluate("document.getElementById('updated').textContent"
                                ).startswith("updated ")

        # requests sent now show up through the polling, without a reload
        port = proxy.ports["web"]
        for _ in range(5):
            assert http_get(port, "ops.test")[0] == 200
        assert http_get(port, "ops.test", "/status?code=404")[0] == 404
        browser.wait_for(f"{_cell('traffic', 2)} === '6' && {_cell('traffic', 3)} === '1'")

        # a target registered through the API appears, with its weight, then its health
        spare = free_port()
        location = figures(proxy)["listeners"][0]["rules"][0]["location_id"]
        answer = clb(proxy.admin_port, "RegisterTargets", {
            "ListenerId": "lbl-web", "LocationId": location,
            "Targets": [{"EniIp": "127.0.0.1", "Port": spare, "Weight": 9}]}, token=TOKEN)
        assert "Error" not in answer, answer
        row = (f"[...document.querySelectorAll('#listeners tr')].map(r => r.innerText)"
               f".find(t => t.includes('127.0.0.1:{spare}')) || ''")
        assert "\t9\t" in browser.wait_for(row)
        assert browser.wait_for(f"({row}).endsWith('Dead')")
        assert browser.evaluate("window.sameDocument") is True

        # what the script draws is what the server renders, once the figures are still
        revision = figures(proxy)["store"]["revision"]
        browser.wait_for(f"document.getElementById('store').textContent.includes('{revision}')")
        for server, script in browser.evaluate(SAME_AS_SERVER):
            assert script == server
        assert not [line for line in browser.console if "Content Security Policy" in line
                    or line.startswith("error")], browser.console

        shot = tmp_path / "status.png"
        browser.screenshot(shot)
        assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and shot.stat().st_size > 10_000
