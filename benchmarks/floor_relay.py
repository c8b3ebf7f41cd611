"""The floor: the least an HTTP/1.1 relay on our stack (uvloop + httptools) does per request.

Not a product feature, a yardstick for the benchmark. Each client connection gets one upstream
connection of its own, opened on its first request; a request is parsed, its headers copied
with one ``X-Forwarded-For`` added, and sent upstream; the answer is parsed (Content-Length
bodies) and written back. No routing, no pool, no timeouts, no limits. ``--tls CERT KEY``
serves HTTPS. ``python benchmarks/floor_relay.py --listen 127.0.0.1:8081 --upstream
127.0.0.1:8080``
"""

from __future__ import annotations

import argparse
import asyncio
import ssl

import httptools
import uvloop


class Upstream(asyncio.Protocol):
    def __init__(self, client: Client) -> None:
        self.client, self.parser = client, httptools.HttpResponseParser(self)
        self.parts: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()

    def on_status(self, reason: bytes) -> None:
        self.parts = [b"HTTP/1.1 %d %s\r\n" % (self.parser.get_status_code(), reason)]

    def on_header(self, name: bytes, value: bytes) -> None:
        self.parts += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        self.parts.append(b"\r\n")

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)

    def on_message_complete(self) -> None:
        self.client.transport.write(b"".join(self.parts))


class Client(asyncio.Protocol):
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream_address, self.parser = upstream, httptools.HttpRequestParser(self)
        self.upstream: asyncio.Transport | None = None
        self.pending: list[bytes] | None = None  # requests waiting for the upstream connection
        self.parts: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.forwarded = b"X-Forwarded-For: %s\r\n\r\n" % (
            transport.get_extra_info("peername")[0].encode())

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()

    def on_url(self, url: bytes) -> None:
        self.parts = [self.parser.get_method(), b" ", url, b" HTTP/1.1\r\n"]

    def on_header(self, name: bytes, value: bytes) -> None:
        self.parts += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        self.parts.append(self.forwarded)

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)

    def on_message_complete(self) -> None:
        request = b"".join(self.parts)
        if self.upstream is not None:
            self.upstream.write(request)
        elif self.pending is not None:
            self.pending.append(request)
        else:
            self.pending = [request]
            asyncio.get_running_loop().create_task(self.connect())

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_connection(lambda: Upstream(self),
                                                        *self.upstream_address)
        except OSError:
            self.transport.close()
            return
        if self.transport.is_closing():  # the client left while we connected
            transport.close()
            return
        transport.write(b"".join(self.pending or []))
        self.upstream, self.pending = transport, None


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def serve(args: argparse.Namespace) -> None:
    context = None
    if args.tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(*args.tls)
    upstream = address(args.upstream)
    server = await asyncio.get_running_loop().create_server(
        lambda: Client(upstream), *address(args.listen), ssl=context, backlog=4096)
    print(f"floor-relay: listening on {args.listen} -> {args.upstream}", flush=True)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--upstream", required=True, metavar="HOST:PORT")
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    uvloop.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
