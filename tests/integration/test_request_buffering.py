"""proxy_request_buffering through the real proxy, against a stdlib wsgiref upstream (which
reads only Content-Length): a chunked upload arrives whole with Content-Length; a large body
is spooled to a temp file under the state folder that is gone afterwards; an over-limit
chunked body gets 413 and the upstream sees nothing; ``off`` streams as before."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.configs import listener
from tests.proxyproc import ProxyProcess
from tests.wsgiupstream import WsgiUpstream


def _config(address: str, **knobs: object) -> str:
    return listener("web", **knobs) + f"""
  [[listener.rule]]
  domain = "up.test"
  url = "/"
  health_check = {{ enabled = false }}
  targets = [{{ type = "CVM", address = "{address}" }}]
"""


@pytest.fixture
def up() -> Iterator[WsgiUpstream]:
    with WsgiUpstream() as server:
        yield server


def _start(tmp_path: Path, address: str, **knobs: object) -> ProxyProcess:
    state = tmp_path / "state"
    return ProxyProcess.with_config(_config(address, **knobs), tmp_path,
                                    env={"CLBSCF_PROXY_STATE": str(state)})


def _pieces(total: int, size: int = 10_000) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        piece = bytes((sent + i) % 251 for i in range(min(size, total - sent)))
        sent += len(piece)
        yield piece


def _expected(total: int) -> str:
    return hashlib.sha256(b"".join(_pieces(total))).hexdigest()


def _spool_fds(pid: int, spool: Path) -> list[str]:
    """The proxy's open files in the spool folder (unlinked ones end in " (deleted)")."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(spool)):
            out.append(target)
    return out


def test_chunked_upload_reaches_wsgiref_whole_with_content_length(tmp_path: Path,
                                                                   up: WsgiUpstream) -> None:
    with _start(tmp_path, up.address) as proxy:
        url = f"http://127.0.0.1:{proxy.port()}/upload"
        # requests sends a generator body chunked, by itself
        resp = requests.post(url, data=_pieces(30_000), headers={"Host": "up.test"},
                             timeout=30)
        assert resp.status_code == 200
        seen = resp.json()
        assert seen["transfer_encoding"] == ""
        assert seen["content_length"] == "30000"
        assert seen["length"] == 30_000 and seen["sha256"] == _expected(30_000)
        # a body larger than the memory buffer: spooled, then sent with Content-Length
        resp = requests.post(url, data=_pieces(1_000_000), headers={"Host": "up.test"},
                             timeout=60)
        assert resp.json()["length"] == 1_000_000
        assert resp.json()["sha256"] == _expected(1_000_000)
        assert resp.json()["content_length"] == "1000000"


def test_large_body_is_spooled_to_a_temp_file_that_is_gone_afterwards(
        tmp_path: Path, up: WsgiUpstream) -> None:
    spool = tmp_path / "state" / "client_body_temp"
    with _start(tmp_path, up.address) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port()), timeout=30) as sock:
            sock.sendall(b"POST /big HTTP/1.1\r\nHost: up.test\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            first = b"x" * 200_000
            sock.sendall(b"%x\r\n%s\r\n" % (len(first), first))
            deadline = time.monotonic() + 20
            while not _spool_fds(proxy.pid, spool) and time.monotonic() < deadline:
                time.sleep(0.05)
            held = _spool_fds(proxy.pid, spool)
            assert held and all(path.endswith("(deleted)") for path in held), held
            assert list(spool.iterdir()) == []  # unlinked at once: nothing a crash could leave
            assert up.requests == []  # nothing upstream before the body is whole
            sock.sendall(b"5\r\nhello\r\n0\r\n\r\n")
            reply = b""
            while b"}" not in reply:
                data = sock.recv(65536)
                if not data:
                    break
                reply += data
        assert reply.startswith(b"HTTP/1.1 200")
        assert up.requests[0]["length"] == 200_005
        assert up.requests[0]["content_length"] == "200005"
        deadline = time.monotonic() + 20
        while _spool_fds(proxy.pid, spool) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _spool_fds(proxy.pid, spool) == []


def test_client_gone_mid_upload_leaves_no_file_and_nothing_upstream(
        tmp_path: Path, up: WsgiUpstream) -> None:
    spool = tmp_path / "state" / "client_body_temp"
    with _start(tmp_path, up.address) as proxy:
        sock = socket.create_connection(("127.0.0.1", proxy.port()), timeout=30)
        sock.sendall(b"POST /gone HTTP/1.1\r\nHost: up.test\r\nContent-Length: 500000\r\n\r\n"
                     + b"y" * 300_000)
        deadline = time.monotonic() + 20
        while not _spool_fds(proxy.pid, spool) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _spool_fds(proxy.pid, spool)
        sock.close()
        deadline = time.monotonic() + 20
        while _spool_fds(proxy.pid, spool) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _spool_fds(proxy.pid, spool) == []
        assert up.requests == []


def test_over_limit_chunked_body_gets_413_and_the_upstream_sees_nothing(
        tmp_path: Path, up: WsgiUpstream) -> None:
    with _start(tmp_path, up.address, client_max_body_size=50_000) as proxy:
        resp = requests.post(f"http://127.0.0.1:{proxy.port()}/upload",
                             data=_pieces(200_000), headers={"Host": "up.test"}, timeout=30)
        assert resp.status_code == 413
        time.sleep(0.5)  # give a wrongly forwarded request time to arrive
        assert up.requests == []
        resp = requests.post(f"http://127.0.0.1:{proxy.port()}/upload",
                             data=_pieces(40_000), headers={"Host": "up.test"}, timeout=30)
        assert resp.status_code == 200 and resp.json()["length"] == 40_000


def test_off_streams_chunked_as_the_client_sent_it(tmp_path: Path, up: WsgiUpstream) -> None:
    with _start(tmp_path, up.address, proxy_request_buffering=False) as proxy:
        resp = requests.post(f"http://127.0.0.1:{proxy.port()}/upload",
                             data=_pieces(30_000), headers={"Host": "up.test"}, timeout=30)
        seen = up.requests[0]
        # what buffering exists for: wsgiref reads no chunked body
        assert seen["transfer_encoding"] == "chunked" and seen["length"] == 0
        assert resp.status_code == 200
