"""Faults between the proxy and a CVM upstream, through the real proxy, on both parsers.

A fault-injecting TCP proxy (tests/faultproxy.py) sits between the proxy under test and a
tests/upstreams.py server. Each fault gives the client the status of SPEC §8 (connect failure,
reset or a broken answer before the response: 502; read timeout: 504), or, once the response
head has gone out, an aborted client connection (never a clean end, RFC 9112 §6.3), and leaves
no broken connection in the pool: every link that saw a fault is closed by the proxy and
carries no further request, and the requests that follow are served on healthy connections.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass

import pytest

from tests.faultproxy import Fault, FaultProxy
from tests.hardening.stage import PARSERS, assert_alive, cvm_rule, listener, log_mark
from tests.proxyproc import ProxyProcess, free_port
from tests.upstreams import Upstream, pattern_bytes

READ_TIMEOUT = 1.0


@dataclass
class Stage:
    proxy: ProxyProcess
    faults: FaultProxy

    @property
    def port(self) -> int:
        return self.proxy.port()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream("U") as up:
        yield up


@pytest.fixture(scope="module", params=PARSERS)
def stage(request: pytest.FixtureRequest, upstream: Upstream,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    with FaultProxy(upstream.port) as faults:
        rules = (cvm_rule("f.test", "/", faults.address)
                 + cvm_rule("dead.test", "/", f"127.0.0.1:{free_port()}"))
        config = listener("web", rules, default_domain="f.test",
                          proxy_read_timeout=READ_TIMEOUT, proxy_connect_timeout=1)
        with ProxyProcess.with_config(config, tmp_path_factory.mktemp("faults"),
                                      "--http", request.param, "--no-access-log") as proc:
            yield Stage(proc, faults)


@pytest.fixture
def st(stage: Stage) -> Iterator[Stage]:
    stage.faults.set_fault(None)
    mark = log_mark(stage.proxy)
    before = len(stage.faults.snapshot())
    yield stage
    stage.faults.set_fault(None)
    assert_no_broken_connection_left(stage, before)
    assert_alive(stage.proxy, mark)
    stage.faults.close_all()  # the next test starts with an empty pool


def request(port: int, method: str = "GET", path: str = "/", host: str = "f.test",
            body: bytes | None = None, conn: http.client.HTTPConnection | None = None
            ) -> tuple[int, bytes]:
    own = conn is None
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request(method, path, body=body, headers={"Host": host})
        resp = c.getresponse()
        return resp.status, resp.read()
    finally:
        if own:
            c.close()


def assert_no_broken_connection_left(st: Stage, since: int) -> None:
    """Every link that met a fault (link ``since`` on) is closed, by the fault or by the proxy,
    and carried no request after the one that met the fault; the proxy goes on serving, over
    links that never failed."""
    broken = [l for l in st.faults.faulted() if l.index >= since and l.fault is not None
              and l.fault.kind != "slice"]  # a slow link is not a broken one
    for link in st.faults.wait_done(broken):
        assert link.done, f"link {link.index} ({link.fault}) left open"
        assert link.requests_since_fault == 1, link
    with closing(http.client.HTTPConnection("127.0.0.1", st.port, timeout=10)) as conn:
        for _ in range(4):
            assert request(st.port, conn=conn) == (200, b"U")
    for link in st.faults.snapshot():
        if link.index in {l.index for l in broken}:
            assert link.requests_since_fault == 1, link


# --- before the response: SPEC §8 statuses ------------------------------------------------------

BEFORE_RESPONSE = {
    "reset": (Fault("reset"), 502),
    "close_without_answer": (Fault("close"), 502),
    "garbage": (Fault("garbage"), 502),
    "stall": (Fault("stall"), 504),
    "close_mid_head": (Fault("limit", after=12), 502),
    "reset_mid_head": (Fault("reset_after", after=12), 502),
    "stall_mid_head": (Fault("stall_after", after=12), 504),
}


@pytest.mark.parametrize("case", sorted(BEFORE_RESPONSE))
def test_fault_before_the_response_gives_the_spec_status(st: Stage, case: str) -> None:
    fault, status = BEFORE_RESPONSE[case]
    request(st.port)  # a pooled connection exists: the fault may meet it or a fresh one
    st.faults.set_fault(fault)
    started = time.monotonic()
    assert request(st.port)[0] == status
    took = time.monotonic() - started
    if status == 504:
        assert READ_TIMEOUT * 0.9 <= took < READ_TIMEOUT * 3, took
    else:
        assert took < READ_TIMEOUT, took  # no waiting for a timeout on a fault that is known


def test_connect_refused_gives_502(st: Stage) -> None:
    assert request(st.port, host="dead.test")[0] == 502


# --- after the response head: the client connection is aborted -----------------------------------

@pytest.mark.parametrize("fault", [
    Fault("limit", after=5000), Fault("reset_after", after=5000),
    Fault("stall_after", after=5000),
], ids=["close_mid_body", "reset_mid_body", "stall_mid_body"])
def test_fault_mid_body_aborts_the_client_connection(st: Stage, fault: Fault) -> None:
    st.faults.set_fault(fault)
    conn = http.client.HTTPConnection("127.0.0.1", st.port, timeout=10)
    try:
        conn.request("GET", "/download?n=200000", headers={"Host": "f.test"})
        resp = conn.getresponse()
        assert resp.status == 200
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["content_length", "chunked"])
def test_fault_mid_chunked_or_sized_body_never_looks_complete(st: Stage, chunked: bool) -> None:
    st.faults.set_fault(Fault("limit", after=3000))
    with closing(http.client.HTTPConnection("127.0.0.1", st.port, timeout=10)) as conn:
        conn.request("GET", f"/download?n=100000&chunked={int(chunked)}",
                     headers={"Host": "f.test"})
        resp = conn.getresponse()
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            resp.read()


# --- tiny segments: nothing breaks --------------------------------------------------------------

def test_tiny_segments_both_ways_pass_through_intact(st: Stage) -> None:
    st.faults.set_fault(Fault("slice", size=3, delay=0.0))
    body = bytes(range(256)) * 4
    status, data = request(st.port, "POST", "/echo", body=body)
    assert status == 200, data
    out = json.loads(data)
    assert status == 200 and out["body_len"] == len(body)
    assert out["body_sha256"] == hashlib.sha256(body).hexdigest()
    status, data = request(st.port, "GET", "/download?n=3000&chunked=1")
    assert status == 200 and data == pattern_bytes(0, 3000)


# --- the keep-alive race: retried only when replaying is safe ----------------------------------

def test_reused_connection_reset_is_retried_for_a_bodiless_get(st: Stage) -> None:
    fault = Fault("reset", once=True)
    with closing(http.client.HTTPConnection("127.0.0.1", st.port, timeout=10)) as conn:
        assert request(st.port, conn=conn) == (200, b"U")  # leaves a pooled connection
        st.faults.set_fault(fault)
        # the pooled connection dies under the request; a fresh one serves it (RFC 9110 §9.2.2)
        assert request(st.port, conn=conn) == (200, b"U")
    (faulted,) = [l for l in st.faults.faulted() if l.fault is fault]
    assert faulted.requests > 1 and faulted.requests_since_fault == 1 and faulted.we_closed


def test_reused_connection_reset_is_not_retried_for_a_post_with_a_body(st: Stage) -> None:
    since = len(st.faults.snapshot())
    fault = Fault("reset", once=True)
    with closing(http.client.HTTPConnection("127.0.0.1", st.port, timeout=10)) as conn:
        assert request(st.port, conn=conn) == (200, b"U")
        st.faults.set_fault(fault)
        status = request(st.port, "POST", "/echo", body=b"x" * 100, conn=conn)[0]
        assert status == 502
    (faulted,) = [l for l in st.faults.faulted() if l.fault is fault]
    assert b"POST /echo" in faulted.sent
    # and it was not sent anywhere else (RFC 9110 §9.2.2: no automatic retry)
    assert not [l for l in st.faults.snapshot() if l.index >= since and l.index != faulted.index
                and b"POST /echo" in l.sent]
