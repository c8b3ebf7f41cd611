"""A SIGHUP reload that changes an HTTPS listener's TLS policy (issue 15): new connections get
the new policy (here mutual TLS turned on), sessions made before are not resumed under it; a
reload that keeps the policy keeps resumption. Through the real proxy, one process and two
workers."""

from __future__ import annotations

import signal
import socket
import ssl
import time
from pathlib import Path

import pytest
import trustme

from tests.configs import function, listener, scf_rule
from tests.proxyproc import ProxyProcess

REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def config(folder: Path, **keys: object) -> str:
    cert, key = folder / "server.pem", folder / "server.key"
    return (listener("tls", "HTTPS", **keys)
            + f'certificates = [{{ cert = "{cert}", key = "{key}" }}]\n'
            + scf_rule("localhost", "/", "hello") + function("hello", "ping"))


def get(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None
        ) -> tuple[bytes, ssl.SSLSession | None, bool]:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as sock:
            sock.sendall(REQUEST)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            return data, sock.session, sock.session_reused


def reload(proxy: ProxyProcess, path: Path, text: str, done: str) -> None:
    seen = proxy.stderr.count(done)
    path.write_text(text)
    assert proxy.proc is not None
    proxy.proc.send_signal(signal.SIGHUP)
    proxy.wait_for_log(done, timeout=30)
    for _ in range(600):  # the line for this reload, not an earlier one
        if proxy.stderr.count(done) > seen:
            return
        time.sleep(0.05)
    raise AssertionError(proxy.stderr)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_reload_turns_mutual_tls_on_for_new_connections(tmp_path: Path, ca: trustme.CA,
                                                          workers: int) -> None:
    leaf = ca.issue_cert("localhost")
    leaf.cert_chain_pems[0].write_to_path(tmp_path / "server.pem")
    leaf.private_key_pem.write_to_path(tmp_path / "server.key")
    clients = trustme.CA()
    clients.cert_pem.write_to_path(tmp_path / "clients.pem")
    done = "config reloaded" if workers == 1 else "config applied to 2 workers"
    extra = ["--workers", str(workers)] if workers > 1 else []
    with ProxyProcess.with_config(config(tmp_path), tmp_path, "--state-dir",
                                  str(tmp_path / "state"), *extra) as proxy:
        port = proxy.port("tls")
        plain = ssl.create_default_context()
        ca.configure_trust(plain)
        plain.maximum_version = ssl.TLSVersion.TLSv1_2  # session ids: resumption is visible
        answer, session, _ = get(port, plain)
        assert answer.startswith(b"HTTP/1.1 200 OK")
        if workers == 1:  # the same policy again: sessions survive the reload
            reload(proxy, tmp_path / "rules.toml", config(tmp_path, keepalive_timeout=70), done)
            answer, session, reused = get(port, plain, session)
            assert reused and answer.startswith(b"HTTP/1.1 200 OK")
        reload(proxy, tmp_path / "rules.toml",
               config(tmp_path, ssl_mode="MUTUAL", client_ca=str(tmp_path / "clients.pem")),
               done)
        answer, _, reused = get(port, plain, session)
        assert not reused, "a session of the old policy was resumed under the new one"
        assert answer.startswith(b"HTTP/1.1 400 Bad Request")
        assert b"No required SSL certificate was sent" in answer
        with_cert = ssl.create_default_context()
        ca.configure_trust(with_cert)
        clients.issue_cert("alice@clients.test").configure_cert(with_cert)
        answer, _, _ = get(port, with_cert)
        assert answer.startswith(b"HTTP/1.1 200 OK")
