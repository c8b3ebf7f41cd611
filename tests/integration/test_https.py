"""HTTPS listeners through the real proxy: SNI, the policy, HSTS, the dev certificate, and the
HTTP -> HTTPS redirect (issue 5)."""

from __future__ import annotations

import http.client
import json
import socket
import time
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.configs import function, listener, rule, scf_rule
from tests.proxyproc import ProxyProcess

HELLO = b"<html><body><h1>Hello CLB</h1></body></html>"


@pytest.fixture(scope="module")
def proxy(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    tmp = tmp_path_factory.mktemp("https")
    certs = []
    for i, names in enumerate([("a.test",), ("b.test",), ("*.w.test",)]):
        leaf = ca.issue_cert(*names)
        cert, key = tmp / f"c{i}.pem", tmp / f"k{i}.pem"
        leaf.cert_chain_pems[0].write_to_path(cert)
        for extra in leaf.cert_chain_pems[1:]:
            extra.write_to_path(cert, append=True)
        leaf.private_key_pem.write_to_path(key)
        certs.append(f'{{ cert = "{cert}", key = "{key}" }}')
    config = (listener("tls", "HTTPS", hsts_max_age=63072000, ssl_handshake_timeout=1)
              + f"certificates = [{', '.join(certs)}]\n" + scf_rule("a.test", "/", "echo")
              + listener("plain") + rule("a.test", "/", "[]") + '  rewrite = { listener = "tls", '
              'domain = "a.test", url = "/", code = 301, take_url = true, auto = true }\n'
              + function("echo"))
    with ProxyProcess.with_config(config, tmp, "--state-dir", str(tmp / "state")) as proc:
        yield proc


def _client(ca: trustme.CA, **kw: object) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def _peer_names(ctx: ssl.SSLContext, port: int, sni: str | None) -> list[str]:
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as s:
            cert = s.getpeercert()
            return [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]


@pytest.mark.parametrize("sni,names", [
    ("a.test", ["a.test"]), ("B.TEST", ["b.test"]), ("x.w.test", ["*.w.test"]),
    (None, ["a.test"]), ("unknown.test", ["a.test"]), ("y.x.w.test", ["a.test"]),
])
def test_certificate_chosen_by_sni(proxy: ProxyProcess, ca: trustme.CA, sni: str | None,
                                   names: list[str]) -> None:
    assert _peer_names(_client(ca), proxy.port("tls"), sni) == names


def test_https_request_carries_https_headers_and_hsts(proxy: ProxyProcess,
                                                      ca: trustme.CA) -> None:
    conn = http.client.HTTPSConnection("a.test", proxy.port("tls"), timeout=10,
                                       context=_client(ca))
    conn.sock = _client(ca).wrap_socket(
        socket.create_connection(("127.0.0.1", proxy.port("tls"))), server_hostname="a.test")
    conn.request("GET", "/x?y=1")
    resp = conn.getresponse()
    event = json.loads(resp.read())
    assert resp.status == 200
    assert resp.headers["Strict-Transport-Security"] == "max-age=63072000"
    assert event["headers"]["X-Client-Proto"] == "https"
    assert event["headers"]["X-Forwarded-Proto"] == "https"
    assert event["requestContext"]["protocol"] == "https"
    conn.close()


@pytest.mark.parametrize("offered,chosen", [(["h2", "http/1.1"], "h2"),
                                            (["http/1.1"], "http/1.1")])
def test_alpn_is_h2_then_http11(proxy: ProxyProcess, ca: trustme.CA, offered: list[str],
                                chosen: str) -> None:
    ctx = _client(ca)
    ctx.set_alpn_protocols(offered)
    with socket.create_connection(("127.0.0.1", proxy.port("tls")), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="a.test") as s:
            assert s.selected_alpn_protocol() == chosen


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_old_tls_versions_are_refused(proxy: ProxyProcess, ca: trustme.CA,
                                      version: ssl.TLSVersion) -> None:
    ctx = _client(ca)
    ctx.set_ciphers("ALL:@SECLEVEL=0")  # the client would go that low: the server must not
    ctx.minimum_version = version
    ctx.maximum_version = version
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        _peer_names(ctx, proxy.port("tls"), "a.test")


def test_cbc_suite_is_refused_on_tls12(proxy: ProxyProcess, ca: trustme.CA) -> None:
    ctx = _client(ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA")
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        _peer_names(ctx, proxy.port("tls"), "a.test")


def test_curl_with_cacert_gets_the_right_certificate(proxy: ProxyProcess, ca: trustme.CA,
                                                     tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(ca_file)
    port = proxy.port("tls")
    out = subprocess.run(
        ["curl", "-sS", "--cacert", str(ca_file), "--resolve", f"a.test:{port}:127.0.0.1",
         f"https://a.test:{port}/curl"], capture_output=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["path"] == "/curl"


def test_http_listener_redirects_to_https(proxy: ProxyProcess) -> None:
    """AutoRewrite's config form: the HTTPS listener's port (bound from port 0) is named."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port("plain"), timeout=5)
    conn.request("GET", "/a/b?c=1", headers={"Host": "a.test:8080"})
    resp = conn.getresponse()
    assert resp.status == 301
    assert resp.headers["Location"] == f"https://a.test:{proxy.port('tls')}/a/b?c=1"


def test_listen_tls_without_files_serves_hello_over_a_generated_certificate(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    with ProxyProcess(["--listen", "127.0.0.1:0", "--tls", "--state-dir", str(state)]) as proc:
        assert "development only" in proc.stderr
        cert = next(state.rglob("cert.pem"))
        ctx = ssl.create_default_context(cafile=str(cert))
        conn = http.client.HTTPSConnection("localhost", proc.port(), timeout=10, context=ctx)
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.read() == HELLO
        conn.close()


def test_silent_handshakes_are_dropped_and_do_not_starve_others(proxy: ProxyProcess,
                                                                  ca: trustme.CA) -> None:
    port = proxy.port("tls")
    silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
    try:
        started = time.monotonic()
        # a real client is served meanwhile
        assert _peer_names(_client(ca), port, "a.test") == ["a.test"]
        for s in silent:  # each is closed by the proxy once its handshake timeout (1 s) passes
            assert s.recv(1) == b""
        assert 0.8 < time.monotonic() - started < 5
    finally:
        for s in silent:
            s.close()
