"""The large rule table of the rule-growth scenario, and the requests that probe it.

Owns the shape of 10,000 rules on one listener: 2,500 domains of four kinds (exact names,
``*.suffix`` and ``prefix.*`` wildcards, and a few ``~regex`` domains — regex domains are tried
one by one, as nginx does, so a real table keeps them few), each with four urls (``/``,
``/api/``, ``/static/`` prefixes and one ``~`` regex). Strategy: the kind of a domain follows
from its index by a fixed table, so the table is deterministic and the kinds are spread through
it instead of grouped. Pure: returns (domain, url) pairs and (host, path) probes; knows nothing
of TOML, processes or the proxy's matcher.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

URLS = ("/", "/api/", "/static/", r"~^/v[0-9]+/items/[0-9]+$")
DEFAULT_RULES = 10_000
REGEX_DOMAINS = 50  # few: each one is a linear step for a host no name or wildcard matched

#: domain kind -> (the rule's domain, a host it matches), by the domain's number
_KINDS: dict[str, Callable[[int], tuple[str, str]]] = {
    "exact": lambda i: (f"svc{i}.example.com", f"svc{i}.example.com"),
    "suffix": lambda i: (f"*.zone{i}.example.net", f"www.zone{i}.example.net"),
    "prefix": lambda i: (f"app{i}.*", f"app{i}.example.io"),
    "regex": lambda i: (rf"~^api{i}-[a-z0-9]+\.example\.org$", f"api{i}-eu1.example.org"),
}

#: url -> a request path that it matches (the regex url beats the "/" prefix)
_PATHS = {"/": "/index.html", "/api/": "/api/users/42", "/static/": "/static/app.js",
          URLS[3]: "/v2/items/42"}


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[tuple[str, str], ...]  # (domain, url) in config order
    hit_index: int  # the rule the throughput run hits, near the middle
    hit_host: str
    hit_path: str
    kinds: dict[str, int]  # domain kind -> how many domains of it


def domain_kind(i: int, domains: int) -> str:
    """Spread the regex domains evenly; every 8th is a suffix and every 8th+1 a prefix one."""
    stride = max(1, domains // REGEX_DOMAINS)
    if i % stride == stride // 2 and i // stride < REGEX_DOMAINS:
        return "regex"
    return {0: "suffix", 1: "prefix"}.get(i % 8, "exact")


def build(count: int = DEFAULT_RULES) -> RuleSet:
    """``count`` rules (a multiple of 4), and the exact-domain rule nearest the middle."""
    if count < len(URLS) or count % len(URLS):
        raise ValueError(f"the rule count must be a multiple of {len(URLS)}, got {count}")
    domains = count // len(URLS)
    rules: list[tuple[str, str]] = []
    kinds: dict[str, int] = dict.fromkeys(_KINDS, 0)
    for i in range(domains):
        kind = domain_kind(i, domains)
        kinds[kind] += 1
        domain, _ = _KINDS[kind](i)
        rules += [(domain, url) for url in URLS]
    middle = domains // 2
    hit_domain = next(i for i in range(middle, domains) if domain_kind(i, domains) == "exact")
    host = _KINDS["exact"](hit_domain)[0]
    return RuleSet(rules=tuple(rules), hit_index=hit_domain * len(URLS) + 1, hit_host=host,
                   hit_path=_PATHS["/api/"], kinds=kinds)


def probes(count: int = DEFAULT_RULES) -> list[tuple[str, str]]:
    """(host, path) requests for timing ``match``: every domain kind x every url kind, spread
    across the table, plus hosts that match no domain (they fall back to the default domain).
    """
    domains = count // len(URLS)
    picked: dict[str, list[int]] = {kind: [] for kind in _KINDS}
    for i in range(domains):
        picked[domain_kind(i, domains)].append(i)
    out: list[tuple[str, str]] = []
    for kind, numbers in picked.items():
        # the first, middle and last domain of each kind: early and late entries both timed
        for i in (numbers[0], numbers[len(numbers) // 2], numbers[-1]) if numbers else ():
            host = _KINDS[kind](i)[1]
            out += [(host, path) for path in _PATHS.values()]
    out += [("unknown.example.test", path) for path in _PATHS.values()]
    return out
