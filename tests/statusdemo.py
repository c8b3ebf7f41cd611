"""The status page's test set-up, spelled once (tests/integration/test_status_page.py and
test_status_browser.py), and the screenshot in docs/status-page.png:

    .venv/bin/python -m tests.statusdemo docs/status-page.png

starts a CVM upstream and the real proxy on the config below, sends some traffic (answers
200, 404, 503, 502, a function's and a failing function's), waits for the health checks'
verdicts, and takes the picture with ``chromium --screenshot`` after the page's script ran.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.browser import FLAGS, chromium_path
from tests.configs import function, listener, rule, scf_rule
from tests.proxyproc import ProxyProcess, free_port, http_get
from tests.upstreams import Upstream

TOKEN = "status-page-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
CHECK = ('health_check = { interval = 2, healthy_threshold = 2, unhealthy_threshold = 2, '
         'timeout = 1, path = "/health", http_codes = 2 }')


def status_config(cvm_address: str, dead_address: str) -> str:
    """ops.test -> a live CVM target (weight 7); dead.test -> a port nothing listens on;
    fn.test -> the whoami function (weight 3); bad.test -> a function that raises."""
    def cvm(domain: str, address: str, weight: int) -> str:
        return rule(domain, "/", f'[{{ type = "CVM", address = "{address}", weight = {weight} }}]'
                    ).rstrip("\n") + "\n  " + CHECK + "\n"
    return (listener() + cvm("ops.test", cvm_address, 7) + cvm("dead.test", dead_address, 4)
            + scf_rule("fn.test", "/", "echo", weight=3) + scf_rule("bad.test", "/", "raises")
            + function("echo", "whoami", concurrency=2) + function("raises"))


def admin_get(proc: ProxyProcess, path: str, headers: dict[str, str] | None = None
              ) -> tuple[int, dict[str, str], bytes]:
    """One GET to the admin listener: (status, headers by lower-case name, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", proc.admin_port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def figures(proc: ProxyProcess) -> dict[str, Any]:
    """``/status.json``, with the token."""
    status, _, body = admin_get(proc, "/status.json", BEARER)
    assert status == 200, body
    answer: dict[str, Any] = json.loads(body)
    return answer


def wait_for(proc: ProxyProcess, test: Callable[[dict[str, Any]], bool],
             timeout: float = 60.0) -> dict[str, Any]:
    """``figures`` once ``test`` holds for them (the last ones after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        snap = figures(proc)
        if test(snap) or time.monotonic() > deadline:
            return snap
        time.sleep(0.3)


def health(snap: dict[str, Any], domain: str) -> str:
    """The health of the first target of ``domain``'s rule."""
    rules = [r for r in snap["listeners"][0]["rules"] if r["domain"] == domain]
    return str(rules[0]["targets"][0]["health"])


def traffic(port: int) -> None:
    """Some of every kind of answer the page counts."""
    for _ in range(6):
        http_get(port, "ops.test")
    for code in (404, 503):
        http_get(port, "ops.test", f"/status?code={code}")
    http_get(port, "dead.test")
    http_get(port, "fn.test")
    http_get(port, "bad.test")


def main(out: Path) -> int:
    with tempfile.TemporaryDirectory() as tmp, Upstream("cvm") as cvm:
        # a real port in the picture, not the tests' port 0
        config = status_config(cvm.address, f"127.0.0.1:{free_port()}").replace(
            "port = 0", f"port = {free_port()}", 1)
        with ProxyProcess.with_config(config, Path(tmp), "--admin", "127.0.0.1:0", "--workers",
                                      "2", env={"CLBSCF_ADMIN_TOKEN": TOKEN}) as proxy:
            shoot(proxy, out, Path(tmp))
    print(f"wrote {out}")
    return 0


def shoot(proxy: ProxyProcess, out: Path, tmp: Path) -> None:
    for i in range(30):  # about 15 s of uneven traffic, for the line of the last minute
        for _ in range(1 + i % 4):
            traffic(proxy.ports["web"])
        time.sleep(0.5)
    wait_for(proxy, lambda s: health(s, "ops.test") == "Alive"
             and health(s, "dead.test") == "Dead")
    subprocess.run([chromium_path(), *FLAGS, f"--user-data-dir={tmp}/profile",
                    "--window-size=1100,720", "--virtual-time-budget=3000",
                    f"--screenshot={out.resolve()}",
                    f"http://127.0.0.1:{proxy.admin_port}/?token={TOKEN}"],
                   check=True, timeout=120, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/status-page.png")))
