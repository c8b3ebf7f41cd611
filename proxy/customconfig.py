"""CLB's personalised configuration (七层个性化配置): nginx-directive text -> a frozen value.

Owns the directives clbscf-proxy accepts in a listener's or a rule's domain's ``custom_config``,
their CLB ranges (clb-features.md §1.3) and their syntax: nginx's (whitespace-separated words,
``"..."`` or ``'...'`` quoting, ``#`` comments, each directive ending with ``;``), times as
nginx writes them (``60``, ``60s``, ``500ms``, ``2m``, ``1h``) and sizes (``8k``, ``60M``,
``1g``). ``parse`` returns a ``CustomConfig`` holding only what the text set (None elsewhere),
so the config layer can lay it over the listener's keys once, at load; nothing is parsed per
request.

An unknown directive, a wrong number of arguments, a value out of CLB's range, a directive not
allowed where it is written (a connection-level one in a domain's text), or one given twice is
a ConfigError ``line N: ...`` (N counted in the text, from 1), which config.py prefixes with the
field's path. CLB directives we do not implement (``proxy_buffers``, ``error_page``, ...) are
refused by name rather than accepted and ignored.

Pure: no I/O, no asyncio; ``ssl_ciphers`` is checked by OpenSSL itself (an in-memory context).
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, fields
from typing import Any

from .errors import ConfigError
from .vocabulary import FRAMING, HOP_BY_HOP

#: the optional request headers CLB's ``proxy_set_header`` can add (clb-features.md §1.6):
#: lower-case name -> (canonical name, the only value CLB gives it)
OPTIONAL_HEADERS: dict[str, tuple[str, str]] = {
    "x-real-port": ("X-Real-Port", "$remote_port"),
    "stgw-request-id": ("Stgw-request-id", "$stgw_request_id"),
    "x-clb-stgw-vip": ("X-clb-stgw-vip", "$server_addr"),
}
SSL_PROTOCOLS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
#: ssl_verify_depth's CLB range (clb-features.md §1.3)
SSL_VERIFY_DEPTH = (1, 10)
#: CLB directives that exist there but not here: refused with this reason
_NOT_IMPLEMENTED = (
    "client_header_buffer_size", "proxy_buffer_size", "proxy_buffers", "ssl_early_data",
    "http2_max_field_size", "error_page", "proxy_ignore_client_abort",
)


@dataclass(frozen=True, slots=True)
class CustomConfig:
    """What one custom_config text set; None (or empty) = not set there."""

    #: response headers: (name, value, always); add_header adds them to 200, 201, 204, 206,
    #: 301, 302, 303, 304, 307 and 308 answers (all with ``always``), as nginx
    add_headers: tuple[tuple[str, str, bool], ...] = ()
    #: more_set_headers: (name, value) set on every answer, replacing the backend's field
    set_headers: tuple[tuple[str, str], ...] = ()
    keepalive_requests: int | None = None
    keepalive_timeout: float | None = None
    send_timeout: float | None = None
    proxy_send_timeout: float | None = None
    proxy_read_timeout: float | None = None
    proxy_connect_timeout: float | None = None
    client_max_body_size: int | None = None
    client_header_timeout: float | None = None
    client_body_timeout: float | None = None
    proxy_request_buffering: bool | None = None
    #: proxy_set_header: canonical names of OPTIONAL_HEADERS to add to CVM requests
    proxy_set_headers: tuple[str, ...] = ()
    proxy_redirect: bool | None = None
    server_tokens: bool | None = None
    #: for the TLS layer (the listener's ssl_protocols / ssl_ciphers keys)
    ssl_protocols: tuple[str, ...] | None = None
    ssl_ciphers: str | None = None
    #: mutual TLS: how many CAs may stand between a client certificate and client_ca
    ssl_verify_depth: int | None = None

    def overrides(self) -> dict[str, Any]:
        """The scalar fields this text set, by name (the Listener's field names)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in _LISTS and getattr(self, f.name) is not None}


_LISTS = frozenset({"add_headers", "set_headers", "proxy_set_headers"})
#: directives a domain's (rule's) text may hold: those that act after routing
DOMAIN_DIRECTIVES = frozenset({
    "add_header", "more_set_headers", "proxy_send_timeout", "proxy_read_timeout",
    "proxy_connect_timeout", "proxy_request_buffering", "proxy_set_header", "proxy_redirect",
})
_ADD_HEADER_STATUSES = frozenset({200, 201, 204, 206, 301, 302, 303, 304, 307, 308})


def add_header_applies(status: int) -> bool:
    """nginx's add_header (without ``always``) acts only on these statuses."""
    return status in _ADD_HEADER_STATUSES


# --- the text --------------------------------------------------------------------------------

_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|\'((?:[^\'\\]|\\.)*)\'|(;)|(#[^\n]*)|([^\s;"\'#]+)|(\s+)',
                    re.S)


class _Error(Exception):
    pass


def _directives(text: str) -> list[tuple[int, list[str]]]:
    """(line, [name, args...]) per directive."""
    out: list[tuple[int, list[str]]] = []
    words: list[str] = []
    line = 1
    start = 1
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ConfigError(f"line {line}: unbalanced quote")
        dq, sq, semi, _comment, word, _space = m.groups()
        if semi:
            if not words:
                raise ConfigError(f"line {line}: empty directive before ';'")
            out.append((start, words))
            words = []
        elif dq is not None or sq is not None or word is not None:
            if not words:
                start = line
            value = word if word is not None else re.sub(r"\\(.)", r"\1", dq if dq is not None
                                                         else sq)
            words.append(value)
        line += m.group(0).count("\n")
        pos = m.end()
    if words:
        raise ConfigError(f"line {start}: {words[0]!r} must end with ';'")
    return out


_TIME = re.compile(r"([0-9]+)(ms|s|m|h|d)?")
_TIME_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_SIZE = re.compile(r"([0-9]+)([kKmMgG])?")
_SIZE_UNITS = {None: 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _time(lo: float, hi: float) -> Any:
    def check(args: list[str]) -> float:
        m = _TIME.fullmatch(args[0])
        if m is None:
            raise _Error(f"must be a time such as 60s, got {args[0]!r}")
        seconds = int(m[1]) * _TIME_UNITS[m[2]]
        if not lo <= seconds <= hi:
            raise _Error(f"must be {lo:g}s..{hi:g}s, got {args[0]}")
        return float(seconds)
    return check


def _size(lo: int, hi: int) -> Any:
    def check(args: list[str]) -> int:
        m = _SIZE.fullmatch(args[0])
        if m is None:
            raise _Error(f"must be a size such as 60M, got {args[0]!r}")
        size = int(m[1]) * _SIZE_UNITS[(m[2] or "").lower() or None]
        if not lo <= size <= hi:
            raise _Error(f"must be {lo >> 20}M..{hi >> 20}M, got {args[0]}")
        return size
    return check


def _count(lo: int, hi: int) -> Any:
    def check(args: list[str]) -> int:
        if not args[0].isdigit() or not lo <= int(args[0]) <= hi:
            raise _Error(f"must be an integer {lo}..{hi}, got {args[0]!r}")
        return int(args[0])
    return check


def _switch(args: list[str]) -> bool:
    if args[0] not in ("on", "off"):
        raise _Error(f"must be on or off, got {args[0]!r}")
    return args[0] == "on"


_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
#: response fields the writer owns (framing, connection management, Server and Date, which
#: it always sends): a second one from the config would contradict it
_OWN_FIELDS = FRAMING | HOP_BY_HOP | {"server", "date"}


def _header(name: str, value: str) -> tuple[str, str]:
    if not _FIELD_NAME.fullmatch(name):
        raise _Error(f"header name must be a token, got {name!r}")
    if name.lower() in _OWN_FIELDS:
        raise _Error(f"cannot set {name}: the proxy writes it itself")
    if not _FIELD_VALUE.fullmatch(value) or "$" in value:
        raise _Error(f"header value must be visible text without variables ($), got {value!r}")
    return name, value.strip()


def _proxy_redirect(args: list[str]) -> bool:
    if len(args) != 1 or args[0] not in ("default", "off"):
        raise _Error(f"only 'default' and 'off' are supported, got {' '.join(args)!r}")
    return args[0] == "default"


def ssl_protocols_problem(names: tuple[str, ...] | list[str]) -> str | None:
    """What is wrong with an ``ssl_protocols`` list (the directive's and the listener key's
    one rule), or None. The versions must be a range without a gap: OpenSSL negotiates
    between a minimum and a maximum, and a hole (``TLSv1 TLSv1.2``) would silently drop the
    versions below it (SSL_CTX_set_options(3), "the hole")."""
    bad = [name for name in names if name not in SSL_PROTOCOLS]
    if bad:
        return f"must be among {' '.join(SSL_PROTOCOLS)}, got {bad[0]!r}"
    if not names:
        return "must name at least one of " + " ".join(SSL_PROTOCOLS)
    if len(set(names)) != len(names):
        return f"names a protocol twice: {' '.join(names)}"
    positions = sorted(SSL_PROTOCOLS.index(name) for name in names)
    if positions[-1] - positions[0] + 1 != len(positions):
        missing = [SSL_PROTOCOLS[i] for i in range(positions[0], positions[-1])
                   if i not in positions]
        return (f"must be consecutive versions (OpenSSL negotiates a range), "
                f"{' '.join(names)} leaves out {' '.join(missing)}")
    return None


def _ssl_protocols(args: list[str]) -> tuple[str, ...]:
    problem = ssl_protocols_problem(args)
    if problem:
        raise _Error(problem)
    return tuple(p for p in SSL_PROTOCOLS if p in args)


def ssl_ciphers_problem(text: str) -> str | None:
    """What OpenSSL says of an ``ssl_ciphers`` string (the directive's and the listener
    key's one rule), or None: it must select at least one TLS 1.2 (or older) suite."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(text)
    except ssl.SSLError:
        return f"OpenSSL selects no cipher from {text!r}"
    return None


def _ssl_ciphers(args: list[str]) -> str:
    problem = ssl_ciphers_problem(args[0])
    if problem:
        raise _Error(problem)
    return args[0]


#: directive -> (field, min args, max args, check of the args); CLB's ranges
_SCALARS: dict[str, tuple[str, int, int, Any]] = {
    "keepalive_requests": ("keepalive_requests", 1, 1, _count(1, 10000)),
    "keepalive_timeout": ("keepalive_timeout", 1, 1, _time(0, 900)),
    "send_timeout": ("send_timeout", 1, 1, _time(1, 3600)),
    "proxy_send_timeout": ("proxy_send_timeout", 1, 1, _time(30, 3600)),
    "proxy_read_timeout": ("proxy_read_timeout", 1, 1, _time(30, 3600)),
    "proxy_connect_timeout": ("proxy_connect_timeout", 1, 1, _time(4, 120)),
    "client_max_body_size": ("client_max_body_size", 1, 1, _size(1 << 20, 10240 << 20)),
    "client_header_timeout": ("client_header_timeout", 1, 1, _time(30, 120)),
    "client_body_timeout": ("client_body_timeout", 1, 1, _time(30, 120)),
    "proxy_request_buffering": ("proxy_request_buffering", 1, 1, _switch),
    "proxy_redirect": ("proxy_redirect", 1, 2, _proxy_redirect),
    "server_tokens": ("server_tokens", 1, 1, _switch),
    "ssl_protocols": ("ssl_protocols", 1, 4, _ssl_protocols),
    "ssl_ciphers": ("ssl_ciphers", 1, 1, _ssl_ciphers),
    "ssl_verify_depth": ("ssl_verify_depth", 1, 1, _count(*SSL_VERIFY_DEPTH)),
}
KNOWN = tuple(_SCALARS) + ("add_header", "more_set_headers", "proxy_set_header")


def parse(text: str, domain: bool = False) -> CustomConfig:
    """``text`` as a CustomConfig; ``domain``: it is a rule's domain's text, where only
    DOMAIN_DIRECTIVES are allowed. ConfigError ``line N: ...`` on anything wrong."""
    values: dict[str, Any] = {}
    lines: dict[str, int] = {}
    add: list[tuple[str, str, bool]] = []
    set_: list[tuple[str, str]] = []
    optional: list[str] = []
    for line, (name, *args) in _directives(text):
        try:
            if name in _NOT_IMPLEMENTED:
                raise _Error("is a CLB directive clbscf-proxy does not implement")
            if name not in KNOWN:
                raise _Error("unknown directive, expected one of " + ", ".join(KNOWN))
            if domain and name not in DOMAIN_DIRECTIVES:
                raise _Error("acts on the listener's connections: set it in the listener's "
                             "custom_config, not a domain's")
            if name == "add_header":
                if len(args) not in (2, 3) or (len(args) == 3 and args[2] != "always"):
                    raise _Error("takes a name, a value and optionally 'always'")
                add.append((*_header(args[0], args[1]), len(args) == 3))
            elif name == "more_set_headers":
                if not args:
                    raise _Error('takes one or more "Name: value"')
                for arg in args:
                    field, colon, value = arg.partition(":")
                    if not colon:
                        raise _Error(f'takes "Name: value", got {arg!r}')
                    set_.append(_header(field.strip(), value))
            elif name == "proxy_set_header":
                known = OPTIONAL_HEADERS.get(args[0].lower()) if len(args) == 2 else None
                if known is None or args[1] != known[1]:
                    raise _Error("only " + ", ".join(f"'{n} {v}'" for n, v in
                                                      OPTIONAL_HEADERS.values())
                                 + " are supported, got " + repr(" ".join(args)))
                if known[0] not in optional:
                    optional.append(known[0])
            else:
                field, lo, hi, check = _SCALARS[name]
                if not lo <= len(args) <= hi:
                    raise _Error(f"takes {lo}" + (f"..{hi}" if hi > lo else "")
                                 + f" argument{'s' if hi > 1 else ''}, got {len(args)}")
                if field in values:
                    raise _Error(f"is set twice (first on line {lines[field]})")
                values[field] = check(args)
                lines[field] = line
        except _Error as exc:
            raise ConfigError(f"line {line}: {name} {exc}") from None
    return CustomConfig(add_headers=tuple(add), set_headers=tuple(set_),
                        proxy_set_headers=tuple(optional), **values)


# --- what the connection does with the response headers ------------------------------------


@dataclass(frozen=True, slots=True)
class ResponseHeaders:
    """add_header and more_set_headers of one listener or domain, ready to apply."""

    add: tuple[tuple[str, str, bool], ...]
    set: tuple[tuple[str, str], ...]
    replaced: frozenset[str]

    def apply(self, status: int, headers: tuple[tuple[str, str], ...]
              ) -> tuple[tuple[str, str], ...]:
        if self.replaced:
            headers = tuple(h for h in headers if h[0].lower() not in self.replaced) + self.set
        if self.add:
            ok = status in _ADD_HEADER_STATUSES
            headers += tuple((n, v) for n, v, always in self.add if always or ok)
        return headers


def response_headers(listener: CustomConfig, domain: CustomConfig | None = None
                     ) -> ResponseHeaders | None:
    """The response headers of a listener's answers, or of a domain's (None: none to add).
    As nginx inherits add_header, a domain with add_header of its own does not get the
    listener's; more_set_headers of both apply, the domain's last."""
    add = domain.add_headers if domain is not None and domain.add_headers \
        else listener.add_headers
    sets = listener.set_headers + (domain.set_headers if domain is not None else ())
    if not add and not sets:
        return None
    return ResponseHeaders(add, sets, frozenset(n.lower() for n, _ in sets))


def server_tokens(config: CustomConfig) -> bool:
    """``server_tokens``: ours is off unless the text says on (see docs/CONFIG.md)."""
    return bool(config.server_tokens)
