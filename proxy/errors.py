"""The one exception tree of the proxy.

Every error that can end a request is a ``ProxyError`` carrying ``status_hint`` (the HTTP status
the client gets) and an optional ``log_detail`` (what the error log gets, never the client).
Foreign errors (OSError, orjson, ssl, ...) are converted at the boundary where they happen with
``raise ... from exc``. Only ``writer.py`` turns a ProxyError into response bytes.

    Exception
    ├── ConfigError                       bad config file / CLI value (not an HTTP error)
    └── ProxyError                        status_hint = 500
        ├── ClientError                   4xx, the client's fault
        │   ├── BadRequest                400 (malformed framing, bad path, path escaping /)
        │   │   ├── ClientCertificateRequired 400, mutual TLS "on": no certificate (nginx 496)
        │   │   └── ClientCertificateInvalid  400, mutual TLS: the certificate failed (nginx 495)
        │   ├── NotFound                  404 (no rule matches)
        │   ├── RequestTimeout            408 (header or body read deadline)
        │   ├── PayloadTooLarge           413 (body over client_max_body_size, event over 6 MB)
        │   ├── UriTooLong                414 (request line over the limit)
        │   ├── HeadersTooLarge           431 (header block or line count over the limit)
        │   ├── NotImplementedCoding      501 (a transfer coding we do not implement)
        │   └── HttpVersionNotSupported   505 (HTTP/1.x to a GRPC/GRPCS rule: gRPC needs HTTP/2)
        ├── BadGateway                    502, the backend's fault
        │   ├── BadFunctionResponse       502, CLB's "Analyse scf response failed." body
        │   ├── FunctionError             502, the handler raised (SCF status 430)
        │   ├── FunctionCrashed           502, instance died / memory limit (SCF 434/439)
        │   ├── FunctionResponseTooLarge  502, result over 6 MB (SCF 407)
        │   ├── RemoteInvokeError         502, InvokeFunction API error
        │   └── UpstreamError             502, CVM connect/reset/broken framing
        ├── ServiceUnavailable            503 (+ Retry-After)
        │   ├── NoTargetAvailable         503, every target drained or unhealthy
        │   └── Overloaded                503, instances busy and queue full / wait passed
        └── GatewayTimeout                504
            ├── FunctionTimeout           504, the function's own timeout (SCF 433)
            │   └── FunctionInitTimeout   504, a cold start over the function's init_timeout
            └── UpstreamTimeout           504, proxy_read_timeout or remote invoke timeout
"""

from __future__ import annotations


class ConfigError(Exception):
    """A config file or command-line value is wrong; the message names file and field path."""


class ProxyError(Exception):
    status_hint: int = 500
    #: seconds for a Retry-After header, or None
    retry_after: int | None = None
    #: the module that raised it already wrote the details to the error log
    logged: bool = False

    def __init__(self, message: str = "", *, log_detail: str = "") -> None:
        super().__init__(message or self.__class__.__name__)
        self.log_detail = log_detail


class ClientError(ProxyError):
    status_hint = 400


class BadRequest(ClientError):
    status_hint = 400


class ClientCertificateRequired(BadRequest):
    """nginx's 496, answered as 400 with its text: "No required SSL certificate was sent"."""


class ClientCertificateInvalid(BadRequest):
    """nginx's 495, answered as 400 with its text: "The SSL certificate error"."""


class NotFound(ClientError):
    status_hint = 404


class RequestTimeout(ClientError):
    status_hint = 408


class PayloadTooLarge(ClientError):
    status_hint = 413


class UriTooLong(ClientError):
    status_hint = 414


class HeadersTooLarge(ClientError):
    status_hint = 431


class NotImplementedCoding(ClientError):
    status_hint = 501


class HttpVersionNotSupported(ClientError):
    """The rule cannot serve the request's HTTP major version (RFC 9110 §15.6.6)."""

    status_hint = 505


class BadGateway(ProxyError):
    status_hint = 502


class BadFunctionResponse(BadGateway):
    """The function's result is not a valid integration response (SPEC §6)."""


class FunctionError(BadGateway):
    """The handler raised; ``error`` is the SCF error object (errorCode, errorMessage, ...)."""

    def __init__(self, message: str = "", *, error: dict[str, object] | None = None,
                 log_detail: str = "", debug: bool = False) -> None:
        super().__init__(message, log_detail=log_detail)
        self.error = error or {}
        #: the function is configured ``debug = true``: the client may see the trace
        self.debug = debug


class FunctionCrashed(BadGateway):
    pass


class FunctionResponseTooLarge(BadGateway):
    pass


class RemoteInvokeError(BadGateway):
    pass


class UpstreamError(BadGateway):
    """A CVM upstream failed. ``retryable``: nothing of the request reached the upstream's
    application, or it is idempotent and can be replayed (RFC 9110 §9.2.2), so the router may
    try another target."""

    def __init__(self, message: str = "", *, log_detail: str = "",
                 retryable: bool = False) -> None:
        super().__init__(message, log_detail=log_detail)
        self.retryable = retryable


class ServiceUnavailable(ProxyError):
    status_hint = 503
    retry_after = 1


class NoTargetAvailable(ServiceUnavailable):
    pass


class Overloaded(ServiceUnavailable):
    pass


class GatewayTimeout(ProxyError):
    status_hint = 504


class FunctionTimeout(GatewayTimeout):
    pass


class FunctionInitTimeout(FunctionTimeout):
    """An instance did not finish its initialization (interpreter start and the code before
    the handler) within the function's ``init_timeout``: a failed cold start."""


class UpstreamTimeout(GatewayTimeout):
    pass
