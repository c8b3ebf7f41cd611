"""SPEC §6: the integration response and every error row, through the real proxy process."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator

import pytest

from tests.configs import function, listener, scf_rule
from tests.proxyproc import ProxyProcess

ANALYSE_FAILED = b'{"errno":403,"error":"Analyse scf response failed."}'


_PATHS = ("echo", "malformed", "binary", "raises", "raises-debug", "sleeps", "crash", "busy")
CONFIG = (listener() + "".join(scf_rule("fn.test", f"/{name}", name) for name in _PATHS)
          + scf_rule("fn.test", "/drained", "echo", weight=0)
          + function("echo") + function("malformed") + function("binary") + function("raises")
          + function("raises-debug", "raises", debug=True)
          + function("sleeps", timeout=1) + function("crash")
          + function("busy", "sleeps", timeout=5, concurrency=1, queue_size=0))


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    with ProxyProcess.with_config(CONFIG, tmp_path_factory.mktemp("scf")) as proc:
        yield proc


def _body(proxy: ProxyProcess, method: str, path: str, body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port(), timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Host": "fn.test", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def test_valid_response_gives_its_status_headers_and_body(proxy: ProxyProcess) -> None:
    status, headers, body = _body(proxy, "GET", "/binary")
    assert status == 201
    assert headers["Content-Type"] == "image/png"
    assert headers.get_all("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/; HttpOnly"]
    assert headers.get_all("X-Multi") == ["v1", "v2"]
    assert body.startswith(b"\x89PNG\r\n\x1a\n") and len(body) == 16 + 256
    # hop-by-hop headers from the function are dropped, Content-Length computed
    assert headers["Content-Length"] == str(len(body))
    assert "Transfer-Encoding" not in headers
    assert headers["Connection"] == "keep-alive"


@pytest.mark.parametrize("kind", [
    "not_json", "array", "string", "no_status", "status_string", "status_low", "status_high",
    "status_bool", "headers_list", "header_int", "header_crlf", "b64_string", "bad_base64",
    "body_dict",
])
def test_malformed_integration_response_gives_502_analyse_failed(proxy: ProxyProcess,
                                                                  kind: str) -> None:
    status, headers, body = _body(proxy, "GET", f"/malformed?kind={kind}")
    assert status == 502
    assert body == ANALYSE_FAILED
    assert "X-Injected" not in headers


def test_response_over_6mb_gives_502(proxy: ProxyProcess) -> None:
    status, _, _ = _body(proxy, "GET", "/malformed?kind=too_large")
    assert status == 502


def test_handler_exception_gives_502_and_logs_the_trace(proxy: ProxyProcess) -> None:
    status, _, body = _body(proxy, "GET", "/raises")
    assert status == 502
    assert b"Traceback" not in body and b"stackTrace" not in body
    proxy.wait_for_log("Traceback")


def test_debug_function_shows_the_trace_to_the_client(proxy: ProxyProcess) -> None:
    status, _, body = _body(proxy, "GET", "/raises-debug")
    assert status == 502
    error = json.loads(body)
    assert error["statusCode"] == 430
    assert "Traceback" in error["stackTrace"]


def test_timeout_gives_504_and_the_next_request_succeeds(proxy: ProxyProcess) -> None:
    status, _, _ = _body(proxy, "GET", "/sleeps?seconds=3")
    assert status == 504
    status, _, _ = _body(proxy, "GET", "/sleeps?seconds=0")
    assert status == 200


def test_worker_crash_gives_502_and_recovers(proxy: ProxyProcess) -> None:
    status, _, _ = _body(proxy, "GET", "/crash")
    assert status == 502
    status, _, _ = _body(proxy, "GET", "/echo")
    assert status == 200


def test_event_over_6mb_gives_413_without_invoking(proxy: ProxyProcess) -> None:
    status, _, _ = _body(proxy, "POST", "/echo", b"x" * (7 * 1024 * 1024),
                         {"Content-Type": "text/plain"})
    assert status == 413


def test_binary_upload_just_under_the_limit_after_base64_gives_413(proxy: ProxyProcess) -> None:
    # 5 MB of binary becomes ~6.7 MB of Base64: over the 6 MB event limit.
    status, _, _ = _body(proxy, "POST", "/echo", b"\x00" * (5 * 1024 * 1024),
                         {"Content-Type": "application/octet-stream"})
    assert status == 413


def test_all_instances_busy_and_no_queue_gives_503_with_retry_after(proxy: ProxyProcess
                                                                    ) -> None:
    results: list[int] = []
    assert _body(proxy, "GET", "/busy?seconds=0")[0] == 200  # warm: the slow one starts at once
    slow = threading.Thread(
        target=lambda: results.append(_body(proxy, "GET", "/busy?seconds=2")[0]))
    slow.start()
    time.sleep(0.3)  # let it take the only instance before we ask for it
    deadline = time.monotonic() + 10
    status, headers = 0, None
    while time.monotonic() < deadline:
        status, headers, _ = _body(proxy, "GET", "/busy?seconds=0")
        if status == 503:
            break
        time.sleep(0.05)
    slow.join()
    assert status == 503
    assert headers is not None and headers["Retry-After"].isdigit()
    assert results == [200]


def test_weight_zero_target_gives_503(proxy: ProxyProcess) -> None:
    status, _, _ = _body(proxy, "GET", "/drained")
    assert status == 503


def test_access_log_has_one_json_line_per_request(proxy: ProxyProcess) -> None:
    _body(proxy, "GET", "/echo/access-log?trace=1")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        lines = [r for r in proxy.access_log() if r.get("path") == "/echo/access-log"]
        if lines:
            break
        time.sleep(0.05)
    record = lines[-1]
    assert record["status"] == 200
    assert record["listener"] == "web"
    assert record["rule"] == "fn.test/echo"
    assert record["target"] == "SCF:default/echo"
    assert record["function_request_id"]
    assert record["method"] == "GET" and record["host"] == "fn.test"
    assert {"time", "client", "bytes", "duration_ms", "cold_start"} <= set(record)

