"""TLS to backends (a rule's ``forward_type`` HTTPS or GRPCS): the client SSLContexts.

Owns how the proxy's TLS client side is set up for CVM targets: one context per (CA bundle,
ALPN protocol), made once when targets are bound (at load or reload, never per request or per
connection), shared by every pool and health check that uses the same pair. The pool sends the
target's host as SNI (RFC 6066 §3; an IP literal is never sent as SNI, the ``ssl`` module
leaves it out) and, with a CA, verifies the certificate against that host.

Decisions (ours, CLB's own is not documented, clb-features.md §2.4 "UNCONFIRMED"): without
``backend_ca`` the backend's certificate is *not* verified (nginx's ``proxy_ssl_verify off``
default; backends behind a load balancer commonly serve self-signed certificates); with it,
the chain must lead to that CA and the certificate must name the target's host (its DNS name
or IP address), or the connect fails as a 502 (retryable on another target: nothing was sent).
TLS 1.2 is the minimum either way. ALPN offers exactly one protocol: ``http/1.1`` for HTTPS, so
a backend that prefers h2 still answers in HTTP/1.1, and ``h2`` for GRPCS (RFC 9113 §3.2).

Must not know what is sent on the connections, or routing.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from ..errors import ConfigError

#: forward type -> the one ALPN protocol offered
ALPN = {"HTTPS": "http/1.1", "GRPCS": "h2"}

#: the context's identity: CA bundle (and its mtime, so a reload sees a changed file), ALPN
ContextKey = tuple[str, int, str]


def context_key(ca: Path | None, alpn: str) -> ContextKey:
    """What decides a context: the CA file as it is now (a changed file makes a new one)."""
    if ca is None:
        return ("", 0, alpn)
    try:
        mtime = os.stat(ca).st_mtime_ns
    except OSError as exc:
        raise ConfigError(f"backend_ca: cannot read {ca}: {exc.strerror}") from exc
    return (str(ca), mtime, alpn)


def client_context(ca: Path | None, alpn: str) -> ssl.SSLContext:
    """A client context offering ``alpn``: verifying against ``ca`` (only it, not the system
    store: a backend's private CA is what is meant) or, without one, not verifying at all."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols([alpn])
    if ca is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    try:
        context.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"backend_ca: cannot load {ca}: {exc}") from exc
    return context


class Contexts:
    """The contexts in use, by key, so pools and checks of one CA share one context."""

    def __init__(self) -> None:
        self._made: dict[ContextKey, ssl.SSLContext] = {}

    def get(self, ca: Path | None, alpn: str) -> tuple[ContextKey, ssl.SSLContext]:
        key = context_key(ca, alpn)
        context = self._made.get(key)
        if context is None:
            context = self._made[key] = client_context(ca, alpn)
        return key, context

    def retain(self, keys: set[ContextKey]) -> None:
        for key in [k for k in self._made if k not in keys]:
            del self._made[key]
