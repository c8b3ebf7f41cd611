"""Mutual TLS on HTTPS listeners through the real proxy (issue 15 item 2), with real clients:
curl --cert, openssl s_client, Python's ssl; certificates from trustme.

What is checked: a verified client certificate's verdict, subject and fingerprint reach a CVM
backend (request headers) and a function (event headers), and copies a client sends are
removed everywhere; no certificate where one is required, or a chain deeper than
ssl_verify_depth, is nginx's 400 with its text; a certificate of another CA ends the handshake;
"optional" lets a client without one through; a resumed session keeps its verdict.
"""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.configs import function, listener, rule
from tests.proxyproc import ProxyProcess
from tests.upstreams import Upstream

NO_CERT = "No required SSL certificate was sent"
CERT_ERROR = "The SSL certificate error"


class Peer:
    """A client certificate and its key as files, and what the backend should be told."""

    def __init__(self, issued: trustme.LeafCert, folder: Path, name: str) -> None:
        self.cert = folder / f"{name}.pem"
        self.key = folder / f"{name}.key"
        issued.cert_chain_pems[0].write_to_path(self.cert)
        for extra in issued.cert_chain_pems[1:]:  # the intermediates a client sends
            extra.write_to_path(self.cert, append=True)
        issued.private_key_pem.write_to_path(self.key)
        leaf = x509.load_pem_x509_certificate(issued.cert_chain_pems[0].bytes())
        self.subject = leaf.subject.rfc4514_string()
        self.fingerprint = hashlib.sha256(leaf.public_bytes(Encoding.DER)).hexdigest()
        self.issued = issued


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mtls")


@pytest.fixture(scope="module")
def client_ca() -> trustme.CA:
    return trustme.CA(organization_name="clients")


@pytest.fixture(scope="module")
def peers(client_ca: trustme.CA, folder: Path) -> dict[str, Peer]:
    two_deep = client_ca.create_child_ca().create_child_ca()
    return {
        "good": Peer(client_ca.issue_cert("alice@clients.test"), folder, "good"),
        "deep": Peer(two_deep.issue_cert("bob@clients.test"), folder, "deep"),
        "stranger": Peer(trustme.CA().issue_cert("eve@elsewhere.test"), folder, "stranger"),
    }


@pytest.fixture(scope="module")
def proxy(ca: trustme.CA, client_ca: trustme.CA, cvm: Upstream, folder: Path
          ) -> Iterator[ProxyProcess]:
    leaf = ca.issue_cert("localhost")
    cert, key, cas = folder / "server.pem", folder / "server.key", folder / "client-ca.pem"
    leaf.cert_chain_pems[0].write_to_path(cert)
    leaf.private_key_pem.write_to_path(key)
    client_ca.cert_pem.write_to_path(cas)
    second = ca.issue_cert("second.test")
    cert2, key2 = folder / "second.pem", folder / "second.key"
    second.cert_chain_pems[0].write_to_path(cert2)
    second.private_key_pem.write_to_path(key2)
    certs = f'certificates = [{{ cert = "{cert}", key = "{key}" }}]\n'
    # two certificates: SNI switches the handshake to the second one's context
    two_certs = (f'certificates = [{{ cert = "{cert}", key = "{key}" }}, '
                 f'{{ cert = "{cert2}", key = "{key2}" }}]\n')
    targets = f'[{{ type = "CVM", address = "{cvm.address}" }}]'
    rules = (rule("localhost", "/", targets)
             + rule("localhost", "/scf", '[{ type = "SCF", function = "echo" }]'))
    config = (listener("required", "HTTPS", ssl_mode="MUTUAL", client_ca=str(cas)) + two_certs
              + rules
              + listener("optional", "HTTPS", ssl_mode="MUTUAL", client_ca=str(cas),
                         ssl_verify_client="optional") + certs + rules
              # CLB's custom_config sets the depth too
              + listener("deeper", "HTTPS", ssl_mode="MUTUAL", client_ca=str(cas),
                         custom_config="ssl_verify_depth 2;") + certs + rules
              + listener("oneway", "HTTPS") + certs + rules
              + function("echo"))
    with ProxyProcess.with_config(config, folder, "--state-dir", str(folder / "state")) as proc:
        yield proc


def _curl(proxy: ProxyProcess, name: str, ca: trustme.CA, folder: Path, path: str = "/echo",
          peer: Peer | None = None, *headers: str) -> subprocess.CompletedProcess[str]:
    ca_file = folder / "server-ca.pem"
    ca.cert_pem.write_to_path(ca_file)
    args = ["curl", "-sS", "--http1.1", "-i", "--cacert", str(ca_file),
            "--resolve", f"localhost:{proxy.port(name)}:127.0.0.1",
            f"https://localhost:{proxy.port(name)}{path}"]
    if peer is not None:
        args += ["--cert", str(peer.cert), "--key", str(peer.key)]
    for header in headers:
        args += ["-H", header]
    return subprocess.run(args, capture_output=True, text=True, timeout=30)


def _body(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    head, _, body = done.stdout.partition("\n\n")
    assert head.startswith("HTTP/1.1 200"), done.stdout
    assert body, done.stdout
    return dict(json.loads(body))


FORGED = ("X-Client-Cert-Verify: SUCCESS", "X-Client-Cert-Subject: CN=admin",
          "X-Client-Cert-Fingerprint: 00")


def test_a_verified_certificate_reaches_the_cvm_backend_and_forged_copies_do_not(
        proxy: ProxyProcess, ca: trustme.CA, folder: Path, peers: dict[str, Peer]) -> None:
    good = peers["good"]
    headers = _body(_curl(proxy, "required", ca, folder, "/echo", good, *FORGED))["headers"]
    sent = [(k, v) for k, v in headers if k.lower().startswith("x-client-cert-")]
    assert sent == [("X-Client-Cert-Verify", "SUCCESS"), ("X-Client-Cert-Subject", good.subject),
                    ("X-Client-Cert-Fingerprint", good.fingerprint)]


def test_a_verified_certificate_reaches_the_function_event(
        proxy: ProxyProcess, ca: trustme.CA, folder: Path, peers: dict[str, Peer]) -> None:
    good = peers["good"]
    event = _body(_curl(proxy, "required", ca, folder, "/scf", good, *FORGED))
    headers = event["headers"]
    assert headers["X-Client-Cert-Verify"] == "SUCCESS"
    assert headers["X-Client-Cert-Subject"] == good.subject
    assert headers["X-Client-Cert-Fingerprint"] == good.fingerprint


def test_no_certificate_where_one_is_required_is_nginx_400(
        proxy: ProxyProcess, ca: trustme.CA, folder: Path) -> None:
    done = _curl(proxy, "required", ca, folder, "/echo")
    assert done.returncode == 0, done.stderr
    head, _, body = done.stdout.partition("\n\n")
    assert head.startswith("HTTP/1.1 400 Bad Request")
    assert "Connection: close" in head
    assert f"<title>400 {NO_CERT}</title>" in body and f"<center>{NO_CERT}</center>" in body
    deadline = time.monotonic() + 10  # the access log line follows the answer
    while not [r for r in proxy.access_log() if r["listener"] == "required"
               and r["status"] == 400 and r["error"] == "no client certificate"]:
        assert time.monotonic() < deadline, proxy.access_log()
        time.sleep(0.05)


def test_optional_lets_a_client_without_a_certificate_through(
        proxy: ProxyProcess, ca: trustme.CA, folder: Path, peers: dict[str, Peer]) -> None:
    headers = _body(_curl(proxy, "optional", ca, folder, "/echo", None, *FORGED))["headers"]
    sent = [(k, v) for k, v in headers if k.lower().startswith("x-client-cert-")]
    assert sent == [("X-Client-Cert-Verify", "NONE")]
    event = _body(_curl(proxy, "optional", ca, folder, "/scf", peers["good"]))
    assert event["headers"]["X-Client-Cert-Verify"] == "SUCCESS"


def test_a_chain_deeper_than_ssl_verify_depth_is_nginx_400_and_custom_config_allows_it(
        proxy: ProxyProcess, ca: trustme.CA, folder: Path, peers: dict[str, Peer]) -> None:
    done = _curl(proxy, "required", ca, folder, "/echo", peers["deep"])
    head, _, body = done.stdout.partition("\n\n")
    assert head.startswith("HTTP/1.1 400 Bad Request"), done.stdout + done.stderr
    assert f"<center>{CERT_ERROR}</center>" in body
    # "optional" refuses it too, as nginx does for a certificate that failed
    assert _curl(proxy, "optional", ca, folder, "/echo", peers["deep"]).stdout.startswith(
        "HTTP/1.1 400")
    headers = _body(_curl(proxy, "deeper", ca, folder, "/echo", peers["deep"]))["headers"]
    assert ["X-Client-Cert-Verify", "SUCCESS"] in headers


def _s_client(proxy: ProxyProcess, name: str, ca: trustme.CA, folder: Path,
              peer: Peer | None, *extra: str) -> subprocess.CompletedProcess[str]:
    ca_file = folder / "server-ca.pem"
    ca.cert_pem.write_to_path(ca_file)
    args = ["openssl", "s_client", "-connect", f"127.0.0.1:{proxy.port(name)}",
            "-servername", "localhost", "-CAfile", str(ca_file), "-ign_eof", *extra]
    if peer is not None:
        args += ["-cert", str(peer.cert), "-key", str(peer.key)]
    request = "GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    return subprocess.run(args, input=request, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_openssl_s_client_with_a_good_certificate_is_served(
        proxy: ProxyProcess, ca: trustme.CA, folder: Path, peers: dict[str, Peer],
        version: str) -> None:
    done = _s_client(proxy, "required", ca, folder, peers["good"], version)
    assert "HTTP/1.1 200 OK" in done.stdout, done.stdout + done.stderr
    assert '"X-Client-Cert-Verify", "SUCCESS"' in done.stdout


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_a_certificate_of_another_ca_ends_the_handshake(
        proxy: ProxyProcess, ca: trustme.CA, folder: Path, peers: dict[str, Peer],
        version: str) -> None:
    done = _s_client(proxy, "optional", ca, folder, peers["stranger"], version)
    # the server closes the connection without an HTTP answer (asyncio's TLS transport does
    # not flush OpenSSL's alert first: a reset or an EOF is what the client sees)
    assert "HTTP/1.1" not in done.stdout
    assert any(sign in done.stderr for sign in ("errno=104", "unexpected eof", "alert")), \
        done.stderr
    curl = _curl(proxy, "required", ca, folder, "/echo", peers["stranger"])
    assert curl.returncode != 0 and "HTTP/1.1" not in curl.stdout
    try:  # TLS 1.3: the client's handshake is done before the server judges its certificate
        answer = _get(proxy.port("required"), _python_client(ca, peers["stranger"]))[0]
    except (ssl.SSLError, OSError):
        answer = b""
    assert answer == b""


def _python_client(ca: trustme.CA, peer: Peer | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if peer is not None:
        peer.issued.configure_cert(ctx)
    return ctx


def _get(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None,
         host: str = "localhost") -> tuple[bytes, ssl.SSLSession | None, bool]:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname=host, session=session) as sock:
            sock.sendall(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            return data, sock.session, sock.session_reused


@pytest.mark.parametrize("maximum", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_a_resumed_session_keeps_its_verdict(
        proxy: ProxyProcess, ca: trustme.CA, peers: dict[str, Peer],
        maximum: ssl.TLSVersion) -> None:
    for peer, listener_name, expected in [(peers["good"], "required", b"200 OK"),
                                          (peers["deep"], "required", CERT_ERROR.encode()),
                                          (peers["deep"], "deeper", b"200 OK")]:
        ctx = _python_client(ca, peer)
        ctx.maximum_version = maximum
        port = proxy.port(listener_name)
        first, session, reused = _get(port, ctx)
        assert not reused and expected in first
        again, _, reused = _get(port, ctx, session)
        assert reused, "the second connection did not resume"
        assert expected in again
        if expected == b"200 OK":
            assert peer.subject.encode() in again and peer.fingerprint.encode() in again


def test_a_one_way_listener_strips_forged_certificate_headers(
        proxy: ProxyProcess, ca: trustme.CA, folder: Path) -> None:
    headers = _body(_curl(proxy, "oneway", ca, folder, "/echo", None, *FORGED))["headers"]
    assert not [k for k, _ in headers if k.lower().startswith("x-client-cert-")]
    event = _body(_curl(proxy, "oneway", ca, folder, "/scf", None, *FORGED))
    assert not [k for k in event["headers"] if k.lower().startswith("x-client-cert-")]


def test_the_client_certificate_is_checked_whichever_certificate_sni_picks(
        proxy: ProxyProcess, ca: trustme.CA, peers: dict[str, Peer]) -> None:
    port = proxy.port("required")
    answer = _get(port, _python_client(ca, peers["good"]), host="second.test")[0]
    assert answer.startswith(b"HTTP/1.1 200 OK") and peers["good"].fingerprint.encode() in answer
    answer = _get(port, _python_client(ca, None), host="second.test")[0]
    assert answer.startswith(b"HTTP/1.1 400") and NO_CERT.encode() in answer
    try:
        answer = _get(port, _python_client(ca, peers["stranger"]), host="second.test")[0]
    except (ssl.SSLError, OSError):
        answer = b""
    assert answer == b""
