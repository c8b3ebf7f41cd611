"""Session persistence as CLB does it for layer 7: cookie insertion under WRR (SPEC §4,
clb-features.md §1.1).

Owns the cookie of one rule that keeps sessions: its name, the opaque value naming each of the
rule's targets, the ``Set-Cookie`` line issued with each answer, and the lookup of a request's
cookie among the rule's *current* targets. Strategy: everything is computed when the router is
built (one ``Session`` per rule with ``session_expire_time`` > 0; a rule without one has
``None`` and pays nothing per request).

The value is ``sha256(location_id NUL target identity)`` cut to 16 hex digits: the same in
every worker and across reloads while the target stays bound to the rule, different per rule.
It is never an address: a request's cookie is only looked up in the rule's table of ids, so a
forged or stale value (a removed target, another rule's cookie) names nothing and the request
is balanced as a new one, then given a fresh cookie. A target that is bound but drained
(weight 0) or unhealthy is re-picked the same way.

Pure: no I/O, no asyncio; it knows targets only as config values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from .config import SESSION_COOKIE, Rule, Target
from .messages import Request

ID_LENGTH = 16  # hex digits of the cookie value


def target_identity(target: Target) -> str:
    """What stays the same while a target stays bound to a rule (not its weight)."""
    if target.type == "CVM":
        return f"CVM\0{target.address.lower()}"
    return f"SCF\0{target.namespace}\0{target.function}\0{target.qualifier}\0{target.invoke_url}"


def session_id(location_id: str, target: Target) -> str:
    digest = hashlib.sha256(f"{location_id}\0{target_identity(target)}".encode())
    return digest.hexdigest()[:ID_LENGTH]


class Session:
    """One rule's cookie: ``lookup(request)`` -> target index or -1, ``set_cookie[i]``."""

    __slots__ = ("name", "ids", "set_cookie")

    def __init__(self, rule: Rule, secure: bool) -> None:
        self.name = rule.cookie_name or SESSION_COOKIE
        values = [session_id(rule.location_id, t) for t in rule.targets]
        self.ids: dict[str, int] = {value: i for i, value in enumerate(values)}
        # RFC 6265 §4.1: Max-Age is the session time; Path=/ so that every URL of the domain
        # carries it; HttpOnly (scripts have no use for it); Secure on an HTTPS listener
        attributes = f"; Max-Age={rule.session_expire_time}; Path=/; HttpOnly" + (
            "; Secure" if secure else "")
        self.set_cookie: tuple[tuple[str, str], ...] = tuple(
            ("Set-Cookie", f"{self.name}={value}{attributes}") for value in values)

    def lookup(self, request: Request) -> int:
        """The index of the target the request's cookie names, or -1 (none, or not ours)."""
        name = self.name
        for key, value in request.headers:
            if key.lower() != "cookie":
                continue
            # RFC 6265 §5.4: pairs separated by "; "; the first of our name wins
            for pair in value.split(";"):
                cname, sep, cvalue = pair.strip().partition("=")
                if sep and cname == name:
                    return self.ids.get(cvalue.strip().strip('"'), -1)
        return -1

    def sticky(self, request: Request, weights: Sequence[int],
               usable: Sequence[bool] | None) -> int:
        """The cookie's target if it may take the request now (weight > 0, usable), else -1."""
        index = self.lookup(request)
        if index < 0 or weights[index] == 0 or (usable is not None and not usable[index]):
            return -1
        return index


def for_rule(rule: Rule, secure: bool) -> Session | None:
    """The rule's Session, or None when it does not keep sessions."""
    return Session(rule, secure) if rule.session_expire_time > 0 and rule.targets else None
