"""The TLS policy of HTTPS listeners through the real proxy (issue 15 item 3), with openssl
s_client and Python's ssl as clients: ssl_protocols and ssl_ciphers from the listener's keys
and from custom_config, TLS 1.0/1.1 when chosen, session resumption (tickets, and the session
cache when tickets are off), and --check-config refusing what start-up refuses."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.configs import function, listener, scf_rule
from tests.proxyproc import ProxyProcess

ROOT = Path(__file__).resolve().parents[2]
REQUEST = "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Path:
    tmp = tmp_path_factory.mktemp("tls-policy")
    leaf = ca.issue_cert("localhost")
    leaf.cert_chain_pems[0].write_to_path(tmp / "server.pem")
    leaf.private_key_pem.write_to_path(tmp / "server.key")
    ca.cert_pem.write_to_path(tmp / "ca.pem")
    return tmp


def _https(name: str, folder: Path, **keys: object) -> str:
    cert, key = folder / "server.pem", folder / "server.key"
    return (listener(name, "HTTPS", **keys)
            + f'certificates = [{{ cert = "{cert}", key = "{key}" }}]\n'
            + scf_rule("localhost", "/", "hello"))


@pytest.fixture(scope="module")
def proxy(folder: Path) -> Iterator[ProxyProcess]:
    config = (_https("default", folder)
              + _https("old", folder, custom_config="ssl_protocols TLSv1 TLSv1.1 TLSv1.2;")
              + _https("tls12", folder, ssl_protocols=["TLSv1.2"],
                       ssl_ciphers="ECDHE-ECDSA-AES256-GCM-SHA384")
              + _https("cc", folder, custom_config='ssl_protocols TLSv1.2 TLSv1.3; '
                                                   'ssl_ciphers "ECDHE-ECDSA-CHACHA20-POLY1305";')
              + _https("notickets", folder, ssl_session_tickets=False)
              + function("hello", "ping"))
    with ProxyProcess.with_config(config, folder, "--state-dir", str(folder / "state")) as proc:
        yield proc


def s_client(proxy: ProxyProcess, name: str, folder: Path, *extra: str
             ) -> subprocess.CompletedProcess[str]:
    args = ["openssl", "s_client", "-connect", f"127.0.0.1:{proxy.port(name)}",
            "-servername", "localhost", "-CAfile", str(folder / "ca.pem"), "-ign_eof", *extra]
    return subprocess.run(args, input=REQUEST, capture_output=True, text=True, timeout=30)


def served(done: subprocess.CompletedProcess[str]) -> bool:
    return "HTTP/1.1 200 OK" in done.stdout


@pytest.mark.parametrize("version", ["-tls1", "-tls1_1"])
def test_tls1_and_tls11_only_where_chosen(proxy: ProxyProcess, folder: Path,
                                          version: str) -> None:
    # the client needs security level 0 for them too (OpenSSL 3)
    old = s_client(proxy, "old", folder, version, "-cipher", "DEFAULT:@SECLEVEL=0")
    assert served(old), old.stdout + old.stderr
    assert "Protocol  : TLSv1" in old.stdout
    refused = s_client(proxy, "default", folder, version, "-cipher", "DEFAULT:@SECLEVEL=0")
    assert not served(refused)


def test_the_default_speaks_tls12_and_tls13_with_mozillas_suites(proxy: ProxyProcess,
                                                                 folder: Path) -> None:
    for version in ("-tls1_2", "-tls1_3"):
        assert served(s_client(proxy, "default", folder, version))
    cbc = s_client(proxy, "default", folder, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256")
    assert not served(cbc)


def test_ssl_protocols_and_ssl_ciphers_keys(proxy: ProxyProcess, folder: Path) -> None:
    assert not served(s_client(proxy, "tls12", folder, "-tls1_3"))
    done = s_client(proxy, "tls12", folder, "-tls1_2")
    assert served(done) and "Cipher is ECDHE-ECDSA-AES256-GCM-SHA384" in done.stdout
    other = s_client(proxy, "tls12", folder, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")
    assert not served(other)


def test_ssl_ciphers_from_custom_config(proxy: ProxyProcess, folder: Path) -> None:
    done = s_client(proxy, "cc", folder, "-tls1_2")
    assert served(done) and "Cipher is ECDHE-ECDSA-CHACHA20-POLY1305" in done.stdout


@pytest.mark.parametrize("name", ["default", "notickets"])
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_a_second_connection_resumes_the_session(proxy: ProxyProcess, folder: Path,
                                                 name: str, version: str) -> None:
    session = folder / f"{name}{version}.sess"
    first = s_client(proxy, name, folder, version, "-sess_out", str(session))
    assert served(first) and "New, TLSv1." in first.stdout
    again = s_client(proxy, name, folder, version, "-sess_in", str(session))
    assert served(again)
    assert "Reused, TLSv1." in again.stdout, again.stdout


def test_tickets_are_sent_unless_turned_off(proxy: ProxyProcess, folder: Path) -> None:
    # TLS 1.2: a NewSessionTicket (RFC 5077) only with tickets on; off, the session id resumes
    with_tickets = s_client(proxy, "default", folder, "-tls1_2")
    assert "TLS session ticket lifetime hint" in with_tickets.stdout
    without = s_client(proxy, "notickets", folder, "-tls1_2")
    assert served(without) and "TLS session ticket lifetime hint" not in without.stdout


def test_python_clients_resume_too(proxy: ProxyProcess, ca: trustme.CA) -> None:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    session = None
    reused = []
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", proxy.port("default")), timeout=20) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as sock:
                sock.sendall(REQUEST.encode())
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
                assert data.startswith(b"HTTP/1.1 200 OK")
                reused.append(sock.session_reused)
                session = sock.session
    assert reused == [False, True, True]


def test_python_tls1_client_is_served_where_chosen(proxy: ProxyProcess, ca: trustme.CA) -> None:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with socket.create_connection(("127.0.0.1", proxy.port("old")), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
            assert sock.version() == "TLSv1"


def _run(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy.cli", *args, "--state-dir",
                           str(folder / "state"), "--no-access-log"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.mark.parametrize(("keys", "message"), [
    ({"ssl_mode": "MUTUAL"}, 'listener[0].client_ca: is required with ssl_mode = "MUTUAL"'),
    ({"ssl_mode": "MUTUAL", "client_ca": "garbage.pem"},
     "listener[0].client_ca: {folder}/garbage.pem: no PEM certificate in the file"),
    ({"ssl_protocols": ["TLSv1", "TLSv1.1"], "ssl_ciphers": "ECDHE-ECDSA-AES128-GCM-SHA256"},
     "listener[0].ssl_ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256:@SECLEVEL=0' has no suite"),
])
def test_check_config_refuses_what_start_up_refuses(tmp_path: Path, folder: Path,
                                                    keys: dict[str, object],
                                                    message: str) -> None:
    (tmp_path / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnope\n")
    path = tmp_path / "rules.toml"
    path.write_text(_https("bad", folder, **keys) + function("hello", "ping"))
    expected = "rules.toml: " + message.format(folder=tmp_path)
    checked = _run(tmp_path, "--check-config", str(path))
    assert checked.returncode == 2 and expected in checked.stderr, checked.stderr
    started = _run(tmp_path, "--config", str(path))
    assert started.returncode == 2 and expected in started.stderr, started.stderr
