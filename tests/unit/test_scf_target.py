"""proxy/scf/backend.py and proxy/writer.py for issue 16's checks: a HEAD answer's length, and a
declared body length that can never fit in an event (refused before any of it is read).

The SCF target is driven with a fake invoker (no process); the writer's bytes are parsed here.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from proxy import writer
from proxy.errors import PayloadTooLarge
from proxy.headers import TrustedProxies
from proxy.messages import Headers, Invocation, Outcome, Request, Response, Route
from proxy.scf.backend import FunctionTarget
from proxy.scf.event import MAX_EVENT_BYTES
from proxy.streams import RequestBody

ROUTE = Route(listener="web", domain="fn.test", url="/", location_id="loc-1",
              target="SCF:default/fn")
GET_BODY = b'{"message": "forty-five bytes of a GET body"}'


def _request(method: str, headers: Headers = (), stream: RequestBody | None = None) -> Request:
    return Request(method=method, path="/", query="", headers=(("Host", "fn.test"),) + headers,
                   body=b"", http_version="1.1", client_ip="203.0.113.7", client_port=5000,
                   scheme="http", listener="web", received_at=1718000000.0, stream=stream)


def _answer(method: str, result: dict[str, Any]) -> tuple[Outcome, list[bytes]]:
    """Serve ``method`` through a FunctionTarget whose function returns ``result``; the
    Outcome, and the events the function was invoked with."""
    events: list[bytes] = []

    async def invoker(event: bytes, request_id: str) -> Invocation:
        events.append(event)
        return Invocation(orjson.dumps(result), request_id)

    target = FunctionTarget(invoker, TrustedProxies([]))
    outcome: Outcome = asyncio.run(target(_request(method), ROUTE))
    return outcome, events


def _head_of(data: bytes) -> tuple[dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    fields = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:])
    return {k.lower(): v for k, v in fields.items() if k != "Date"}, body


# --- HEAD: the GET's Content-Length, no body -----------------------------------------------


def _aware(method: str, declare: bool = True) -> dict[str, Any]:
    """An answer as a method-aware function gives it: HEAD without the body."""
    headers = {"Content-Type": "application/json"}
    if declare:
        headers["Content-Length"] = str(len(GET_BODY))
    return {"statusCode": 200, "headers": headers,
            "body": "" if method == "HEAD" else GET_BODY.decode()}


def test_head_answered_without_body_sends_the_length_the_function_declared() -> None:
    get, _ = _answer("GET", _aware("GET"))
    head, events = _answer("HEAD", _aware("HEAD"))
    assert orjson.loads(events[0])["httpMethod"] == "HEAD"  # the function is told the truth
    assert head.response.length == len(GET_BODY) == 45
    get_fields, get_body = _head_of(writer.serialize(get.response, True))
    head_fields, head_body = _head_of(writer.serialize(head.response, True, head_only=True))
    assert get_body == GET_BODY and head_body == b""
    assert head_fields == get_fields and head_fields["content-length"] == "45"


def test_head_without_body_or_declared_length_sends_no_content_length() -> None:
    head, _ = _answer("HEAD", _aware("HEAD", declare=False))
    assert head.response.length is None
    fields, body = _head_of(writer.serialize(head.response, True, head_only=True))
    assert "content-length" not in fields and body == b""


def test_head_answered_with_the_body_sends_its_length_and_no_body() -> None:
    head, _ = _answer("HEAD", _aware("GET"))  # a function that ignores the method
    assert head.response.length is None and head.response.body == GET_BODY
    fields, body = _head_of(writer.serialize(head.response, True, head_only=True))
    assert fields["content-length"] == "45" and body == b""


def test_get_keeps_the_computed_length_whatever_the_function_declared() -> None:
    get, _ = _answer("GET", {"statusCode": 200, "headers": {"Content-Length": "45"},
                             "body": ""})
    assert get.response.length is None
    fields, body = _head_of(writer.serialize(get.response, True))
    assert fields["content-length"] == "0" and body == b""


@pytest.mark.parametrize("status", [204, 304])
def test_head_with_a_bodiless_status_has_no_content_length(status: int) -> None:
    fields, body = _head_of(writer.serialize(Response(status, (), b"", length=45), True,
                                             head_only=True))
    assert "content-length" not in fields and body == b""


def test_error_page_to_head_keeps_its_length_and_drops_its_body() -> None:
    page = writer.error_response(PayloadTooLarge("x"))
    fields, body = _head_of(writer.serialize(page, False, head_only=True))
    assert fields["content-length"] == str(len(page.body)) and body == b""


# --- a declared length that can never fit: 413 before reading -----------------------------


class _Body:
    """A RequestBody whose reads are counted; it never gets a byte (the client waits)."""

    def __init__(self, length: int | None) -> None:
        self.continues = 0
        self.body = RequestBody(length, lambda: None, lambda: None, self._continue)

    def _continue(self) -> None:
        self.continues += 1


def _upload(content_type: str, length: int | None, feed: bytes | None = None
            ) -> tuple[Any, _Body, int]:
    """POST through a FunctionTarget: what it ended with (Outcome or exception), the body,
    and how many times the function was invoked."""
    calls = 0

    async def invoker(event: bytes, request_id: str) -> Invocation:
        nonlocal calls
        calls += 1
        return Invocation(b'{"statusCode": 200, "body": "ok"}', request_id)

    body = _Body(length)
    headers: Headers = (("Content-Type", content_type),) if content_type else ()
    request = _request("POST", headers + (("Content-Length", str(length)),), body.body)

    async def main() -> Any:
        task = asyncio.ensure_future(FunctionTarget(invoker, TrustedProxies([]))(request,
                                                                                 ROUTE))
        await asyncio.sleep(0.01)
        if feed is not None and not task.done():
            body.body.feed(feed)
            body.body.end()
        try:
            return await asyncio.wait_for(task, 5)
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            return exc

    return asyncio.run(main()), body, calls


@pytest.mark.parametrize("content_type,length", [
    ("application/octet-stream", 5 * 1024 * 1024),
    ("", 5 * 1024 * 1024),  # no Content-Type: Base64 too
    ("image/png", MAX_EVENT_BYTES // 8 * 3 + 1),
    ("text/plain", MAX_EVENT_BYTES // 2 + 1),
])
def test_a_body_that_can_never_fit_is_refused_unread_and_without_100_continue(
        content_type: str, length: int) -> None:
    result, body, calls = _upload(content_type, length)
    assert isinstance(result, PayloadTooLarge) and result.status_hint == 413
    assert body.continues == 0 and not body.body.ended and calls == 0


def test_a_text_body_that_could_fit_is_read_and_invoked() -> None:
    length = MAX_EVENT_BYTES // 8 * 3 + 1  # too big as Base64, not as text
    result, body, calls = _upload("text/plain", length, b"a" * length)
    assert isinstance(result, Outcome) and result.response.status == 200
    assert body.continues == 1 and calls == 1


def test_a_text_body_that_turns_out_binary_is_refused_once_read() -> None:
    length = MAX_EVENT_BYTES // 8 * 3 + 1
    result, body, calls = _upload("text/plain", length, b"\xff" * length)
    assert isinstance(result, PayloadTooLarge)
    assert body.continues == 1 and calls == 0
