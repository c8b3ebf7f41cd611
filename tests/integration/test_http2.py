"""HTTP/2 through the real proxy (issue 15 item 1): curl --http2, httpx http2=True, h2load and
the h2 library, well-behaved and hostile, over real TLS (ALPN h2) and h2c prior knowledge.

Every hostile case must end in a GOAWAY with its RFC 9113 error code, and the process must go
on serving with its memory bounded (docs/BEHAVIOUR.md §5a)."""

from __future__ import annotations

import hashlib
import json
import signal
import ssl
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import h2.events
import httpx
import pytest
import trustme
from h2.errors import ErrorCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    WindowUpdateFrame,
)

from benchmarks import install
from tests import h2client
from tests.clbcall import clb
from tests.configs import function, listener, rule, scf_rule
from tests.proxyproc import ProxyProcess, memory_kb
from tests.upstreams import Upstream

CURL = "/usr/bin/curl"


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = Upstream("A").start()
    try:
        yield up
    finally:
        up.stop()


@pytest.fixture(scope="module")
def tls_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("h2tls")
    leaf = ca.issue_cert("a.test", "off.test", "*.w.test")
    files = {"cert": tmp / "c.pem", "key": tmp / "k.pem", "ca": tmp / "ca.pem"}
    leaf.cert_chain_pems[0].write_to_path(files["cert"])
    for extra in leaf.cert_chain_pems[1:]:
        extra.write_to_path(files["cert"], append=True)
    leaf.private_key_pem.write_to_path(files["key"])
    ca.cert_pem.write_to_path(files["ca"])
    return files


def _config(files: dict[str, Path], upstream: Upstream, **tls: object) -> str:
    cvm = f'[{{ type = "CVM", address = "{upstream.address}" }}]'
    return (listener("tls", "HTTPS", **tls)
            + f'certificates = [{{ cert = "{files["cert"]}", key = "{files["key"]}" }}]\n'
            + rule("a.test", "/", cvm) + scf_rule("a.test", "/fn", "echo")
            + rule("*.w.test", "/", cvm)
            + scf_rule("off.test", "/", "echo", ).replace("  targets", "  http2 = false\n  targets")
            + listener("h2c", h2c=True) + rule("a.test", "/", cvm)
            + listener("plain") + rule("a.test", "/", cvm)
            + function("echo"))


@pytest.fixture(scope="module")
def proxy(tls_files: dict[str, Path], upstream: Upstream,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    tmp = tmp_path_factory.mktemp("h2proxy")
    with ProxyProcess.with_config(_config(tls_files, upstream), tmp,
                                  "--state-dir", str(tmp / "state")) as proc:
        yield proc


def _curl(proxy: ProxyProcess, files: dict[str, Path], host: str, path: str,
          *args: str) -> tuple[str, str]:
    port = proxy.port("tls")
    done = subprocess.run(
        [CURL, "-sS", "--max-time", "20", "--cacert", str(files["ca"]),
         "--resolve", f"{host}:{port}:127.0.0.1", "-w", "\n%{http_version}", *args,
         f"https://{host}:{port}{path}"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    body, _, version = done.stdout.rpartition("\n")
    return body, version


def _client(proxy: ProxyProcess, files: dict[str, Path], sni: str = "a.test",
            **settings: int) -> h2client.Client:
    return h2client.Client(h2client.connect(proxy.port("tls"), str(files["ca"]), sni),
                           **settings)


def _raw(proxy: ProxyProcess, files: dict[str, Path]) -> h2client.Raw:
    return h2client.Raw(h2client.connect(proxy.port("tls"), str(files["ca"])))


def _still_serves(proxy: ProxyProcess, files: dict[str, Path]) -> None:
    client = _client(proxy, files)
    try:
        headers, body = client.response(client.headers("/"))
        assert headers[b":status"] == b"200" and body == b"A"
    finally:
        client.close()


# -- well-behaved clients --------------------------------------------------------------------

def test_curl_http2_reaches_a_cvm_target_over_http11(proxy: ProxyProcess,
                                                     tls_files: dict[str, Path]) -> None:
    body, version = _curl(proxy, tls_files, "a.test", "/echo?x=1", "--http2",
                          "-H", "Cookie: a=1", "-H", "Cookie: b=2")
    assert version == "2"
    seen = json.loads(body)
    assert seen["version"] == "HTTP/1.1"  # CLB to real servers is always HTTP/1.x
    assert seen["target"] == "/echo?x=1"
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert headers["x-client-proto-ver"] == "HTTP/2.0"
    assert headers["host"] == f"a.test:{proxy.port('tls')}"
    assert headers["cookie"] == "a=1; b=2"  # RFC 9113 §8.2.3: crumbs joined again


def test_curl_http2_function_event_says_http2(proxy: ProxyProcess,
                                              tls_files: dict[str, Path]) -> None:
    body, version = _curl(proxy, tls_files, "a.test", "/fn", "--http2")
    assert version == "2"
    event = json.loads(body)
    assert event["headers"]["X-Client-Proto-Ver"] == "HTTP/2.0"
    assert event["requestContext"]["protocol"] == "https"


def test_curl_http2_upload_to_a_function(proxy: ProxyProcess, tls_files: dict[str, Path],
                                         tmp_path: Path) -> None:
    upload = tmp_path / "body"
    upload.write_bytes(b"x" * 200_000)
    body, version = _curl(proxy, tls_files, "a.test", "/fn", "--http2",
                          "--data-binary", f"@{upload}", "-H", "Content-Type: text/plain")
    assert version == "2"
    assert json.loads(body)["body"] == "x" * 200_000  # more than the stream's window


def test_a_domain_with_http2_off_gets_http11(proxy: ProxyProcess,
                                             tls_files: dict[str, Path]) -> None:
    body, version = _curl(proxy, tls_files, "off.test", "/", "--http2")
    assert version == "1.1"
    assert json.loads(body)["headers"]["X-Client-Proto-Ver"] == "HTTP/1.1"
    # the wildcard domain has it on
    assert _curl(proxy, tls_files, "x.w.test", "/", "--http2")[1] == "2"


def test_httpx_http2_multiplexes_on_one_connection(proxy: ProxyProcess,
                                                   tls_files: dict[str, Path]) -> None:
    import asyncio

    # httpx has no --resolve: connect to the IP, with SNI and :authority a.test
    async def run_ip() -> list[httpx.Response]:
        verify = ssl.create_default_context(cafile=str(tls_files["ca"]))
        async with httpx.AsyncClient(http2=True, verify=verify, timeout=30,
                                     headers={"Host": "a.test"}) as client:
            url = f"https://127.0.0.1:{proxy.port('tls')}"
            return await asyncio.gather(*(client.get(
                f"{url}/download?n={n}", extensions={"sni_hostname": "a.test"})
                for n in (10, 100_000, 1_000_000, 0, 5)))
    responses = asyncio.run(run_ip())
    assert [r.http_version for r in responses] == ["HTTP/2"] * 5
    assert [len(r.content) for r in responses] == [10, 100_000, 1_000_000, 0, 5]
    assert all(r.status_code == 200 for r in responses)


def test_h2load_all_requests_succeed(proxy: ProxyProcess, tls_files: dict[str, Path]) -> None:
    status = install.ensure(["h2load"], log=lambda _: None)["h2load"]
    assert not status.startswith("error"), status
    done = subprocess.run(
        ["h2load", "-n", "300", "-c", "3", "-m", "10",
         f"--connect-to=127.0.0.1:{proxy.port('tls')}",
         f"https://a.test:{proxy.port('tls')}/"], capture_output=True, text=True,
        timeout=120)
    assert done.returncode == 0, done.stderr
    assert "300 succeeded, 0 failed, 0 errored" in done.stdout, done.stdout
    assert "Application protocol: h2" in done.stdout


def test_h2c_with_prior_knowledge(proxy: ProxyProcess) -> None:
    done = subprocess.run(
        [CURL, "-sS", "--max-time", "20", "--http2-prior-knowledge", "-w", "\n%{http_version}",
         "-H", "Host: a.test", f"http://127.0.0.1:{proxy.port('h2c')}/echo"],
        capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    body, _, version = done.stdout.rpartition("\n")
    assert version == "2"
    headers = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert headers["x-client-proto-ver"] == "HTTP/2.0"
    assert headers["x-client-proto"] == "http"
    # HTTP/1.1 still works on the h2c listener
    done = subprocess.run([CURL, "-sS", "--max-time", "20", "-H", "Host: a.test",
                           f"http://127.0.0.1:{proxy.port('h2c')}/"],
                          capture_output=True, text=True, timeout=30)
    assert done.stdout == "A"


def test_h2c_is_off_by_default(proxy: ProxyProcess) -> None:
    done = subprocess.run(
        [CURL, "-sS", "--max-time", "20", "--http2-prior-knowledge", "-H", "Host: a.test",
         "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
         f"http://127.0.0.1:{proxy.port('plain')}/"], capture_output=True, text=True,
        timeout=30)
    assert not done.stdout.endswith(" 2"), done.stdout  # refused as HTTP/1.1 (400)


def test_access_log_has_a_line_per_stream(proxy: ProxyProcess,
                                          tls_files: dict[str, Path]) -> None:
    client = _client(proxy, tls_files)
    try:
        sids = [client.headers(f"/log-{i}") for i in range(3)]
        for sid in sids:
            assert client.response(sid)[0][b":status"] == b"200"
    finally:
        client.close()
    for i in range(3):
        record = proxy.access_records(f"/log-{i}", 1, timeout=10)[0]
        assert record["status"] == 200 and record["ssl_protocol"].startswith("TLSv1.")


# -- flow control ----------------------------------------------------------------------------

def test_a_slow_reader_holds_back_neither_other_streams_nor_memory(
        proxy: ProxyProcess, tls_files: dict[str, Path]) -> None:
    client = _client(proxy, tls_files)
    try:
        # as a browser does: a big connection window, each stream's own left at 64 KiB
        client.conn.increment_flow_control_window(2**30)
        client.flush()
        before = memory_kb(proxy.pid)["VmRSS"]
        # 50 MB asked for on a stream whose window we never give back: 64 KiB reach us
        stalled = client.headers("/download?n=50000000")
        client.pump(3, lambda ev: sum(len(e.data) for e in ev if isinstance(
            e, h2.events.DataReceived) and e.stream_id == stalled) >= 65535)
        got = sum(len(e.data) for e in client.events
                  if isinstance(e, h2.events.DataReceived) and e.stream_id == stalled)
        assert got <= 65535
        # the others go on, on the same connection (the connection window was given back
        # for them: acknowledge_received_data credits both)
        for n in (1000, 300_000):
            headers, body = client.response(client.headers(f"/download?n={n}"))
            assert headers[b":status"] == b"200" and len(body) == n
        time.sleep(1.0)
        grown = memory_kb(proxy.pid)["VmRSS"] - before
        assert grown < 20_000, f"proxy grew {grown} kB holding a stalled 50 MB stream"
        # reading it now brings all of it, intact
        headers, body = client.response(stalled, timeout=120)
        assert len(body) == 50_000_000
        assert hashlib.sha256(body).hexdigest() == _pattern_sha(50_000_000)
    finally:
        client.close()


def _pattern_sha(n: int) -> str:
    from tests.upstreams import pattern_bytes
    digest = hashlib.sha256()
    sent = 0
    while sent < n:
        block = pattern_bytes(sent, min(65536, n - sent))
        digest.update(block)
        sent += len(block)
    return digest.hexdigest()


def test_upload_larger_than_the_windows_reaches_the_upstream(
        proxy: ProxyProcess, tls_files: dict[str, Path]) -> None:
    client = _client(proxy, tls_files)
    try:
        data = bytes(range(256)) * 20_000  # 5 MB: many windows' worth
        sid = client.headers("/upload?hash=1", "POST", end=False,
                             extra=[("content-length", str(len(data)))])
        sent = 0
        while sent < len(data):
            window = min(client.conn.local_flow_control_window(sid),
                         client.conn.max_outbound_frame_size)
            if window <= 0:
                count = len(client.events)
                client.pump(10, lambda ev, count=count: len(ev) > count)
                continue
            piece = data[sent:sent + window]
            sent += len(piece)
            client.conn.send_data(sid, piece, end_stream=sent == len(data))
            client.flush()
        headers, body = client.response(sid, timeout=60)
        seen = json.loads(body)
        assert seen["received"] == len(data)
        assert seen["sha256"] == hashlib.sha256(data).hexdigest()
    finally:
        client.close()


# -- hostile clients -------------------------------------------------------------------------

def _goaway_code(raw: h2client.Raw) -> int:
    return raw.goaway().error_code


def test_more_than_128_concurrent_streams_is_goaway(proxy: ProxyProcess,
                                                    tls_files: dict[str, Path]) -> None:
    raw = _raw(proxy, tls_files)
    try:
        # streams left open (no END_STREAM: their bodies never come)
        raw.send(*(HeadersFrame(sid, raw.block("/fn", method="POST"), flags=["END_HEADERS"])
                   for sid in range(1, 2 * 129, 2)))
        assert _goaway_code(raw) == ErrorCodes.PROTOCOL_ERROR
    finally:
        raw.close()
    _still_serves(proxy, tls_files)


def test_128_concurrent_streams_are_served(proxy: ProxyProcess,
                                           tls_files: dict[str, Path]) -> None:
    client = _client(proxy, tls_files)
    try:
        sids = [client.headers(f"/download?n={i}") for i in range(128)]
        for i, sid in enumerate(sids):
            headers, body = client.response(sid)
            assert headers[b":status"] == b"200" and len(body) == i
    finally:
        client.close()


def test_header_list_over_the_limit_is_goaway(proxy: ProxyProcess,
                                              tls_files: dict[str, Path]) -> None:
    raw = _raw(proxy, tls_files)
    try:
        block = raw.block("/", extra=[("x-big", "v" * 70_000)])
        pieces = [block[i:i + 16384] for i in range(0, len(block), 16384)]
        frames = [HeadersFrame(1, pieces[0], flags=["END_STREAM"])]
        frames += [ContinuationFrame(1, p) for p in pieces[1:-1]]
        frames.append(ContinuationFrame(1, pieces[-1], flags=["END_HEADERS"]))
        raw.send(*frames)
        assert _goaway_code(raw) == ErrorCodes.ENHANCE_YOUR_CALM
    finally:
        raw.close()
    _still_serves(proxy, tls_files)


def test_too_many_header_fields_is_431(proxy: ProxyProcess, tls_files: dict[str, Path]) -> None:
    client = _client(proxy, tls_files)
    try:
        sid = client.headers("/", extra=[(f"x-h{i}", "v") for i in range(101)])
        assert client.response(sid)[0][b":status"] == b"431"
    finally:
        client.close()


def test_continuation_flood_is_goaway(proxy: ProxyProcess, tls_files: dict[str, Path]) -> None:
    raw = _raw(proxy, tls_files)
    try:
        before = memory_kb(proxy.pid)["VmRSS"]
        raw.send(HeadersFrame(1, raw.block("/"), flags=["END_STREAM"]))
        try:  # the server closes mid-flood: stop sending then
            for _ in range(20):
                raw.send(*(ContinuationFrame(1, b"\x40\x01a\x01b") for _ in range(500)))
        except OSError:
            pass
        assert _goaway_code(raw) == ErrorCodes.PROTOCOL_ERROR
        assert memory_kb(proxy.pid)["VmRSS"] - before < 20_000
    finally:
        raw.close()
    _still_serves(proxy, tls_files)


def test_hpack_bomb_is_goaway(proxy: ProxyProcess, tls_files: dict[str, Path]) -> None:
    raw = _raw(proxy, tls_files)
    try:
        # one 4000-byte entry in the dynamic table, then blocks naming it (index 62) over
        # and over: 1 byte each on the wire, 4 KB each decoded
        first = raw.block("/", extra=[("x-bomb", "b" * 4000)])
        raw.send(HeadersFrame(1, first, flags=["END_HEADERS", "END_STREAM"]))
        bomb = raw.block("/") + b"\xbe" * 1000  # 0x80 | 62: indexed field 62
        raw.send(HeadersFrame(3, bomb, flags=["END_HEADERS", "END_STREAM"]))
        assert _goaway_code(raw) == ErrorCodes.ENHANCE_YOUR_CALM
    finally:
        raw.close()
    _still_serves(proxy, tls_files)


def test_a_table_size_update_over_ours_is_compression_error(
        proxy: ProxyProcess, tls_files: dict[str, Path]) -> None:
    raw = _raw(proxy, tls_files)
    try:
        # dynamic table size update to 65536 (0x20 | 5-bit prefix integer) before the fields
        update = b"\x3f\xe1\xff\x03"
        raw.send(HeadersFrame(1, update + raw.block("/"), flags=["END_HEADERS", "END_STREAM"]))
        assert _goaway_code(raw) == ErrorCodes.COMPRESSION_ERROR
    finally:
        raw.close()


def test_rapid_reset_is_goaway_enhance_your_calm(proxy: ProxyProcess,
                                                 tls_files: dict[str, Path]) -> None:
    raw = _raw(proxy, tls_files)
    try:
        frames = []
        for sid in range(1, 2 * 400, 2):
            frames.append(HeadersFrame(sid, raw.block("/slow?head=5"),
                                       flags=["END_HEADERS", "END_STREAM"]))
            frames.append(RstStreamFrame(sid, error_code=ErrorCodes.CANCEL))
        try:
            raw.send(*frames)
        except OSError:
            pass
        assert _goaway_code(raw) == ErrorCodes.ENHANCE_YOUR_CALM
    finally:
        raw.close()
    _still_serves(proxy, tls_files)


def test_a_few_resets_are_fine(proxy: ProxyProcess, tls_files: dict[str, Path]) -> None:
    client = _client(proxy, tls_files)
    try:
        for _ in range(20):
            sid = client.headers("/slow?head=5")
            client.conn.reset_stream(sid, ErrorCodes.CANCEL)
            client.flush()
        headers, body = client.response(client.headers("/"))
        assert body == b"A"
    finally:
        client.close()


def test_headers_on_an_ended_stream_is_goaway_stream_closed(
        proxy: ProxyProcess, tls_files: dict[str, Path]) -> None:
    raw = _raw(proxy, tls_files)
    try:
        raw.send(HeadersFrame(1, raw.block("/"), flags=["END_HEADERS", "END_STREAM"]))
        frames = raw.frames(3.0)
        assert any(isinstance(f, DataFrame) and "END_STREAM" in f.flags for f in frames)
        raw.send(HeadersFrame(1, raw.block("/"), flags=["END_HEADERS", "END_STREAM"]))
        assert _goaway_code(raw) == ErrorCodes.STREAM_CLOSED
    finally:
        raw.close()


def test_a_lower_stream_id_is_goaway_protocol_error(proxy: ProxyProcess,
                                                    tls_files: dict[str, Path]) -> None:
    raw = _raw(proxy, tls_files)
    try:
        raw.send(HeadersFrame(5, raw.block("/"), flags=["END_HEADERS", "END_STREAM"]),
                 HeadersFrame(3, raw.block("/"), flags=["END_HEADERS", "END_STREAM"]))
        assert _goaway_code(raw) == ErrorCodes.PROTOCOL_ERROR
    finally:
        raw.close()


def test_connection_window_overflow_is_goaway_flow_control_error(
        proxy: ProxyProcess, tls_files: dict[str, Path]) -> None:
    raw = _raw(proxy, tls_files)
    try:
        raw.send(WindowUpdateFrame(0, window_increment=2**31 - 1))
        assert _goaway_code(raw) == ErrorCodes.FLOW_CONTROL_ERROR
    finally:
        raw.close()
    _still_serves(proxy, tls_files)


def test_stream_window_overflow_resets_that_stream(proxy: ProxyProcess,
                                                   tls_files: dict[str, Path]) -> None:
    # RFC 9113 §6.9.1: a stream error; the connection and its other streams go on
    raw = _raw(proxy, tls_files)
    try:
        raw.send(HeadersFrame(1, raw.block("/slow?head=1"), flags=["END_HEADERS", "END_STREAM"]),
                 WindowUpdateFrame(1, window_increment=2**31 - 1),
                 HeadersFrame(3, raw.block("/"), flags=["END_HEADERS", "END_STREAM"]))
        frames = raw.frames(5.0)
        resets = [f for f in frames if isinstance(f, RstStreamFrame)]
        assert [(f.stream_id, f.error_code) for f in resets] == [
            (1, ErrorCodes.FLOW_CONTROL_ERROR)]
        assert any(isinstance(f, DataFrame) and f.stream_id == 3 and f.data == b"A"
                   for f in frames)
        assert not any(isinstance(f, DataFrame) and f.stream_id == 1 for f in frames)
    finally:
        raw.close()


def test_not_http2_after_alpn_h2_is_goaway(proxy: ProxyProcess,
                                           tls_files: dict[str, Path]) -> None:
    sock = h2client.connect(proxy.port("tls"), str(tls_files["ca"]))
    try:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        raw = h2client.Raw.__new__(h2client.Raw)
        raw.sock, raw.buffer = sock, b""
        assert _goaway_code(raw) == ErrorCodes.PROTOCOL_ERROR
    finally:
        sock.close()


def test_no_internal_error_was_logged(proxy: ProxyProcess) -> None:
    # last of the module's tests on the shared proxy: every hostile case above was answered
    # by a verdict, none by a crash
    assert "Traceback" not in proxy.stderr and "internal error" not in proxy.stderr, \
        proxy.stderr


# -- GOAWAY on drain and reload ----------------------------------------------------------------

@pytest.fixture()
def own_proxy(tls_files: dict[str, Path], upstream: Upstream,
              tmp_path: Path) -> Iterator[ProxyProcess]:
    with ProxyProcess.with_config(_config(tls_files, upstream), tmp_path,
                                  "--state-dir", str(tmp_path / "state")) as proc:
        yield proc


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM])
def test_goaway_lets_in_flight_streams_finish(own_proxy: ProxyProcess,
                                              tls_files: dict[str, Path], sig: int) -> None:
    raw = _raw(own_proxy, tls_files)
    try:
        raw.send(HeadersFrame(1, raw.block("/slow?head=1&body=1"),
                              flags=["END_HEADERS", "END_STREAM"]))
        raw.frames(0.3)  # the server's SETTINGS; the answer is a second away
        assert own_proxy.proc is not None
        own_proxy.proc.send_signal(sig)
        frames = raw.frames(15.0, past_goaway=True)  # until the server closes
        goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
        assert [(g.error_code, g.last_stream_id) for g in goaways] == [(ErrorCodes.NO_ERROR, 1)]
        after = frames[frames.index(goaways[0]):]
        # the stream in flight is still answered, whole, after the GOAWAY; then the close
        assert any(isinstance(f, HeadersFrame) and f.stream_id == 1 for f in after)
        data = [f for f in after if isinstance(f, DataFrame) and f.stream_id == 1]
        assert b"".join(f.data for f in data) == b"A" and "END_STREAM" in data[-1].flags
        assert raw.closed  # and then the connection closes
    finally:
        raw.close()
    if sig == signal.SIGHUP:
        _still_serves(own_proxy, tls_files)  # a new connection, under the new config


def test_curl_request_in_flight_survives_a_reload(own_proxy: ProxyProcess,
                                                 tls_files: dict[str, Path]) -> None:
    port = own_proxy.port("tls")
    curl = subprocess.Popen(
        [CURL, "-sS", "--http2", "--max-time", "20", "--cacert", str(tls_files["ca"]),
         "--resolve", f"a.test:{port}:127.0.0.1", "-w", " %{http_version}",
         f"https://a.test:{port}/slow?head=1&body=1"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    assert own_proxy.proc is not None
    own_proxy.proc.send_signal(signal.SIGHUP)
    out, _ = curl.communicate(timeout=30)
    assert curl.returncode == 0 and out == "A 2"


def test_streams_after_goaway_are_refused(own_proxy: ProxyProcess,
                                          tls_files: dict[str, Path]) -> None:
    raw = _raw(own_proxy, tls_files)
    try:
        raw.send(HeadersFrame(1, raw.block("/slow?head=2"), flags=["END_HEADERS", "END_STREAM"]))
        raw.frames(0.3)
        assert own_proxy.proc is not None
        own_proxy.proc.send_signal(signal.SIGHUP)
        assert raw.goaway().last_stream_id == 1
        raw.send(HeadersFrame(3, raw.block("/"), flags=["END_HEADERS", "END_STREAM"]))
        frames = raw.frames(15.0, past_goaway=True)
        assert [(f.stream_id, f.error_code) for f in frames if isinstance(f, RstStreamFrame)] \
            == [(3, ErrorCodes.REFUSED_STREAM)]
        assert b"".join(f.data for f in frames if isinstance(f, DataFrame)) == b"A"
    finally:
        raw.close()


def test_modify_domain_attributes_http2_applies_to_new_handshakes(
        tls_files: dict[str, Path], upstream: Upstream, tmp_path: Path) -> None:
    with ProxyProcess.with_config(_config(tls_files, upstream), tmp_path, "--admin",
                                  "127.0.0.1:0", "--state-dir",
                                  str(tmp_path / "state")) as proc:
        assert _curl(proc, tls_files, "a.test", "/", "--http2") == ("A", "2")
        answer = clb(proc.admin_port, "ModifyDomainAttributes", {
            "ListenerId": "lbl-tls", "Domain": "a.test", "Http2": False})
        assert "Error" not in answer, answer
        # written back before the answer, and applied to the next handshake
        rules = tomllib.loads((tmp_path / "rules.toml").read_text())["listener"][0]["rule"]
        assert [r.get("http2", True) for r in rules if r["domain"] == "a.test"] == [False] * 2
        assert _curl(proc, tls_files, "a.test", "/", "--http2") == ("A", "1.1")
        assert _curl(proc, tls_files, "x.w.test", "/", "--http2") == ("A", "2")
        described = clb(proc.admin_port, "DescribeListeners", {"ListenerIds": ["lbl-tls"]})
        assert {(r["Domain"], r["Url"]): r["Http2"]
                for r in described["Listeners"][0]["Rules"]}[("a.test", "/")] is False
