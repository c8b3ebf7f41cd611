"""The slotted values passed between layers.

``Request`` is what the connection hands to the router once a request's head is in (its body,
if any, still arriving in ``stream``); ``Response`` is what a backend hands back. Headers are
tuples of ``(name, value)`` str pairs, names as the client sent them (latin-1 decoded, as
RFC 9110 §5.5 allows only visible ASCII plus obs-text).
Nothing here does I/O or knows about asyncio.

They are treated as immutable (``dataclasses.replace`` makes a changed copy) but not declared
frozen: a frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``, which
made building a ``Request`` three times dearer, once per request on the hot path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ClientCertificateInvalid, ClientCertificateRequired, ProxyError

if TYPE_CHECKING:
    from .streams import RequestBody

Headers = tuple[tuple[str, str], ...]


@dataclass(slots=True)
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
    #: the body still arriving, when the request has one and it was not read yet: a backend
    #: either streams it (CVM) or reads it whole into ``body`` (SCF)
    stream: RequestBody | None = None
    #: the Upgrade header value of a request that asks to switch protocols ("" otherwise)
    upgrade: str = ""
    #: CLB's stgw_request_id: 32 hex digits, unique per process run (the access log's
    #: ``stgw_request_id``, the ``Stgw-request-id`` header when custom_config asks for it)
    request_id: str = ""
    #: the local address the client connected to (CLB's $server_addr, the VIP), when wanted
    server_addr: str = ""
    #: mutual TLS listeners: what the client certificate check found (X-Client-Cert-*)
    client_cert: ClientCertificate | None = None
    #: bytes of the request line and header block as received (CLB's request_length counts
    #: them); 0 where there were none (HTTP/2: the length is worked out from the fields)
    head_length: int = 0

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """What a mutual TLS listener learnt of a connection's client certificate (tls.py), once
    per connection: the verdict and what the backends' X-Client-Cert-* headers carry."""

    #: nginx's $ssl_client_verify: "SUCCESS", "NONE" (none sent) or "FAILED:<reason>"
    verify: str
    #: the certificate's subject, RFC 4514 (nginx's $ssl_client_s_dn), "" without one
    subject: str = ""
    #: SHA-256 of the certificate (DER), 64 lower-case hex digits, "" without one
    fingerprint: str = ""

    def refusal(self, required: bool) -> ProxyError | None:
        """What a connection with this verdict answers instead of serving (nginx's 496/495,
        sent as 400 with their texts), or None; ``required``: ssl_verify_client is "on".
        One rule for every connection class (HTTP/1.1 here, HTTP/2 alike)."""
        if self.verify == "SUCCESS":
            return None
        if self.verify == "NONE":
            return ClientCertificateRequired("no client certificate",
                                             log_detail="client sent no certificate") \
                if required else None
        return ClientCertificateInvalid(
            "client certificate refused",
            log_detail=f"client certificate {self.subject} {self.verify}")


@dataclass(slots=True)
class Response:
    status: int
    headers: Headers = ()
    body: bytes = b""
    #: a streamed body instead of ``body``: chunks until exhausted; an exception from it means
    #: the backend broke off and the client connection is aborted, never ended cleanly. A
    #: stream may also offer ``trailers`` (fields, read once it is exhausted) and
    #: ``headers_only`` (the head was the whole answer), as backends/grpc.py's GrpcBody does:
    #: the HTTP/2 frontend sends the trailers as the final HEADERS frame, and a head-only
    #: answer as one HEADERS frame with END_STREAM; HTTP/1.1 has no use for either
    stream: AsyncIterator[bytes] | None = None
    #: the streamed body's length when known (Content-Length), None for chunked framing
    length: int | None = None
    #: for a 101 answer: the tunnel that takes over the connection (see connection.py)
    tunnel: Any = None


@dataclass(slots=True)
class Route:
    """What the router decided for one request: which rule and which target serve it."""

    listener: str
    #: the matched rule's domain and url as configured
    domain: str
    url: str
    location_id: str
    #: a label for logs and metrics: "SCF:namespace/function" or "CVM:host:port"
    target: str
    #: this route's metric series, resolved when the router was built (metrics.RouteMeter)
    meter: Any = None
    #: the rule as the logs and metrics name it: domain and url ("" for no rule)
    rule: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.rule = f"{self.domain}{self.url}"


@dataclass(slots=True)
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
    #: the memory the instance used, bytes (SCF's MemUsage; 0: not known)
    mem_usage: int = 0
    #: the version that ran ("$LATEST", "1", ...; "" when not known: a remote or URL target)
    version: str = ""
    #: what the function printed during it, line by line (local functions; None: nothing)
    output: list[str] | None = None


@dataclass(slots=True)
class UpstreamTiming:
    """One CVM exchange's times (monotonic clock) and answer, for the access log's
    upstream_* fields (CLB's: each from the start of connecting to the upstream)."""

    #: the target's host:port
    address: str
    #: connecting began (or a pooled connection was taken)
    start: float
    #: the request started going out
    sent: float = 0.0
    #: the response head arrived
    header: float = 0.0
    #: the response ended (0.0: it did not end cleanly)
    done: float = 0.0
    #: the upstream's status code
    status: int = 0


@dataclass(slots=True)
class Outcome:
    """What the router hands back to the connection: the response and what served it."""

    response: Response
    route: Route | None = None
    #: SCF targets: the function invocation's request id and whether it started an instance
    function_request_id: str = ""
    cold_start: bool = False
    #: how long the function ran (SCF targets), for metrics and the access log
    function_ms: float = 0.0
    #: SCF targets: the memory the function used (bytes) and the version that ran
    function_mem: int = 0
    function_version: str = ""
    #: the ProxyError class name when the response is an error page, for metrics
    error: str = ""
    #: CVM targets: the exchange's times, for the access log
    upstream: UpstreamTiming | None = None
