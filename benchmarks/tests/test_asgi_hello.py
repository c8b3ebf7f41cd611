"""The uvicorn peer serves the same page as the built-in Hello CLB function."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import MutableMapping
from typing import Any

from benchmarks.asgi_hello import app
from benchmarks.checkout import this_checkout
from benchmarks.confs import HELLO_PAGE

HELLO_CODE = this_checkout().hello_code


def call(scope: dict[str, Any], incoming: list[dict[str, Any]]) -> list[MutableMapping[str, Any]]:
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return incoming.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def test_http_request_gets_the_hello_page_as_html() -> None:
    start, body = call({"type": "http", "method": "GET", "path": "/"}, [])
    assert start["status"] == 200
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"text/html"
    assert int(headers[b"content-length"]) == len(body["body"])
    assert body["body"] == HELLO_PAGE.encode()


def test_page_is_the_builtin_functions_page() -> None:
    spec = importlib.util.spec_from_file_location("hello_index", HELLO_CODE / "index.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main_handler({}, {})
    assert result["body"] == HELLO_PAGE
    assert result["headers"]["Content-Type"] == "text/html"


def test_lifespan_startup_and_shutdown_are_acknowledged() -> None:
    sent = call({"type": "lifespan"}, [{"type": "lifespan.startup"},
                                       {"type": "lifespan.shutdown"}])
    assert [m["type"] for m in sent] == ["lifespan.startup.complete",
                                         "lifespan.shutdown.complete"]
