"""Issue 15 item 5: HTTPS clients that close (TLS close_notify) while a request is in flight,
or in the middle of a request head, leave no asyncio "returning true from eof_received() has
no effect when using ssl" warning in the error log.

A TLS transport cannot half-close (asyncio closes it after ``eof_received`` whatever the
protocol returns), so the connection returns None there; plain TCP keeps the half-close
(answer what was asked, then close), which the last test checks through the real proxy too.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.configs import listener, rule
from tests.proxyproc import ProxyProcess
from tests.upstreams import Upstream

WARNING = "returning true from eof_received"
CLIENTS = 45
#: logged when SIGTERM arrives: every line before it has been read by then
STOPPED = "stopping: draining"


@pytest.fixture
def proxy(ca: trustme.CA, cvm: Upstream, tmp_path: Path) -> Iterator[ProxyProcess]:
    tmp = tmp_path
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(cert)
    leaf.private_key_pem.write_to_path(key)
    targets = f'[{{ type = "CVM", address = "{cvm.address}" }}]'
    config = (listener("tls", "HTTPS") + f'certificates = [{{ cert = "{cert}", key = "{key}" }}]\n'
              + rule("localhost", "/", targets)
              + listener("plain") + rule("localhost", "/", targets))
    with ProxyProcess.with_config(config, tmp, "--state-dir", str(tmp / "state")) as proc:
        yield proc


def _close_notify_after(port: int, ca: trustme.CA, data: bytes, until: bytes = b"") -> bytes:
    """Handshake, send ``data``, read until ``until`` came (if given), then close_notify (our
    write side only), and read whatever comes back until the server closes: a memory-BIO
    client, so the TCP socket stays open after our close_notify."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        def pump() -> bool:
            if outgoing.pending:
                sock.sendall(outgoing.read())
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                chunk = b""
            if not chunk:
                incoming.write_eof()
                return False
            incoming.write(chunk)
            return True

        def read_some() -> bool:
            nonlocal received
            try:
                received += tls.read(65536)
                return True
            except ssl.SSLWantReadError:
                return pump()
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return False
            except ssl.SSLError as exc:  # after our own close_notify OpenSSL may refuse reads
                if "shutdown" not in str(exc).lower():
                    raise
                return False

        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                assert pump(), "server closed during the handshake"
        tls.write(data)
        sock.sendall(outgoing.read())
        while until not in received:
            assert read_some(), f"closed before {until!r} came: {received!r}"
        try:
            tls.unwrap()  # sends close_notify; the answer to it never comes before EOF
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass
        sock.sendall(outgoing.read())
        while read_some():
            pass
        return received


def test_https_clients_closing_mid_request_leave_no_eof_warning(proxy: ProxyProcess,
                                                                ca: trustme.CA) -> None:
    port = proxy.port("tls")
    kinds = [
        # a request in flight (the upstream answers after 0.3 s)
        (b"GET /slow?head=0.3 HTTP/1.1\r\nHost: localhost\r\n\r\n", b""),
        # half a request head
        (b"GET / HTTP/1.1\r\nHost: loc", b""),
        # a WebSocket tunnel (upgraded, the upstream's first bytes read)
        (b"GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n"
         b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", b"hello\n"),
    ]
    errors: list[BaseException] = []

    def client(data: bytes, until: bytes) -> None:
        try:
            _close_notify_after(port, ca, data, until)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=kinds[i % len(kinds)])
               for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    # the proxy still serves HTTPS, and its error log says nothing of eof_received
    assert _get(port, ca).startswith(b"HTTP/1.1 200 OK")
    proxy.stop()
    proxy.wait_for_log(STOPPED, timeout=30)
    assert WARNING not in proxy.stderr


def _get(port: int, ca: trustme.CA) -> bytes:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            return data


def test_plain_tcp_half_close_still_answers(proxy: ProxyProcess) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port("plain")), timeout=20) as sock:
        sock.sendall(b"GET /slow?head=0.2 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)  # half-close: the answer must still come
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert data.endswith(b"cvm")
