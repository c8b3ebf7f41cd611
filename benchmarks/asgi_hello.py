"""The SCF scenario's peer: the Hello CLB page as a plain ASGI app, served by uvicorn.

What a team would run instead of a function behind CLB: the same page (the built-in function's
status, Content-Type and body) from an ASGI application. Knows nothing of the proxy.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from benchmarks.confs import HELLO_PAGE

_BODY = HELLO_PAGE.encode()
_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/html"), (b"content-length", str(len(_BODY)).encode())],
}
_RESPONSE = {"type": "http.response.body", "body": _BODY}

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        # acknowledge start-up and shutdown so uvicorn does not warn
        while True:
            message = await receive()
            kind = message["type"].rsplit(".", 1)[-1]
            await send({"type": f"{message['type']}.complete"})
            if kind == "shutdown":
                return
    if scope["type"] != "http":
        return
    await send(_START)
    await send(_RESPONSE)
