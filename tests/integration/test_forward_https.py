"""A rule's ``forward_type = "HTTPS"`` (CLB's ForwardType) through the real proxy to a real TLS
upstream: requests re-encrypted with the target's host as SNI and ALPN http/1.1, carried on
pooled connections (one TLS connection for many requests), no verification by default,
verification against ``backend_ca`` when set (a certificate of another CA is a 502 and reaches
nothing), health checks over TLS too; and ModifyRule ForwardType through the admin API,
written back to the file and followed by traffic."""

from __future__ import annotations

import http.client
import json
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from tests.clbcall import clb
from tests.configs import listener
from tests.proxyproc import ProxyProcess
from tests.tlsupstream import TlsUpstream

CHECK_OFF = "{ enabled = false }"
FAST_CHECK = "{ interval = 2, timeout = 1, healthy_threshold = 2, unhealthy_threshold = 2 }"


def _rule(address: str, forward_type: str = "HTTPS", check: str = CHECK_OFF,
          extra: str = "") -> str:
    return (f'\n  [[listener.rule]]\n  domain = "api.test"\n  url = "/"\n'
            f'  forward_type = "{forward_type}"\n  health_check = {check}\n{extra}'
            f'  targets = [{{ type = "CVM", address = "{address}", weight = 10 }}]\n')


def _wait_for(check: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


def _gets(port: int, count: int, path: str = "/") -> list[tuple[int, bytes]]:
    """``count`` GETs on one keep-alive client connection: (status, body) each."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    out = []
    try:
        for i in range(count):
            conn.request("GET", f"{path}?n={i}", headers={"Host": "api.test"})
            resp = conn.getresponse()
            out.append((resp.status, resp.read()))
    finally:
        conn.close()
    return out


@pytest.fixture
def upstream(ca: trustme.CA) -> Iterator[TlsUpstream]:
    with TlsUpstream(ca) as server:
        yield server


def test_https_rule_reencrypts_with_sni_on_one_pooled_connection(
        tmp_path: Path, upstream: TlsUpstream) -> None:
    config = listener() + _rule(upstream.address)
    with ProxyProcess.with_config(config, tmp_path) as proc:
        port = proc.port()
        answers = _gets(port, 3) + _gets(port, 2)  # two client connections, one upstream one
    assert [status for status, _ in answers] == [200] * 5
    seen = upstream.seen("GET")
    assert [s.path for s in seen] == [f"/?n={i}" for i in (0, 1, 2, 0, 1)]
    assert {s.sni for s in seen} == {"localhost"}  # the target's host, RFC 6066 §3
    assert {s.alpn for s in seen} == {"http/1.1"}  # though the upstream offers h2 first
    assert {s.host for s in seen} == {"api.test"}  # Host kept, as for HTTP
    assert len({s.connection for s in seen}) == 1  # pooled: one TLS handshake for all five
    assert json.loads(answers[0][1])["sni"] == "localhost"


def test_an_ip_target_gets_no_sni_and_is_not_verified_by_default(
        tmp_path: Path, upstream: TlsUpstream) -> None:
    config = listener() + _rule(f"127.0.0.1:{upstream.port}")
    with ProxyProcess.with_config(config, tmp_path) as proc:
        [(status, _)] = _gets(proc.port(), 1)
    assert status == 200
    [seen] = upstream.seen("GET")
    assert seen.sni is None  # an IP literal is never sent as SNI (RFC 6066 §3)


def test_backend_ca_verifies_the_certificate(tmp_path: Path, upstream: TlsUpstream,
                                             ca_file: Path) -> None:
    config = listener() + _rule(upstream.address, extra=f'  backend_ca = "{ca_file}"\n')
    with ProxyProcess.with_config(config, tmp_path) as proc:
        [(status, body)] = _gets(proc.port(), 1)
    assert status == 200 and json.loads(body)["sni"] == "localhost"


def test_backend_ca_refuses_a_certificate_of_another_ca(tmp_path: Path,
                                                        upstream: TlsUpstream) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    config = listener() + _rule(upstream.address, extra='  backend_ca = "other-ca.pem"\n')
    with ProxyProcess.with_config(config, tmp_path) as proc:
        [(status, _)] = _gets(proc.port(), 1)
        proc.wait_for_log("TLS certificate verification failed", 15)
    assert status == 502
    assert upstream.seen() == []  # nothing was sent over an unverified connection


def _health(admin_port: int) -> str:
    """The one target's HealthStatusDetail, as DescribeTargetHealth shows it."""
    answer = clb(admin_port, "DescribeTargetHealth", {"LoadBalancerId": None,
                                                      "LoadBalancerIds": ["lb-local"]})
    [balancer] = answer["LoadBalancers"]
    [target] = balancer["Listeners"][0]["Rules"][0]["Targets"]
    return str(target["HealthStatusDetail"])


def test_health_checks_go_over_tls_to_an_https_rule(tmp_path: Path,
                                                     upstream: TlsUpstream) -> None:
    config = listener() + _rule(upstream.address, check=FAST_CHECK)
    with ProxyProcess.with_config(config, tmp_path, "--admin", "127.0.0.1:0") as proc:
        _wait_for(lambda: _health(proc.admin_port) != "Unknown")
        assert _health(proc.admin_port) == "Alive"
    checks = upstream.seen("HEAD")
    assert len(checks) >= 2
    assert {(s.path, s.sni, s.alpn) for s in checks} == {("/", "localhost", "http/1.1")}


def test_modify_rule_forward_type_is_written_back_and_followed(
        tmp_path: Path, upstream: TlsUpstream) -> None:
    config = listener() + _rule(upstream.address, forward_type="HTTP")
    with ProxyProcess.with_config(config, tmp_path, "--admin", "127.0.0.1:0") as proc:
        port = proc.port()
        [(status, _)] = _gets(port, 1)
        assert status == 502  # plain HTTP to a TLS server is no answer
        described = clb(proc.admin_port, "DescribeListeners")
        [rule] = described["Listeners"][0]["Rules"]
        assert rule["ForwardType"] == "HTTP"
        answer = clb(proc.admin_port, "ModifyRule", {"ListenerId": "lbl-web",
                                                     "LocationId": rule["LocationId"],
                                                     "ForwardType": "HTTPS"})
        assert "Error" not in answer, answer
        [rule_table] = tomllib.loads((tmp_path / "rules.toml").read_text())["listener"][0]["rule"]
        assert rule_table["forward_type"] == "HTTPS"
        described = clb(proc.admin_port, "DescribeListeners")
        assert described["Listeners"][0]["Rules"][0]["ForwardType"] == "HTTPS"
        _wait_for(lambda: _gets(port, 1)[0][0] == 200)
        bad = clb(proc.admin_port, "ModifyRule", {"ListenerId": "lbl-web",
                                                  "LocationId": rule["LocationId"],
                                                  "ForwardType": "TRPC"})
        assert bad["Error"]["Code"] == "InvalidParameterValue"
    assert upstream.seen("GET")[-1].sni == "localhost"
