"""gRPC unary calls: direct to a grpcio backend against through our HTTP/2 upstream module
(proxy/backends/h2upstream.py), side by side in one run.

The backend is tests/grpcserver.py's grpcio server (generic handlers, method test.Echo/Unary)
in a process of its own (this script run with ``--serve``). Then, for ``--duration`` seconds
each, with ``--concurrency`` calls in flight:

- ``direct``: a grpcio client (its own C-core HTTP/2 stack) calling the backend;
- ``h2upstream``: the proxy's HTTP/2 client side, H2Pool on uvloop, one stream per call
  (what a GRPC rule's GrpcTarget does per request, without the router).

- ``through-proxy``: the same grpcio client through the real proxy (one process): its h2c
  listener (HTTP/2 by prior knowledge), a ``forward_type = "GRPC"`` rule, h2upstream to the
  backend; access log off.

It prints calls per second for each and the ratio to ``direct``.

    .venv/bin/python benchmarks/grpcbench.py --duration 2 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import uvloop  # noqa: E402

from benchmarks.checkout import this_checkout  # noqa: E402
from benchmarks.procs import start_proxy  # noqa: E402
from proxy.backends.h2upstream import H2Pool  # noqa: E402
from tests.grpcserver import GrpcServer, frame, unframe  # noqa: E402

METHOD = "/test.Echo/Unary"
FIELDS = [("content-type", "application/grpc"), ("te", "trailers")]


def serve() -> None:
    with GrpcServer(workers=16) as server:
        print(f"PORT {server.port}", flush=True)
        sys.stdin.read()  # until the parent closes our stdin


#: the :authority the through-proxy client sends, and its rule's domain
DOMAIN = "grpc.bench"


def proxy_config(backend: str) -> str:
    return (f'[[listener]]\nname = "h2c"\nprotocol = "HTTP"\nhost = "127.0.0.1"\nport = 0\n'
            f'h2c = true\n\n  [[listener.rule]]\n  domain = "{DOMAIN}"\n  url = "/"\n'
            f'  forward_type = "GRPC"\n  health_check = {{ enabled = false }}\n'
            f'  targets = [{{ type = "CVM", address = "{backend}" }}]\n')


def direct(address: str, duration: float, concurrency: int) -> float:
    """Calls a second from a grpcio client to ``address`` (the backend, or the proxy in front
    of it: the :authority is DOMAIN either way)."""
    channel = grpc.insecure_channel(address, options=[("grpc.default_authority", DOMAIN)])
    call = channel.unary_unary(METHOD)
    call(b"warm-up", timeout=10)
    count = [0] * concurrency
    stop = time.monotonic() + duration

    def worker(i: int) -> None:
        while time.monotonic() < stop:
            assert call(b"x", timeout=10) == b"echo:x"
            count[i] += 1
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    channel.close()
    return sum(count) / (time.monotonic() - started)


async def _through_h2upstream(address: str, duration: float, concurrency: int) -> float:
    pool = H2Pool(address)
    count = 0

    async def one() -> None:
        stream = await pool.open("POST", METHOD, "bench", "http", FIELDS)
        await stream.send(frame(b"x"), end_stream=True)
        await stream.response()
        parts = []
        while chunk := await stream.read():
            parts.append(chunk)
        assert unframe(b"".join(parts)) == [b"echo:x"]
        assert dict(stream.trailers)["grpc-status"] == "0"

    async def worker(stop: float) -> None:
        nonlocal count
        while time.monotonic() < stop:
            await one()
            count += 1
    await one()  # warm-up: the connection and SETTINGS
    started = time.monotonic()
    await asyncio.gather(*(worker(started + duration) for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    await pool.close()
    return count / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per side")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve()
        return 0
    backend = subprocess.Popen([sys.executable, __file__, "--serve"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert backend.stdout is not None
        match = re.fullmatch(r"PORT (\d+)\n", backend.stdout.readline())
        if match is None:
            raise SystemExit("the grpcio backend did not start")
        address = f"127.0.0.1:{match[1]}"
        rate_direct = direct(address, args.duration, args.concurrency)
        rate_ours = uvloop.run(_through_h2upstream(address, args.duration, args.concurrency))
        with tempfile.TemporaryDirectory(prefix="grpcbench-") as work:
            proxy = start_proxy("grpc-proxy", proxy_config(address), Path(work), None,
                                this_checkout())
            try:
                rate_proxy = direct(f"127.0.0.1:{proxy.port}", args.duration,
                                    args.concurrency)
            finally:
                proxy.stop()
    finally:
        if backend.stdin is not None:
            backend.stdin.close()
        backend.wait(10)
    print(f"grpc unary, {args.concurrency} in flight, {args.duration:g} s each")
    print(f"  direct (grpcio client)      {rate_direct:10.0f} calls/s")
    print(f"  h2upstream (our client)     {rate_ours:10.0f} calls/s   "
          f"{rate_ours / rate_direct:.2f}x direct")
    print(f"  through-proxy (grpcio)      {rate_proxy:10.0f} calls/s   "
          f"{rate_proxy / rate_direct:.2f}x direct")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
