"""proxy/tls.py: certificate checks, SNI, the intermediate policy, groups, dev certificate.

Handshakes are real: a tiny uvloop TLS server of the test's own (port 0, in a thread) serves
the contexts that tls.py builds and answers one fixed HTTP response; the clients are Python's
ssl and curl. Key-exchange groups are process-wide OpenSSL state, so they are tested against a
server in a subprocess.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
import trustme
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from proxy import tls
from proxy.config import Certificate
from proxy.errors import ConfigError

NOW = datetime.now(UTC)
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
CURL = "/usr/bin/curl"


# --------------------------------------------------------------------------- helpers

def write_leaf(folder: Path, stem: str, leaf: trustme.LeafCert) -> Certificate:
    cert = Certificate(cert=folder / f"{stem}.pem", key=folder / f"{stem}.key")
    cert.cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    cert.key.write_bytes(leaf.private_key_pem.bytes())
    return cert


def mint(folder: Path, stem: str, *, key: Any = None, cn: str | None = "x.test",
         san: Sequence[str] | None = ("x.test",), eku: Sequence[x509.ObjectIdentifier] = (),
         issuer: tuple[x509.Name, Any] | None = None, extra: Sequence[x509.Certificate] = (),
         not_before: datetime = NOW - timedelta(days=1),
         not_after: datetime = NOW + timedelta(days=60)) -> Certificate:
    """A certificate made with cryptography directly, for what trustme cannot make."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn) if cn else
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "no names")])
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after))
    if san is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in san]), critical=False)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    leaf = builder.sign(issuer_key, hashes.SHA256())
    cert = Certificate(cert=folder / f"{stem}.pem", key=folder / f"{stem}.key")
    cert.cert.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM)
                                   for c in (leaf, *extra)))
    cert.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert


def self_signed_ca(cn: str, key: Any) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=60))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))


class FixedResponse(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.received = b""

    def data_received(self, data: bytes) -> None:
        self.received += data
        if b"\r\n\r\n" in self.received:
            self.transport.write(RESPONSE)
            self.transport.close()


@contextmanager
def serving(context: ssl.SSLContext, handshake_timeout: float = 5.0) -> Iterator[int]:
    """A uvloop TLS server on 127.0.0.1, port 0, in a thread; yields the port."""
    loop = uvloop.new_event_loop()
    started = threading.Event()
    port: list[int] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(loop.create_server(
            FixedResponse, "127.0.0.1", 0, ssl=context, ssl_handshake_timeout=handshake_timeout))
        port.append(server.sockets[0].getsockname()[1])
        started.set()
        loop.run_forever()
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(5), "test server did not start"
    try:
        yield port[0]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def client_context(ca: trustme.CA | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ca.configure_trust(ctx)
    return ctx


def fetch(port: int, ctx: ssl.SSLContext, server_hostname: str | None) -> dict[str, Any]:
    """One handshake and one request; what the client saw."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_hostname) as conn:
            der = conn.getpeercert(binary_form=True)
            assert der is not None
            cipher = conn.cipher()
            assert cipher is not None
            seen: dict[str, Any] = {
                "version": conn.version(), "cipher": cipher[0], "compression": conn.compression(),
                "alpn": conn.selected_alpn_protocol()}
            conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            body = b""
            while chunk := conn.recv(4096):
                body += chunk
    leaf = x509.load_der_x509_certificate(der)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {**seen, "names": san.get_values_for_type(x509.DNSName), "body": body}


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture()
def listener_certs(tmp_path: Path, ca: trustme.CA) -> list[tls.LoadedCertificate]:
    """a.test first (the default), then b.test, then the wildcard *.w.test."""
    return [tls.load_certificate(write_leaf(tmp_path, stem, ca.issue_cert(name)))
            for stem, name in (("a", "a.test"), ("b", "b.test"), ("w", "*.w.test"))]


@pytest.fixture()
def listener(listener_certs: list[tls.LoadedCertificate]) -> Iterator[int]:
    server = tls.ServerTLS(listener_certs)
    with serving(server.context, server.handshake_timeout) as port:
        yield port


# --------------------------------------------------------------------------- SNI over TLS

@pytest.mark.parametrize(("sni", "served"), [
    ("a.test", "a.test"), ("b.test", "b.test"), ("x.w.test", "*.w.test"),
    ("B.TEST", "b.test"), ("Deep.W.Test", "*.w.test"),
])
def test_sni_name_gets_its_own_certificate(listener: int, ca: trustme.CA, sni: str,
                                           served: str) -> None:
    seen = fetch(listener, client_context(ca), sni)
    assert seen["names"] == [served]
    assert seen["body"].endswith(b"ok")


def test_client_without_sni_gets_the_first_certificate(listener: int, ca: trustme.CA) -> None:
    ctx = client_context(ca)
    ctx.check_hostname = False  # still verifies the chain against the CA
    assert fetch(listener, ctx, None)["names"] == ["a.test"]


@pytest.mark.parametrize("sni", ["unknown.test", "w.test", "y.x.w.test"])
def test_unknown_sni_name_gets_the_first_certificate(listener: int, sni: str) -> None:
    assert fetch(listener, client_context(), sni)["names"] == ["a.test"]


@pytest.mark.parametrize("sni", [None, "b.test"])
def test_alpn_prefers_h2(listener: int, sni: str | None) -> None:
    ctx = client_context()
    ctx.set_alpn_protocols(["http/1.1", "h2"])  # our order decides, not the client's
    assert fetch(listener, ctx, sni)["alpn"] == "h2"


def test_alpn_falls_back_to_http11(listener: int) -> None:
    ctx = client_context()
    ctx.set_alpn_protocols(["http/1.1"])
    assert fetch(listener, ctx, "b.test")["alpn"] == "http/1.1"


@pytest.mark.parametrize("sni,alpn", [("a.test", "h2"), ("b.test", "http/1.1"),
                                      (None, "http/1.1"), ("x.w.test", "h2")])
def test_alpn_h2_follows_the_http2_choice_per_sni_name(listener_certs: list[tls.LoadedCertificate],
                                                       sni: str | None, alpn: str) -> None:
    # the choice is the caller's (http2.sni_http2); names told no get http/1.1 only, and the
    # certificate is still the one SNI picks
    server = tls.ServerTLS(listener_certs, http2=lambda name: name not in (None, "b.test"))
    ctx = client_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with serving(server.context) as port:
        seen = fetch(port, ctx, sni)
    assert seen["alpn"] == alpn
    assert seen["names"] == {"b.test": ["b.test"], "x.w.test": ["*.w.test"]}.get(sni or "",
                                                                                ["a.test"])


def test_tls12_client_gets_an_ecdhe_aead_suite_and_no_compression(listener: int) -> None:
    ctx = client_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    seen = fetch(listener, ctx, "a.test")
    assert seen["version"] == "TLSv1.2"
    assert seen["cipher"] in tls.TLS12_CIPHERS.split(":")
    assert seen["compression"] is None


def test_tls13_is_offered(listener: int) -> None:
    assert fetch(listener, client_context(), "a.test")["version"] == "TLSv1.3"


# --------------------------------------------------------------------------- refused handshakes

def old_protocol_client(version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = client_context()
    # @SECLEVEL=0 so that it is the *server* that refuses, not the client's own OpenSSL policy
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():  # Python deprecates these versions, which is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = version
        ctx.maximum_version = version
    return ctx


def cbc_client() -> ssl.SSLContext:
    ctx = client_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256")
    return ctx


@pytest.fixture()
def permissive_server(tmp_path: Path, ca: trustme.CA) -> Iterator[int]:
    """A server accepting anything: shows the refused clients are able to connect at all."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
    source = write_leaf(tmp_path, "open", ca.issue_cert("a.test"))
    ctx.load_cert_chain(source.cert, source.key)
    with serving(ctx) as port:
        yield port


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls10_and_tls11_handshakes_are_refused(listener: int, permissive_server: int,
                                                version: ssl.TLSVersion) -> None:
    assert fetch(permissive_server, old_protocol_client(version), "a.test")["version"] == {
        ssl.TLSVersion.TLSv1: "TLSv1", ssl.TLSVersion.TLSv1_1: "TLSv1.1"}[version]
    with pytest.raises(ssl.SSLError):
        fetch(listener, old_protocol_client(version), "a.test")


def test_cbc_suite_is_refused_on_tls12(listener: int, permissive_server: int) -> None:
    assert fetch(permissive_server, cbc_client(), "a.test")["cipher"] == "ECDHE-ECDSA-AES128-SHA256"
    with pytest.raises(ssl.SSLError):
        fetch(listener, cbc_client(), "a.test")


def test_policy_options_on_listening_and_certificate_contexts(
        listener_certs: list[tls.LoadedCertificate]) -> None:
    server = tls.ServerTLS(listener_certs)
    contexts = [server.context, *server._active.contexts]
    for ctx in contexts:
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
        assert ctx.options & ssl.OP_NO_COMPRESSION
        assert ctx.options & ssl.OP_NO_RENEGOTIATION
        assert not ctx.options & ssl.OP_NO_TICKET  # session tickets on (issue 15)
        assert not ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE
        suites = {(c["protocol"], c["name"]) for c in ctx.get_ciphers()}
        assert {name for version, name in suites if version == "TLSv1.2"} == set(
            tls.TLS12_CIPHERS.split(":"))
        assert {name for version, name in suites if version == "TLSv1.3"} == {
            "TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}


# --------------------------------------------------------------------------- curl

@pytest.mark.parametrize(("name", "served"), [
    ("a.test", "a.test"), ("b.test", "b.test"), ("x.w.test", "*.w.test")])
def test_curl_with_cacert_verifies_the_certificate_for_each_name(
        listener: int, ca: trustme.CA, tmp_path: Path, name: str, served: str) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    done = subprocess.run(
        # --http1.1: this test server answers HTTP/1.1 whatever ALPN chose
        [CURL, "-sS", "-v", "--http1.1", "--max-time", "10", "--cacert", str(ca_file),
         "--resolve", f"{name}:{listener}:127.0.0.1", f"https://{name}:{listener}/"],
        capture_output=True, timeout=20)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"ok"
    assert f'subjectAltName: host "{name}" matched cert\'s "{served}"'.encode() in done.stderr


def test_curl_rejects_the_default_certificate_served_to_an_unknown_name(
        listener: int, ca: trustme.CA, tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    done = subprocess.run(
        [CURL, "-sS", "--max-time", "10", "--cacert", str(ca_file),
         "--resolve", f"c.test:{listener}:127.0.0.1", f"https://c.test:{listener}/"],
        capture_output=True, timeout=20)
    assert done.returncode == 60  # CURLE_PEER_FAILED_VERIFICATION: the name is not in a.test's


# --------------------------------------------------------------------------- reload, timeout

def test_reload_swaps_certificates_on_the_same_context_and_port(
        tmp_path: Path, ca: trustme.CA, listener_certs: list[tls.LoadedCertificate]) -> None:
    server = tls.ServerTLS(listener_certs[:1])
    context = server.context
    with serving(context) as port:
        assert fetch(port, client_context(), "b.test")["names"] == ["a.test"]
        server.reload([listener_certs[1], listener_certs[2]])
        assert server.context is context
        assert fetch(port, client_context(ca), "b.test")["names"] == ["b.test"]
        assert fetch(port, client_context(), None)["names"] == ["b.test"]
        assert fetch(port, client_context(ca), "z.w.test")["names"] == ["*.w.test"]


def test_failed_reload_keeps_the_running_certificates(
        listener_certs: list[tls.LoadedCertificate], tmp_path: Path) -> None:
    server = tls.ServerTLS(listener_certs)
    gone = tls.LoadedCertificate(
        source=Certificate(tmp_path / "gone.pem", tmp_path / "gone.key"), names=("g.test",),
        subject="CN=g.test", not_after=NOW, fingerprint="")
    for bad in ([], [gone]):
        with pytest.raises(ConfigError):
            server.reload(bad)
    assert server.certificates == tuple(listener_certs)
    assert server.select("b.test") is listener_certs[1]


def test_silent_client_is_dropped_after_the_handshake_timeout_while_others_complete(
        listener_certs: list[tls.LoadedCertificate], ca: trustme.CA) -> None:
    server = tls.ServerTLS(listener_certs, handshake_timeout=1.0)
    with serving(server.context, server.handshake_timeout) as port:
        connected = time.monotonic()
        silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
        # Twenty clients that never send a ClientHello do not stop this one.
        assert fetch(port, client_context(ca), "a.test")["body"].endswith(b"ok")
        for sock in silent:  # ... and they were all still waiting when it finished
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
        for sock in silent:
            sock.settimeout(5)
            try:
                assert sock.recv(1) == b""
            except ConnectionResetError:
                pass
            sock.close()
        assert time.monotonic() - connected >= 0.9


def test_default_handshake_timeout_is_ten_seconds(
        listener_certs: list[tls.LoadedCertificate]) -> None:
    assert tls.HANDSHAKE_TIMEOUT == 10.0
    assert tls.ServerTLS(listener_certs).handshake_timeout == 10.0


# --------------------------------------------------------------------------- key-exchange groups

GROUPS_SERVER = r"""
import asyncio, os, sys
from pathlib import Path
print("boot", os.getpid(), flush=True)
import uvloop
from proxy import tls
from proxy.config import Certificate
tls.ensure_openssl_groups_config(Path(sys.argv[1]))
server = tls.ServerTLS([tls.load_certificate(Certificate(Path(sys.argv[2]), Path(sys.argv[3])))])
async def main():
    loop = asyncio.get_running_loop()
    listening = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, ssl=server.context,
                                         ssl_handshake_timeout=5)
    print("groups", server.groups_policy_in_effect(), flush=True)
    print("port", listening.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
uvloop.run(main())
"""


@pytest.fixture(scope="module", params=["policy", "operator"])
def groups_server(request: pytest.FixtureRequest, ca: trustme.CA,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The groups policy lives in OpenSSL's process-wide config, so: a server process of its own.
    "operator" has OPENSSL_CONF pointing at an (empty) file of the operator's: no policy."""
    folder = tmp_path_factory.mktemp(request.param)
    # RSA: on TLS 1.2 an ECDSA certificate's curve must also be in the client's group list.
    source = write_leaf(folder, "rsa", ca.issue_cert("a.test", key_type=trustme.KeyType.RSA))
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENSSL_CONF", "CLBSCF_PROXY_OPENSSL_REEXEC")}
    if request.param == "operator":
        (folder / "operator.cnf").write_text("# the operator's own OpenSSL config\n")
        env["OPENSSL_CONF"] = str(folder / "operator.cnf")
    proc = subprocess.Popen(
        [sys.executable, "-c", GROUPS_SERVER, str(folder / "state"), str(source.cert),
         str(source.key)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=env, cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout is not None and proc.stdin is not None
    lines: list[str] = []
    try:
        while not lines or not lines[-1].startswith("port"):
            line = proc.stdout.readline().decode()
            assert line, f"server exited: {proc.communicate(timeout=5)[1].decode()}"
            lines.append(line.strip())
        yield {"kind": request.param, "lines": lines, "port": int(lines[-1].split()[1])}
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        assert proc.stderr is not None
        proc.stderr.close()


def group_handshake(port: int, group: str, version: ssl.TLSVersion) -> bool:
    ctx = client_context()
    ctx.minimum_version = ctx.maximum_version = version
    ctx.set_ecdh_curve(group)  # the client offers this one group only
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="a.test"):
                return True
    except ssl.SSLError:
        return False


VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("group", ["X25519", "prime256v1", "secp384r1"])
def test_intermediate_groups_are_accepted(groups_server: dict[str, Any], group: str,
                                          version: ssl.TLSVersion) -> None:
    assert group_handshake(groups_server["port"], group, version)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("group", ["X448", "secp521r1"])
def test_x448_and_p521_are_refused_only_under_the_groups_policy(
        groups_server: dict[str, Any], group: str, version: ssl.TLSVersion) -> None:
    # "operator" is the control: the same client gets through when the policy is not in effect.
    expect = groups_server["kind"] == "operator"
    assert group_handshake(groups_server["port"], group, version) is expect


def test_groups_config_reexecs_once_and_the_self_check_agrees(
        groups_server: dict[str, Any]) -> None:
    lines = groups_server["lines"]
    boots = [line for line in lines if line.startswith("boot")]
    if groups_server["kind"] == "policy":
        assert len(boots) == 2 and boots[0] == boots[1]  # execv: same pid, started twice
        assert "groups True" in lines
    else:  # the operator's OPENSSL_CONF is left alone: no re-exec, and the check says so
        assert len(boots) == 1
        assert "groups False" in lines


class ExecCalled(Exception):
    pass


@pytest.fixture()
def fake_execv(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    calls: list[list[str]] = []

    def execv(path: str, argv: list[str]) -> None:
        calls.append([path, *argv])
        raise ExecCalled

    monkeypatch.setattr(tls.os, "execv", execv)
    monkeypatch.delenv("OPENSSL_CONF", raising=False)
    monkeypatch.delenv("CLBSCF_PROXY_OPENSSL_REEXEC", raising=False)
    return calls


def test_groups_config_is_written_and_the_process_reexecuted(
        tmp_path: Path, fake_execv: list[list[str]]) -> None:
    with pytest.raises(ExecCalled):
        tls.ensure_openssl_groups_config(tmp_path)
    conf = tmp_path / "openssl.cnf"
    assert "Groups = X25519:P-256:P-384" in conf.read_text()
    assert os.environ["OPENSSL_CONF"] == str(conf)
    assert fake_execv == [[sys.executable, sys.executable, *sys.orig_argv[1:]]]


def test_groups_config_already_in_effect_does_not_reexec(
        tmp_path: Path, fake_execv: list[list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENSSL_CONF", str(tmp_path / "openssl.cnf"))
    tls.ensure_openssl_groups_config(tmp_path)
    assert fake_execv == []


def test_operator_openssl_conf_is_respected_with_a_warning(
        tmp_path: Path, fake_execv: list[list[str]], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("OPENSSL_CONF", "/etc/ssl/openssl.cnf")
    with caplog.at_level(logging.WARNING, logger="proxy.error"):
        tls.ensure_openssl_groups_config(tmp_path)
    assert fake_execv == []
    assert "/etc/ssl/openssl.cnf" in caplog.text


def test_unwritable_state_dir_leaves_openssl_defaults_with_a_warning(
        tmp_path: Path, fake_execv: list[list[str]], caplog: pytest.LogCaptureFixture) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with caplog.at_level(logging.WARNING, logger="proxy.error"):
        tls.ensure_openssl_groups_config(not_a_dir)
    assert fake_execv == []
    assert "cannot write" in caplog.text and "OPENSSL_CONF" not in os.environ


# --------------------------------------------------------------------------- loading certificates

def test_names_are_san_dns_lowercased_and_ip_addresses(tmp_path: Path, ca: trustme.CA) -> None:
    loaded = tls.load_certificate(
        write_leaf(tmp_path, "n", ca.issue_cert("Www.Example.TEST", "*.Example.test", "10.0.0.1")))
    assert loaded.names == ("www.example.test", "*.example.test", "10.0.0.1")
    assert loaded.matches("WWW.example.test") and loaded.matches("api.example.test")
    assert loaded.matches("10.0.0.1")
    assert not loaded.matches("example.test") and not loaded.matches("a.b.example.test")


def test_names_fall_back_to_the_subject_cn_without_san(tmp_path: Path) -> None:
    cert = mint(tmp_path, "legacy", cn="Legacy.test", san=None)
    assert tls.load_certificate(cert).names == ("legacy.test",)


def test_certificate_without_any_name_is_a_config_error(tmp_path: Path) -> None:
    cert = mint(tmp_path, "anon", san=None, cn=None)
    with pytest.raises(ConfigError, match="no DNS names"):
        tls.load_certificate(cert)


def test_mismatched_key_is_a_config_error_naming_the_files(tmp_path: Path,
                                                          ca: trustme.CA) -> None:
    one = write_leaf(tmp_path, "one", ca.issue_cert("one.test"))
    two = write_leaf(tmp_path, "two", ca.issue_cert("two.test"))
    with pytest.raises(ConfigError, match="does not match") as caught:
        tls.load_certificate(Certificate(cert=one.cert, key=two.key))
    assert str(one.cert) in str(caught.value) and str(two.key) in str(caught.value)


def test_expired_certificate_is_a_config_error_naming_the_file(tmp_path: Path,
                                                             ca: trustme.CA) -> None:
    leaf = ca.issue_cert("old.test", not_before=NOW - timedelta(days=100),
                         not_after=NOW - timedelta(days=1))
    cert = write_leaf(tmp_path, "old", leaf)
    with pytest.raises(ConfigError, match="expired on") as caught:
        tls.load_certificate(cert)
    assert str(caught.value).startswith(f"{cert.cert}: ")


def test_not_yet_valid_certificate_is_a_config_error(tmp_path: Path) -> None:
    cert = mint(tmp_path, "future", not_before=NOW + timedelta(days=2))
    with pytest.raises(ConfigError, match="not valid before") as caught:
        tls.load_certificate(cert)
    assert str(cert.cert) in str(caught.value)


def test_certificate_expiring_within_14_days_logs_a_warning(
        tmp_path: Path, ca: trustme.CA, caplog: pytest.LogCaptureFixture) -> None:
    expires = (NOW + timedelta(days=5)).replace(microsecond=0)
    cert = write_leaf(tmp_path, "soon", ca.issue_cert("soon.test", not_after=expires))
    with caplog.at_level(logging.WARNING, logger="proxy.error"):
        tls.load_certificate(cert)
    [record] = [r for r in caplog.records if r.name == "proxy.error"]
    assert record.levelno == logging.WARNING
    assert str(cert.cert) in record.getMessage()
    assert expires.strftime("%Y-%m-%dT%H:%M:%SZ") in record.getMessage()


def test_certificate_with_months_left_logs_nothing(
        tmp_path: Path, ca: trustme.CA, caplog: pytest.LogCaptureFixture) -> None:
    cert = write_leaf(tmp_path, "fine", ca.issue_cert("fine.test",
                                                      not_after=NOW + timedelta(days=60)))
    with caplog.at_level(logging.WARNING, logger="proxy.error"):
        tls.load_certificate(cert)
    assert caplog.records == []


def test_chain_through_an_intermediate_loads_in_order(tmp_path: Path, ca: trustme.CA) -> None:
    leaf = ca.create_child_ca().issue_cert("chain.test")
    assert len(leaf.cert_chain_pems) == 2
    assert tls.load_certificate(write_leaf(tmp_path, "chain", leaf)).names == ("chain.test",)


def test_chain_out_of_order_is_a_config_error(tmp_path: Path, ca: trustme.CA) -> None:
    leaf = ca.create_child_ca().issue_cert("chain.test")
    cert = write_leaf(tmp_path, "rev", leaf)
    cert.cert.write_bytes(b"".join(blob.bytes() for blob in reversed(leaf.cert_chain_pems)))
    with pytest.raises(ConfigError, match="not issued by certificate 2") as caught:
        tls.load_certificate(cert)
    assert str(cert.cert) in str(caught.value)


def test_chain_with_a_same_named_impostor_issuer_fails_the_signature_check(
        tmp_path: Path) -> None:
    real_key, fake_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    impostor = self_signed_ca("Same CA", fake_key)
    cert = mint(tmp_path, "forged", issuer=(impostor.subject, real_key), extra=[impostor])
    with pytest.raises(ConfigError, match="signature does not verify"):
        tls.load_certificate(cert)


@pytest.mark.parametrize("content", [b"", b"not a certificate\n",
                                     b"-----BEGIN CERTIFICATE-----\nAA"])
def test_unparsable_certificate_file_is_a_config_error_naming_it(tmp_path: Path, ca: trustme.CA,
                                                                content: bytes) -> None:
    cert = write_leaf(tmp_path, "bad", ca.issue_cert("bad.test"))
    cert.cert.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        tls.load_certificate(cert)
    assert str(caught.value).startswith(f"{cert.cert}: ")


def test_unparsable_or_missing_key_file_is_a_config_error_naming_it(tmp_path: Path,
                                                                   ca: trustme.CA) -> None:
    cert = write_leaf(tmp_path, "k", ca.issue_cert("k.test"))
    cert.key.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="no usable PEM private key") as caught:
        tls.load_certificate(cert)
    assert str(cert.key) in str(caught.value)
    cert.key.unlink()
    with pytest.raises(ConfigError, match="cannot read key file") as caught:
        tls.load_certificate(cert)
    assert str(cert.key) in str(caught.value)


def test_encrypted_key_is_a_config_error(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = mint(tmp_path, "enc", key=key)
    cert.key.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(ConfigError, match="encrypted"):
        tls.load_certificate(cert)


@pytest.mark.parametrize(("key", "message"), [
    (lambda: rsa.generate_private_key(65537, 1024), "RSA key of 1024 bits"),
    (lambda: ec.generate_private_key(ec.SECP521R1()), "secp521r1"),
])
def test_weak_or_off_policy_keys_are_config_errors(tmp_path: Path, key: Any,
                                                   message: str) -> None:
    cert = mint(tmp_path, "weak", key=key())
    with pytest.raises(ConfigError, match=message) as caught:
        tls.load_certificate(cert)
    assert str(cert.key) in str(caught.value)


def test_rsa_2048_certificate_loads(tmp_path: Path, ca: trustme.CA) -> None:
    leaf = ca.issue_cert("rsa.test", key_type=trustme.KeyType.RSA)
    assert tls.load_certificate(write_leaf(tmp_path, "rsa", leaf)).names == ("rsa.test",)


def test_client_auth_only_certificate_is_a_config_error(tmp_path: Path) -> None:
    cert = mint(tmp_path, "client", eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    with pytest.raises(ConfigError, match="serverAuth"):
        tls.load_certificate(cert)


def test_server_tls_without_certificates_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="at least one certificate"):
        tls.ServerTLS([])


# --------------------------------------------------------------------------- one check for all
# load_certificates is what start-up, reload and --check-config run (issue 14): the same
# checks, errors naming the certificate's field path and its file.

WHERE = "rules.toml: listener[1].certificates"


def test_listener_certificates_load_with_their_serving_contexts(tmp_path: Path,
                                                                ca: trustme.CA) -> None:
    certs = [write_leaf(tmp_path, stem, ca.issue_cert(f"{stem}.test")) for stem in "ab"]
    loaded = tls.load_certificates(certs, WHERE)
    assert [c.names for c in loaded] == [("a.test",), ("b.test",)]
    assert all(isinstance(c.context, ssl.SSLContext) for c in loaded)
    assert loaded[0] == tls.load_certificate(certs[0])  # the context is not part of equality
    server = tls.ServerTLS(loaded)
    assert server.select("b.test") is loaded[1]


def test_listener_certificate_with_another_certificates_key_names_the_key_field(
        tmp_path: Path, ca: trustme.CA) -> None:
    good = write_leaf(tmp_path, "good", ca.issue_cert("good.test"))
    other = write_leaf(tmp_path, "other", ca.issue_cert("other.test"))
    with pytest.raises(ConfigError) as caught:
        tls.load_certificates([good, Certificate(cert=good.cert, key=other.key)], WHERE)
    assert str(caught.value) == (f"{WHERE}[1].key: {other.key}: private key does not match "
                                 f"the certificate in {good.cert}")


def test_expired_listener_certificate_names_the_cert_field(tmp_path: Path,
                                                           ca: trustme.CA) -> None:
    old = write_leaf(tmp_path, "old", ca.issue_cert(
        "old.test", not_before=NOW - timedelta(days=100), not_after=NOW - timedelta(days=1)))
    with pytest.raises(ConfigError) as caught:
        tls.load_certificates([old], WHERE)
    message = str(caught.value)
    assert message.startswith(f"{WHERE}[0].cert: {old.cert}: certificate 1 (")
    assert " expired on " in message


def test_unreadable_key_of_a_listener_certificate_names_the_key_field(tmp_path: Path,
                                                                      ca: trustme.CA) -> None:
    cert = write_leaf(tmp_path, "k", ca.issue_cert("k.test"))
    cert.key.unlink()
    with pytest.raises(ConfigError, match=r"^rules\.toml: listener\[1\]\.certificates\[0\]"
                                          r"\.key: .*cannot read key file"):
        tls.load_certificates([cert], WHERE)


def test_config_certificates_walks_the_https_listeners_with_their_field_paths(
        tmp_path: Path, ca: trustme.CA) -> None:
    from proxy.config import Config, Listener

    good = write_leaf(tmp_path, "good", ca.issue_cert("good.test"))
    other = write_leaf(tmp_path, "other", ca.issue_cert("other.test"))
    listeners = (Listener(name="plain", protocol="HTTP", port=80),
                 Listener(name="tls", protocol="HTTPS", port=443, certificates=(good,)))
    config = Config(listeners=listeners, functions=(), scf=None,
                    source=tmp_path / "rules.toml")
    assert [c.names for c in tls.config_certificates(config)["tls"]] == [("good.test",)]
    assert "plain" not in tls.config_certificates(config)
    bad = Listener(name="tls", protocol="HTTPS", port=443,
                   certificates=(good, Certificate(cert=good.cert, key=other.key)))
    with pytest.raises(ConfigError, match=r"^rules\.toml: listener\[1\]\.certificates\[1\]"
                                          r"\.key: "):
        tls.config_certificates(Config(listeners=(listeners[0], bad), functions=(), scf=None,
                                       source=tmp_path / "rules.toml"))
    with pytest.raises(ConfigError, match=r"^<command line>: listener\[0\]\.certificates"):
        tls.config_certificates(Config(listeners=(bad,), functions=(), scf=None))


# --------------------------------------------------------------------------- SNI table (pure)

TABLE = tls.SniTable([("a.test", "10.0.0.1"), ("b.test", "*.w.test"), ("*.w.test", "x.w.test")])


@pytest.mark.parametrize(("name", "index"), [
    ("a.test", 0), ("A.Test", 0), ("a.test.", 0), ("b.test", 1),
    ("y.w.test", 1),  # two certificates claim *.w.test: the first listed wins
    ("x.w.test", 2),  # an exact name beats a wildcard, whatever the order
    ("10.0.0.1", 0),
])
def test_sni_table_lookup(name: str, index: int) -> None:
    assert TABLE.lookup(name) == index


@pytest.mark.parametrize("name", ["w.test", "a.b.w.test", ".w.test", "c.test", "", "*.w.test2"])
def test_sni_table_misses_fall_back_to_the_first_certificate(name: str) -> None:
    assert TABLE.select(name) == 0


def test_sni_table_exact_name_beats_a_wildcard_listed_earlier() -> None:
    table = tls.SniTable([("*.w.test",), ("x.w.test",)])
    assert table.select("x.w.test") == 1
    assert table.select("y.w.test") == 0
    assert table.select(None) == 0


def test_sni_table_remembers_its_choices_up_to_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    table = tls.SniTable([("a.test",), ("*.w.test",)])
    monkeypatch.setattr(tls, "SNI_CACHE_MAX", 3)
    looked: list[str] = []
    keys = tls._lookup_keys
    monkeypatch.setattr(tls, "_lookup_keys", lambda name: looked.append(name) or keys(name))
    assert [table.select(n) for n in ("x.w.test", "x.w.test", "A.test", "A.test")] == [1, 1, 0, 0]
    assert looked == ["x.w.test", "A.test"]  # asked once per name as sent
    for name in ("n1.test", "n2.test", "n3.test", "n4.test"):  # scanner-made names
        assert table.select(name) == 0
    assert len(table._chosen) <= 3
    assert table.select("x.w.test") == 1  # forgotten and found again the same


# --------------------------------------------------------------------------- dev certificate

def test_dev_certificate_is_generated_with_a_private_key_file(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="proxy.error"):
        cert = tls.ensure_dev_certificate(tmp_path)
    assert cert == Certificate(tmp_path / "devcert" / "cert.pem", tmp_path / "devcert" / "key.pem")
    assert stat.S_IMODE(cert.key.stat().st_mode) == 0o600
    leaf = x509.load_pem_x509_certificate(cert.cert.read_bytes())
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= timedelta(days=90, hours=1)
    loaded = tls.load_certificate(cert)
    assert loaded.names == ("localhost", "127.0.0.1", "::1")
    assert "generated" in caplog.text and str(cert.cert) in caplog.text
    assert "development" in caplog.text


def test_dev_certificate_is_reused_on_the_next_call(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = tls.ensure_dev_certificate(tmp_path)
    pem = first.cert.read_bytes()
    with caplog.at_level(logging.WARNING, logger="proxy.error"):
        again = tls.ensure_dev_certificate(tmp_path)
    assert again == first and again.cert.read_bytes() == pem
    assert "using the self-signed development certificate" in caplog.text


def test_dev_certificate_with_14_days_or_less_left_is_replaced(tmp_path: Path) -> None:
    pem = tls.ensure_dev_certificate(tmp_path).cert.read_bytes()
    later = datetime.now(UTC) + timedelta(days=80)  # 10 days left
    again = tls.ensure_dev_certificate(tmp_path, now=later)
    assert again.cert.read_bytes() != pem
    assert tls.load_certificate(again, now=later).not_after > later + timedelta(days=89)


def test_damaged_dev_certificate_is_replaced(tmp_path: Path) -> None:
    cert = tls.ensure_dev_certificate(tmp_path)
    pem = cert.cert.read_bytes()
    cert.key.write_bytes(b"junk")
    again = tls.ensure_dev_certificate(tmp_path)
    assert again.cert.read_bytes() != pem
    tls.load_certificate(again)


def test_reused_dev_key_gets_its_private_mode_back(tmp_path: Path) -> None:
    cert = tls.ensure_dev_certificate(tmp_path)
    pem = cert.cert.read_bytes()
    cert.key.chmod(0o644)
    again = tls.ensure_dev_certificate(tmp_path)
    assert again.cert.read_bytes() == pem
    assert stat.S_IMODE(again.key.stat().st_mode) == 0o600


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_client_trusting_the_dev_certificate_connects(tmp_path: Path, host: str) -> None:
    cert = tls.ensure_dev_certificate(tmp_path)
    server = tls.ServerTLS([tls.load_certificate(cert)])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cert.cert)
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT  # Python 3.13 clients turn this on
    with serving(server.context) as port:
        assert fetch(port, ctx, host)["names"] == ["localhost"]


def test_default_state_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setenv("CLBSCF_PROXY_STATE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert tls.default_state_dir() == tmp_path / "explicit"
    monkeypatch.delenv("CLBSCF_PROXY_STATE")
    assert tls.default_state_dir() == tmp_path / "xdg" / "clbscf-proxy"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert tls.default_state_dir() == tmp_path / "home" / ".local" / "state" / "clbscf-proxy"


def test_hsts_header_is_mozillas_two_years() -> None:
    assert tls.hsts_header() == ("Strict-Transport-Security", "max-age=63072000")
    assert tls.hsts_header(0) == ("Strict-Transport-Security", "max-age=0")
    with pytest.raises(ValueError):
        tls.hsts_header(-1)
