"""The frozen, slotted values passed between layers.

``Request`` is what the connection hands to the router once a request is complete; ``Response``
is what a backend hands back. Headers are tuples of ``(name, value)`` str pairs, names as the
client sent them (latin-1 decoded, as RFC 9110 §5.5 allows only visible ASCII plus obs-text).
Nothing here does I/O or knows about asyncio.
"""

from __future__ import annotations

from dataclasses import dataclass

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    #: the request-target path as sent, before ``?`` (still percent-encoded)
    path: str
    #: the raw query string without ``?`` ("" when absent)
    query: str
    headers: Headers
    body: bytes
    #: "1.1" or "1.0"
    http_version: str
    client_ip: str
    client_port: int
    #: "http" or "https"
    scheme: str
    #: name of the listener that accepted the connection
    listener: str
    #: time.time() when the first byte of the request arrived
    received_at: float
    #: the peer asked to keep the connection open (and HTTP/1.1 framing allows it)
    keep_alive: bool = True

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Headers = ()
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Route:
    """What the router decided for one request: which rule and which target serve it."""

    listener: str
    #: the matched rule's domain and url as configured
    domain: str
    url: str
    location_id: str
    #: a label for logs and metrics: "SCF:namespace/function" or "CVM:host:port"
    target: str


@dataclass(frozen=True, slots=True)
class Invocation:
    """One finished function invocation: its raw JSON result and how it ran."""

    #: the function's return value, JSON-encoded (an integration response, if the function is
    #: well behaved)
    result: bytes
    #: the SCF request id of the invocation
    request_id: str
    #: a new instance was started for it
    cold_start: bool = False
    duration_ms: float = 0.0
