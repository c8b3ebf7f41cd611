"""The forwarded header set: what a backend (SCF event or CVM request) sees of the client's headers.

Owns the hop-by-hop list (RFC 9110 §7.6.1), the headers CLB adds (SPEC §5) and the trusted-proxy
test for ``X-Forwarded-For``. Strategy: one pass finds the ``Connection`` options, one pass
filters (hop-by-hop, nominated, forged CLB headers), then ours are appended, so nothing a client
sends can remove or forge them. Pure: no asyncio, no logging, no knowledge of SCF or CVM
framing (WebSocket upgrades re-add ``Connection``/``Upgrade`` in the CVM tunnel, not here).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from .messages import Headers, Request
from .vocabulary import HOP_BY_HOP


#: The headers CLB adds, in the event and to CVM requests (SPEC §5), canonical spelling.
CLB_HEADERS: tuple[str, ...] = (
    "X-Stgw-Time", "X-Client-Proto", "X-Forwarded-Proto", "X-Client-Proto-Ver", "X-Real-IP",
    "X-Forwarded-For",
)
_CLB_LOWER = frozenset(name.lower() for name in CLB_HEADERS)
#: What a mutual TLS listener tells backends of the client certificate (docs/BEHAVIOUR.md
#: §8; our names, CLB documents none): the verdict (nginx's $ssl_client_verify values), the
#: subject (RFC 4514) and the SHA-256 fingerprint; the last two only when a certificate came.
CLIENT_CERT_HEADERS: tuple[str, ...] = (
    "X-Client-Cert-Verify", "X-Client-Cert-Subject", "X-Client-Cert-Fingerprint",
)
_XFF = "x-forwarded-for"
#: Removed from every client message before ours are added (the client certificate ones on
#: every listener: a backend must be able to trust them wherever a request came from).
DROPPED: frozenset[str] = HOP_BY_HOP | _CLB_LOWER | {n.lower() for n in CLIENT_CERT_HEADERS}
#: Fields a client may not nominate for removal in ``Connection``: the router chose the rule
#: by Host and the backend frames the body by Content-Length; removing either would make the
#: backend see a different request than the one we routed (RFC 9110 §7.6.1 forbids nominating
#: fields meant for all recipients anyway).
_NOT_NOMINABLE = frozenset({"host", "content-length"})

_CACHE_MAX = 1024


class TrustedProxies:
    """The peers (CIDRs) whose ``X-Forwarded-For`` is extended rather than replaced.

    Membership answers are cached: a gateway sees the same few peers over and over, and
    ``ipaddress`` parsing costs more than the rest of the header pass.
    """

    __slots__ = ("_networks", "_cache", "none")

    def __init__(self, cidrs: Iterable[str]) -> None:
        # strict=False: "10.0.0.1/8" means 10.0.0.0/8, as nginx's set_real_ip_from reads it.
        self._networks = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
        self._cache: dict[str, bool] = {}
        #: no peer is trusted (the default): nothing to look up per request
        self.none = not self._networks

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __contains__(self, ip: object) -> bool:
        if not self._networks or not isinstance(ip, str):
            return False
        hit = self._cache.get(ip)
        if hit is None:
            hit = self._lookup(ip)
            if len(self._cache) >= _CACHE_MAX:  # bounded: a scan of many peers cannot grow it
                self._cache.clear()
            self._cache[ip] = hit
        return hit

    def _lookup(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])  # drop an IPv6 zone id
        except ValueError:
            return False
        candidates: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = (addr,)
        # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; match them as IPv4 too.
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            candidates = (addr, addr.ipv4_mapped)
        return any(a in net for a in candidates for net in self._networks)


def _connection_options(headers: Headers, lowers: list[str]) -> frozenset[str]:
    """The field names listed in every ``Connection`` header (RFC 9110 §7.6.1)."""
    options: set[str] = set()
    for (_, value), lname in zip(headers, lowers):
        if lname == "connection":
            options.update(token.strip().lower() for token in value.split(","))
    options.discard("")
    return frozenset(options - _NOT_NOMINABLE)


def end_to_end(request: Request, trusted: TrustedProxies,
               drop: frozenset[str] = DROPPED) -> tuple[list[tuple[str, str]], str]:
    """The client's end-to-end fields, names as sent and in order, without hop-by-hop,
    nominated and forged CLB fields (``drop``: DROPPED, or a superset of it, lower-case); and
    the ``X-Forwarded-For`` chain to send (a trusted peer's chain extended, anyone else's
    replaced by the peer's address)."""
    headers = request.headers
    lowers = [name.lower() for name, _ in headers]
    if drop.isdisjoint(lowers):  # most requests: nothing to drop (Connection is in drop)
        return list(headers), request.client_ip
    nominated = _connection_options(headers, lowers) if "connection" in lowers else frozenset()
    client_ip = request.client_ip
    keep_xff = not trusted.none and client_ip in trusted
    incoming_xff: list[str] = []
    kept: list[tuple[str, str]] = []
    for field, lname in zip(headers, lowers):
        # Nominated fields go first, so a trusted proxy that nominates X-Forwarded-For gets it
        # treated as hop-by-hop like any other nominated field.
        if lname in nominated:
            continue
        if lname in drop:
            if keep_xff and lname == _XFF:
                incoming_xff.append(field[1].strip())
            continue
        kept.append(field)
    if not incoming_xff:
        return kept, client_ip
    return kept, ", ".join([v for v in incoming_xff if v] + [client_ip])


_stgw_ms = -1
_stgw_text = ""


def _stgw_time(received_at: float) -> str:
    """``X-Stgw-Time``: seconds with milliseconds; formatted once per millisecond."""
    global _stgw_ms, _stgw_text
    ms = round(received_at * 1000)
    if ms != _stgw_ms:
        _stgw_ms = ms
        _stgw_text = f"{ms // 1000}.{ms % 1000:03d}"
    return _stgw_text


def clb_values(request: Request, chain: str) -> tuple[str, str, str, str, str, str]:
    """The values of the CLB headers for ``request``, in the order of ``CLB_HEADERS``."""
    scheme = request.scheme
    # X-Real-IP stays the address we saw even behind a trusted proxy: that proxy vouches only
    # for the entry it appended to X-Forwarded-For, not for the leftmost one a client may have
    # written; backends wanting the chain read X-Forwarded-For.
    return (_stgw_time(request.received_at), scheme, scheme,
            "HTTP/1.1" if request.http_version == "1.1" else f"HTTP/{request.http_version}",
            request.client_ip, chain)


#: the CLB header lines with their values left to fill in, as ``clb_values`` gives them
CLB_LINES: str = "".join(f"{name}: {{}}\r\n" for name in CLB_HEADERS)


def forwarded_headers(request: Request, trusted: TrustedProxies) -> Headers:
    """The client's end-to-end headers, names as sent and in order, then the CLB headers
    (and, on a mutual TLS listener, the client certificate ones)."""
    kept, chain = end_to_end(request, trusted)
    kept += zip(CLB_HEADERS, clb_values(request, chain))
    if request.client_cert is not None:
        kept += client_cert_headers(request)
    return tuple(kept)


def client_cert_headers(request: Request) -> list[tuple[str, str]]:
    """The CLIENT_CERT_HEADERS of a mutual TLS listener's request (none elsewhere)."""
    cert = request.client_cert
    if cert is None:
        return []
    values = (cert.verify, cert.subject, cert.fingerprint)
    return [(name, value) for name, value in zip(CLIENT_CERT_HEADERS, values) if value]


def optional_value(name: str, request: Request) -> str:
    """The value of one of custom_config's optional proxy_set_header headers
    (customconfig.OPTIONAL_HEADERS, canonical names), or of a CLIENT_CERT_HEADERS one
    ("" when the request has none: the header is then not sent)."""
    if name == "X-Real-Port":
        return str(request.client_port)
    if name == "Stgw-request-id":
        return request.request_id
    if name == "X-clb-stgw-vip":
        return request.server_addr
    cert = request.client_cert
    if cert is None:
        return ""
    return {"X-Client-Cert-Verify": cert.verify, "X-Client-Cert-Subject": cert.subject,
            "X-Client-Cert-Fingerprint": cert.fingerprint}.get(name, "")


def redirect_prefixes(address: str, scheme: str = "http") -> tuple[str, ...]:
    """What ``proxy_redirect default`` looks for at the start of an upstream's ``Location``
    and ``Refresh`` url: the target as the proxy connects to it, ``http://host:port/`` (as
    nginx matches its proxy_pass URL; ``https://`` for a rule forwarding HTTPS), plus
    ``http://host/`` for port 80 (``https://host/`` for 443), where a client would write no
    port. Compared case-insensitively (scheme and host are, RFC 3986 §6.2.2.1)."""
    host, _, port = address.rpartition(":")
    prefixes = [f"{scheme}://{address}/".lower()]
    if port == ("443" if scheme == "https" else "80"):
        prefixes.append(f"{scheme}://{host}/".lower())
    return tuple(prefixes)


def rewrite_redirects(headers: Headers, prefixes: tuple[str, ...], request: Request) -> Headers:
    """``headers`` with each ``Location`` (and the url of each ``Refresh``) that starts with
    one of ``prefixes`` rewritten to the address the client used: its scheme and Host, or a
    path alone when the client sent no Host (a relative Location is valid, RFC 9110 §10.2.2)."""
    host = request.header("host")
    base = f"{request.scheme}://{host}/" if host else "/"
    out = []
    for name, value in headers:
        lname = name.lower()
        if lname == "location":
            value = _rewritten(value, 0, prefixes, base)
        elif lname == "refresh":
            at = value.lower().find("url=")
            if at >= 0:
                value = _rewritten(value, at + 4, prefixes, base)
        out.append((name, value))
    return tuple(out)


def _rewritten(value: str, start: int, prefixes: tuple[str, ...], base: str) -> str:
    head = value[start:start + 256].lower()
    for prefix in prefixes:
        if head.startswith(prefix):
            return value[:start] + base + value[start + len(prefix):]
    return value


__all__ = ["CLB_HEADERS", "CLB_LINES", "CLIENT_CERT_HEADERS", "DROPPED",
           "client_cert_headers", "HOP_BY_HOP", "TrustedProxies", "clb_values",
           "end_to_end", "forwarded_headers", "optional_value", "redirect_prefixes",
           "rewrite_redirects"]
