"""The status page on the admin listener: ``GET /`` (HTML) and ``GET /status.json``.

Owns what the page shows and how it is reached:

- ``process_view``: one serving process's part (its function instances busy/idle/starting/
  queued, the health of its CVM targets as DescribeTargetHealth names it, its traffic ring,
  traffic.py). With one process the admin asks it directly; under ``--workers N`` the admin
  runs in the supervisor, which asks every worker over the control channel (op ``status``)
  and ``snapshot`` merges the answers: instances are summed, a target is Dead when any worker
  sees it dead (as /metrics takes the minimum of ``clbscf_upstream_healthy``), traffic is
  summed second by second.
- ``snapshot``: the whole as one JSON value (``/status.json``): listeners, rules and targets
  with weight and health, function instances, the last minute's requests and errors, the
  store's ``Table.status()``, the process (pid, workers).
- ``render``: the snapshot as plain HTML that needs no JavaScript, every value escaped
  (names come from the config file and the API); plus one inline script (statuspage.js) that
  polls ``/status.json`` and rebuilds the sections from it with ``textContent`` only, and
  inline styles (statuspage.css). No build step, no external assets; the Content-Security-
  Policy allows exactly those two by their SHA-256 and fetches to the admin itself.
- ``StatusPage.handle``: the admin token rules (admin.py) for a browser, which cannot send a
  header: ``Authorization: Bearer`` works as everywhere; ``GET /?token=TOKEN`` once answers 303
  to ``/`` (the token leaves the address bar and history) with a cookie ``clbscf_status``
  (HttpOnly, SameSite=Strict, Path=/). The cookie holds HMAC-SHA256(token, COOKIE_CONTEXT),
  not the token: it opens these two read-only pages and nothing else (no API action, no
  /metrics), so a leaked cookie cannot change the table, and a new token revokes it. Without
  a token configured (loopback) the page is open, as the rest of the admin is.

Must not know: sockets, workers' processes (the callbacks bring their views), the API actions.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import orjson

from . import traffic
from .config import Config
from .messages import Request, Response
from .scf.local import INSTANCE_STATES

COOKIE = "clbscf_status"
COOKIE_CONTEXT = b"clbscf-proxy status page"
POLL_MS = 2000  # how often the script asks /status.json
PATHS = ("/", "/status.json")
#: merged across workers: the first of these that any worker reports wins
HEALTH_ORDER = ("Dead", "Alive", "Close", "Unknown")
#: CSS classes by value (fixed words only, never a value from the config)
_CLASSES = {"Alive": "good", "ok": "good", "Dead": "bad", "unreachable": "bad",
            "Close": "off", "Unknown": "unknown"}
_SPARKS = "▁▂▃▄▅▆▇█"

_SCRIPT = resources.files(__package__).joinpath("statuspage.js").read_text("utf-8")
_STYLE = resources.files(__package__).joinpath("statuspage.css").read_text("utf-8")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


_CSP = (f"default-src 'none'; script-src {_csp_hash(_SCRIPT)}; style-src {_csp_hash(_STYLE)}; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
_COMMON = (("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
           ("Referrer-Policy", "no-referrer"))
_HTML = (("Content-Type", "text/html; charset=utf-8"), ("Content-Security-Policy", _CSP),
         ("X-Frame-Options", "DENY")) + _COMMON
_JSON = (("Content-Type", "application/json"),) + _COMMON
_REALM = 'Bearer realm="clbscf-proxy admin"'


# --- the figures ------------------------------------------------------------------------------


def process_view(config: Config, functions: Mapping[str, Mapping[str, int]],
                 health_of: Callable[[str, str, str], str],
                 ring: traffic.TrafficRing) -> dict[str, Any]:
    """One serving process's part of the page (JSON-ready): its instances by function, the
    health of each CVM target it balances (``[listener, location_id, address, detail]``) and
    its traffic samples."""
    health = [[lst.name, rule.location_id, t.address, health_of(lst.name, rule.location_id,
                                                                  t.address)]
              for lst in config.listeners for rule in lst.rules for t in rule.targets
              if t.type == "CVM"]
    return {"functions": {fn: {state: int(stats.get(state, 0)) for state in INSTANCE_STATES}
                          for fn, stats in functions.items()},
            "health": health, "traffic": ring.samples()}


def _merged_health(views: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, str], str]:
    seen: dict[tuple[str, str, str], set[str]] = {}
    for view in views:
        for listener, location, address, detail in view.get("health", ()):
            seen.setdefault((listener, location, address), set()).add(detail)
    return {key: next((h for h in HEALTH_ORDER if h in details), "Unknown")
            for key, details in seen.items()}


def snapshot(config: Config, views: Sequence[Mapping[str, Any]], store: Mapping[str, Any],
             process: Mapping[str, Any], now: float) -> dict[str, Any]:
    """Everything the page shows, as ``/status.json`` answers it."""
    health = _merged_health(views)
    functions = {f"{fn.namespace}/{fn.name}": dict.fromkeys(INSTANCE_STATES, 0)
                 for fn in config.functions}
    for view in views:
        for fn, states in view.get("functions", {}).items():
            counts = functions.setdefault(fn, dict.fromkeys(INSTANCE_STATES, 0))
            for state in INSTANCE_STATES:
                counts[state] += int(states.get(state, 0))
    listeners = [{
        "name": lst.name, "protocol": lst.protocol, "host": lst.host, "port": lst.port,
        "rules": [{"location_id": rule.location_id, "domain": rule.domain, "url": rule.url,
                   "scheduler": rule.scheduler,
                   "targets": [{"type": t.type, "target": t.label.partition(":")[2],
                                "weight": t.weight,
                                # CLB reports the health of servers only; a function has its
                                # instances instead
                                "health": health.get((lst.name, rule.location_id, t.address),
                                                     "Unknown") if t.type == "CVM" else None}
                               for t in rule.targets]}
                  for rule in lst.rules]}
        for lst in config.listeners]
    return {"generated": round(now, 3), "load_balancer_id": config.load_balancer_id,
            "process": dict(process), "store": dict(store), "listeners": listeners,
            "functions": functions,
            "traffic": traffic.window((view.get("traffic", ()) for view in views), now)}


# --- the HTML ---------------------------------------------------------------------------------


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S UTC")


def sparkline(series: Sequence[int]) -> str:
    """Requests per second as block characters, scaled to the busiest second."""
    top = max(series, default=0)
    if not top:
        return _SPARKS[0] * len(series)
    return "".join(_SPARKS[min(len(_SPARKS) - 1, (v * (len(_SPARKS) - 1) + top - 1) // top)]
                   for v in series)


Cell = tuple[str, str]  # (text, css class or "")


def _table(head: Sequence[str], rows: Iterable[Sequence[Cell]]) -> str:
    out = ["<table><thead><tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>")
        for text, css in row:
            out.append(f'<td class="{css}">{_e(text)}</td>' if css else f"<td>{_e(text)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _process_text(process: Mapping[str, Any]) -> str:
    workers = process.get("workers")
    if workers is None:
        return f"one process, pid {process.get('pid', '?')}"
    serving = sum(1 for w in workers if w.get("serving"))
    return (f"supervisor pid {process.get('pid', '?')}, {serving} of {len(workers)} workers "
            f"serving (pids {', '.join(str(w.get('pid')) for w in workers)})")


def _store(snap: Mapping[str, Any]) -> str:
    store = snap["store"]
    state = str(store.get("state", ""))
    return "<h2>Store</h2>" + _table(
        ("mode", "state", "revision", "last error"),
        [((str(store.get("mode", "")), ""), (state, _CLASSES.get(state, "")),
          (str(store.get("revision", "")) or "—", ""),
          (str(store.get("last_error", "")) or "—", ""))])


def _traffic(snap: Mapping[str, Any]) -> str:
    t = snap["traffic"]
    return (f"<h2>Traffic <small>last {_e(t['seconds'])} s</small></h2>" + _table(
        ("requests/s", "requests", "4xx", "5xx", "upstream errors", "function errors"),
        [[(f"{t['rate']:.1f}", ""), (str(t["requests"]), ""),
          (str(t["client_errors"]), "warn" if t["client_errors"] else ""),
          (str(t["server_errors"]), "bad" if t["server_errors"] else ""),
          (str(t["upstream_errors"]), "bad" if t["upstream_errors"] else ""),
          (str(t["function_errors"]), "bad" if t["function_errors"] else "")]])
        + f'<p class="spark" title="requests per second, the last minute">'
          f"{_e(sparkline(t['series']))}</p>")


def _functions(snap: Mapping[str, Any]) -> str:
    functions = snap["functions"]
    if not functions:
        return "<h2>Function instances</h2><p>no local functions</p>"
    return "<h2>Function instances</h2>" + _table(
        ("function", *INSTANCE_STATES),
        [[(fn, ""), *((str(states[s]), "") for s in INSTANCE_STATES)]
         for fn, states in functions.items()])


def _rule_rows(rule: Mapping[str, Any]) -> Iterable[list[Cell]]:
    where: list[Cell] = [(rule["domain"], ""), (rule["url"], ""), (rule["location_id"], ""),
                         (rule["scheduler"], "")]
    if not rule["targets"]:
        yield [*where, ("no targets", "off"), ("", ""), ("", "")]
    for t in rule["targets"]:
        health = t["health"]
        yield [*where, (f"{t['type']} {t['target']}", ""), (str(t["weight"]),
                                                             "off" if not t["weight"] else ""),
               ("—" if health is None else health, _CLASSES.get(health or "", ""))]


def _listeners(snap: Mapping[str, Any]) -> str:
    out = ["<h2>Listeners, rules and targets</h2>"]
    if not snap["listeners"]:
        out.append("<p>no listeners</p>")
    for lst in snap["listeners"]:
        out.append(f"<h3>{_e(lst['name'])} <small>{_e(lst['protocol'])} "
                   f"{_e(lst['host'] or '*')}:{_e(lst['port'])}</small></h3>")
        out.append(_table(("domain", "url", "rule", "scheduler", "target", "weight", "health"),
                          (row for rule in lst["rules"] for row in _rule_rows(rule))))
    return "".join(out)


SECTIONS: tuple[tuple[str, Callable[[Mapping[str, Any]], str]], ...] = (
    ("store", _store), ("traffic", _traffic), ("functions", _functions),
    ("listeners", _listeners))


def _page(title: str, body: str, poll: bool) -> str:
    script = f"<script>{_SCRIPT}</script>" if poll else ""
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_STYLE}</style></head>"
            f'<body data-poll="{POLL_MS}">{body}{script}</body></html>\n')


def render(snap: Mapping[str, Any]) -> str:
    """The page for ``snap``: complete without JavaScript; the script keeps it current."""
    lb = snap["load_balancer_id"]
    head = (f'<header><h1>clbscf-proxy <span class="lb">{_e(lb)}</span></h1>'
            f'<p id="process">{_e(_process_text(snap["process"]))}</p>'
            f'<p id="updated">rendered {_e(_clock(snap["generated"]))}'
            f"<noscript> · JavaScript is off: reload the page to refresh it</noscript></p>"
            f"</header>")
    sections = "".join(f'<section id="{name}">{build(snap)}</section>'
                       for name, build in SECTIONS)
    return _page(f"clbscf-proxy {lb}", f"{head}<main>{sections}</main>", poll=True)


def login_page(message: str) -> str:
    """The 401 page for a browser: a form that sends the token once (``GET /?token=``)."""
    return _page("clbscf-proxy: token required", (
        "<header><h1>clbscf-proxy</h1></header><main><section>"
        f"<h2>Admin token required</h2><p>{_e(message)}</p>"
        '<form method="get" action="/"><label>Token <input type="password" name="token" '
        'autocomplete="current-password" required></label> <button>Open</button></form>'
        "</section></main>"), poll=False)


# --- the handler ------------------------------------------------------------------------------


class StatusPage:
    """Serves ``PATHS`` for AdminApp (admin.py hands it the GET requests for them)."""

    def __init__(self, get_config: Callable[[], Config],
                 views: Callable[[], Awaitable[list[dict[str, Any]]]],
                 store: Callable[[], Mapping[str, Any]],
                 process: Callable[[], Mapping[str, Any]], *, token: str | None,
                 clock: Callable[[], float] = time.time) -> None:
        """``views``: every serving process's ``process_view``; ``store``: Table.status;
        ``process``: this process's pid (and the workers, in the supervisor)."""
        self._get_config = get_config
        self._views = views
        self._store = store
        self._process = process
        self._token = token.encode() if token else None
        self._cookie = hmac.new(self._token, COOKIE_CONTEXT, hashlib.sha256).hexdigest() \
            if self._token else ""
        self._clock = clock

    async def snapshot(self) -> dict[str, Any]:
        return snapshot(self._get_config(), await self._views(), self._store(),
                        self._process(), self._clock())

    async def handle(self, request: Request, bearer_ok: bool) -> Response:
        html = request.path == "/"
        if not (bearer_ok or self._cookie_ok(request)):
            offered = parse_qs(request.query).get("token") if html else None
            if offered and self._token is not None and hmac.compare_digest(
                    offered[0].encode(), self._token):
                return Response(303, (("Location", "/"), ("Set-Cookie", (
                    f"{COOKIE}={self._cookie}; Path=/; HttpOnly; SameSite=Strict")),
                    ("Content-Type", "text/plain")) + _COMMON, b"see /\n")
            return self._unauthorized(html, bool(offered))
        snap = await self.snapshot()
        if html:
            return Response(200, _HTML, render(snap).encode("utf-8"))
        return Response(200, _JSON, orjson.dumps(snap))

    def _cookie_ok(self, request: Request) -> bool:
        if self._token is None:
            return True
        for part in (request.header("cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and hmac.compare_digest(value.encode(), self._cookie.encode()):
                return True
        return False

    @staticmethod
    def _unauthorized(html: bool, offered: bool) -> Response:
        challenge = (("WWW-Authenticate", _REALM + (', error="invalid_token"' if offered
                                                    else "")),)
        if not html:
            return Response(401, challenge + _JSON, b'{"error":"unauthorized: send '
                            b'Authorization: Bearer TOKEN, or open / with ?token=TOKEN"}')
        message = ("That token is not the admin token." if offered else
                   "This admin listener requires its token (CLBSCF_ADMIN_TOKEN).")
        return Response(401, challenge + _HTML, login_page(message).encode("utf-8"))
