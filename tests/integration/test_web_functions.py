"""Web functions (type = "HTTP", issue 16 item 1) through the real proxy: Tencent-shaped Flask,
Django and WebSocket templates started by their scf_bootstrap, raw HTTP (keep-alive, streaming
both ways, WebSocket, the CLB headers), an instance per network namespace (each binds 9000),
instance concurrency, idle retirement, the failures, and the mode without namespaces."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from tests.configs import FUNCTIONS, listener, scf_rule
from tests.proxyproc import ROOT, ProxyProcess, http_get
from tests.webfunctions import port_from_env, template, web_function

HOST = "example.com"


def _config(code: Path, name: str = "site", listener_settings: dict[str, object] | None = None,
            **settings: object) -> str:
    return (listener(**(listener_settings or {})) + scf_rule(HOST, "/", name)
            + web_function(name, code, **settings))


def _json(port: int, path: str) -> Any:
    status, body = http_get(port, HOST, path, timeout=60)
    assert status == 200, body
    return json.loads(body)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _wait_gone(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not _gone(pid):
        assert time.monotonic() < deadline, f"pid {pid} still runs"
        time.sleep(0.05)


def _concurrently(port: int, paths: list[str]) -> list[Any]:
    results: list[Any] = [None] * len(paths)

    def get(index: int) -> None:
        results[index] = _json(port, paths[index])

    threads = [threading.Thread(target=get, args=(i,)) for i in range(len(paths))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert all(r is not None for r in results), results
    return results


@pytest.fixture
def flask(tmp_path: Path) -> Path:
    return template("webflask", tmp_path)


# -- the Flask template ------------------------------------------------------------------------


def test_the_flask_template_answers_over_keep_alive_and_counts_one_cold_start(
        tmp_path: Path, flask: Path) -> None:
    with ProxyProcess.with_config(_config(flask), tmp_path, "--admin", "127.0.0.1:0") as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port(), timeout=60)
        for _ in range(3):  # one client connection, kept alive
            conn.request("GET", "/", headers={"Host": HOST})
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"hello from flask")
        conn.close()
        records = proxy.access_records("/", 3)
        assert [r["cold_start"] for r in records] == [True, False, False]
        assert {r["target"] for r in records} == {"SCF:default/site"}
        assert len({r["function_request_id"] for r in records}) == 3
        assert {r["upstream_addr"] for r in records} == {"127.0.0.1:9000"}
        proxy.wait_for_log("cold start function=default/site instance pid=")
        metrics = http.client.HTTPConnection("127.0.0.1", proxy.admin_port, timeout=30)
        metrics.request("GET", "/metrics")
        text = metrics.getresponse().read().decode()
        assert 'clbscf_function_cold_starts_total{function="default/site"} 1' in text
        assert 'clbscf_function_invocations_total{function="default/site",outcome="ok"} 3' \
            in text
        assert 'clbscf_function_cold_start_seconds_count{function="default/site"} 1' in text


def test_the_app_gets_clb_headers_its_code_directory_and_scf_environment(
        tmp_path: Path, flask: Path) -> None:
    config = _config(flask, environment={"GREETING": "hi"})
    env = {"TENCENTCLOUD_SECRETID": "proxy-secret-id", "TENCENTCLOUD_SECRETKEY": "k"}
    with ProxyProcess.with_config(config, tmp_path, env=env) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port(), timeout=60)
        conn.request("GET", "/headers", headers={"Host": HOST, "X-Forwarded-For": "6.6.6.6",
                                                 "X-Real-IP": "6.6.6.6"})
        headers = json.loads(conn.getresponse().read())
        conn.close()
        assert headers["Host"] == HOST
        assert headers["X-Forwarded-For"] == "127.0.0.1"  # a client's own copy is replaced
        assert headers["X-Real-Ip"] == "127.0.0.1"
        assert headers["X-Forwarded-Proto"] == headers["X-Client-Proto"] == "http"
        assert headers["X-Client-Proto-Ver"] == "HTTP/1.1"
        assert float(headers["X-Stgw-Time"]) > 0
        who = _json(proxy.port(), "/whoami")
        assert who["cwd"] == str(flask)
        assert who["env"]["SCF_FUNCTIONNAME"] == "site"
        assert who["env"]["SCF_NAMESPACE"] == "default"
        assert who["env"]["TENCENTCLOUD_RUNENV"] == "SCF"
        assert who["env"]["PORT"] == "9000"
        assert who["env"]["GREETING"] == "hi"
        assert "TENCENTCLOUD_SECRETID" not in who["env"]  # the proxy's secrets stay out
        proxy.wait_for_log('function=default/site instance pid=')


def test_a_response_streams_as_the_app_writes_it(tmp_path: Path, flask: Path) -> None:
    gate = tmp_path / "gate"
    with ProxyProcess.with_config(_config(flask), tmp_path) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port(), timeout=60)
        conn.request("GET", f"/stream?gate={gate}", headers={"Host": HOST})
        response = conn.getresponse()
        assert response.status == 200
        # the app sends the second piece only once the file exists: a proxy that waited for
        # the whole body would never hand over the first
        assert response.readline() == b"first piece\n"
        gate.write_text("go")
        assert response.read() == b"second piece\n"
        conn.close()


def test_an_upload_streams_to_the_app_beyond_the_event_limit(tmp_path: Path,
                                                             flask: Path) -> None:
    piece = os.urandom(1 << 20)
    pieces = 8  # 8 MB: more than an SCF event may carry
    config = _config(flask, listener_settings={"proxy_request_buffering": False})
    with ProxyProcess.with_config(config, tmp_path) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port(), timeout=120)
        conn.request("POST", "/upload", body=(piece for _ in range(pieces)),
                     headers={"Host": HOST}, encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 200
        digest = hashlib.sha256(piece * pieces).hexdigest()
        assert json.loads(response.read()) == {"size": pieces << 20, "sha256": digest}
        conn.close()


def test_a_redirect_keeps_the_clients_host(tmp_path: Path, flask: Path) -> None:
    with ProxyProcess.with_config(_config(flask), tmp_path) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port(), timeout=60)
        conn.request("GET", "/moved", headers={"Host": HOST})
        response = conn.getresponse()
        response.read()
        assert response.status == 302
        assert response.getheader("Location") in ("/", f"http://{HOST}/")
        conn.close()


# -- instances: namespaces, concurrency, retirement -------------------------------------------


def test_instances_each_bind_port_9000_in_a_namespace_of_their_own(tmp_path: Path,
                                                                   flask: Path) -> None:
    config = _config(flask, concurrency=2, instance_concurrency=1)
    with ProxyProcess.with_config(config, tmp_path) as proxy:
        pids = {r["pid"] for r in _concurrently(proxy.port(), ["/slow?s=2", "/slow?s=2"])}
        assert len(pids) == 2  # two servers on 0.0.0.0:9000 at once
        assert proxy.stderr.count("cold start function=default/site") == 2
        # a third request, all idle now: the oldest instance with room takes it
        assert _json(proxy.port(), "/slow?s=0")["pid"] in pids
    for pid in pids:
        _wait_gone(pid)  # stopping the proxy took the instances


def test_one_instance_serves_instance_concurrency_requests_at_once(tmp_path: Path,
                                                                    flask: Path) -> None:
    # /together answers only once 3 requests are inside the app at the same time
    config = _config(flask, concurrency=1, instance_concurrency=3,
                     environment={"TOGETHER": "3"})
    with ProxyProcess.with_config(config, tmp_path) as proxy:
        results = _concurrently(proxy.port(), ["/together"] * 3)
        assert len({r["pid"] for r in results}) == 1
        assert proxy.stderr.count("cold start function=default/site") == 1


def test_requests_beyond_every_slot_wait_in_line(tmp_path: Path, flask: Path) -> None:
    config = _config(flask, concurrency=1, instance_concurrency=1, queue_timeout=60)
    with ProxyProcess.with_config(config, tmp_path) as proxy:
        results = _concurrently(proxy.port(), ["/slow?s=0.5"] * 3)
        assert len({r["pid"] for r in results}) == 1
        assert proxy.stderr.count("cold start function=default/site") == 1


def test_an_idle_instance_retires_and_the_next_request_starts_another(
        tmp_path: Path, flask: Path) -> None:
    with ProxyProcess.with_config(_config(flask, idle_timeout=1), tmp_path) as proxy:
        first = _json(proxy.port(), "/whoami")["pid"]
        _wait_gone(first)
        second = _json(proxy.port(), "/whoami")["pid"]
        assert second != first
        records = proxy.access_records("/whoami", 2)
        assert [r["cold_start"] for r in records] == [True, True]


def test_a_slow_answer_past_timeout_is_504_and_the_instance_stays(tmp_path: Path,
                                                                    flask: Path) -> None:
    with ProxyProcess.with_config(_config(flask, timeout=1), tmp_path) as proxy:
        pid = _json(proxy.port(), "/whoami")["pid"]
        status, _ = http_get(proxy.port(), HOST, "/slow?s=4", timeout=60)
        assert status == 504
        assert _json(proxy.port(), "/whoami")["pid"] == pid  # not killed: it may serve others


def test_an_instance_that_dies_serving_gives_502_and_is_replaced(tmp_path: Path,
                                                                 flask: Path) -> None:
    with ProxyProcess.with_config(_config(flask), tmp_path) as proxy:
        pid = _json(proxy.port(), "/whoami")["pid"]
        status, _ = http_get(proxy.port(), HOST, "/die", timeout=60)
        assert status == 502
        proxy.wait_for_log("scf_bootstrap exited with status 7 while serving", timeout=30)
        again = _json(proxy.port(), "/whoami")
        assert again["pid"] != pid
        assert proxy.access_records("/whoami", 2)[-1]["cold_start"] is True


# -- WebSocket and Django ----------------------------------------------------------------------


def test_a_websocket_is_tunnelled_and_holds_its_slot_until_closed(tmp_path: Path) -> None:
    code = template("webws", tmp_path)
    config = _config(code, concurrency=1, instance_concurrency=1, queue_timeout=60)
    with ProxyProcess.with_config(config, tmp_path) as proxy:
        url = f"ws://127.0.0.1:{proxy.port()}/chat"
        second: dict[str, Any] = {}

        def other() -> None:  # waits in line for the one slot the first connection holds
            with connect(url, open_timeout=60) as ws:
                ws.send("again")
                second["reply"] = ws.recv(timeout=30)

        with connect(url, open_timeout=60) as first:
            first.send("hello")
            pid, _, text = str(first.recv(timeout=30)).partition(":")
            assert text == "hello"
            thread = threading.Thread(target=other)
            thread.start()
            first.send("still here")
            assert first.recv(timeout=30) == f"{pid}:still here"
        # closed: its slot is free for the one in line
        thread.join(90)
        assert second.get("reply") == f"{pid}:again"
        records = proxy.access_records("/chat", 2)
        assert [r["status"] for r in records] == [101, 101]


def test_the_django_template_answers_with_the_clb_headers(tmp_path: Path) -> None:
    code = template("webdjango", tmp_path)
    with ProxyProcess.with_config(_config(code), tmp_path) as proxy:
        status, body = http_get(proxy.port(), HOST, "/", timeout=90)
        assert (status, body) == (200, b"hello from django")
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port(), timeout=60)
        conn.request("POST", "/client", body=b"form=data",
                     headers={"Host": HOST, "Content-Type": "text/plain"})
        seen = json.loads(conn.getresponse().read())
        conn.close()
        assert seen["forwarded_for"] == seen["real_ip"] == "127.0.0.1"
        assert (seen["proto"], seen["host"], seen["method"], seen["body"]) == \
            ("http", HOST, "POST", "form=data")
    _wait_gone(seen["pid"])  # runserver's reloader child went with its process group


# -- bad input ---------------------------------------------------------------------------------


def test_a_bootstrap_that_exits_gives_502_and_the_next_call_starts_again(
        tmp_path: Path) -> None:
    with ProxyProcess.with_config(_config(FUNCTIONS / "webexits"), tmp_path) as proxy:
        for attempt in (1, 2):
            status, _ = http_get(proxy.port(), HOST, "/", timeout=60)
            assert status == 502
            proxy.wait_for_log("scf_bootstrap exited with status 3 before listening on its "
                               "port", timeout=30)
            deadline = time.monotonic() + 30
            while proxy.stderr.count("exited with status 3") < attempt:
                assert time.monotonic() < deadline, proxy.stderr
                time.sleep(0.05)
        assert proxy.stderr.count("boom: no database configured") == 2  # its own words


def test_a_bootstrap_that_never_listens_gives_502_after_init_timeout(tmp_path: Path) -> None:
    config = _config(FUNCTIONS / "webdeaf", init_timeout=2)
    with ProxyProcess.with_config(config, tmp_path) as proxy:
        status, _ = http_get(proxy.port(), HOST, "/", timeout=60)
        assert status == 502
        proxy.wait_for_log("did not listen on port 9000 within its init_timeout of 2s")
        proxy.wait_for_log("stdout: starting, but listening nowhere")


def test_check_config_names_a_missing_scf_bootstrap(tmp_path: Path) -> None:
    code = tmp_path / "empty"
    code.mkdir()
    path = tmp_path / "rules.toml"
    path.write_text(_config(code))
    done = subprocess.run([sys.executable, "-m", "proxy.cli", "--config", str(path),
                           "--check-config"], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)
    assert done.returncode == 2
    assert f"function[0].code: type = \"HTTP\" needs an executable scf_bootstrap in the code " \
           f"directory, got no {code / 'scf_bootstrap'}" in done.stderr


# -- without namespaces --------------------------------------------------------------------------


def test_without_namespaces_one_instance_listens_on_port(tmp_path: Path,
                                                         flask: Path) -> None:
    port_from_env(flask)
    config = _config(flask, concurrency=2)
    with ProxyProcess.with_config(config, tmp_path,
                                  env={"CLBSCF_WEB_ISOLATION": "port"}) as proxy:
        proxy.wait_for_log("no network namespaces here (CLBSCF_WEB_ISOLATION=port)")
        proxy.wait_for_log("function=default/site: concurrency 2 needs network namespaces")
        pids = {r["pid"] for r in _concurrently(proxy.port(), ["/slow?s=0.5"] * 2)}
        assert len(pids) == 1  # one instance, whatever concurrency says
        port = _json(proxy.port(), "/whoami")["env"]["PORT"]
        assert port != "9000"
        assert proxy.access_records("/whoami", 1)[0]["upstream_addr"] == f"127.0.0.1:{port}"

