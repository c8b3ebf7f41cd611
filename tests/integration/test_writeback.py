"""Issue 13, file mode through the real proxy: an admin API change is written back into the
--config file before it is answered (comments and layout kept), so SIGHUP and a restart keep
it; a file edited by hand since it was loaded, a read-only file and the embedded default
refuse changes and change nothing; the API refuses what the file loader refuses (``a..b``)."""

from __future__ import annotations

import os
import signal
import stat
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clbcall import clb, targets
from tests.configs import function, listener, rule
from tests.proxyproc import ProxyProcess, http_get
from tests.upstreams import Upstream

COMMENT = "# the ops team's comment: keep me\n"


def _config(cvm_address: str) -> str:
    return (COMMENT + listener()
            + "  # the API rule, with its own comment\n"
            + rule("api.test", "/", f'[{{ type = "CVM", address = "{cvm_address}", weight = 10 }}]')
            + function("echo", "whoami"))


def _where() -> dict[str, str]:
    return {"ListenerId": "lbl-web", "Domain": "api.test", "Url": "/"}


def _wait_for(check: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


@pytest.fixture(params=[1, 2], ids=["1-process", "2-workers"])
def workers(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture
def started(tmp_path: Path, cvm: Upstream, workers: int) -> Iterator[tuple[ProxyProcess, Path]]:
    with ProxyProcess.with_config(_config(cvm.address), tmp_path, "--admin", "127.0.0.1:0",
                                  "--workers", str(workers)) as proc:
        yield proc, tmp_path / "rules.toml"


def test_changes_are_written_back_and_survive_sighup_and_restart(
        started: tuple[ProxyProcess, Path], cvm: Upstream, workers: int) -> None:
    proc, path = started
    second = Upstream("second").start()
    try:
        answer = clb(proc.admin_port, "RegisterTargets", {**_where(), "Targets": [
            {"EniIp": "127.0.0.1", "Port": second.port, "Weight": 30}]})
        assert "Error" not in answer, answer
        answer = clb(proc.admin_port, "ModifyTargetWeight", {**_where(), "Targets": [
            {"EniIp": "127.0.0.1", "Port": cvm.port}], "Weight": 0})
        assert "Error" not in answer, answer
        # on disk before the answer: the file reads as the change, comments where they were
        text = path.read_text()
        assert text.startswith(COMMENT) and "# the API rule, with its own comment" in text
        [rule_table] = tomllib.loads(text)["listener"][0]["rule"]
        assert rule_table["targets"] == [
            {"type": "CVM", "address": cvm.address, "weight": 0},
            {"type": "CVM", "address": second.address, "weight": 30}]
        expected = {"api.test/": [(cvm.address, 0), (second.address, 30)]}
        assert targets(proc.admin_port) == expected
        port = proc.port()
        assert {http_get(port, "api.test")[1] for _ in range(4)} == {b"second"}

        os.kill(proc.pid, signal.SIGHUP)  # a reload from the file keeps the change
        proc.wait_for_log("config " + ("applied" if workers > 1 else "reloaded"), 15)
        assert targets(proc.admin_port) == expected
        proc.stop()

        with ProxyProcess(proc.args) as again:  # and so does a restart
            assert targets(again.admin_port) == expected
            assert {http_get(again.port(), "api.test")[1] for _ in range(4)} == {b"second"}
    finally:
        second.stop()


def test_a_file_edited_by_hand_since_it_was_loaded_is_a_conflict(
        started: tuple[ProxyProcess, Path], cvm: Upstream) -> None:
    proc, path = started
    edited = path.read_text().replace("weight = 10", "weight = 20")
    path.write_text(edited)
    answer = clb(proc.admin_port, "ModifyTargetWeight", {**_where(), "Targets": [
        {"EniIp": "127.0.0.1", "Port": cvm.port}], "Weight": 55})
    assert answer["Error"]["Code"] == "FailedOperation"
    assert "conflict" in answer["Error"]["Message"] and "reload" in answer["Error"]["Message"]
    assert path.read_text() == edited  # nothing changed: not the file ...
    assert targets(proc.admin_port) == {"api.test/": [(cvm.address, 10)]}  # ... nor the table

    os.kill(proc.pid, signal.SIGHUP)  # reload first, as the error says, and it works
    _wait_for(lambda: targets(proc.admin_port) == {"api.test/": [(cvm.address, 20)]})
    answer = clb(proc.admin_port, "ModifyTargetWeight", {**_where(), "Targets": [
        {"EniIp": "127.0.0.1", "Port": cvm.port}], "Weight": 55})
    assert "Error" not in answer, answer
    assert "weight = 55" in path.read_text()


def test_a_read_only_file_refuses_changes_and_points_to_the_store(
        started: tuple[ProxyProcess, Path], cvm: Upstream) -> None:
    proc, path = started
    before = path.read_text()
    path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)  # as a ConfigMap mounts it
    try:
        answer = clb(proc.admin_port, "RegisterTargets", {**_where(), "Targets": [
            {"EniIp": "127.0.0.1", "Port": 9}]})
    finally:
        path.chmod(0o644)
    assert answer["Error"]["Code"] == "FailedOperation"
    assert "read-only" in answer["Error"]["Message"] and "--store" in answer["Error"]["Message"]
    assert path.read_text() == before
    assert targets(proc.admin_port) == {"api.test/": [(cvm.address, 10)]}


def test_the_api_refuses_a_host_name_the_loader_refuses(
        started: tuple[ProxyProcess, Path], cvm: Upstream) -> None:
    proc, path = started
    before = path.read_text()
    answer = clb(proc.admin_port, "RegisterTargets", {**_where(), "Targets": [
        {"EniIp": "a..b", "Port": 80}]})
    assert answer["Error"]["Code"] == "InvalidParameterValue"
    assert "address" in answer["Error"]["Message"], answer
    assert path.read_text() == before
    assert targets(proc.admin_port) == {"api.test/": [(cvm.address, 10)]}


def test_the_embedded_default_refuses_changes_it_could_not_keep() -> None:
    with ProxyProcess(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]) as proc:
        answer = clb(proc.admin_port, "RegisterFunctionTargets", {
            "ListenerId": "lbl-default", "Domain": "localhost", "Url": "/",
            "FunctionTargets": [{"Function": {"FunctionName": "hello"}, "Weight": 5}]})
        assert answer["Error"]["Code"] == "InvalidParameterValue.Duplicate"  # its own check
        answer = clb(proc.admin_port, "ModifyFunctionTargets", {
            "ListenerId": "lbl-default", "Domain": "localhost", "Url": "/",
            "FunctionTargets": [{"Function": {"FunctionName": "hello"}, "Weight": 5}]})
        assert answer["Error"]["Code"] == "FailedOperation"
        assert "--config" in answer["Error"]["Message"] and "--store" in \
            answer["Error"]["Message"]
        assert targets(proc.admin_port, "lbl-default") == {"localhost/": [("hello", 10)]}
