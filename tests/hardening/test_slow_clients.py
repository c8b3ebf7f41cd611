"""Slow clients against the real proxy, on both parsers: many connections that send their
heads or bodies a byte at a time, or never read what they asked for, are closed by the
timeouts, while a normal client next to them keeps being served promptly.

The timeouts (SPEC §9): the head must be complete within ``client_header_timeout`` of its
first byte, however it trickles in (408); a body may be slow but not idle longer than
``client_body_timeout`` (408; like nginx's, it is an idle timeout, so a body that keeps
trickling faster than that is served: SPEC §9 sets no minimum rate); a client that stops
reading is cut off once the proxy has been unable to write to it for ``client_body_timeout``
(ours: nginx's send_timeout, which has no knob of its own here), and is given no further
pipelined answers meanwhile. "Closed" is judged on the proxy's side: it holds no socket for
a client connection any more, while the clients that never read still hold theirs open.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.hardening.stage import PARSERS, assert_alive, cvm_rule, listener, log_mark
from tests.proxyproc import ProxyProcess, memory_kb
from tests.upstreams import RecordingUpstream, Script, Upstream

TIMEOUT = 1.0  # client_header_timeout and client_body_timeout
SLACK = 1.0  # how late a timeout may fire on a busy 2-core machine
HEAD = (b"GET / HTTP/1.1\r\nHost: w.test\r\nUser-Agent: slow\r\nX-Pad: "
        + b"p" * 100 + b"\r\n\r\n")
#: an answer that comes whole with its head (so it is not streamed), asked for 1000 times
BIG = 150000
PIPELINED_BIG = b"GET /big HTTP/1.1\r\nHost: big.test\r\n\r\n"


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream("W") as up:
        yield up


@pytest.fixture(scope="module")
def recording() -> Iterator[RecordingUpstream]:
    with RecordingUpstream() as up:
        up.scripts["/big"] = Script(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG
                                    + b"x" * BIG)
        yield up


@pytest.fixture(scope="module", params=PARSERS)
def proxy(request: pytest.FixtureRequest, upstream: Upstream, recording: RecordingUpstream,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    rules = cvm_rule("w.test", "/", upstream.address) + cvm_rule("big.test", "/",
                                                                 recording.address)
    config = listener("web", rules, default_domain="w.test",
                      client_header_timeout=TIMEOUT, client_body_timeout=TIMEOUT,
                      keepalive_timeout=30, proxy_read_timeout=10)
    with ProxyProcess.with_config(config, tmp_path_factory.mktemp("slow"), "--http",
                                  request.param, "--no-access-log") as proc:
        yield proc


def client_sockets(pid: int, port: int) -> int:
    """The sockets the proxy process holds for client connections (from /proc, so our own
    ends don't count): those on its listening port, the listening one excluded, plus any it
    still holds after TCP is done with them (they are in no table any more)."""
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            held.add(target[8:-1])
    elsewhere = set()  # listening sockets, upstream connections, unix and udp sockets
    for table in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port != port or fields[3] == "0A" or table.startswith("udp"):  # 0A: LISTEN
                elsewhere.add(fields[9])
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        elsewhere.add(line.split()[6])
    return len(held - elsewhere)


@dataclass
class Outcome:
    """What one slow client saw: the answer's status (0: none), when the proxy ended the
    connection (seconds from the first byte; None if it did not) and how."""

    status: int = 0
    ended_after: float | None = None
    how: str = ""
    sent: int = 0


@dataclass
class Latencies:
    values: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


async def _read_to_end(reader: asyncio.StreamReader, outcome: Outcome, started: float) -> None:
    data = b""
    try:
        while chunk := await reader.read(65536):
            data += chunk
        outcome.how = "eof"
    except ConnectionError:
        outcome.how = "reset"
    outcome.ended_after = time.monotonic() - started
    if data[:9] in (b"HTTP/1.1 ", b"HTTP/1.0 "):
        outcome.status = int(data[9:12])


async def trickle(port: int, data: bytes, gaps: list[float], stop_after: float) -> Outcome:
    """Send ``data`` one byte at a time, ``gaps[i]`` seconds before byte ``i + 1`` (the last
    gap repeats), until the proxy ends the connection; give up after ``stop_after`` s."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    outcome = Outcome()
    started = time.monotonic()
    watcher = asyncio.ensure_future(_read_to_end(reader, outcome, started))
    try:
        for i in range(len(data)):
            if watcher.done():
                break
            writer.write(data[i:i + 1])
            outcome.sent += 1
            await asyncio.wait([watcher], timeout=gaps[min(i, len(gaps) - 1)])
        await asyncio.wait([watcher], timeout=max(0.0, stop_after - (time.monotonic() - started)))
    except ConnectionError:
        pass
    finally:
        watcher.cancel()
        writer.close()  # as a client does once the server has closed
    return outcome


async def _push(sock: socket.socket, payload: bytes) -> None:
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(sock, payload)
    except OSError:
        pass  # the proxy cut us off


async def never_read(port: int, request: bytes, copies: int,
                     pushers: list[asyncio.Future[None]]) -> socket.socket:
    """Ask (``copies`` times, pipelined, as fast as the proxy reads) and never read: a socket
    with a tiny receive window, left open for the caller."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    pushers.append(asyncio.ensure_future(_push(sock, request * copies)))
    return sock


async def normal_client(port: int, seconds: float, out: Latencies) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            started = time.monotonic()
            writer.write(b"GET / HTTP/1.1\r\nHost: w.test\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            body = await asyncio.wait_for(reader.readexactly(length), 5)
            out.values.append(time.monotonic() - started)
            if not head.startswith(b"HTTP/1.1 200") or body != b"W":
                out.failures.append(repr(head[:40] + body))
            await asyncio.sleep(0.02)
    except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
        out.failures.append(repr(exc))
    finally:
        writer.close()


async def _siege(port: int) -> tuple[list[Outcome], list[Outcome], Latencies,
                                      list[socket.socket]]:
    latencies = Latencies()
    normal = asyncio.ensure_future(normal_client(port, 3.5, latencies))
    # a byte every 50 ms: the 160-byte head would take 8 s; the deadline is 1 s
    heads = [asyncio.ensure_future(trickle(port, HEAD, [0.05], 4.0)) for _ in range(100)]
    # a whole head, then the body a byte at a time (moving, so not idle) for ~1.2 s, then
    # silence longer than the body timeout
    post = b"POST / HTTP/1.1\r\nHost: w.test\r\nContent-Length: 100\r\n\r\n"
    bodies = [asyncio.ensure_future(trickle(port, post + b"b" * 100,
                                            [0.0] * (len(post) - 1) + [0.3] * 4 + [30.0], 5.0))
              for _ in range(30)]
    pushers: list[asyncio.Future[None]] = []
    download = b"GET /download?n=67108864 HTTP/1.1\r\nHost: w.test\r\n\r\n"
    readers = [await never_read(port, download, 1, pushers) for _ in range(8)]
    # pipelined asks for answers that come whole, 300 MB in all: they must not pile up in
    # the proxy's memory while the client takes none of them
    readers += [await never_read(port, PIPELINED_BIG, 1000, pushers) for _ in range(2)]
    head_outcomes = list(await asyncio.gather(*heads))
    body_outcomes = list(await asyncio.gather(*bodies))
    await normal
    for pusher in pushers:
        pusher.cancel()
    return head_outcomes, body_outcomes, latencies, readers


def test_slow_clients_are_cut_off_while_a_normal_client_is_served(
        proxy: ProxyProcess, recording: RecordingUpstream) -> None:
    mark = log_mark(proxy)
    port = proxy.port()
    recording.clear()
    before = memory_kb(proxy.pid)["VmRSS"]
    heads, bodies, latencies, readers = asyncio.run(_siege(port))
    # a client that takes none of its answers gets no further ones: only what the socket
    # buffers hold was asked of the upstream, and nothing piled up in memory
    assert len(recording.requests()) < 100, len(recording.requests())
    assert memory_kb(proxy.pid)["VmHWM"] - before < 40 * 1024
    try:
        # the clients that never read are gone from the proxy's side while their sockets live
        deadline = time.monotonic() + TIMEOUT + 3 * SLACK
        while client_sockets(proxy.pid, port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client_sockets(proxy.pid, port) == 0
        for sock in readers:
            sock.setblocking(True)
            sock.settimeout(2)
            ended = False
            try:
                while sock.recv(1 << 20):
                    pass
                ended = True
            except ConnectionResetError:
                ended = True
            except TimeoutError:
                pass
            assert ended, "a client that never read is still connected"
    finally:
        for sock in readers:
            sock.close()

    assert not latencies.failures, latencies.failures[:5]
    assert len(latencies.values) > 50 and max(latencies.values) < 0.5, max(latencies.values)
    for outcome in heads:
        assert outcome.status == 408 and outcome.how == "eof", outcome
        assert outcome.ended_after is not None and outcome.ended_after < TIMEOUT + SLACK, outcome
        assert outcome.sent < len(HEAD)
    for outcome in bodies:
        assert outcome.status == 408 and outcome.how == "eof", outcome
        # moving for ~1.2 s (no timeout while it moves), then cut 1 s into the silence
        assert outcome.ended_after is not None, outcome
        assert 1.2 + TIMEOUT * 0.9 <= outcome.ended_after < 1.2 + TIMEOUT + SLACK, outcome
    assert_alive(proxy, mark)


def test_a_client_that_already_sent_its_fin_is_not_lingered_on(proxy: ProxyProcess) -> None:
    # Lingering (reading on after an error so that the client gets the answer, not a reset)
    # is pointless once the client has shut its side: the proxy closes at once.
    port = proxy.port()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: w.test\r\n")  # cut short by our FIN: 400
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 400 ")
        # our socket stays open: the proxy's side must be gone well before LINGER_TIMEOUT
        deadline = time.monotonic() + 1.0
        while client_sockets(proxy.pid, port) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client_sockets(proxy.pid, port) == 0
