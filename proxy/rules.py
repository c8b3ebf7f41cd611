"""CLB rule matching for one listener: Host header + path -> the rule that serves it (SPEC §3).

Owns host and path normalisation for matching, and the compiled rule table of a listener.
Strategy: everything is compiled once in ``RuleTablePy.__init__`` into plain dicts, tuples of
ints/strings and compiled ``re.Pattern`` objects, so a request costs a few dict lookups:
exact domains in a dict; ``*.suffix`` / ``prefix.*`` wildcards in dicts probed at the host's
dot positions; per domain, ``=`` urls in a dict, prefix urls in a dict probed only at the
prefix lengths that exist; regexes (domain and url) are inherently tried in config order.
A native twin of ``match`` may later consume the same compiled attributes (see the bottom).

Pure: no asyncio, no logging, no I/O. It knows rules only as ``config.Listener`` values and
knows nothing of targets, schedulers or backends.

Decisions where the SPEC is silent (ours):
- ``match`` takes the raw Host header value and normalises it itself (``normalize_host``).
- Regex domains are searched (unanchored, as PCRE does for nginx ``server_name``) in the
  lower-cased host, case-sensitively, as nginx does after lower-casing ``$host``.
- Percent-escapes are decoded once; bytes that are not UTF-8 are kept as lone surrogates
  (``surrogateescape``) rather than refused: nginx routes bytes, and the decoded path is used
  for matching only. A malformed escape (``%zz``, a lone ``%``) is 400, as nginx answers.
- Consecutive slashes are merged before dot segments are resolved, as nginx does with its
  default ``merge_slashes on``: ``/a//../b`` is ``/b``.
- Two prefix rules with the same path (``/a`` and ``^~/a``, which nginx refuses as a duplicate
  location): the first in config order wins.
- A Host of several colons without brackets is taken as a bare IPv6 literal and kept whole;
  ``[v6]:port`` keeps its brackets. Neither can equal a domain name; only regexes see them.
- The 301 to ``path + "/"`` comes only from prefix rules (plain or ``^~``), not from ``=``.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable
from typing import ClassVar

from . import _native
from .config import Listener
from .errors import BadRequest, ConfigError

# --- normalisation --------------------------------------------------------------------------


def normalize_host(host_header: str) -> str:
    """The Host header value as domains are compared: lower-case, no port, no trailing dot."""
    # Host names are case-insensitive (RFC 9110 §4.2.3); the port is ignored (SPEC §3).
    host = host_header.lower()
    if ":" in host:
        if host[0] == "[":  # IP-literal "[v6]" or "[v6]:port" (RFC 3986 §3.2.2)
            end = host.find("]")
            if end >= 0:
                host = host[: end + 1]
        elif host.count(":") == 1:  # name:port; several colons are a bare IPv6, kept whole
            host = host[: host.index(":")]
    # "example.com." names the same host as "example.com" (RFC 1034 §3.1 absolute names)
    if host[-1:] == ".":
        host = host[:-1]
    return host


# runs of escapes are decoded together so a multi-byte UTF-8 character comes out whole;
# a "%" not followed by two hex digits is malformed (RFC 3986 §2.1 pct-encoded)
_ESCAPES = re.compile(r"(?:%[0-9A-Fa-f]{2})+|%")
_SLASHES = re.compile(r"//+")


def _decode_escapes(match: re.Match[str]) -> str:
    run = match.group()
    if run == "%":
        raise BadRequest("malformed percent-escape in the path")
    return bytes.fromhex(run.replace("%", "")).decode("utf-8", "surrogateescape")


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 on an absolute path without empty segments; 400 above the root."""
    out: list[str] = []
    trailing = False  # a final "." or ".." leaves the path ending with "/"
    for segment in path[1:].split("/"):
        trailing = segment in (".", "..")
        if segment == "..":
            if not out:
                raise BadRequest("the path climbs above the root")
            out.pop()
        elif segment != ".":
            out.append(segment)
    if trailing and out:
        out.append("")
    return "/" + "/".join(out)


def normalize_path(raw_path: str) -> str:
    """The path used for matching: percent-decoded once, slashes merged, dots resolved.

    ``raw_path`` is the request-target's path as sent, before ``?``. Raises ``BadRequest`` for
    a path not starting with "/" (``*`` included), a malformed escape, a NUL byte after
    decoding, or ``..`` climbing above the root.
    """
    if not raw_path.startswith("/"):  # origin-form only (RFC 9112 §3.2.1)
        raise BadRequest("the request path must start with /")
    path = _ESCAPES.sub(_decode_escapes, raw_path) if "%" in raw_path else raw_path
    if "\x00" in path:
        raise BadRequest("NUL in the request path")
    if "//" in path:
        path = _SLASHES.sub("/", path)
    if "/." in path:
        path = _remove_dot_segments(path)
    return path


# --- compiled form --------------------------------------------------------------------------

# url modifiers (clb-scf-facts.md §5.2), longest first where one starts with another
_EXACT, _CARET, _PREFIX, _REGEX = "exact", "caret", "prefix", "regex"
_URL_MODIFIERS: tuple[tuple[str, str, int], ...] = (
    ("=", _EXACT, 0), ("^~", _CARET, 0), ("~*", _REGEX, re.IGNORECASE), ("~", _REGEX, 0),
)

#: one domain's url rules: (exact path -> rule, prefix path -> (rule, is ^~),
#: distinct prefix lengths ascending, path without its "/" -> rule that 301s to it,
#: regexes in config order as (pattern, rule))
DomainRules = tuple[dict[str, int], dict[str, tuple[int, bool]], tuple[int, ...],
                    dict[str, int], tuple[tuple[re.Pattern[str], int], ...]]


def _domain_key(domain: str) -> str:
    # regex domains are kept as written; names and wildcards are case-insensitive
    return domain if domain.startswith("~") else domain.lower()


def _split_url(url: str) -> tuple[str, str, int]:
    """(kind, path or pattern, regex flags) of a rule url."""
    for modifier, kind, flags in _URL_MODIFIERS:
        if url.startswith(modifier):
            body = url[len(modifier):]
            # "~* \.png$" is CLB's own example; config.py drops the space the same way
            return kind, body.lstrip(" ") if kind == _REGEX else body, flags
    return _PREFIX, url, 0


def _compile(pattern: str, flags: int, what: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        raise ConfigError(f"{what}: invalid regular expression {pattern!r}: {exc}") from exc


def _compile_domain(rules: list[tuple[int, str]]) -> DomainRules:
    exact: dict[str, int] = {}
    prefixes: dict[str, tuple[int, bool]] = {}
    redirects: dict[str, int] = {}
    regexes: list[tuple[re.Pattern[str], int]] = []
    for index, url in rules:
        kind, body, flags = _split_url(url)
        if kind == _EXACT:
            exact.setdefault(body, index)
        elif kind == _REGEX:
            regexes.append((_compile(body, flags, f"url {url}"), index))
        else:
            prefixes.setdefault(body, (index, kind == _CARET))
            if len(body) > 1 and body.endswith("/"):
                redirects.setdefault(body[:-1], index)
    lengths = tuple(sorted({len(p) for p in prefixes}))
    return exact, prefixes, lengths, redirects, tuple(regexes)


# --- the table ------------------------------------------------------------------------------


class RuleTablePy:
    """A listener's rules compiled for matching; ``match(host, path) -> (rule index, redirect)``.

    The compiled attributes (read-only after ``__init__``, consumed by a native ``match`` too):
    ``exact_domains`` (host -> domain id), ``suffix_domains`` ("example.com" of
    "*.example.com" -> domain id), ``prefix_domains`` ("www.example" of "www.example.*" ->
    domain id), ``regex_domains`` ((pattern, domain id) in config order), ``default_domain``
    (domain id or -1) and ``domains`` (a ``DomainRules`` tuple per domain id).
    """

    __slots__ = ("exact_domains", "suffix_domains", "prefix_domains", "regex_domains",
                 "default_domain", "domains")

    def __init__(self, listener: Listener) -> None:
        by_domain: dict[str, list[tuple[int, str]]] = {}
        for index, rule in enumerate(listener.rules):
            by_domain.setdefault(_domain_key(rule.domain), []).append((index, rule.url))
        ids = {key: domain_id for domain_id, key in enumerate(by_domain)}
        self.exact_domains: dict[str, int] = {}
        self.suffix_domains: dict[str, int] = {}
        self.prefix_domains: dict[str, int] = {}
        regex_domains: list[tuple[re.Pattern[str], int]] = []
        for key, domain_id in ids.items():
            if key.startswith("~"):
                regex_domains.append((_compile(key[1:], 0, f"domain {key}"), domain_id))
            elif key.startswith("*."):
                self.suffix_domains[key[2:]] = domain_id
            elif key.endswith(".*"):
                self.prefix_domains[key[:-2]] = domain_id
            else:
                self.exact_domains[key] = domain_id
        self.regex_domains = tuple(regex_domains)
        self.default_domain = ids.get(_domain_key(listener.default_domain), -1)
        self.domains = tuple(_compile_domain(rules) for rules in by_domain.values())

    def _wildcard_or_regex_domain(self, host: str) -> int:
        # "*.suffix": the longest suffix first, i.e. the leftmost dot; at least one character
        # must precede it, so "*.example.com" does not match "example.com" (nginx server_name)
        if self.suffix_domains:
            dot = host.find(".", 1)
            while dot > 0:
                found = self.suffix_domains.get(host[dot + 1:])
                if found is not None:
                    return found
                dot = host.find(".", dot + 1)
        # "prefix.*": the longest prefix first, i.e. the rightmost dot with something after it
        if self.prefix_domains:
            dot = host.rfind(".", 0, len(host) - 1)
            while dot > 0:
                found = self.prefix_domains.get(host[:dot])
                if found is not None:
                    return found
                dot = host.rfind(".", 0, dot)
        for pattern, domain_id in self.regex_domains:
            if pattern.search(host):
                return domain_id
        return self.default_domain

    def match(self, host: str, path: str) -> tuple[int, bool]:
        """The rule for a raw Host header value and a ``normalize_path``-ed path.

        Returns (index into ``listener.rules``, redirect) or (-1, False): redirect means
        "answer 301 to path + '/'". CLB picks the domain first, so a path that no rule of the
        chosen domain matches is (-1, False) even if another domain has a rule for it.
        """
        name = normalize_host(host)
        domain_id = self.exact_domains.get(name)
        if domain_id is None:
            domain_id = self._wildcard_or_regex_domain(name)
            if domain_id < 0:
                return -1, False
        exact, prefixes, lengths, redirects, regexes = self.domains[domain_id]
        # nginx location order (clb-scf-facts.md §5.2): "=" first ...
        found = exact.get(path)
        if found is not None:
            return found, False
        # ... then the longest prefix, probed only at the prefix lengths that exist ...
        size = len(path)
        best, caret, whole = -1, False, False
        for k in range(bisect_right(lengths, size) - 1, -1, -1):
            length = lengths[k]
            hit = prefixes.get(path[:length] if length < size else path)
            if hit is not None:
                (best, caret), whole = hit, length == size
                break
        # ... nginx's auto-redirect of "/abc" to a "/abc/" rule is decided before regexes,
        # unless a prefix rule names the path itself ...
        if not whole:
            found = redirects.get(path)
            if found is not None:
                return found, True
        # ... a "^~" longest prefix stops the search; else the first regex that hits wins
        if not caret:
            for pattern, index in regexes:
                if pattern.search(path):
                    return index, False
        return best, False


# --- native swap ----------------------------------------------------------------------------
# proxy._native rebinds ``RuleTable.match`` to the compiled (Cython) twin in native/rules.pyx
# when it is built and PROXY_NO_NATIVE is unset, and ``RuleTable.build_accel`` to the twin's
# builder: the native match reads the compiled attributes above plus ``accel``, their typed
# form (regexes with a literal prefilter), built here once per table, not per request.
# RuleTable is a subclass, not an alias, so that rebinding its ``match`` leaves
# ``RuleTablePy.match`` pure Python for the parity tests.


class RuleTable(RuleTablePy):
    """The table the router uses: RuleTablePy, with ``match`` possibly swapped for native."""

    __slots__ = ("accel",)

    #: the native twin's builder of ``accel`` while the native match is installed, else None
    build_accel: ClassVar[Callable[[RuleTablePy], object] | None] = None

    def __init__(self, listener: Listener) -> None:
        super().__init__(listener)
        build = RuleTable.build_accel
        #: the native match's typed form of this table (None while the pure match runs)
        self.accel: object = None if build is None else build(self)


_native.install("rules", globals())


__all__ = ["DomainRules", "RuleTable", "RuleTablePy", "normalize_host", "normalize_path"]
