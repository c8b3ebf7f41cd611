"""A fake SCF API and a fake invoke-URL runtime of the tests' own, for remote SCF tests.

``FakeScfApi`` is an HTTPS server (trustme certificate) that parses requests with h11, checks
the TC3 signature independently (its own canonical request, the official SDK's key
derivation), the ±5 minute timestamp window, the SecretId and the session token, counts TCP
connections (and records which one each call came on), and answers with realistic API 3.0
envelopes chosen by a test's script. ``invoke_url_runtime`` is a self-hosted function runtime
that answers every POST the same way.

Both are asyncio servers. In-process tests run them on their own loop; tests that drive the
real proxy process run them on a ``BackgroundLoop`` (an event loop in a daemon thread), since
the test's own thread blocks on HTTP requests to the proxy.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import h11
import trustme
from tencentcloud.common.sign import Sign

SECRET_ID = "AKIDfakeSecretId0000000000000000"
SECRET_KEY = "fakeSecretKey+DoNotLog/1234567890"
TOKEN = "session-token-abcdef"
REGION = "ap-guangzhou"
INTEGRATION = json.dumps({"isBase64Encoded": False, "statusCode": 200,
                          "headers": {"Content-Type": "text/plain"}, "body": "Hello CLB"})

T = TypeVar("T")
_AUTH = re.compile(r"TC3-HMAC-SHA256 Credential=([^/]+)/(\d{4}-\d\d-\d\d)/([a-z]+)/tc3_request, "
                   r"SignedHeaders=content-type;host, Signature=([0-9a-f]{64})\Z")


@dataclass
class Call:
    """One request the fake received."""

    headers: dict[str, str]
    body: dict[str, Any]
    number: int
    #: which TCP connection it came on (1 = the first the fake accepted)
    connection: int = 0
    #: what the fake answered
    reply: Reply | None = None

    @property
    def event(self) -> Any:
        """The CLB event the proxy sent (InvokeFunction's Event or Invoke's ClientContext)."""
        return json.loads(self.body.get("Event") or self.body["ClientContext"])


@dataclass
class Reply:
    status: int = 200
    response: dict[str, Any] | None = None  # the content of "Response" (RequestId is added)
    raw: bytes | None = None  # or a raw body instead of an envelope
    delay: float = 0.0


def success(ret: str = INTEGRATION, request_id: str = "fn-req-1") -> Reply:
    return Reply(response={"Result": {
        "MemUsage": 3207168, "Log": "", "RetMsg": ret, "ErrMsg": "", "BillDuration": 100,
        "Duration": 12.5, "FunctionRequestId": request_id, "InvokeResult": 0}})


def function_failed(error: dict[str, Any], request_id: str) -> Reply:
    """The handler raised: InvokeResult 1 and SCF's error object as RetMsg."""
    return Reply(response={"Result": {
        "RetMsg": json.dumps(error), "ErrMsg": "", "InvokeResult": 1, "Log": "",
        "FunctionRequestId": request_id, "Duration": 3.0, "BillDuration": 4, "MemUsage": 1}})


def api_error(code: str, message: str = "it failed", status: int = 200) -> Reply:
    return Reply(status=status, response={"Error": {"Code": code, "Message": message}})


def verify_tc3(headers: dict[str, str], body: bytes, token: str | None) -> Reply | None:
    """The API's checks, re-implemented from the signature v3 document: None when valid."""
    match = _AUTH.match(headers.get("authorization", ""))
    if match is None:
        return api_error("AuthFailure.InvalidAuthorization", "bad Authorization header")
    secret_id, date, service, got = match.groups()
    if secret_id != SECRET_ID:
        return api_error("AuthFailure.SecretIdNotFound", "unknown SecretId")
    timestamp = int(headers.get("x-tc-timestamp", "0"))
    if abs(time.time() - timestamp) > 300:
        return api_error("AuthFailure.SignatureExpire", "signature expired")
    if date != time.strftime("%Y-%m-%d", time.gmtime(timestamp)) or service != "scf":
        return api_error("AuthFailure.SignatureFailure", "bad credential scope")
    canonical = (f"POST\n/\n\ncontent-type:{headers['content-type']}\nhost:{headers['host']}\n"
                 f"\ncontent-type;host\n{hashlib.sha256(body).hexdigest()}")
    to_sign = (f"TC3-HMAC-SHA256\n{timestamp}\n{date}/{service}/tc3_request\n"
               f"{hashlib.sha256(canonical.encode()).hexdigest()}")
    if Sign.sign_tc3(SECRET_KEY, date, service, to_sign) != got:
        return api_error("AuthFailure.SignatureFailure", "signature mismatch")
    if headers.get("x-tc-token") != token:
        return api_error("AuthFailure.TokenFailure", "token mismatch")
    return None


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    """A server TLS context with a ``localhost`` / 127.0.0.1 certificate issued by ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    return context


@dataclass
class FakeScfApi:
    ca: trustme.CA
    script: Callable[[Call], Reply] = lambda call: success()
    token: str | None = None
    connections: int = 0
    calls: list[Call] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def endpoint(self) -> str:
        return f"https://localhost:{self.port}"

    async def __aenter__(self) -> FakeScfApi:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0,
                                                  ssl=server_context(self.ca))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection = self.connections
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await next_request(conn, reader)
                if request is None:
                    return
                reply = self._answer(request, body, connection)
                if reply.delay:
                    await asyncio.sleep(reply.delay)
                payload = reply.raw if reply.raw is not None else json.dumps(
                    {"Response": {**(reply.response or {}),
                                  "RequestId": str(uuid.uuid4())}}).encode()
                writer.write(conn.send(h11.Response(status_code=reply.status, headers=[
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(payload)))])) or b"")
                writer.write(conn.send(h11.Data(data=payload)) or b"")
                writer.write(conn.send(h11.EndOfMessage()) or b"")
                await writer.drain()
                conn.start_next_cycle()
        except (ConnectionError, asyncio.CancelledError, h11.RemoteProtocolError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    def _answer(self, request: h11.Request, body: bytes, connection: int) -> Reply:
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        rejected = verify_tc3(headers, body, self.token)
        call = Call(headers, json.loads(body), len(self.calls) + 1, connection)
        reply = rejected or self.script(call)
        call.reply = reply
        self.calls.append(call)
        return reply


async def next_request(conn: h11.Connection, reader: asyncio.StreamReader
                       ) -> tuple[h11.Request | None, bytes]:
    """The next whole request on ``conn`` and its body; (None, b"") when the peer closed."""
    request: h11.Request | None = None
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return request, body
        elif isinstance(event, h11.ConnectionClosed):
            return None, b""


async def invoke_url_runtime(status: int, body: bytes, delay: float = 0.0,
                             ssl_context: ssl.SSLContext | None = None
                             ) -> tuple[asyncio.Server, list[tuple[dict[str, str], bytes]]]:
    """A self-hosted function runtime (HTTP, or HTTPS with ``ssl_context``) that answers every
    POST with ``status`` and ``body`` (and ``X-Scf-Request-Id: runtime-1``); the list of what
    it was sent (lower-cased headers, body)."""
    seen: list[tuple[dict[str, str], bytes]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, data = await next_request(conn, reader)
                if request is None:
                    break
                seen.append(({k.decode().lower(): v.decode() for k, v in request.headers},
                             data))
                await asyncio.sleep(delay)
                writer.write(conn.send(h11.Response(status_code=status, headers=[
                    ("Content-Length", str(len(body))),
                    ("X-Scf-Request-Id", "runtime-1")])) or b"")
                writer.write(conn.send(h11.Data(data=body)) or b"")
                writer.write(conn.send(h11.EndOfMessage()) or b"")
                conn.start_next_cycle()
        except (ConnectionError, asyncio.CancelledError, h11.RemoteProtocolError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ssl_context), seen


class BackgroundLoop:
    """An asyncio event loop running in a daemon thread; ``run`` a coroutine on it and wait.

    For fake servers that another process (the real proxy) talks to while the test's thread
    blocks on its own requests. Use as a context manager: the loop stops at exit.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fake-servers",
                                        daemon=True)

    def __enter__(self) -> BackgroundLoop:
        self._thread.start()
        return self

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@contextmanager
def api_in_thread(background: BackgroundLoop, api: FakeScfApi) -> Iterator[FakeScfApi]:
    """``api`` serving on ``background``'s loop for the duration of the block."""
    background.run(api.__aenter__())
    try:
        yield api
    finally:
        background.run(api.__aexit__())
