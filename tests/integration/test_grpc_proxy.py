"""gRPC end to end (issue 15): a grpcio client, the real proxy's HTTP/2 frontend, a GRPC or
GRPCS rule, a real grpcio server. Over h2c by prior knowledge (``grpc.insecure_channel`` to an
HTTP listener with ``h2c = true``) and over TLS with ALPN h2 (``grpc.secure_channel`` to an
HTTPS listener, trustme's CA), to a cleartext backend and to a TLS one checked against
``backend_ca``.

Unary, server streaming, a client-streamed upload far larger than every window (relayed as it
arrives), an error answered as Trailers-Only, a backend that cancels mid-stream (the client
sees the call fail, never a clean end), a client that cancels (the backend's stream is
reset), the CLB headers reaching the backend, the access log
line of a gRPC call."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import trustme

from tests.configs import listener, rule
from tests.grpcserver import TIME_REMAINING, GrpcServer
from tests.proxyproc import ProxyProcess

DOMAIN = "grpc.test"  # its rule: forward_type GRPC to the cleartext backend
TLS_DOMAIN = "tls.grpc.test"  # GRPCS to the TLS backend, checked against backend_ca
SERVICE = "/test.Echo/"


@pytest.fixture(scope="module")
def backends(ca: trustme.CA) -> Iterator[tuple[GrpcServer, GrpcServer]]:
    with GrpcServer() as plain, GrpcServer(ca) as tls:
        yield plain, tls


@pytest.fixture(scope="module")
def files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("grpcproxy")
    leaf = ca.issue_cert(DOMAIN, TLS_DOMAIN)
    out = {"cert": tmp / "c.pem", "key": tmp / "k.pem", "ca": tmp / "ca.pem"}
    for blob in leaf.cert_chain_pems:
        blob.write_to_path(out["cert"], append=True)
    leaf.private_key_pem.write_to_path(out["key"])
    ca.cert_pem.write_to_path(out["ca"])
    return out


def _grpc_rule(domain: str, address: str, forward_type: str, **extra: object) -> str:
    return rule(domain, "/", f'[{{ type = "CVM", address = "{address}" }}]',
                forward_type=forward_type, **extra)


@pytest.fixture(scope="module")
def proxy(backends: tuple[GrpcServer, GrpcServer], files: dict[str, Path],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    plain, tls = backends
    # one rule per backend kind on each listener, told apart by domain (:authority)
    rules = (_grpc_rule(DOMAIN, plain.address, "GRPC")
             + _grpc_rule(TLS_DOMAIN, tls.address, "GRPCS", backend_ca=str(files["ca"])))
    config = (listener("h2c", h2c=True) + rules
              + listener("tls", "HTTPS")
              + f'certificates = [{{ cert = "{files["cert"]}", key = "{files["key"]}" }}]\n'
              + rules)
    tmp = tmp_path_factory.mktemp("grpcproxyrun")
    with ProxyProcess.with_config(config, tmp) as proc:
        yield proc


def _channel(proxy: ProxyProcess, files: dict[str, Path], kind: str, domain: str = DOMAIN
             ) -> grpc.Channel:
    authority = [("grpc.default_authority", domain)]
    if kind == "h2c":
        return grpc.insecure_channel(f"127.0.0.1:{proxy.port('h2c')}", options=authority)
    credentials = grpc.ssl_channel_credentials(root_certificates=files["ca"].read_bytes())
    return grpc.secure_channel(f"127.0.0.1:{proxy.port('tls')}", credentials,
                               options=authority + [("grpc.ssl_target_name_override", domain)])


# (listener, domain): h2c and TLS on the client side, cleartext and TLS behind
PATHS = [("h2c", DOMAIN), ("tls", DOMAIN), ("h2c", TLS_DOMAIN), ("tls", TLS_DOMAIN)]
IDS = ["h2c-to-grpc", "tls-to-grpc", "h2c-to-grpcs", "tls-to-grpcs"]


@pytest.fixture(params=PATHS, ids=IDS)
def way(request: pytest.FixtureRequest, proxy: ProxyProcess, files: dict[str, Path]
        ) -> Iterator[tuple[grpc.Channel, str]]:
    kind, domain = request.param
    channel = _channel(proxy, files, kind, domain)
    try:
        yield channel, domain
    finally:
        channel.close()


def test_unary_call_with_metadata_and_the_clb_headers(way: tuple[grpc.Channel, str],
                                                       backends: tuple[GrpcServer, GrpcServer]
                                                       ) -> None:
    channel, domain = way
    answer, call = channel.unary_unary(SERVICE + "Unary").with_call(
        b"hello", metadata=(("x-test", "end-to-end"),), timeout=20)
    assert answer == b"echo:hello"
    assert call.code() == grpc.StatusCode.OK
    seen = (backends[1] if domain == TLS_DOMAIN else backends[0]).seen[-1]
    assert seen["x-test"] == "end-to-end" and seen["x-real-ip"] == "127.0.0.1"
    assert seen["x-client-proto-ver"] == "HTTP/2.0"
    # the client's deadline travels on (grpc-timeout, rounded up on the wire)
    assert 0 < seen[TIME_REMAINING] <= 21


def test_server_streaming(way: tuple[grpc.Channel, str]) -> None:
    channel, domain = way
    messages = list(channel.unary_stream(SERVICE + "Count")(b"50:2000", timeout=20))
    assert len(messages) == 50
    assert messages[0].startswith(b"0.") and messages[49].startswith(b"49.")
    assert all(len(m) == 2000 for m in messages)


def test_client_streaming_upload_beyond_every_window(way: tuple[grpc.Channel, str]) -> None:
    channel, domain = way
    chunks = (bytes([i]) * 65536 for i in range(64))  # 4 MiB in 64 messages
    answer = channel.stream_unary(SERVICE + "Sum")(chunks, timeout=30)
    assert answer == str(64 * 65536).encode()


def test_an_error_status_reaches_the_client(way: tuple[grpc.Channel, str]) -> None:
    channel, domain = way
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(SERVICE + "Fail")(b"x", timeout=20)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "bad thing"


def test_a_backend_cancel_fails_the_call_never_ends_it_cleanly(way: tuple[grpc.Channel, str]
                                                               ) -> None:
    channel, domain = way
    call = channel.unary_stream(SERVICE + "Cancel")(b"", timeout=20)
    received = []
    with pytest.raises(grpc.RpcError) as caught:
        for message in call:
            received.append(message)
    assert caught.value.code() != grpc.StatusCode.OK
    assert received in ([], [b"first"])


def test_a_client_cancel_reaches_the_backend(way: tuple[grpc.Channel, str],
                                             backends: tuple[GrpcServer, GrpcServer]) -> None:
    channel, domain = way
    server = backends[1] if domain == TLS_DOMAIN else backends[0]
    before = server.gone
    call = channel.unary_stream(SERVICE + "Forever")(b"", timeout=30)
    assert [next(call) for _ in range(3)] == [b"more"] * 3
    call.cancel()  # RST_STREAM CANCEL to the proxy, which resets the backend's stream
    deadline = time.monotonic() + 10
    while server.gone == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.gone == before + 1
    # the connections go on serving
    assert channel.unary_unary(SERVICE + "Unary")(b"after", timeout=20) == b"echo:after"


def test_an_unknown_method_is_the_backends_unimplemented(way: tuple[grpc.Channel, str]) -> None:
    channel, domain = way
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(SERVICE + "Nope")(b"x", timeout=20)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_the_access_log_line_of_a_grpc_call(proxy: ProxyProcess, files: dict[str, Path],
                                            backends: tuple[GrpcServer, GrpcServer]) -> None:
    path = SERVICE + "Unary"
    before = sum(1 for r in proxy.access_log() if r["path"] == path)
    with _channel(proxy, files, "tls", TLS_DOMAIN) as channel:
        assert channel.unary_unary(path)(b"log me", timeout=20) == b"echo:log me"
    record = proxy.access_records(path, before + 1)[-1]
    assert (record["status"], record["method"], record["listener"]) == (200, "POST", "tls")
    assert record["rule"] == TLS_DOMAIN + "/" and record["server_name"] == TLS_DOMAIN
    assert record["upstream_addr"] == backends[1].address and record["upstream_status"] == "200"
    assert record["upstream_response_time"] is not None  # the answer ended cleanly
    assert record["ssl_protocol"].startswith("TLSv1.") and record["ssl_cipher"]
