"""The generated configs are valid for the programs that read them: nginx -t, and the proxy's
own config loader (so a schema change shows up here, not as a failed benchmark row)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import trustme

from benchmarks import confs
from benchmarks.checkout import this_checkout
from proxy.config import load_config

HELLO_CODE = this_checkout().hello_code


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("cert")
    leaf = trustme.CA().issue_cert("localhost", "127.0.0.1")
    cert, key = folder / "cert.pem", folder / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


def nginx_test(prefix: Path, body: str, **kwargs: int) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` on a generated config (nginx is what benchmarks/run.py installs)."""
    conf = prefix / "nginx.conf"
    conf.write_text(confs.nginx_conf(prefix, body, **kwargs))
    return subprocess.run(["nginx", "-t", "-p", str(prefix), "-e", str(prefix / "error.log"),
                           "-c", str(conf)], capture_output=True, text=True)


def test_origin_conf_passes_nginx_test(tmp_path: Path) -> None:
    done = nginx_test(tmp_path, confs.origin_server(18001))
    assert done.returncode == 0, done.stderr


def test_tls_reverse_proxy_conf_passes_nginx_test(tmp_path: Path,
                                                  certificate: tuple[Path, Path]) -> None:
    body = confs.upstream("backend", 18001) + "\n" + confs.proxy_server(18002, "backend",
                                                                        tls=certificate)
    done = nginx_test(tmp_path, body, worker_connections=21000, nofile=43000)
    assert done.returncode == 0, done.stderr
    assert "worker_connections 21000;" in (tmp_path / "nginx.conf").read_text()


def test_http2_reverse_proxy_conf_passes_nginx_test(tmp_path: Path,
                                                    certificate: tuple[Path, Path]) -> None:
    server = confs.proxy_server(18002, "backend", tls=certificate, http2=True)
    assert "listen 127.0.0.1:18002 ssl http2 backlog=4096;" in server
    done = nginx_test(tmp_path, confs.upstream("backend", 18001) + "\n" + server)
    assert done.returncode == 0, done.stderr


def test_nginx_conf_keeps_every_path_under_the_prefix(tmp_path: Path) -> None:
    text = confs.nginx_conf(tmp_path, confs.origin_server(1))
    paths = [line.split()[1].rstrip(";") for line in text.splitlines()
             if line.strip().split(" ")[0].endswith(("_path", "pid", "error_log"))]
    assert len(paths) == 7
    assert all(p.startswith(str(tmp_path)) for p in paths), paths


def test_reverse_proxy_forwards_the_clb_headers() -> None:
    text = confs.proxy_server(1, "backend")
    for header in ("X-Real-IP", "X-Forwarded-For", "X-Forwarded-Proto", "X-Client-Proto",
                   "X-Client-Proto-Ver", "X-Stgw-Time"):
        assert f"proxy_set_header {header} " in text
    assert 'proxy_set_header Connection "";' in text  # keep-alive to the upstream


def test_scf_toml_loads_with_the_builtin_function(tmp_path: Path) -> None:
    path = tmp_path / "scf.toml"
    path.write_text(confs.proxy_listener(rules=[(confs.BENCH_DOMAIN, "/", confs.SCF_TARGET)])
                    + "\n" + confs.hello_function(HELLO_CODE, 2))
    config = load_config(path)
    (listener,) = config.listeners
    (function,) = config.functions
    assert (listener.host, listener.port, listener.max_connections) == ("127.0.0.1", 0, 20000)
    assert listener.rules[0].targets[0].function == "hello"
    assert (function.code, function.concurrency, function.min_instances) == (HELLO_CODE, 2, 2)


def test_https_toml_loads_with_the_certificate(tmp_path: Path,
                                               certificate: tuple[Path, Path]) -> None:
    path = tmp_path / "https.toml"
    path.write_text(confs.proxy_listener(protocol="HTTPS", tls=certificate,
                                         rules=[(confs.BENCH_DOMAIN, "/", confs.cvm_target(9))]))
    (listener,) = load_config(path).listeners
    assert listener.protocol == "HTTPS"
    assert (listener.certificates[0].cert, listener.certificates[0].key) == certificate


def test_regex_domain_survives_toml_escaping(tmp_path: Path) -> None:
    regex = r"~^api1-[a-z0-9]+\.example\.org$"
    path = tmp_path / "regex.toml"
    path.write_text(confs.proxy_listener(rules=[(regex, r"~^/v[0-9]+/x$", confs.cvm_target(9))],
                                         default_domain=regex))
    (rule,) = load_config(path).listeners[0].rules
    assert (rule.domain, rule.url) == (regex, r"~^/v[0-9]+/x$")


def test_json_access_log_conf_passes_nginx_test(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    body = "\n".join([confs.JSON_LOG_FORMAT, confs.upstream("backend", 18001),
                      confs.proxy_server(18002, "backend", access_log=log)])
    done = nginx_test(tmp_path, body)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "nginx.conf").read_text()
    assert f"access_log {log} {confs.JSON_LOG} buffer=64k flush=200ms;" in text
    assert "escape=json" in text and "access_log off;" in text  # off for every other server
