"""Issue 13, store mode through real processes: a real etcd (tests/etcd.py), the real
``clbscf-proxy store push/pull`` commands and real proxy instances started with ``--store``.

Covered: push validates (a bad file exits 2 naming the field path and stores nothing) and
pull prints what push stored; an empty store and a bad URL exit 2 saying so; an instance
serves the stored table and follows its changes (warm functions kept, a listener change and an
invalid document refused, logged and counted); three instances see one API change (the
propagation time is printed); two instances' simultaneous changes both land; etcd stopped and
restarted under load loses no request, refuses changes meanwhile (FailedOperation, nothing
half-applied, /healthz says so) and catches up; kill -9 in the middle of changes leaves a
whole table; refused authentication and TLS errors name the endpoint; a dead first endpoint
is skipped; a deleted table is refused; a resent write is taken once.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from proxy.store import Conflict
from proxy.store.etcd import EtcdBackend, parse_store_url
from tests.clbcall import clb, targets
from tests.configs import function, listener, rule, scf_rule
from tests.etcd import Etcd
from tests.proxyproc import ROOT, ProxyProcess, http_get
from tests.upstreams import Upstream

EMPTY = "store holds no table: push one with clbscf-proxy store push"
WHERE = {"ListenerId": "lbl-web", "Domain": "api.test", "Url": "/"}


def _table(cvm_address: str, weight: int = 10) -> str:
    return ("# pushed by the tests: keep me\n" + listener()
            + rule("api.test", "/", f'[{{ type = "CVM", address = "{cvm_address}", '
                                    f'weight = {weight} }}]')
            + scf_rule("fn.test", "/", "counter") + function("counter"))


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy.cli", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env={**os.environ, **(env or {})})


def _wait_for(check: Callable[[], object], timeout: float = 15.0, what: str = "") -> float:
    """Poll ``check`` until true; the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not reached in {timeout}s: {what}")
        time.sleep(0.02)
    return time.monotonic() - start


def _healthz(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
    return answer


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _weight(port: int) -> int:
    return targets(port)["api.test/"][0][1]


def _set_weight(port: int, cvm: Upstream, weight: int) -> dict[str, Any]:
    return clb(port, "ModifyTargetWeight", {**WHERE, "Targets": [
        {"EniIp": "127.0.0.1", "Port": cvm.port}], "Weight": weight})


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    with Etcd(tmp_path_factory.mktemp("etcd") / "member") as server:
        yield server


@pytest.fixture
def url(etcd: Etcd) -> str:
    """A store URL of its own for each test (a fresh prefix on the module's etcd)."""
    return etcd.store_url(f"/t-{uuid.uuid4().hex[:8]}")


def _key(url: str) -> str:
    return "/" + url.split("/", 3)[3] + "/table"


def _push(url: str, tmp_path: Path, text: str) -> None:
    path = tmp_path / "pushed.toml"
    path.write_text(text)
    done = _cli("store", "push", str(path), "--store", url)
    assert done.returncode == 0, done.stderr


def _instance(url: str, *extra: str, env: dict[str, str] | None = None) -> ProxyProcess:
    return ProxyProcess(["--store", url, "--admin", "127.0.0.1:0", *extra], env=env)


# -- push and pull ------------------------------------------------------------------------------


def test_push_validates_and_pull_prints_what_was_pushed(
        url: str, etcd: Etcd, tmp_path: Path, cvm: Upstream) -> None:
    empty = _cli("store", "pull", "--store", url)
    assert empty.returncode == 2 and EMPTY in empty.stderr and url in empty.stderr

    bad = tmp_path / "bad.toml"
    bad.write_text(_table(cvm.address).replace("weight = 10", "weight = 500"))
    done = _cli("store", "push", str(bad), "--store", url)
    assert done.returncode == 2
    assert "listener[0].rule[0].target[0].weight" in done.stderr and "500" in done.stderr
    assert etcd.get(_key(url)) == (None, 0)  # nothing stored

    text = _table(cvm.address)
    _push(url, tmp_path, text)
    pulled = _cli("store", "pull", "--store", url)
    assert pulled.returncode == 0 and pulled.stdout == text  # comments and all

    done = _cli("store", "push", str(bad), "--store", url)  # a bad file replaces nothing
    assert done.returncode == 2 and etcd.get(_key(url))[0] == text

    # --if-empty: a seed that keeps what is there (and still refuses a bad file)
    other = tmp_path / "other.toml"
    other.write_text(_table(cvm.address, weight=55))
    revision = etcd.get(_key(url))[1]
    done = _cli("store", "push", "--if-empty", str(other), "--store", url)
    assert done.returncode == 0 and "already holds a table" in done.stderr
    assert etcd.get(_key(url)) == (text, revision)
    done = _cli("store", "push", "--if-empty", str(bad), "--store", url)
    assert done.returncode == 2 and "weight" in done.stderr
    fresh = url + "-seed"
    done = _cli("store", "push", "--if-empty", str(other), "--store", fresh)
    assert done.returncode == 0 and "stored in" in done.stderr
    assert etcd.get(_key(fresh))[0] == other.read_text()


@pytest.mark.parametrize("bad", ["etcd:/127.0.0.1:2379/x", "etcd://127.0.0.1:2379",
                                 "http://127.0.0.1:2379/x", "etcd://127.0.0.1:99999/x",
                                 "etcd://:2379/x"])
def test_a_store_url_that_does_not_parse_exits_2_naming_it(bad: str, tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(listener())
    for args in (["--store", bad], ["store", "pull", "--store", bad],
                 ["store", "push", str(path), "--store", bad]):
        done = _cli(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert "--store" in done.stderr and repr(bad) in done.stderr


def test_store_and_config_together_exit_2(url: str, tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(listener())
    done = _cli("--store", url, "--config", str(path))
    assert done.returncode == 2 and "--store and --config" in done.stderr


def test_an_empty_or_unreachable_store_exits_2_at_start(url: str) -> None:
    done = _cli("--store", url, "--admin", "127.0.0.1:0")
    assert done.returncode == 2 and EMPTY in done.stderr
    down = "etcd://127.0.0.1:1/x"
    done = _cli("--store", down)
    assert done.returncode == 2 and "127.0.0.1:1" in done.stderr and "unreachable" in \
        done.stderr


# -- one instance following the store -----------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2], ids=["1-process", "2-workers"])
def test_an_instance_serves_the_store_and_follows_its_changes(
        workers: int, url: str, etcd: Etcd, tmp_path: Path, cvm: Upstream) -> None:
    second = Upstream("second").start()
    try:
        _push(url, tmp_path, _table(cvm.address))
        with _instance(url, "--workers", str(workers)) as proc:
            port = proc.port()
            assert http_get(port, "api.test")[1] == b"cvm"
            warm = _calls(port, 6)

            # an operator pushes a new table: it is served within about a second
            started = time.monotonic()
            _push(url, tmp_path, _table(second.address))
            took = _wait_for(lambda: http_get(port, "api.test")[1] == b"second",
                             what="the pushed table")
            print(f"\nstore -> served ({workers} workers): {took * 1000:.0f} ms "
                  f"(push included: {(time.monotonic() - started) * 1000:.0f} ms)")
            # warm function instances are kept, as on SIGHUP: their counts go on
            _still_warm(warm, _calls(port, 6), workers)

            # a change to the listeners is refused, logged and counted; the table stays
            moved = _table(second.address).replace('name = "web"', 'name = "other"')
            etcd.put(_key(url), moved)
            proc.wait_for_log("cannot add, remove or rebind listeners", 15)
            _wait_for(lambda: _metric(proc.admin_port, "clbscf_store_rejected_total") == 1,
                      what="the rejection counted")
            assert http_get(port, "api.test")[1] == b"second"

            # so is a document that does not validate (written by hand with etcdctl)
            invalid = _table(cvm.address).replace("weight = 10", "weight = 101")
            done = etcd.etcdctl("put", _key(url), stdin=invalid)
            assert done.returncode == 0, done.stderr
            proc.wait_for_log("listener[0].rule[0].target[0].weight: must be 0..100", 15)
            _wait_for(lambda: _metric(proc.admin_port, "clbscf_store_rejected_total") == 2,
                      what="the rejection counted")
            assert http_get(port, "api.test")[1] == b"second"
            store = _healthz(proc.admin_port)["store"]
            assert store["state"] == "ok" and int(store["refused"]["revision"]) > int(
                store["revision"]) and "target[0].weight" in store["refused"]["error"]
            # ... and a change made through the API now says what is wrong with the store
            answer = _set_weight(proc.admin_port, second, 5)
            assert answer["Error"]["Code"] == "FailedOperation"
            assert "does not validate" in answer["Error"]["Message"]
            assert etcd.get(_key(url))[0] == invalid

            # a good table again is followed again
            _push(url, tmp_path, _table(cvm.address, weight=7))
            _wait_for(lambda: http_get(port, "api.test")[1] == b"cvm", what="a good table")
            assert _weight(proc.admin_port) == 7
            assert "refused" not in _healthz(proc.admin_port)["store"]
            _still_warm(warm, _calls(port, 6), workers)
    finally:
        second.stop()


def _calls(port: int, count: int) -> dict[int, int]:
    """The counter function's instances (pid) and the highest call count each answered."""
    seen: dict[int, int] = {}
    for _ in range(count):
        answer = json.loads(http_get(port, "fn.test")[1])
        seen[answer["pid"]] = max(seen.get(answer["pid"], 0), answer["calls"])
    return seen


def _still_warm(before: dict[int, int], after: dict[int, int], workers: int) -> None:
    shared = set(before) & set(after)
    assert shared, (before, after)
    assert all(after[pid] > before[pid] for pid in shared), (before, after)
    if workers == 1:  # one process, one instance: the very same one
        assert set(after) == set(before)
    before.update(after)


# -- a fleet ------------------------------------------------------------------------------------


def test_an_api_change_on_one_of_three_instances_reaches_the_other_two(
        url: str, etcd: Etcd, tmp_path: Path, cvm: Upstream) -> None:
    _push(url, tmp_path, _table(cvm.address))
    # the one changed through the API runs 2 workers: its supervisor commits and applies
    with _instance(url, "--workers", "2") as a, _instance(url) as b, _instance(url) as c:
        times = []
        for weight in (20, 30, 40):
            started = time.monotonic()
            answer = _set_weight(a.admin_port, cvm, weight)
            assert "Error" not in answer, answer
            assert _weight(a.admin_port) == weight  # applied on a before it answered
            for other in (b, c):
                _wait_for(lambda port=other.admin_port, weight=weight: (
                    _weight(port) == weight), what="the change on the other instances")
            times.append(time.monotonic() - started)
        print("\npropagation to 2 other instances: "
              + ", ".join(f"{t * 1000:.0f} ms" for t in times))
        stored = tomllib.loads(etcd.get(_key(url))[0] or "")
        assert stored["listener"][0]["rule"][0]["targets"][0]["weight"] == 40
        assert (etcd.get(_key(url))[0] or "").startswith("# pushed by the tests: keep me")


def test_conflicting_changes_on_two_instances_at_the_same_moment_both_land(
        url: str, etcd: Etcd, tmp_path: Path, cvm: Upstream) -> None:
    _push(url, tmp_path, _table(cvm.address))
    with _instance(url) as a, _instance(url) as b:
        for round_ in range(4):
            gate = threading.Barrier(2)
            answers: dict[str, dict[str, Any]] = {}

            def register(name: str, proc: ProxyProcess, port: int, gate: threading.Barrier,
                         answers: dict[str, dict[str, Any]]) -> None:
                gate.wait()
                answers[name] = clb(proc.admin_port, "RegisterTargets", {**WHERE, "Targets": [
                    {"EniIp": "127.0.0.1", "Port": port, "Weight": 1}]})

            ports = {"a": 20000 + round_ * 2, "b": 20001 + round_ * 2}
            threads = [threading.Thread(target=register,
                                        args=(name, proc, ports[name], gate, answers))
                       for name, proc in (("a", a), ("b", b))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert all("Error" not in answer for answer in answers.values()), answers
            stored = tomllib.loads(etcd.get(_key(url))[0] or "")
            addresses = {t["address"] for t in stored["listener"][0]["rule"][0]["targets"]}
            assert {f"127.0.0.1:{p}" for p in ports.values()} <= addresses
        # both instances end on the same table, with every target
        expected = 1 + 2 * 4
        for proc in (a, b):
            _wait_for(lambda proc=proc: len(targets(proc.admin_port)["api.test/"]) == expected,
                      what="every target on both instances")
        conflicts = sum(_metric(p.admin_port, "clbscf_store_conflicts_total") for p in (a, b))
        print(f"\ncompare-and-swap retries over 4 simultaneous pairs: {conflicts:.0f}")


class _Load:
    """Requests in a loop on a thread; counts answers that are not 200 "cvm"."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, body = http_get(self.port, "api.test")
            except OSError as exc:
                self.failed.append(repr(exc))
                continue
            if status == 200:
                self.ok += 1
            else:
                self.failed.append(f"{status} {body[:80]!r}")

    def __enter__(self) -> _Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def test_etcd_stopped_and_restarted_under_load(tmp_path: Path, cvm: Upstream) -> None:
    with Etcd(tmp_path / "own-etcd") as etcd:
        url = etcd.store_url("/fleet")
        _push(url, tmp_path, _table(cvm.address))
        with _instance(url) as a, _instance(url) as b, _Load(a.port()) as load_a, \
                _Load(b.port()) as load_b:
            _wait_for(lambda: load_a.ok > 20 and load_b.ok > 20, what="load running")
            before = etcd.get("/fleet/table")
            etcd.stop()
            _wait_for(lambda: _healthz(a.admin_port)["store"]["state"] == "unreachable",
                      what="/healthz reporting the store down")
            health = _healthz(a.admin_port)
            assert health["status"] == "ok"  # still serving its last table
            assert "127.0.0.1:" in health["store"]["error"]
            served = load_a.ok
            _wait_for(lambda: load_a.ok > served + 20, what="serving while etcd is down")

            # a change while the store is down: a CLB-shaped error, nothing half-applied
            answer = _set_weight(a.admin_port, cvm, 50)
            assert answer["Error"]["Code"] == "FailedOperation"
            assert "unreachable" in answer["Error"]["Message"]
            assert etcd.endpoint in answer["Error"]["Message"]
            assert "nothing was changed" in answer["Error"]["Message"]
            assert _weight(a.admin_port) == 10 and _weight(b.admin_port) == 10
            assert _metric(a.admin_port, "clbscf_store_up") == 0

            etcd.start()
            assert etcd.get("/fleet/table") == before  # the failed change never reached it
            _wait_for(lambda: _healthz(a.admin_port)["store"]["state"] == "ok",
                      what="/healthz reporting the store back")
            answer = _set_weight(a.admin_port, cvm, 60)
            assert "Error" not in answer, answer
            _wait_for(lambda: _weight(b.admin_port) == 60, what="a change after the restart")
            # a change written straight into the store after the restart arrives too
            etcd.put("/fleet/table", _table(cvm.address, weight=70))
            _wait_for(lambda: _weight(a.admin_port) == 70 and _weight(b.admin_port) == 70,
                      what="a pushed change after the restart")
        assert load_a.failed == [] and load_b.failed == []
        assert load_a.ok > 0 and load_b.ok > 0
        a_log = a.stderr
        assert "unreachable" in a_log and "reachable again" in a_log


def _nth(step: int) -> int:
    """The weight of change number ``step``: 2..100 round again, never twice in a row."""
    return 2 + step % 99


def test_kill_9_in_the_middle_of_changes_leaves_a_whole_table(
        url: str, etcd: Etcd, tmp_path: Path, cvm: Upstream) -> None:
    """Each change sets five targets' weights to one value (BatchModifyTargetWeight): a mix
    would show two values. The instance is killed while changes are in flight."""
    ports = [21000 + i for i in range(5)]
    text = _table(cvm.address).replace(
        f'targets = [{{ type = "CVM", address = "{cvm.address}", weight = 10 }}]',
        "targets = [" + ", ".join(f'{{ type = "CVM", address = "127.0.0.1:{p}", weight = 1 }}'
                                  for p in ports) + "]")
    _push(url, tmp_path, text)
    previous = 1
    for delay in (0.15, 0.4, 0.8):
        proc = _instance(url).start()
        answered: list[int] = []

        def changes(proc: ProxyProcess, answered: list[int]) -> None:
            for step in itertools.count():  # until the instance is gone
                try:
                    answer = clb(proc.admin_port, "BatchModifyTargetWeight", {
                        "ModifyList": [{**WHERE, "Targets": [
                            {"EniIp": "127.0.0.1", "Port": p, "Weight": _nth(step)}
                            for p in ports]}]})
                except (OSError, http.client.HTTPException):  # killed mid-answer
                    return
                if "Error" in answer:
                    return
                answered.append(step)

        thread = threading.Thread(target=changes, args=(proc, answered), daemon=True)
        thread.start()
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        thread.join(30)
        assert not thread.is_alive()
        proc.stop()
        print(f"\nkill -9 after {delay}s: {len(answered)} changes answered")
        stored = tomllib.loads(etcd.get(_key(url))[0] or "")
        weights = {t["weight"] for t in stored["listener"][0]["rule"][0]["targets"]}
        assert len(weights) == 1, weights  # never a mix
        [weight] = weights
        # every answered change is in the store, and maybe the one in flight when killed
        if answered:
            assert weight in (_nth(answered[-1]), _nth(answered[-1] + 1))
        else:  # none answered: nothing landed, or the first one did
            assert weight in (previous, _nth(0))
        previous = weight
        # the next instance starts from it
        with _instance(url) as again:
            assert {w for _, w in targets(again.admin_port)["api.test/"]} == {weight}


# -- authentication and TLS ---------------------------------------------------------------------


def test_refused_authentication_names_the_endpoint(tmp_path: Path, cvm: Upstream) -> None:
    with Etcd(tmp_path / "auth-etcd") as etcd:
        for args in (("user", "add", "root:rootpw"), ("user", "add", "proxy:secret"),
                     ("role", "add", "fleet"),
                     ("role", "grant-permission", "fleet", "--prefix=true", "readwrite",
                      "/fleet/"),
                     ("user", "grant-role", "proxy", "fleet"), ("auth", "enable")):
            done = etcd.etcdctl(*args)
            assert done.returncode == 0, (args, done.stderr)
        url = etcd.store_url("/fleet")
        path = tmp_path / "t.toml"
        path.write_text(_table(cvm.address))

        done = _cli("store", "push", str(path), "--store", url)  # no credentials
        assert done.returncode == 2 and etcd.endpoint in done.stderr
        assert "CLBSCF_ETCD_USER" in done.stderr
        wrong = {"CLBSCF_ETCD_USER": "proxy", "CLBSCF_ETCD_PASSWORD": "nope"}
        done = _cli("store", "push", str(path), "--store", url, env=wrong)
        assert done.returncode == 2 and etcd.endpoint in done.stderr
        assert "refused authentication as 'proxy'" in done.stderr
        done = _cli("--store", url, env=wrong)
        assert done.returncode == 2 and etcd.endpoint in done.stderr

        right = {"CLBSCF_ETCD_USER": "proxy", "CLBSCF_ETCD_PASSWORD": "secret"}
        done = _cli("store", "push", str(path), "--store", url, env=right)
        assert done.returncode == 0, done.stderr
        with _instance(url, env=right) as proc:
            assert http_get(proc.port(), "api.test")[1] == b"cvm"
            assert "Error" not in _set_weight(proc.admin_port, cvm, 30)
        outside = etcd.store_url("/elsewhere")  # the role does not cover it
        done = _cli("store", "pull", "--store", outside, env=right)
        assert done.returncode == 2 and etcd.endpoint in done.stderr
        assert "permission denied" in done.stderr.lower()


def test_a_tls_error_names_the_endpoint(tmp_path: Path, cvm: Upstream) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "etcd.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "etcd-key.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    with Etcd(tmp_path / "tls-etcd", scheme="https",
              extra=("--cert-file", str(tmp_path / "etcd.pem"),
                     "--key-file", str(tmp_path / "etcd-key.pem"))) as etcd:
        url = etcd.store_url("/fleet")
        assert url.startswith("etcds://")
        path = tmp_path / "t.toml"
        path.write_text(_table(cvm.address))
        done = _cli("store", "push", str(path), "--store", url)  # the system's CAs: refused
        assert done.returncode == 2 and etcd.endpoint in done.stderr
        assert "certificate" in done.stderr.lower()
        # the same etcd spoken to without TLS
        plain = url.replace("etcds://", "etcd://")
        done = _cli("store", "pull", "--store", plain)
        assert done.returncode == 2 and etcd.endpoint in done.stderr

        trusted = {"CLBSCF_ETCD_CA": str(tmp_path / "ca.pem")}
        done = _cli("store", "push", str(path), "--store", url, env=trusted)
        assert done.returncode == 0, done.stderr
        with _instance(url, env=trusted) as proc:
            assert http_get(proc.port(), "api.test")[1] == b"cvm"
            assert "Error" not in _set_weight(proc.admin_port, cvm, 30)


def test_a_dead_endpoint_is_skipped_and_a_deleted_table_is_refused(
        url: str, etcd: Etcd, tmp_path: Path, cvm: Upstream) -> None:
    # the first endpoint never answers: push, pull and the instance use the second
    dead = url.replace("etcd://", "etcd://127.0.0.1:1,")
    _push(dead, tmp_path, _table(cvm.address))
    with _instance(dead) as proc:
        assert http_get(proc.port(), "api.test")[1] == b"cvm"
        assert "Error" not in _set_weight(proc.admin_port, cvm, 25)
        assert tomllib.loads(etcd.get(_key(url))[0] or "")["listener"][0]["rule"][0][
            "targets"][0]["weight"] == 25

        # the key deleted by hand: the instance keeps its table, says so, refuses changes
        done = etcd.etcdctl("del", _key(url))
        assert done.returncode == 0 and done.stdout.strip() == "1", done.stderr
        proc.wait_for_log(EMPTY, 15)
        _wait_for(lambda: _metric(proc.admin_port, 'clbscf_store_rejected_total{reason="empty"}')
                  == 1, what="the empty store counted")
        assert http_get(proc.port(), "api.test")[1] == b"cvm"
        answer = _set_weight(proc.admin_port, cvm, 35)
        assert answer["Error"]["Code"] == "FailedOperation" and EMPTY in answer["Error"]["Message"]
        assert etcd.get(_key(url)) == (None, 0)
        assert _weight(proc.admin_port) == 25
    # every endpoint down: each is named with its reason
    done = _cli("store", "pull", "--store", "etcd://127.0.0.1:1,127.0.0.1:2/x")
    assert done.returncode == 2
    assert "127.0.0.1:1: connect failed" in done.stderr
    assert "127.0.0.1:2: connect failed" in done.stderr


def test_a_write_sent_twice_is_taken_once_and_a_stale_one_is_a_conflict(
        url: str, etcd: Etcd) -> None:
    """The etcd backend itself, against the real etcd: a resent write (its first answer lost)
    finds its own document and succeeds; a write on a stale revision is a Conflict."""
    async def run() -> None:
        backend = EtcdBackend(parse_store_url(url))
        try:
            assert await backend.read() == (None, "0")
            first = await backend.write("a = 1\n", "0")
            assert await backend.peek() == first
            assert await backend.write("a = 1\n", "0") == first  # the resend: no conflict
            with pytest.raises(Conflict):
                await backend.write("a = 2\n", "0")  # another writer came first
            assert (await backend.read()).text == "a = 1\n"
        finally:
            await backend.close()
    asyncio.run(run())
