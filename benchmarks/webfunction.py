"""Web functions (issue 16, item 1): a Flask app under its scf_bootstrap behind the proxy
against the same app behind nginx, and the cold start of an event function and of web
functions.

``throughput``: the Flask template of tests/functions/webflask (the interpreter's path made
ours, the documented one-line change) is a web function behind the proxy (its instance in a
network namespace of its own where the host allows it, else on ``$PORT``); the peer is the
same app started the same way on a free port (``PORT``) with nginx in front of it, keep-alive
to it and the CLB headers set, as benchmarks/confs.py's proxy does for CVM targets. wrk, the
same connection count and duration for both, one after the other; the Flask development
server (threaded) answers both, so the ratio says what the proxy costs against nginx on this
path, not how fast Flask is.

``coldstart``: a proxy with an event function (a Python handler), a Flask web function and a
stdlib ``http.server`` web function (the floor of a web function's start), each with a short
``idle_timeout``. For each sample: wait until the function has no instance (``/healthz``), time
one request (a cold start: the client's whole wait), then one more (warm). Prints the medians.

Run it briefly (``--duration 3 --samples 3``); figures from a loaded machine mean little.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import confs, procs, wrk  # noqa: E402
from benchmarks.checkout import this_checkout  # noqa: E402

FLASK = ROOT / "tests" / "functions" / "webflask"
SCF_PYTHON = "/var/lang/python3/bin/python3"
DOMAIN = "bench.local"
STDLIB_APP = '''\
import http.server, os

class Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"hello from http.server"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "9000"))),
                                Hello).serve_forever()
'''
EVENT_HANDLER = '''\
def main_handler(event, context):
    return {"statusCode": 200, "headers": {"Content-Type": "text/plain"},
            "body": "hello from an event function"}
'''


def flask_copy(folder: Path, port_from_env: bool) -> Path:
    """The Flask template with our interpreter (and, for nginx's side, listening on $PORT)."""
    code = folder / ("flask-port" if port_from_env else "flask")
    shutil.copytree(FLASK, code)
    bootstrap = code / "scf_bootstrap"
    bootstrap.write_text(bootstrap.read_text().replace(SCF_PYTHON, sys.executable))
    if port_from_env:
        app = code / "app.py"
        app.write_text(app.read_text().replace("port=9000", 'port=int(os.environ["PORT"])'))
    return code


def stdlib_function(folder: Path) -> Path:
    code = folder / "stdlib"
    code.mkdir()
    (code / "app.py").write_text(STDLIB_APP)
    bootstrap = code / "scf_bootstrap"
    bootstrap.write_text(f"#!/bin/bash\nexec {sys.executable} app.py\n")
    bootstrap.chmod(0o755)
    return code


def event_function(folder: Path) -> Path:
    code = folder / "event"
    code.mkdir()
    (code / "index.py").write_text(EVENT_HANDLER)
    return code


def _rule(domain: str, function: str) -> str:
    return (f'\n  [[listener.rule]]\n  domain = "{domain}"\n  url = "/"\n'
            f'  targets = [{{ type = "SCF", function = "{function}" }}]\n')


def _listener() -> str:
    return '[[listener]]\nname = "bench"\nprotocol = "HTTP"\nhost = "127.0.0.1"\nport = 0\n'


def _function(name: str, code: Path, **settings: object) -> str:
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
    return f'\n[[function]]\nname = "{name}"\ncode = {json.dumps(str(code))}\n{extra}'


def throughput(folder: Path, duration: float, connections: int) -> dict[str, Any]:
    code = this_checkout()
    ours_code = flask_copy(folder, port_from_env=False)
    peer_code = flask_copy(folder, port_from_env=True)
    toml = (_listener() + _rule(DOMAIN, "flask")
            + _function("flask", ours_code, type="HTTP", timeout=60, concurrency=1,
                        instance_concurrency=connections, min_instances=1))
    results: dict[str, Any] = {}
    with procs.start_proxy("webfn-proxy", toml, folder, None, code) as proxy:
        url = f"http://127.0.0.1:{proxy.port}/"
        _wait_answer(proxy.port, "/", 90)
        results["proxy"] = _load(url, duration, connections)
    app_port = procs.free_port()
    # the bootstrap's command itself, not the bash around it: stop() must reach the server
    app = procs.Server("flask-app", [sys.executable, "app.py"], folder / "flask.log",
                       cwd=peer_code, env={"PATH": "/usr/bin:/bin", "PORT": str(app_port)})
    with procs._listening(app.start(), app_port, 90):
        nginx_port = procs.free_port()
        body = confs.upstream("flask", app_port) + "\n" + confs.proxy_server(nginx_port,
                                                                             "flask")
        conf = confs.nginx_conf(folder / "nginx", body)
        with procs.start_nginx("nginx", conf, nginx_port, folder, None):
            results["nginx"] = _load(f"http://127.0.0.1:{nginx_port}/", duration, connections)
    results["ratio_rps"] = round(results["proxy"]["rps"] / results["nginx"]["rps"], 3)
    return results


def _load(url: str, duration: float, connections: int) -> dict[str, Any]:
    headers = [f"Host: {DOMAIN}"]
    wrk.run(url, connections=connections, duration=1, headers=headers)  # warm-up
    result = wrk.run(url, connections=connections, duration=duration, headers=headers)
    return {"rps": result.rps, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms}


def _get(port: int, path: str, host: str = DOMAIN, timeout: float = 90) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _wait_answer(port: int, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _get(port, path)[0] != 200:
        if time.monotonic() > deadline:
            raise SystemExit(f"{path}: no 200 within {timeout:.0f}s")
        time.sleep(0.1)


def _instances(admin_port: int, function: str) -> int:
    status, body = _get(admin_port, "/healthz")
    count: int = json.loads(body)["functions"].get(function, {}).get("instances", 0)
    return count


def coldstart(folder: Path, samples: int) -> dict[str, Any]:
    functions = {"event": event_function(folder), "flask": flask_copy(folder, False),
                 "stdlib": stdlib_function(folder)}
    # one domain per function: each app answers "/"
    toml = _listener() + "".join(_rule(f"{name}.{DOMAIN}", name) for name in functions)
    toml += _function("event", functions["event"], idle_timeout=0.2)
    toml += _function("flask", functions["flask"], type="HTTP", idle_timeout=0.2)
    toml += _function("stdlib", functions["stdlib"], type="HTTP", idle_timeout=0.2)
    admin = procs.free_port()
    conf = folder / "coldstart.toml"
    conf.write_text(toml)
    server = procs.ProxyServer(
        "webfn-coldstart", [sys.executable, "-m", "proxy.cli", "--config", str(conf),
                            "--no-access-log", "--admin", f"127.0.0.1:{admin}",
                            "--state-dir", str(folder / "state")],
        folder / "coldstart.log", cwd=ROOT)
    out: dict[str, Any] = {}
    with server.start().wait_ready():
        for name in functions:
            cold, warm = [], []
            for _ in range(samples):
                deadline = time.monotonic() + 60
                while _instances(admin, f"default/{name}"):
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{name}: an instance stayed up for 60 s")
                    time.sleep(0.05)
                for series in (cold, warm):
                    began = time.perf_counter()
                    status, _ = _get(server.port, "/", f"{name}.{DOMAIN}")
                    series.append((time.perf_counter() - began) * 1000.0)
                    if status != 200:
                        raise SystemExit(f"{name}: answered {status}")
            out[name] = {"cold_median_ms": round(statistics.median(cold), 1),
                         "warm_median_ms": round(statistics.median(warm), 1),
                         "samples": samples}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=("throughput", "coldstart"),
                        default=["throughput", "coldstart"])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each wrk run")
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--samples", type=int, default=5, help="cold starts per function")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="webfn-bench-") as tmp:
        folder = Path(tmp)
        for part in ("throughput", "coldstart"):
            (folder / part).mkdir()
        if "throughput" in args.only:
            report["throughput"] = throughput(folder / "throughput", args.duration,
                                              args.connections)
        if "coldstart" in args.only:
            report["coldstart"] = coldstart(folder / "coldstart", args.samples)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
