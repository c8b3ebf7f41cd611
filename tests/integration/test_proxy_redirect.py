"""proxy_redirect default through the real proxy: an upstream's absolute Location and Refresh
naming its own address come back naming the address the client used."""

from __future__ import annotations

import http.client
from pathlib import Path

from tests.configs import listener
from tests.proxyproc import ProxyProcess
from tests.wsgiupstream import WsgiUpstream


def _get(port: int, host: str | None, path: str, version: str = "HTTP/1.1"
         ) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn._http_vsn_str = version  # type: ignore[attr-defined]
    conn.putrequest("GET", path, skip_host=True)
    if host is not None:
        conn.putheader("Host", host)
    conn.endheaders()
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


def test_location_and_refresh_naming_the_upstream_are_rewritten(tmp_path: Path) -> None:
    with WsgiUpstream() as up:
        config = listener("web") + f"""
  [[listener.rule]]
  domain = "shop.test"
  url = "/"
  health_check = {{ enabled = false }}
  targets = [{{ type = "CVM", address = "{up.address}" }}]
"""
        with ProxyProcess.with_config(config, tmp_path) as proxy:
            port = proxy.port()
            resp = _get(port, "shop.test:8080", "/redirect?to=/cart?x=1")
            assert resp.status == 302
            assert resp.getheader("Location") == "http://shop.test:8080/cart?x=1"
            resp = _get(port, "shop.test", "/refresh")
            assert resp.getheader("Refresh") == "0; url=http://shop.test/next"
            # another host's address is left alone
            resp = _get(port, "shop.test", "/redirect?location=http://other.test/x")
            assert resp.getheader("Location") == "http://other.test/x"
            resp = _get(port, "shop.test", "/redirect?location=/relative")
            assert resp.getheader("Location") == "/relative"
            upper = f"HTTP://{up.address}/Up".replace("127.0.0.1", "127.0.0.1")
            resp = _get(port, "shop.test", f"/redirect?location={upper}")
            assert resp.getheader("Location") == "http://shop.test/Up"
            # an HTTP/1.0 client without Host gets a path (no Host to name)
            resp = _get(port, None, "/redirect?to=/y", "HTTP/1.0")
            assert resp.getheader("Location") == "/y"
