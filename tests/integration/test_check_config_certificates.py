"""--check-config refuses what start-up refuses (issue 14): a key of another certificate and an
expired certificate get exit 2 and the same error, naming the listener's certificate field and
the file, from ``clbscf-proxy --check-config`` and from ``clbscf-proxy --config`` starting.
Certificates are trustme's; the proxy runs as a real process."""

from __future__ import annotations

import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme

from tests.configs import function, listener, scf_rule
from tests.proxyproc import ProxyProcess

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime.now(UTC)


def pair(folder: Path, stem: str, leaf: trustme.LeafCert) -> tuple[Path, Path]:
    cert, key = folder / f"{stem}.pem", folder / f"{stem}.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return cert, key


def config_file(folder: Path, certificates: list[tuple[Path, Path]]) -> Path:
    """listener[0] plain HTTP, listener[1] HTTPS with ``certificates`` (relative paths: they
    are resolved from the config's folder, and the errors name the resolved file)."""
    entries = ", ".join(f'{{ cert = "{c.name}", key = "{k.name}" }}' for c, k in certificates)
    text = (listener("plain") + scf_rule("a.test", "/", "echo")
            + listener("tls", "HTTPS") + f"certificates = [{entries}]\n"
            + scf_rule("a.test", "/", "echo") + function("echo"))
    path = folder / "rules.toml"
    path.write_text(text)
    return path


def run(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy.cli", *args, "--state-dir",
                           str(folder / "state"), "--no-access-log"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def test_good_certificates_check_ok(tmp_path: Path, ca: trustme.CA) -> None:
    path = config_file(tmp_path, [pair(tmp_path, "a", ca.issue_cert("a.test")),
                                  pair(tmp_path, "b", ca.issue_cert("b.test"))])
    done = run(tmp_path, "--check-config", str(path))
    assert done.returncode == 0, done.stderr
    assert "rules.toml: OK (2 listeners, 2 rules, 1 functions)" in done.stdout


def _refused_alike(tmp_path: Path, path: Path) -> str:
    """The error line of --check-config, after checking that start-up gives the same one."""
    checked = run(tmp_path, "--check-config", str(path))
    started = run(tmp_path, "--config", str(path))
    assert checked.returncode == 2 and started.returncode == 2, (checked, started)
    assert "OK" not in checked.stdout
    [line] = [x for x in checked.stderr.splitlines() if x.startswith("clbscf-proxy: ")]
    assert line in started.stderr.splitlines(), (line, started.stderr)
    assert "listening on" not in started.stderr  # refused before anything was bound
    return line


def test_key_of_another_certificate_is_refused_as_start_up_refuses_it(
        tmp_path: Path, ca: trustme.CA) -> None:
    good = pair(tmp_path, "good", ca.issue_cert("good.test"))
    other = pair(tmp_path, "other", ca.issue_cert("other.test"))
    path = config_file(tmp_path, [good, (good[0], other[1])])
    line = _refused_alike(tmp_path, path)
    assert line == (f"clbscf-proxy: rules.toml: listener[1].certificates[1].key: {other[1]}: "
                    f"private key does not match the certificate in {good[0]}")


def test_expired_certificate_is_refused_as_start_up_refuses_it(tmp_path: Path,
                                                               ca: trustme.CA) -> None:
    old = pair(tmp_path, "old", ca.issue_cert("old.test", not_before=NOW - timedelta(days=90),
                                              not_after=NOW - timedelta(days=1)))
    path = config_file(tmp_path, [old])
    line = _refused_alike(tmp_path, path)
    assert line.startswith(f"clbscf-proxy: rules.toml: listener[1].certificates[0].cert: "
                           f"{old[0]}: certificate 1 (")
    assert " expired on " in line


def test_tls_flags_are_checked_too(tmp_path: Path, ca: trustme.CA) -> None:
    good = pair(tmp_path, "good", ca.issue_cert("localhost"))
    other = pair(tmp_path, "other", ca.issue_cert("other.test"))
    done = run(tmp_path, "--check-config", "--listen", "127.0.0.1:0", "--tls",
               "--tls-cert", str(good[0]), "--tls-key", str(other[1]))
    assert done.returncode == 2
    assert (f"clbscf-proxy: <command line>: listener[0].certificates[0].key: {other[1]}: "
            "private key does not match") in done.stderr


def test_a_reload_with_workers_refuses_it_alike(tmp_path: Path, ca: trustme.CA) -> None:
    """The supervisor checks a reloaded config as start-up does, before any worker sees it."""
    good = pair(tmp_path, "good", ca.issue_cert("good.test"))
    other = pair(tmp_path, "other", ca.issue_cert("other.test"))
    text = config_file(tmp_path, [good]).read_text()
    with ProxyProcess.with_config(text, tmp_path, "--workers", "2") as proxy:
        config_file(tmp_path, [(good[0], other[1])])
        assert proxy.proc is not None
        proxy.proc.send_signal(signal.SIGHUP)
        log = proxy.wait_for_log("reload refused")
        assert (f"rules.toml: listener[1].certificates[0].key: {other[1]}: private key does not "
                f"match the certificate in {good[0]}") in log
