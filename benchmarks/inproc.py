"""The CVM path's own cost, without sockets or a second process: instructions per request.

``python benchmarks/inproc.py [--requests N] [--profile] [--scf]`` builds the real ProxyServer state
(ServerState, Router, CvmUpstreams, access log off) from the cvm scenario's config, connects
one keep-alive client connection through an in-memory transport, and answers each upstream
request head from an in-memory origin (the pool's ``loop.create_connection`` is patched to hand
back that transport). It then drives N requests one after the other and prints the process CPU
per request. Nothing here touches a socket, so the figure is the interpreter's work alone, and
``valgrind --tool=callgrind python benchmarks/inproc.py --requests N`` counts it in
instructions that a loaded machine does not change: run it with two N (say 1000 and 3000) and
divide the difference by 2000 to leave out start-up. ``--profile`` prints cProfile's top
entries instead (``--sort cumulative`` and ``--top N`` choose which). ``--access-log``
turns the JSON access log on, written to /dev/null: the difference is what a line costs.

``--scf`` drives the SCF path instead: the scf scenario's config, the built-in Hello CLB
function with one warm local instance (a real worker process: valgrind, without
``--trace-children``, counts the proxy's instructions only), each request waiting for the
instance's answer. The loop's waits for the worker are then part of the count, so compare
it with itself, not with the CVM figure.

A measuring tool, not part of the product or of ``make test`` (its own test runs it briefly).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import cProfile  # noqa: E402  (after the path fix: benchmarks/profile.py shadows profile)
import pstats  # noqa: E402

from benchmarks import confs  # noqa: E402
from proxy.config import parse_document  # noqa: E402
from proxy.logs import AccessLog  # noqa: E402

ORIGIN_PORT = 9  # never connected: the patched create_connection answers for it
REQUEST = (b"GET / HTTP/1.1\r\nHost: " + confs.BENCH_DOMAIN.encode()
           + b"\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n")
ANSWER = (b"HTTP/1.1 200 OK\r\nServer: origin\r\nContent-Type: text/plain\r\n"
          b"Content-Length: 13\r\n\r\nHello, world!")


class Wire(asyncio.Transport):
    """One side of an in-memory connection: what is written goes to ``sink``."""

    def __init__(self, sink: Any, peer: tuple[str, int]) -> None:
        super().__init__()
        self.sink = sink
        self.peer = peer
        self.closed = False
        self.protocol: Any = None

    def write(self, data: Any) -> None:
        self.sink(bytes(data))

    def writelines(self, chunks: Any) -> None:
        self.sink(b"".join(chunks))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.peer, "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return 0

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol


class Origin:
    """Answers each complete request head with ANSWER, on the next loop turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending = b""
        self.protocol: Any = None

    def received(self, data: bytes) -> None:
        self.pending += data
        while b"\r\n\r\n" in self.pending:
            _, _, self.pending = self.pending.partition(b"\r\n\r\n")
            self.loop.call_soon(self.protocol.data_received, ANSWER)


async def drive(requests: int, profile: bool, scf: bool = False, sort: str = "tottime",
                top: int = 25, access_log: bool = False) -> float:
    from proxy.connection import HttpConnection
    from proxy.server import ProxyServer

    loop = asyncio.get_running_loop()
    origin = Origin(loop)

    async def create_connection(factory: Any, *args: Any, **kwargs: Any) -> Any:
        protocol = factory()
        wire = Wire(origin.received, ("127.0.0.1", ORIGIN_PORT))
        origin.protocol = protocol
        protocol.connection_made(wire)
        return wire, protocol

    loop.create_connection = create_connection  # type: ignore[method-assign]
    if scf:
        from proxy.builtin import HELLO_CODE_DIR

        text = (confs.proxy_listener(rules=[(confs.BENCH_DOMAIN, "/", confs.SCF_TARGET)])
                + "\n" + confs.hello_function(HELLO_CODE_DIR, 1))
    else:
        text = confs.proxy_listener(rules=[(confs.BENCH_DOMAIN, "/",
                                            confs.cvm_target(ORIGIN_PORT))])
    config = parse_document(text, None, Path.cwd(), label="inproc.toml")
    # --access-log: the JSON lines go to /dev/null, through the log's own buffer and flushes
    log = AccessLog(open(os.devnull, "wb"), enabled=True) if access_log \
        else AccessLog(enabled=False)
    server = ProxyServer(config, access_log=log)
    if scf:
        await server.backends.local.start()
    from proxy.connection import ListenerContext

    ctx = ListenerContext(config.listeners[0], "auto", server.state)
    answers = bytearray()
    done = asyncio.Event()
    end = b"</html>" if scf else b"Hello, world!"

    def client_sink(data: bytes) -> None:
        answers.extend(data)
        if answers.endswith(end):
            done.set()

    client = Wire(client_sink, ("203.0.113.7", 50123))
    conn = HttpConnection(ctx)
    conn.connection_made(client)

    async def one() -> None:
        done.clear()
        answers.clear()
        conn.data_received(REQUEST)
        await done.wait()

    for _ in range(50):  # the pool's connection and every cache warm
        await one()
    if not answers.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"unexpected answer: {bytes(answers)!r}")
    profiler = cProfile.Profile() if profile else None
    start = time.process_time()
    if profiler:
        profiler.enable()
    for _ in range(requests):
        await one()
    if profiler:
        profiler.disable()
        pstats.Stats(profiler).sort_stats(sort).print_stats(top)
    spent = (time.process_time() - start) / requests * 1e6
    if scf:
        await server.backends.local.close()
    return spent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--profile", action="store_true", help="print cProfile's top entries")
    parser.add_argument("--scf", action="store_true", help="the SCF path (one local instance)")
    parser.add_argument("--sort", default="tottime", choices=("tottime", "cumulative", "ncalls"),
                        help="--profile's order (default tottime: self time)")
    parser.add_argument("--top", type=int, default=25, help="--profile's entries (default 25)")
    parser.add_argument("--access-log", action="store_true",
                        help="the JSON access log on, written to /dev/null (its cost)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as state:
        os.environ.setdefault("CLBSCF_PROXY_STATE", state)
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:  # pragma: no cover
            runner = asyncio.run
        us = runner(drive(args.requests, args.profile, args.scf, args.sort, args.top,
                          args.access_log))
    print(f"{args.requests} {'SCF' if args.scf else 'CVM'} requests, {us:.1f} us of CPU per "
          f"request (in-process{', the proxy only' if args.scf else ', no sockets'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
