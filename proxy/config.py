"""The configuration as a value: TOML -> validated, frozen dataclasses.

Owns the schema of SPEC §1-2 (listeners, rules, targets, functions, remote SCF), its defaults
(CLB's), its validation, the embedded default and the CLI's ``--listen`` overrides. Every error is
a ConfigError naming the file, the path to the field and what was expected: ``rules.toml:
listener[0].rule[2].target[1].weight: must be 0..100, got 150``.

Strategy: one table of checks per section (key -> check function); a check validates one value
at its field path and returns it converted, raising the internal ``_Invalid``, which the public
entry points turn into ConfigError with the file's name in front. Cross-field rules (duplicates,
default_domain, SCF target resolution, secrets in the environment) run after the tables.

I/O: reading the file, and one stat per path field (function ``code`` must be a directory,
certificates and ``ca_file`` must be files, a web function's ``scf_bootstrap`` an executable
file). It does not read certificate *contents* (tls.py) nor
import handlers (scf/local.py). It knows nothing of sockets, asyncio or HTTP.

Decisions where the SPEC is silent (ours):
- ``port = 0`` means "bind any free port" (tests); such listeners never clash with each other.
- An HTTPS listener in the file must list certificates; only embedded_default and
  with_listen_overrides (the CLI path) may produce an HTTPS listener without them, and the CLI
  then makes the development certificate. An HTTP listener with certificates is an error.
- Listener knobs accept shorter timeouts than CLB's console (30..120 s) so tests can be quick.
- The health check's ``timeout`` must not exceed its ``interval``.
- A regex url's space after the modifier (``~* \\.png$``) is dropped; exact and wildcard domains
  are lower-cased; the normalised domain and url identify the rule and feed its location_id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import customconfig
from .builtin import HELLO_CODE_DIR
from .customconfig import CustomConfig
from .errors import ConfigError

SCHEDULERS = ("WRR", "LEAST_CONN", "IP_HASH")
#: SCF's qualifiers that always exist: the function's own code, and the default alias
LATEST, DEFAULT_ALIAS = "$LATEST", "$DEFAULT"
#: an alias's additional_version_matches: the key's prefix and the methods (SCF's RoutingConfig)
MATCH_KEY_PREFIX = "invoke.headers."
MATCH_METHODS = ("exact", "range")
#: how a rule's CVM targets are reached (CLB's ForwardType, clb-features.md §2.4): HTTP/1.1,
#: HTTP/1.1 over TLS, HTTP/2 cleartext (gRPC), HTTP/2 over TLS (gRPC)
FORWARD_TYPES = ("HTTP", "HTTPS", "GRPC", "GRPCS")
#: CLB's RewriteCode / RewriteCodes values, and the default when none is given
REWRITE_CODES = (301, 302, 307)
REWRITE_DEFAULT_CODE = 302
#: the forward types that speak TLS to the backend (``backend_ca`` applies to them)
TLS_FORWARD_TYPES = frozenset({"HTTPS", "GRPCS"})
#: the forward types that speak HTTP/2 to the backend (gRPC; SCF cannot be their target)
H2_FORWARD_TYPES = frozenset({"GRPC", "GRPCS"})
PROTOCOLS = ("HTTP", "HTTPS")
#: CLB's SSLMode (clb-features.md §2.2), and nginx's ssl_verify_client values we take
SSL_MODES = ("UNIDIRECTIONAL", "MUTUAL")
SSL_VERIFY_CLIENT = ("on", "optional")
TARGET_TYPES = ("SCF", "CVM")
REMOTE_ACTIONS = ("InvokeFunction", "Invoke")
#: SCF's CreateFunction.Type: an event function (the CLB event in, an integration response
#: out) or a web function (raw HTTP to the server its scf_bootstrap starts, scf/web.py)
FUNCTION_TYPES = ("Event", "HTTP")
#: the file a web function's code directory must hold, executable (SCF's fixed name)
WEB_BOOTSTRAP = "scf_bootstrap"
DEFAULT_ENDPOINT = "https://scf.tencentcloudapi.com"
#: the credentials of remote invocation; read from the environment only, never from the file
SECRET_VARIABLES = ("TENCENTCLOUD_SECRETID", "TENCENTCLOUD_SECRETKEY")
#: environment prefixes the SCF runtime reserves for itself (SPEC §7)
RESERVED_ENV_PREFIXES = ("SCF_", "QCLOUD_", "TENCENTCLOUD_")
#: session persistence (CLB's SessionExpireTime range; the cookie name is our choice, see
#: docs/BEHAVIOUR.md "Session persistence")
SESSION_EXPIRE_MIN, SESSION_EXPIRE_MAX = 30, 86400
SESSION_COOKIE = "tgw_l7_route"
COOKIE_NAME_PATTERN = r"[A-Za-z0-9_-]{1,64}"  # an RFC 6265 §4.1.1 token, kept simple
COOKIE_NAME_EXPECTED = "a cookie name of letters, digits, - and _ (1..64)"


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """CLB's per-rule HTTP health check for CVM targets (defaults are CLB's)."""

    enabled: bool = True
    interval: int = 5  # seconds, 2..300
    healthy_threshold: int = 3  # 2..10
    unhealthy_threshold: int = 3  # 2..10
    timeout: int = 2  # seconds, 1..60
    http_codes: int = 31  # bitmask 1..31: 1=1xx 2=2xx 4=3xx 8=4xx 16=5xx
    path: str = "/"
    method: str = "HEAD"  # HEAD or GET
    domain: str = ""  # "" = the rule's domain


@dataclass(frozen=True, slots=True)
class Target:
    type: str  # "SCF" or "CVM"
    weight: int = 10  # 0..100; 0 = drain
    # SCF
    namespace: str = "default"
    function: str = ""
    qualifier: str = "$LATEST"
    invoke_url: str = ""  # SCF target served by a self-hosted runtime (POST event JSON)
    # CVM
    address: str = ""  # "host:port"

    @property
    def label(self) -> str:
        """How logs, metrics and the admin API name this target."""
        if self.type == "CVM":
            return f"CVM:{self.address}"
        if not self.function:  # served only by its invoke_url
            return f"SCF:{self.invoke_url}"
        return f"SCF:{self.namespace}/{self.function}"


@dataclass(frozen=True, slots=True)
class Rewrite:
    """CLB's redirect of a rule to a rule (ManualRewrite; AutoRewrite makes ``auto`` ones):
    every request the rule matches is answered ``code`` with the target rule's address."""
    listener: str  # the target rule's listener (its name)
    domain: str
    url: str
    code: int = REWRITE_DEFAULT_CODE  # 301, 302 or 307
    #: carry the request's path and query over (CLB's TakeUrl); else the target rule's url
    take_url: bool = False
    auto: bool = False  # made by AutoRewrite (CLB's RewriteType Auto), else Manual


@dataclass(frozen=True, slots=True)
class Rule:
    domain: str
    url: str
    scheduler: str = "WRR"
    health_check: HealthCheck = field(default_factory=HealthCheck)
    targets: tuple[Target, ...] = ()
    #: stable id from listener name + domain + url ("loc-" + 8 hex digits)
    location_id: str = ""
    #: the personalised configuration of this rule's domain (customconfig.DOMAIN_DIRECTIVES;
    #: every rule of the domain carries the same one)
    custom_config: CustomConfig = field(default_factory=CustomConfig)
    #: CLB session persistence (cookie insertion, WRR only): 0 = off, else 30..86400 s
    session_expire_time: int = 0
    #: the inserted cookie's name; "" = SESSION_COOKIE (CLB's CookieName)
    cookie_name: str = ""
    #: how CVM targets are reached (CLB's ForwardType): one of FORWARD_TYPES
    forward_type: str = "HTTP"
    #: HTTPS/GRPCS: verify the backend's certificate against this CA bundle (PEM); None = no
    #: verification (docs/BEHAVIOUR.md "Forwarding to backends")
    backend_ca: Path | None = None
    #: CLB's per-domain Http2 switch (HTTPS listeners): ALPN offers h2 to the domain's SNI
    #: names; one value per domain (a rule saying false turns it off for the whole domain)
    http2: bool = True
    #: a redirect to another rule (CLB's rewrite); its targets then take no requests
    rewrite: Rewrite | None = None


@dataclass(frozen=True, slots=True)
class Certificate:
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    protocol: str  # "HTTP" or "HTTPS"
    port: int
    host: str = ""  # bind address; "" = all
    certificates: tuple[Certificate, ...] = ()
    default_domain: str = ""  # "" in the file = the first rule's domain (set at load)
    rules: tuple[Rule, ...] = ()
    # CLB custom-configuration knobs (CLB's defaults)
    client_header_timeout: float = 60.0
    client_body_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    client_max_body_size: int = 62914560
    proxy_connect_timeout: float = 4.0
    proxy_read_timeout: float = 60.0
    proxy_send_timeout: float = 60.0  # the longest wait for a CVM upstream to take the body
    #: the longest wait for a client to take some of a response; 0: client_body_timeout's
    send_timeout: float = 0.0
    keepalive_requests: int = 0  # requests per client connection; 0: no limit (CLB: 100)
    #: read a CVM-bound request body whole before sending it, with Content-Length (CLB's on)
    proxy_request_buffering: bool = True
    trusted_proxies: tuple[str, ...] = ()  # CIDRs
    # our limits (SPEC §9)
    max_header_size: int = 65536
    max_header_count: int = 100
    max_request_line: int = 8192
    max_connections: int = 10000
    # TLS and redirects (issue 5)
    hsts_max_age: int = 0  # HTTPS: > 0 adds Strict-Transport-Security with this max-age
    #: the port clients reach this listener on, when NAT or a Kubernetes Service maps
    #: another one to ``port``: redirects to this listener (rewrites) name it; 0: ``port``
    public_port: int = 0
    ssl_handshake_timeout: float = 10.0  # HTTPS: a handshake not done by then is dropped
    # TLS policy (issue 15): () / "" = Mozilla intermediate (TLSv1.2 TLSv1.3, its six suites)
    ssl_protocols: tuple[str, ...] = ()
    ssl_ciphers: str = ""
    ssl_session_tickets: bool = True  # HTTPS: resumption by session tickets (nginx's key)
    # mutual TLS (CLB's SSLMode, SSLVerifyClient, CertCaId; nginx's ssl_verify_depth)
    ssl_mode: str = "UNIDIRECTIONAL"
    client_ca: Path | None = None  # MUTUAL: the CAs (PEM) client certificates must chain to
    ssl_verify_client: str = "on"  # MUTUAL: "on" requires a certificate, "optional" does not
    ssl_verify_depth: int = 1  # MUTUAL: CAs allowed between a client certificate and client_ca
    #: HTTP: also speak HTTP/2 cleartext to clients that start with its preface (prior
    #: knowledge, RFC 9113 §3.3; CLB's H2cSwitch); off as on CLB
    h2c: bool = False
    #: the personalised configuration; what it sets is also laid over the fields above at load
    custom_config: CustomConfig = field(default_factory=CustomConfig)


@dataclass(frozen=True, slots=True)
class FunctionVersion:
    """A published version of a local function (``[[function.version]]``): its own code."""

    version: str  # "1", "2", ... (SCF numbers its versions)
    code: Path  # absolute


@dataclass(frozen=True, slots=True)
class VersionMatch:
    """One rule of an alias's ``additional_version_matches`` (SCF's ``VersionMatch``): a
    request whose ``key`` matches ``expression`` by ``method`` runs ``version``."""

    version: str
    key: str  # "invoke.headers.<name>"
    method: str  # "exact" or "range"
    expression: str  # the value (exact), or "[a,b]" / "(a,b)" of integers (range)


@dataclass(frozen=True, slots=True)
class Alias:
    """``[[function.alias]]``: a name for a version, with SCF's ``RoutingConfig`` (a share of
    the calls, or the calls matching a rule, go to other versions)."""

    name: str
    version: str  # the main version: "$LATEST" or a [[function.version]]'s
    additional_version_weights: tuple[tuple[str, float], ...] = ()
    additional_version_matches: tuple[VersionMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class Function:
    namespace: str
    name: str
    handler: str  # "index.main_handler"
    code: Path  # absolute (resolved against the config file's folder); this is $LATEST
    runtime: str = "Python3.9"
    timeout: int = 3  # seconds, 1..900
    memory: int = 128  # MB, 64..3072
    concurrency: int = 8  # max instances, 1..1000
    environment: tuple[tuple[str, str], ...] = ()
    debug: bool = False  # the client may see a raised exception's trace
    idle_timeout: float = 300.0  # an idle instance retires after this many seconds
    min_instances: int = 0  # kept warm
    queue_size: int = 100  # requests that may wait for a free instance
    queue_timeout: float = 10.0  # seconds one may wait before 503
    #: invocations sent to a busy instance before it ends the one it runs (scf/local.py)
    invocations_ahead: int = 0
    #: seconds an instance may take to start: an event function's interpreter and the code
    #: before its handler, a web function's scf_bootstrap until it listens (SCF's InitTimeout)
    init_timeout: int = 65
    #: the instances get TENCENTCLOUD_SECRETID/SECRETKEY/SESSIONTOKEN (the execution role's)
    role_credentials: bool = False
    versions: tuple[FunctionVersion, ...] = ()
    aliases: tuple[Alias, ...] = ()
    # -- web functions (type = "HTTP", scf/web.py) --
    type: str = "Event"  # SCF's Type: "Event" or "HTTP"
    #: requests one instance serves at once (SCF's InstanceConcurrencyConfig.MaxConcurrency);
    #: web functions only, as on SCF
    instance_concurrency: int = 1

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def code_of(self, version: str) -> Path:
        """The code directory of ``version`` ("$LATEST" or a declared one)."""
        for published in self.versions:
            if published.version == version:
                return published.code
        return self.code

    def alias(self, name: str) -> Alias | None:
        """The alias ``name``; an undeclared ``$DEFAULT`` is ``$LATEST`` without routing."""
        for alias in self.aliases:
            if alias.name == name:
                return alias
        return Alias(DEFAULT_ALIAS, LATEST) if name == DEFAULT_ALIAS else None

    def has_qualifier(self, qualifier: str) -> bool:
        """``$LATEST``, a declared version, an alias, or ``$DEFAULT``."""
        return (qualifier == LATEST or any(v.version == qualifier for v in self.versions)
                or self.alias(qualifier) is not None)


@dataclass(frozen=True, slots=True)
class RemoteScf:
    region: str
    endpoint: str = DEFAULT_ENDPOINT
    action: str = "InvokeFunction"
    ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class Config:
    listeners: tuple[Listener, ...] = ()
    functions: tuple[Function, ...] = ()
    scf: RemoteScf | None = None
    load_balancer_id: str = "lb-local"
    #: the file it came from (None for the embedded default)
    source: Path | None = None

    def function(self, namespace: str, name: str) -> Function | None:
        for fn in self.functions:
            if fn.namespace == namespace and fn.name == name:
                return fn
        return None


# --- public entry points -------------------------------------------------------------------


def load_config(path: Path | str, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the TOML file at ``path``; relative paths in it are from its folder."""
    # abspath, not resolve(): a symlinked config (a Kubernetes ConfigMap) must be re-read
    # through the link at reload, not pinned to the file it pointed to the first time.
    source = Path(os.path.abspath(path))
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{source.name}: cannot read {source}: {exc.strerror}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source.name}: must be UTF-8 text, got byte {exc.start}") from exc
    return parse_document(text, source, source.parent, environ=environ)


def parse_document(text: str, source: Path | None, base_dir: Path, label: str | None = None,
                   environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a TOML document (a file's text, or the table an etcd store holds);
    errors are named ``label`` (default: ``source``'s file name)."""
    shown = label or (source.name if source is not None else "<config>")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"at line (\d+)", str(exc))
        where = f" line {line.group(1)}:" if line else ""
        raise ConfigError(f"{shown}:{where} invalid TOML: {exc}") from exc
    return parse_config(data, source, base_dir, environ, label=label)


def parse_config(data: Mapping[str, object], source: Path | None, base_dir: Path,
                 environ: Mapping[str, str] | None = None, label: str | None = None) -> Config:
    """Validate parsed TOML; errors name ``label``, else ``source``'s file name (``<config>``
    when None)."""
    env = os.environ if environ is None else environ
    with _errors_named(label or (source.name if source is not None else "<config>")):
        values = _fields(_Ctx(Path(os.path.abspath(base_dir))), "", data, _TOP_FIELDS)
        config = Config(listeners=values.get("listener", ()), functions=values.get("function", ()),
                        scf=values.get("scf"),
                        load_balancer_id=values.get("load_balancer_id", "lb-local"), source=source)
        _check_listeners(config.listeners)
        _check_functions(config.functions)
        _check_scf_targets(config, env)
    return config


def embedded_default(host: str, port: int, tls: bool = False,
                     certificates: tuple[Certificate, ...] = ()) -> Config:
    """SPEC §2's config for ``--listen`` without ``--config``: every Host -> the Hello function.

    With ``tls`` and no certificates the listener is HTTPS without any: the CLI must then make
    the development certificate.
    """
    with _errors_named("<config>"):
        _check_bind("listener[0]", host, port)
    target = Target(type="SCF", weight=10, namespace="default", function="hello")
    listener = Listener(name="default", protocol="HTTPS" if tls else "HTTP", port=port, host=host,
                        certificates=certificates, default_domain="localhost",
                        rules=(Rule(domain="localhost", url="/", targets=(target,)),))
    hello = Function(namespace="default", name="hello", handler="index.main_handler",
                     code=Path(os.path.abspath(HELLO_CODE_DIR)))
    return Config(listeners=(_with_location_ids(listener),), functions=(hello,))


def with_listen_overrides(config: Config, listens: Sequence[tuple[str, int]], tls: bool,
                          certificates: tuple[Certificate, ...] = ()) -> Config:
    """Apply the CLI's repeated ``--listen [host]:port`` to ``config``.

    Each address either moves the first not-yet-moved listener on that port to its host, or
    adds a copy of the first listener (rules included) named ``listen-<port>``, HTTPS when
    ``tls`` or the port is 443, with ``certificates`` (else the copied listener's). A moved
    listener keeps its protocol and certificates.
    """
    listeners = list(config.listeners)
    moved: set[int] = set()
    with _errors_named("--listen"):
        for host, port in listens:
            where = _show_hostport(host, port)
            _check_bind(where, host, port)
            index = next((i for i, lst in enumerate(config.listeners)
                          if lst.port == port and i not in moved), None)
            if index is not None:
                moved.add(index)
                listeners[index] = replace(listeners[index], host=host)
            elif not config.listeners:
                raise _Invalid(where, "needs a listener in the config to copy rules from, got none")
            else:
                listeners.append(_copy_listener(config.listeners[0], host, port, tls, certificates,
                                                {lst.name for lst in listeners}))
        _check_listeners(listeners)
    return replace(config, listeners=tuple(listeners))


def parse_listen(text: str) -> tuple[str, int]:
    """``":8080"``, ``"8080"``, ``"0.0.0.0:8080"``, ``"[::1]:8080"`` -> (host, port); "" = all."""
    hostport = _split_hostport(text if ":" in text else ":" + text)  # "8080" is ":8080"
    if hostport is None or hostport[1] > 65535:
        raise ConfigError(f"--listen: must be [host]:port (IPv6 as [::1]:port, port 0..65535), "
                          f"got {_show(text)}")
    return hostport


def location_id(listener: str, domain: str, url: str) -> str:
    """The stable LocationId of a rule: the same listener name, domain and url give the same id."""
    return "loc-" + hashlib.sha1(f"{listener}\0{domain}\0{url}".encode()).hexdigest()[:8]


def normalize_domain(text: str) -> str:
    """A rule domain checked and normalised (for the admin API's CreateRule); ConfigError if bad."""
    with _errors_named(""):
        return str(_domain(_NO_FILES, "domain", text))


def normalize_url(text: str) -> str:
    """A rule url checked and normalised (for the admin API's CreateRule); ConfigError if bad."""
    with _errors_named(""):
        return str(_url(_NO_FILES, "url", text))


# --- errors ---------------------------------------------------------------------------------


class _Invalid(Exception):
    """One bad value: its field path and "<what was expected>, got <value>"."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def _bad(path: str, expected: str, value: object) -> _Invalid:
    return _Invalid(path, f"{expected}, got {_show(value)}")


@contextmanager
def _errors_named(label: str) -> Iterator[None]:
    try:
        yield
    except _Invalid as exc:
        raise ConfigError(f"{label}: {exc}" if label else str(exc)) from None


def _show(value: object) -> str:
    """A value as TOML would spell it, short enough for one error line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        text = "[" + ", ".join(_show(v) for v in value) + "]"
        return text if len(text) <= 80 else f"an array of {len(value)}"
    return str(value)


def _show_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- value checks: (ctx, field path, raw value) -> converted value --------------------------


@dataclass(frozen=True, slots=True)
class _Ctx:
    base_dir: Path  # relative paths in the file are relative to its folder (SPEC §2)


Check = Callable[[_Ctx, str, object], Any]
_NO_FILES = _Ctx(Path("/"))  # for checks of values that are not paths


def _described(check: Check, values: str, bounds: tuple[float, float] | None = None
               ) -> Check:
    """``check`` with what it accepts, for the generated docs (``values``) and, for numbers,
    its ``bounds`` (the CLB API checks its own ranges with them)."""
    check.values = values  # type: ignore[attr-defined]
    check.bounds = bounds  # type: ignore[attr-defined]
    return check


def values_of(check: Check) -> str:
    """What ``check`` accepts, in words ("" when it does not say)."""
    return str(getattr(check, "values", ""))


def bounds_of(check: Check) -> tuple[float, float] | None:
    """A number check's (lo, hi), else None."""
    bounds: tuple[float, float] | None = getattr(check, "bounds", None)
    return bounds


def _integer(lo: int, hi: int) -> Check:
    def check(ctx: _Ctx, path: str, value: object) -> int:
        # TOML booleans are Python bools, which are ints: `weight = true` must not pass as 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(path, f"must be an integer {lo}..{hi}", value)
        if not lo <= value <= hi:
            raise _bad(path, f"must be {lo}..{hi}", value)
        return value
    return _described(check, f"{lo}–{hi}", (lo, hi))


def _number(lo: float, hi: float) -> Check:
    def check(ctx: _Ctx, path: str, value: object) -> float:
        # TOML allows inf and nan; neither is a usable number of seconds or bytes.
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise _bad(path, f"must be a number {lo:g}..{hi:g}", value)
        if not lo <= value <= hi:
            raise _bad(path, f"must be {lo:g}..{hi:g}", value)
        return float(value)
    return _described(check, f"{lo:g}–{hi:g}", (lo, hi))


def _boolean(ctx: _Ctx, path: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _bad(path, "must be true or false", value)
    return value


_described(_boolean, "`true`, `false`")


def _string(pattern: str, expected: str) -> Check:
    compiled = re.compile(pattern)

    def check(ctx: _Ctx, path: str, value: object) -> str:
        if not isinstance(value, str) or not compiled.fullmatch(value):
            raise _bad(path, f"must be {expected}", value)
        return value
    return _described(check, expected)


def _choice(options: tuple[str, ...]) -> Check:
    return _described(_string("|".join(map(re.escape, options)), "one of " + ", ".join(options)),
                      ", ".join(f"`{o}`" for o in options))


def _choice_of(options: tuple[int, ...]) -> Check:
    """An integer among ``options``."""
    def check(ctx: _Ctx, path: str, value: object) -> int:
        if isinstance(value, bool) or value not in options:
            raise _bad(path, "one of " + ", ".join(map(str, options)), value)
        return int(value)
    return _described(check, ", ".join(map(str, options)))


def _or_empty(check: Check) -> Check:
    def or_empty(ctx: _Ctx, path: str, value: object) -> Any:
        return "" if value == "" else check(ctx, path, value)
    return or_empty


_PATH_KINDS: dict[str, Callable[[Path], bool]] = {"file": Path.is_file, "directory": Path.is_dir}


def _existing(kind: str) -> Check:
    def check(ctx: _Ctx, path: str, value: object) -> Path:
        if not isinstance(value, str) or not value:
            raise _bad(path, f"must be the path of a {kind}", value)
        resolved = Path(os.path.abspath(ctx.base_dir / value))  # an absolute value stays as is
        if not _PATH_KINDS[kind](resolved):
            raise _bad(path, f"must be an existing {kind} ({resolved})", value)
        return resolved
    return _described(check, f"an existing {kind} (relative to the config file)")


def _array(item: Check) -> Check:
    def check(ctx: _Ctx, path: str, value: object) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _bad(path, "must be an array", value)
        return tuple(item(ctx, f"{path}[{i}]", v) for i, v in enumerate(value))
    return _described(check, "an array")


def _http_url(ctx: _Ctx, path: str, value: object) -> str:
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise _bad(path, "must be an http:// or https:// URL", value)
    return str(value)


_HOSTNAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                          r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")
_HOSTPORT_RE = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]*)):(?P<port>[0-9]{1,5})")


def is_host(text: str) -> bool:
    """An IP literal or a DNS name, as the loader takes a host (the CLB API's EniIp too)."""
    return _is_host(text)


def _is_host(text: str, version: int | None = None) -> bool:
    """An IP literal (of ``version`` when given) or, with no version, a DNS name."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return version is None and _HOSTNAME_RE.fullmatch(text) is not None
    return version in (None, address.version)


def _split_hostport(text: str) -> tuple[str, int] | None:
    match = _HOSTPORT_RE.fullmatch(text)
    if match is None:
        return None
    v6, host = match["v6"], match["host"]
    if (v6 is not None and not _is_host(v6, 6)) or (host and not _is_host(host)):
        return None
    return (v6 if v6 is not None else host), int(match["port"])


def _bind_host(ctx: _Ctx, path: str, value: object) -> str:
    if not isinstance(value, str) or (value and not _is_host(value)):
        raise _bad(path, 'must be "" (all addresses), an IP address or a host name', value)
    return value


def _address(ctx: _Ctx, path: str, value: object) -> str:
    hostport = _split_hostport(value) if isinstance(value, str) else None
    if hostport is None or not hostport[0] or not 1 <= hostport[1] <= 65535:
        raise _bad(path, "must be host:port (IPv6 as [::1]:80) with port 1..65535", value)
    return str(value)


def _cidr(ctx: _Ctx, path: str, value: object) -> str:
    try:
        # strict=False: "10.1.2.3/8" means the network 10.0.0.0/8; stored in canonical form
        return str(ipaddress.ip_network(value if isinstance(value, str) else "", strict=False))
    except ValueError:
        raise _bad(path, "must be an IP network such as 10.0.0.0/8 or 2001:db8::/32",
                   value) from None


def _regex(path: str, pattern: str, flags: int, value: object) -> None:
    if not pattern:
        raise _bad(path, "must have a regular expression after the modifier", value)
    try:
        re.compile(pattern, flags)
    except re.error as exc:
        raise _bad(path, f"must be a valid regular expression ({exc})", value) from None


# clb-scf-facts.md §5.1: a-z 0-9 . - _, not starting with "_"; labels must not be empty.
_EXACT_DOMAIN_RE = re.compile(r"[a-z0-9-][a-z0-9_-]*(?:\.[a-z0-9_-]+)*")
_DOMAIN_EXPECTED = ("must be an exact name of a-z 0-9 . - _ (not starting with _), *.suffix, "
                    "prefix.* or ~regex")


def _domain(ctx: _Ctx, path: str, value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 80:
        raise _bad(path, "must be a domain of 1..80 characters", value)
    if value.startswith("~"):  # a regex domain: one "~", nginx-style (§5.1)
        if "~" in value[1:]:
            raise _bad(path, "must hold only one ~", value)
        _regex(path, value[1:], 0, value)
        return value
    name = value.lower()  # host names are case-insensitive (RFC 9110 §4.2.3)
    body = name[2:] if name.startswith("*.") else name[:-2] if name.endswith(".*") else name
    if not _EXACT_DOMAIN_RE.fullmatch(body):
        raise _bad(path, _DOMAIN_EXPECTED, value)
    return name


def _fixed_domain(ctx: _Ctx, path: str, value: object) -> str:
    name = _domain(ctx, path, value)
    if name.startswith("~") or "*" in name:  # §6.2: the health check's Host is a fixed name
        raise _bad(path, "must be a fixed domain name (no wildcard, no regex)", value)
    return name


# clb-scf-facts.md §5.2: the characters of a non-regex url; regex modifiers and their flags.
_URL_PATH_RE = re.compile(r"/[A-Za-z0-9._\-/=?]*")
_REGEX_URL_FLAGS = {"~*": re.IGNORECASE, "~": 0}  # "~*" first: it also starts with "~"
_LITERAL_URL_MODIFIERS = ("=", "^~", "")


def _url(ctx: _Ctx, path: str, value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 200:
        raise _bad(path, "must be a url of 1..200 characters", value)
    for modifier, flags in _REGEX_URL_FLAGS.items():
        if value.startswith(modifier):
            pattern = value[len(modifier):].lstrip(" ")  # "~* \.png$" is CLB's own example
            _regex(path, pattern, flags, value)
            return modifier + pattern
    modifier = next(m for m in _LITERAL_URL_MODIFIERS if value.startswith(m))
    if not _URL_PATH_RE.fullmatch(value[len(modifier):]):
        raise _bad(path, "must be /path, =/path, ^~/path (characters a-z A-Z 0-9 . - _ / = ?), "
                   "~regex or ~*regex", value)
    return value


_ENV_KEY_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def _environment(ctx: _Ctx, path: str, value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise _bad(path, "must be a table of strings", value)
    for key, text in value.items():
        if not _ENV_KEY_RE.fullmatch(key) or key.upper().startswith(RESERVED_ENV_PREFIXES):
            raise _bad(f"{path}.{key}", "must be a name of A-Z a-z 0-9 _ starting with a letter "
                       "and not starting with " + ", ".join(RESERVED_ENV_PREFIXES), key)
        if not isinstance(text, str) or "\0" in text:
            raise _bad(f"{path}.{key}", "must be a string without NUL", text)
    return tuple(value.items())


# --- sections: tables of checks -------------------------------------------------------------

#: TOML key -> the name used in field paths (the SPEC's `target[1]`) and dataclass fields
_PATH_NAMES = {"targets": "target"}
#: TOML keys whose dataclass field has another name
FIELD_NAMES = {"rule": "rules"}
#: an unknown key that looks like a credential gets this answer, and its value is not echoed
_SECRET_WORDS = ("secret", "token", "password", "credential")


@dataclass(frozen=True, slots=True)
class Key:
    """One key of a config section, declared once: its check (type and range, which the
    loader applies and the CLB API reuses), what it means, the CLB API's name of it; its
    default is its dataclass field's. docs/CONFIG.md's tables are made from these
    (proxy/configdoc.py)."""
    check: Check
    doc: str
    #: the CLB API field it is (RuleInput's, HealthCheck's, ...); "" when the API has none
    api: str = ""
    #: the default as the docs say it, when the field's own is computed (or there is none)
    default: str = ""


def key_check(spec: Key | Check) -> Check:
    return spec.check if isinstance(spec, Key) else spec


def checked(key: Key, path: str, value: object) -> Any:
    """``value`` as the loader takes it for ``key`` (a key that is not a path: the CLB API
    checks its fields with this). Raises ValueError with the loader's message, naming
    ``path``."""
    try:
        return key.check(_NO_FILES, path, value)
    except _Invalid as exc:
        raise ValueError(str(exc)) from None


def api_names(keys: Mapping[str, Key]) -> frozenset[str]:
    """The CLB API field names of ``keys`` (those the API has)."""
    return frozenset(key.api for key in keys.values() if key.api)


def _fields(ctx: _Ctx, path: str, value: object, checks: Mapping[str, Key | Check],
            required: tuple[str, ...] = (), what: str = "") -> dict[str, Any]:
    """Check a table key by key (unknown keys are errors); returns dataclass keyword values."""
    if not isinstance(value, Mapping):
        raise _bad(path or "top level", "must be a table", value)
    out: dict[str, Any] = {}
    for key, raw in value.items():
        sub = f"{path}.{_PATH_NAMES.get(key, key)}" if path else key
        spec = checks.get(key)
        check = key_check(spec) if spec is not None else None
        if check is None and any(w in key.lower() for w in _SECRET_WORDS):
            raise _Invalid(sub, "credentials are never read from the config file; set "
                           + ", ".join(SECRET_VARIABLES) + " (and TENCENTCLOUD_SESSIONTOKEN) "
                           "in the environment")
        if check is None:
            raise _bad(sub, f"unknown key{what}, expected one of " + ", ".join(checks), key)
        out[FIELD_NAMES.get(str(key), str(key))] = check(ctx, sub, raw)
    for key in required:
        if FIELD_NAMES.get(key, key) not in out:
            raise _Invalid(f"{path}.{key}" if path else key, "is required, got nothing")
    return out


def _section(kind: Callable[..., Any], checks: Mapping[str, Key | Check],
             required: tuple[str, ...] = ()) -> Check:
    def check(ctx: _Ctx, path: str, value: object) -> Any:
        return kind(**_fields(ctx, path, value, checks, required))
    return _described(check, "a table (below)")


#: clb-scf-facts.md §6.2's ranges (interval 2: quick tests)
HEALTH_CHECK_KEYS: dict[str, Key] = {
    "enabled": Key(_boolean, "CVM targets are probed (CLB's default: on)", "HealthSwitch"),
    "interval": Key(_integer(2, 300), "seconds between two probes of a target",
                    "IntervalTime"),
    "healthy_threshold": Key(_integer(2, 10), "passed probes in a row that make a target "
                             "healthy again", "HealthNum"),
    "unhealthy_threshold": Key(_integer(2, 10), "failed probes in a row that take a target "
                               "out", "UnHealthNum"),
    "timeout": Key(_integer(1, 60), "seconds a probe may take; at most `interval`", "TimeOut"),
    "http_codes": Key(_integer(1, 31), "the status classes that pass, as CLB's bits: 1 = 1xx, "
                      "2 = 2xx, 4 = 3xx, 8 = 4xx, 16 = 5xx (31: any answer)", "HttpCode"),
    "path": Key(_string(r"/[!-~]{0,199}", "a path starting with /"),
                "the probed path", "HttpCheckPath"),
    "method": Key(_choice(("HEAD", "GET")), "the probe's method", "HttpCheckMethod"),
    "domain": Key(_or_empty(_fixed_domain), "the probe's `Host`; `\"\"` = the rule's domain "
                  "(a wildcard or regex domain: the target's address)", "HttpCheckDomain"),
}


def _health_check(ctx: _Ctx, path: str, value: object) -> HealthCheck:
    check = HealthCheck(**_fields(ctx, path, value, HEALTH_CHECK_KEYS))
    if check.timeout > check.interval:  # a check must end before the next one starts
        raise _bad(f"{path}.timeout", f"must be <= interval ({check.interval})", check.timeout)
    return check


_NAME = r"[A-Za-z](?:[A-Za-z0-9_-]{0,58}[A-Za-z0-9])?"  # SCF's function and namespace names
_NAME_EXPECTED = "a name of letters, digits, - and _ (1..60, starting with a letter)"
_TYPE_KEY = Key(_choice(TARGET_TYPES), "what serves the requests", default="required")
_WEIGHT_KEY = Key(_integer(0, 100), "the target's share (WRR); 0 takes no new requests",
                  "Weight")
#: each target type's keys, in the order write-back writes them
TARGET_KEYS: dict[str, dict[str, Key]] = {
    "SCF": {"type": _TYPE_KEY,
            "namespace": Key(_string(_NAME, _NAME_EXPECTED), "the function's namespace",
                             "FunctionNamespace"),
            "function": Key(_string(_NAME, _NAME_EXPECTED), "the function: a `[[function]]` "
                            "of this namespace and name runs it locally, else `[scf]` invokes "
                            "it", "FunctionName"),
            "qualifier": Key(_string(r"\$LATEST|\$DEFAULT|[0-9]+|" + _NAME,
                                     "$LATEST, $DEFAULT, a version number or an alias"),
                             "the version or alias that runs", "FunctionQualifier"),
            "invoke_url": Key(_http_url, "instead of a function: POST the event here and read "
                              "the integration response"),
            "weight": _WEIGHT_KEY},
    "CVM": {"type": _TYPE_KEY,
            "address": Key(_address, "the server (CLB's `EniIp` and `Port`)",
                           default="required"),
            "weight": _WEIGHT_KEY},
}
_TARGET_REQUIRED = {"SCF": (), "CVM": ("address",)}


def _target(ctx: _Ctx, path: str, value: object) -> Target:
    if not isinstance(value, Mapping):
        raise _bad(path, "must be a table", value)
    if "type" not in value:
        raise _Invalid(f"{path}.type", "is required (SCF or CVM), got nothing")
    # the type decides which other keys are allowed, so it is checked first
    kind = _choice(TARGET_TYPES)(ctx, f"{path}.type", value["type"])
    target = Target(**_fields(ctx, path, value, TARGET_KEYS[kind], _TARGET_REQUIRED[kind],
                              f" for a target of type {kind}"))
    if kind == "SCF" and not (target.function or target.invoke_url):
        raise _Invalid(f"{path}.function", "is required (or invoke_url), got nothing")
    return target


def _custom_config(domain: bool) -> Check:
    def check(ctx: _Ctx, path: str, value: object) -> CustomConfig:
        if not isinstance(value, str) or len(value) > 64 * 1024:  # CLB: 64 KB per config
            raise _bad(path, "must be a string of nginx directives of at most 64 KB", value)
        try:
            return customconfig.parse(value, domain)
        except ConfigError as exc:
            raise _Invalid(path, str(exc)) from None
    return check


def _session_time(ctx: _Ctx, path: str, value: object) -> int:
    # CLB's SessionExpireTime: 0 turns it off, else 30..86400 s (clb-features.md §1.1)
    number = _integer(0, SESSION_EXPIRE_MAX)(ctx, path, value)
    if 0 < number < SESSION_EXPIRE_MIN:
        raise _bad(path, f"must be 0 (off) or {SESSION_EXPIRE_MIN}..{SESSION_EXPIRE_MAX}",
                   value)
    return int(number)


_described(_session_time, f"0, or {SESSION_EXPIRE_MIN}–{SESSION_EXPIRE_MAX}",
           (0, SESSION_EXPIRE_MAX))


def _ssl_protocols(ctx: _Ctx, path: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(path, "must be an array of " + ", ".join(customconfig.SSL_PROTOCOLS), value)
    problem = customconfig.ssl_protocols_problem(value)
    if problem:
        raise _Invalid(path, problem)
    return tuple(p for p in customconfig.SSL_PROTOCOLS if p in value)


def _ssl_ciphers(ctx: _Ctx, path: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise _bad(path, "must be an OpenSSL cipher string", value)
    problem = customconfig.ssl_ciphers_problem(value)
    if problem:
        raise _Invalid(path, problem)
    return value


_LISTENER_NAME = _string(r"[A-Za-z0-9][A-Za-z0-9._-]{0,59}",
                         "a name of letters, digits, ., - and _")


def _gone(why: str) -> Check:
    """A key that no longer exists: its error says what replaces it."""
    def check(ctx: _Ctx, path: str, value: object) -> None:
        raise _Invalid(path, why)
    return check


REWRITE_KEYS: dict[str, Key] = {
    "listener": Key(_LISTENER_NAME, "the target rule's listener (its `name`)",
                    "TargetListenerId"),
    "domain": Key(_domain, "the target rule's domain, as its rule writes it"),
    "url": Key(_url, "the target rule's url, as its rule writes it (the rule must exist)",
               "TargetLocationId"),
    "code": Key(_choice_of(REWRITE_CODES), "the redirect's status (CLB's default 302)",
                "RewriteCode"),
    "take_url": Key(_boolean, "`true`: the Location carries the request's own path and "
                    "query; `false`: the target rule's url, no query", "TakeUrl"),
    "auto": Key(_boolean, "made by AutoRewrite (CLB's `RewriteType` `Auto`): from an HTTP "
                "listener to an HTTPS one", "RewriteType"),
}

RULE_KEYS: dict[str, Key] = {
    "domain": Key(_domain, "`example.com`, `*.example.com`, `www.example.*`, or `~regex`",
                  "Domain"),
    "url": Key(_url, "`/prefix`, `=/exact`, `^~/prefix`, `~regex`, `~*regex`", "Url"),
    "scheduler": Key(_choice(SCHEDULERS), "how a target is picked (docs/BEHAVIOUR.md §2)",
                     "Scheduler"),
    "health_check": Key(_described(_health_check, "a table (below)"), "CVM targets' active "
                        "health check (below)", "HealthCheck", default="CLB's"),
    "targets": Key(_described(_array(_target), "an array of tables (below)"),
                   "`[{ type = \"SCF\", … }, { type = \"CVM\", … }]`", default="`[]`"),
    "custom_config": Key(_custom_config(True), "the personalised configuration of the rule's "
                         "**domain** (CLB's SERVER config type): only the directives that act "
                         "after routing (below); rules of one domain that set it must set the "
                         "same text, and the domain's other rules get it too", default='`""`'),
    "session_expire_time": Key(_session_time, "session persistence: 0 off, else seconds; "
                               "needs `scheduler = \"WRR\"` (CLB keeps sessions only under "
                               "WRR). See docs/BEHAVIOUR.md §2", "SessionExpireTime"),
    "cookie_name": Key(_string(COOKIE_NAME_PATTERN, COOKIE_NAME_EXPECTED), "the inserted "
                       "cookie's name; `\"\"` = `tgw_l7_route`; needs `session_expire_time`",
                       "CookieName"),
    "forward_type": Key(_choice(FORWARD_TYPES), "how CVM targets are reached: `HTTP` "
                        "(HTTP/1.1), `HTTPS` (HTTP/1.1 over TLS, SNI the target's host), "
                        "`GRPC` (HTTP/2 cleartext), `GRPCS` (HTTP/2 over TLS). A `GRPC`/`GRPCS` "
                        "rule takes CVM targets only (CLB: SCF cannot be a gRPC real server). "
                        "See docs/BEHAVIOUR.md §6 \"Forwarding to backends\"", "ForwardType"),
    "backend_ca": Key(_existing("file"), "`HTTPS`/`GRPCS`: a PEM CA bundle the backends' "
                      "certificates are verified against (chain and the target's host); "
                      "without it they are **not** verified (ours, as nginx's "
                      "`proxy_ssl_verify off`; CLB's behaviour is not documented)"),
    "http2": Key(_boolean, "HTTPS: CLB's per-domain switch: whether TLS handshakes for this "
                 "**domain**'s names are offered ALPN `h2` (BEHAVIOUR.md §5a says how a name "
                 "finds its domain). One value per domain: a rule that says `false` turns "
                 "HTTP/2 off for every rule of its domain. `false` on an HTTP listener's rule "
                 "is an error (CLB: \"HTTPS domains only\")", "Http2"),
    "rewrite": Key(_section(Rewrite, REWRITE_KEYS, ("listener", "domain", "url")),
                   "a redirect to another rule (CLB's ManualRewrite / AutoRewrite, "
                   "\"Redirects\" below). Every request the rule matches gets its `code` with "
                   "the target rule's address; the rule's `targets` take no requests while it "
                   "stands (a rule may have none)", "RewriteTarget"),
}

_FOR_HTTPS = "HTTPS: "
LISTENER_KEYS: dict[str, Key] = {
    "name": Key(_LISTENER_NAME, "unique; the admin API's `ListenerId` is `lbl-<name>`",
                "ListenerName", default="`<protocol>-<port>`"),
    "protocol": Key(_choice(PROTOCOLS), "what clients speak to it", "Protocol"),
    "port": Key(_integer(0, 65535), "`0` binds any free port (the real one is printed at "
                "start)", "Port"),
    "host": Key(_described(_bind_host, "an IP address or a host name"), "bind address",
                default="all addresses"),
    "certificates": Key(_described(_array(_section(
        Certificate, {"cert": _existing("file"), "key": _existing("file")}, ("cert", "key"))),
        "`[{ cert = \"chain.pem\", key = \"key.pem\" }, …]`"), "HTTPS only, required there; "
        "SNI picks by each certificate's names, the first is the default"),
    "default_domain": Key(_described(_or_empty(_domain), "a rule's domain"), "where a `Host` "
                          "that matches no domain goes", default="the first rule's domain"),
    "rule": Key(_described(_array(_section(Rule, RULE_KEYS, ("domain", "url"))),
                           "`[[listener.rule]]` tables (below)"), "the forwarding rules",
                "Rules", default="none"),
    # CLB custom-configuration knobs; shorter timeouts than CLB's console allows, for tests
    "client_header_timeout": Key(_number(0.001, 3600), "seconds to receive a request head "
                                 "(408)"),
    "client_body_timeout": Key(_number(0.001, 3600), "seconds between two reads of a body "
                               "(408)"),
    "keepalive_timeout": Key(_number(0, 3600), "idle keep-alive connection lifetime; 0 turns "
                             "keep-alive off, as on CLB"),
    "client_max_body_size": Key(_integer(1, 10240 * 1024 * 1024), "bytes (413, checked "
                                "against `Content-Length` before reading; CLB: 1..10240M)"),
    "proxy_connect_timeout": Key(_number(0.001, 120), "seconds to connect to an upstream "
                                 "(502)"),
    "proxy_read_timeout": Key(_number(0.001, 3600), "seconds waiting for an upstream (504)"),
    "proxy_send_timeout": Key(_number(0.001, 3600), "seconds a CVM upstream may take to "
                              "accept more of a request body"),
    "send_timeout": Key(_number(0, 3600), "seconds a client may take to accept more of a "
                        "response before it is cut off (nginx's `send_timeout`); 0 = "
                        "`client_body_timeout`'s value, as before this key existed"),
    "keepalive_requests": Key(_integer(0, 1_000_000), "requests one client connection serves "
                              "(0: no limit); the last one's answer says `Connection: close` "
                              "and later pipelined requests are not read. CLB's default is 100 "
                              "and nginx's 1000: set `keepalive_requests 100;` for CLB's "
                              "behaviour (see below)"),
    "custom_config": Key(_custom_config(False), "CLB's personalised configuration: nginx "
                         "directives, see below", default='`""`'),
    "proxy_request_buffering": Key(_boolean, "CVM targets: read a request body whole (memory "
                                   "up to 64 KiB, then a temp file under "
                                   "`<state dir>/client_body_temp/`) before anything is sent "
                                   "upstream, and send it with `Content-Length` (a chunked "
                                   "upload is de-chunked); `false` streams it as it arrives, in "
                                   "the client's framing (BEHAVIOUR.md §6)"),
    "trusted_proxies": Key(_described(_array(_cidr), "an array of CIDRs"), "peers whose "
                           "`X-Forwarded-For` is extended instead of replaced"),
    "max_header_size": Key(_integer(1024, 1024 * 1024), "bytes of a request head (431)"),
    "max_header_count": Key(_integer(1, 1000), "header fields of a request (431)"),
    "max_request_line": Key(_integer(256, 65536), "bytes of the request line (414)"),
    "max_connections": Key(_integer(1, 1_000_000), "concurrent client connections per worker "
                           "process; beyond it the process stops accepting and new connections "
                           "wait in the kernel backlog until one closes"),
    "hsts_max_age": Key(_integer(0, 10 * 365 * 86400), _FOR_HTTPS + "> 0 adds "
                        "`Strict-Transport-Security: max-age=N`"),
    "ssl_handshake_timeout": Key(_number(0.1, 300), _FOR_HTTPS + "seconds; a handshake not "
                                 "finished by then is dropped"),
    "redirect_https_port": Key(_gone(
        "redirect_https_port is replaced by CLB's AutoRewrite: give this listener a rule per "
        'domain with rewrite = { listener = "<the HTTPS listener>", domain = "...", url = "/", '
        "code = 301, take_url = true, auto = true }, or call AutoRewrite (docs/CONFIG.md "
        '"Redirects")'), "gone: an error naming its replacement, a rule's `rewrite`",
        default="—"),
    "h2c": Key(_boolean, "HTTP: also speak HTTP/2 cleartext to a client whose connection "
               "starts with the HTTP/2 preface (prior knowledge, RFC 9113 §3.3; CLB's "
               "`H2cSwitch`); other connections stay HTTP/1.1. Only for an HTTP listener (an "
               "HTTPS listener's HTTP/2 is ALPN and its rules' `http2`). No `Upgrade: h2c` "
               "(RFC 9113 removed it)"),
    "public_port": Key(_integer(0, 65535), "the port clients reach this listener on, when NAT "
                       "or a Kubernetes Service maps another one to `port`: redirects to this "
                       "listener (a rule's `rewrite`) name it; 0 = `port` (or, for `port = 0`, "
                       "the port it was bound to)"),
    "ssl_protocols": Key(_described(_ssl_protocols, "consecutive, among `TLSv1`, `TLSv1.1`, "
                                    "`TLSv1.2`, `TLSv1.3`"),
                         _FOR_HTTPS + "the TLS versions (nginx's and CLB's `ssl_protocols`). "
                         "TLS 1.0/1.1 only when chosen, where this OpenSSL speaks them (else a "
                         "config error); see BEHAVIOUR.md §8",
                         default='`["TLSv1.2", "TLSv1.3"]`'),
    "ssl_ciphers": Key(_described(_ssl_ciphers, "an OpenSSL cipher string"), _FOR_HTTPS +
                       "the suites for TLS 1.2 and older (TLS 1.3 keeps OpenSSL's three "
                       "suites, Mozilla's); with TLS 1.0/1.1 chosen and no `ssl_ciphers`, four "
                       "ECDHE CBC suites are added; it must leave each chosen version a suite",
                       default="Mozilla intermediate's six ECDHE AEAD suites"),
    "ssl_session_tickets": Key(_boolean, _FOR_HTTPS + "session resumption by tickets "
                               "(RFC 5077, RFC 8446 §4.6.1); `false` resumes from the "
                               "process's session cache only"),
    "ssl_mode": Key(_choice(SSL_MODES), _FOR_HTTPS + "`\"MUTUAL\"` asks every client for a "
                    "certificate; BEHAVIOUR.md §8", "SSLMode"),
    "client_ca": Key(_existing("file"), "MUTUAL, required there: a PEM file of the CA "
                     "certificates client certificates must chain to; checked at load: "
                     "readable PEM, at least one certificate valid now, accepted by OpenSSL",
                     "CertCaId"),
    "ssl_verify_client": Key(_choice(SSL_VERIFY_CLIENT), "MUTUAL: `\"on\"` requires a "
                             "certificate (none: 400), `\"optional\"` lets a client without "
                             "one through (CLB's ON / OPTIONAL)", "SSLVerifyClient"),
    "ssl_verify_depth": Key(_integer(*customconfig.SSL_VERIFY_DEPTH), "MUTUAL (ignored "
                            "otherwise, as nginx ignores it without `ssl_verify_client`): how "
                            "many intermediate CAs may stand between a client certificate and "
                            "`client_ca` (OpenSSL's and nginx's meaning: the certificate itself "
                            "and the CA in `client_ca` do not count; the range is CLB's)"),
}
#: keys that mean something only on an HTTPS listener, with their defaults
_HTTPS_ONLY = ("ssl_protocols", "ssl_ciphers", "ssl_session_tickets", "ssl_mode", "client_ca",
               "ssl_verify_client", "ssl_verify_depth")


def _check_tls_keys(path: str, listener: Listener, given: Mapping[str, Any]) -> None:
    """The TLS keys' cross-field rules (their files' contents are tls.py's to check)."""
    if listener.protocol == "HTTP":
        for key in _HTTPS_ONLY:
            if key in given:
                raise _bad(f"{path}.{key}", "only for an HTTPS listener", given[key])
    if listener.ssl_mode == "MUTUAL" and listener.client_ca is None:
        raise _Invalid(f"{path}.client_ca", 'is required with ssl_mode = "MUTUAL" (the CA '
                       "certificates, PEM, that client certificates must chain to), got nothing")
    if listener.ssl_mode != "MUTUAL":
        for key in ("client_ca", "ssl_verify_client"):
            if key in given:
                raise _bad(f"{path}.{key}", 'only with ssl_mode = "MUTUAL"', given[key])


def _listener(ctx: _Ctx, path: str, value: object) -> Listener:
    values = _fields(ctx, path, value, LISTENER_KEYS, ("protocol", "port"))
    values.setdefault("name", f"{values['protocol'].lower()}-{values['port']}")
    given = dict(values)  # the file's own keys: custom_config's ssl_* mean nothing on HTTP
    if "custom_config" in values:  # CLB's text wins over the listener's own keys
        values.update((k, v) for k, v in values["custom_config"].overrides().items()
                      if k in _LISTENER_FIELD_NAMES)
    listener = Listener(**values)
    _check_tls_keys(path, listener, given)
    if listener.protocol == "HTTPS" and listener.h2c:
        raise _bad(f"{path}.h2c", "only for an HTTP listener (an HTTPS listener speaks "
                   "HTTP/2 through ALPN; see its rules' http2)", listener.h2c)
    for j, rule in enumerate(listener.rules):
        if listener.protocol == "HTTP" and not rule.http2:
            raise _bad(f"{path}.rule[{j}].http2", "only for an HTTPS listener's rules (CLB: "
                       "HTTPS domains only; h2c is the HTTP listener's key)", rule.http2)
    if listener.protocol == "HTTP" and listener.hsts_max_age:
        raise _bad(f"{path}.hsts_max_age", "only for an HTTPS listener (RFC 6797 §7.2)",
                   listener.hsts_max_age)
    if (listener.protocol == "HTTPS") != bool(listener.certificates):
        expected = {"HTTPS": "an HTTPS listener needs at least one { cert, key }",
                    "HTTP": "only an HTTPS listener takes certificates"}[listener.protocol]
        raise _bad(f"{path}.certificates", expected, values.get("certificates", []))
    listener = replace(listener, rules=_domain_http2(_domain_configs(path, listener.rules)))
    seen: dict[tuple[str, str], int] = {}
    for j, rule in enumerate(listener.rules):
        first = seen.setdefault((rule.domain, rule.url), j)
        if first != j:
            raise _Invalid(f"{path}.rule[{j}]", "domain and url must be unique in a listener, "
                           f"got {_show(rule.domain)} {_show(rule.url)} again "
                           f"(first at {path}.rule[{first}])")
        if rule.session_expire_time and rule.scheduler != "WRR":
            # CLB: only WRR inserts the cookie (clb-features.md §1.1)
            raise _Invalid(f"{path}.rule[{j}].session_expire_time", "needs scheduler WRR "
                           f"(CLB persists sessions only under WRR), got {rule.scheduler}")
        if rule.cookie_name and not rule.session_expire_time:
            raise _Invalid(f"{path}.rule[{j}].cookie_name", "needs session_expire_time > 0")
        _check_forwarding(f"{path}.rule[{j}]", rule)
    domains = [rule.domain for rule in listener.rules]
    if listener.default_domain and listener.default_domain not in domains:
        raise _bad(f"{path}.default_domain", "must be the domain of one of the listener's rules "
                   f"({', '.join(map(_show, dict.fromkeys(domains))) or 'none'})",
                   listener.default_domain)
    return _with_location_ids(replace(listener, default_domain=listener.default_domain
                                      or (domains[0] if domains else "")))


_LISTENER_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(Listener))


def _check_forwarding(path: str, rule: Rule) -> None:
    """``backend_ca`` only where TLS goes to the backend; a gRPC rule has no SCF target (CLB:
    "SCF cannot be a real server" of gRPC, clb-features.md §2.4)."""
    if rule.backend_ca is not None and rule.forward_type not in TLS_FORWARD_TYPES:
        raise _Invalid(f"{path}.backend_ca", "needs forward_type HTTPS or GRPCS, got "
                       f"{rule.forward_type}")
    if rule.forward_type in H2_FORWARD_TYPES:
        for k, target in enumerate(rule.targets):
            if target.type != "CVM":
                raise _Invalid(f"{path}.target[{k}]", f"a {rule.forward_type} rule forwards "
                               "gRPC to CVM targets only (CLB: SCF cannot be a gRPC real "
                               f"server), got {target.label}")


def _domain_configs(path: str, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
    """A domain has one custom_config: rules of it that set one must agree, and those that
    set none get it."""
    first: dict[str, int] = {}
    for j, rule in enumerate(rules):
        if rule.custom_config == CustomConfig():
            continue
        k = first.setdefault(rule.domain, j)
        if rules[k].custom_config != rule.custom_config:
            raise _Invalid(f"{path}.rule[{j}].custom_config", "a domain has one custom_config: "
                           f"{path}.rule[{k}] of domain {_show(rule.domain)} sets another")
    return tuple(rule if rule.domain not in first else
                 replace(rule, custom_config=rules[first[rule.domain]].custom_config)
                 for rule in rules)


_VERSION_RE = r"[1-9][0-9]{0,8}"  # SCF's published versions: 1, 2, ...
_RANGE_RE = re.compile(r"([\[(])\s*(-?[0-9]+)\s*,\s*(-?[0-9]+)\s*([\])])")


def _version_number(ctx: _Ctx, path: str, value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # version = 1 reads as "1"
    if not isinstance(value, str) or not re.fullmatch(_VERSION_RE, value):
        raise _bad(path, "must be a version number (1, 2, ...)", value)
    return value


def _qualified_version(ctx: _Ctx, path: str, value: object) -> str:
    if value == LATEST:
        return LATEST
    return _version_number(ctx, path, value)


def _weights(ctx: _Ctx, path: str, value: object) -> tuple[tuple[str, float], ...]:
    if not isinstance(value, Mapping):
        raise _bad(path, 'must be a table of version = weight, such as { "2" = 0.1 }', value)
    share = _number(0, 1)
    return tuple((_qualified_version(ctx, f"{path}.{key}", key),
                  share(ctx, f"{path}.{key}", weight)) for key, weight in value.items())


def _match(ctx: _Ctx, path: str, value: object) -> VersionMatch:
    values = _fields(ctx, path, value, {
        "version": _qualified_version,
        "key": _string(re.escape(MATCH_KEY_PREFIX) + r"[A-Za-z0-9_-]{1,64}",
                       MATCH_KEY_PREFIX + "NAME (a request header, or a RoutingKey key)"),
        "method": _choice(MATCH_METHODS),
        "expression": _string(r"[^\0]{1,1024}", "a string of 1..1024 characters"),
    }, ("version", "key", "method", "expression"))
    match = VersionMatch(**values)
    if match.method == "range":
        bounds = _RANGE_RE.fullmatch(match.expression)
        if bounds is None or int(bounds[2]) > int(bounds[3]):
            raise _bad(f"{path}.expression", "must be [a,b] or (a,b) of integers a <= b for "
                       "method range", match.expression)
    return match


_ALIAS_FIELDS: dict[str, Check] = {
    "name": _string(r"\$DEFAULT|" + _NAME, "$DEFAULT or " + _NAME_EXPECTED),
    "version": _qualified_version, "additional_version_weights": _weights,
    "additional_version_matches": _array(_match),
}


def _alias(ctx: _Ctx, path: str, value: object) -> Alias:
    alias = Alias(**_fields(ctx, path, value, _ALIAS_FIELDS, ("name", "version")))
    if alias.additional_version_weights and alias.additional_version_matches:
        raise _Invalid(path, "takes additional_version_weights or additional_version_matches, "
                       "not both (SCF's RoutingConfig routes an alias one way)")
    for version, _ in alias.additional_version_weights:
        if version == alias.version:
            raise _bad(f"{path}.additional_version_weights.{version}",
                       f"must differ from the alias's version ({alias.version})", version)
    total = math.fsum(w for _, w in alias.additional_version_weights)
    if total > 1.0 + 1e-9:
        raise _Invalid(f"{path}.additional_version_weights", "must add up to at most 1 (the "
                       f"main version gets the rest), got {total:g}")
    return alias


def _domain_http2(rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
    """A domain has one Http2 switch: a rule of it that turns it off turns it off for all."""
    off = {rule.domain for rule in rules if not rule.http2}
    return tuple(replace(rule, http2=False) if rule.domain in off and rule.http2 else rule
                 for rule in rules)


_DEFAULT_HANDLER = "index.main_handler"
_DEFAULT_NAMESPACE = "default"
FUNCTION_KEYS: dict[str, Key] = {
    "namespace": Key(_string(_NAME, _NAME_EXPECTED), "SCF's namespace of the function",
                     default=f'`"{_DEFAULT_NAMESPACE}"`'),
    "name": Key(_string(_NAME, _NAME_EXPECTED), "the function's name (a target's `function`)"),
    "handler": Key(_string(r"(?a)[A-Za-z_]\w*(?:[./][A-Za-z_]\w*)*\.[A-Za-z_]\w*",
                           "file.function, such as index.main_handler"),
                   "`file.function` (also `pkg/mod.func`)", default=f'`"{_DEFAULT_HANDLER}"`'),
    "code": Key(_existing("directory"), "the code directory"),
    "runtime": Key(_string(r"Python3\.[0-9]{1,2}", "Python3.x"), "passed to the function as "
                   "`SCF_RUNTIME`"),
    "timeout": Key(_integer(1, 900), "seconds; the instance is killed past it (504)"),
    "memory": Key(_integer(64, 3072), "MB; enforced per instance (502 past it)"),
    "concurrency": Key(_integer(1, 1000), "instances at most"),
    "environment": Key(_described(_environment, "a table of strings"), "variables; names "
                       "`[A-Za-z][A-Za-z0-9_]*`, not `SCF_`, `QCLOUD_`, `TENCENTCLOUD_`",
                       default="`{}`"),
    "debug": Key(_boolean, "the client sees a raised exception's error object"),
    "idle_timeout": Key(_number(0.001, 86400), "seconds before an idle instance retires"),
    "min_instances": Key(_integer(0, 1000), "instances kept warm"),
    "queue_size": Key(_integer(0, 100_000), "requests that may wait for a busy function "
                      "(503 past it)"),
    "queue_timeout": Key(_number(0, 3600), "seconds a request may wait for a busy function "
                         "(503 past it; 0: it never waits)"),
    "invocations_ahead": Key(_integer(0, 16), "event functions: when every instance is busy "
                             "and no more may start, up to this many further invocations are "
                             "sent to each busy instance, to run as soon as it ends the one it "
                             "runs (no round trip through the proxy between them; see below); "
                             "0: they wait in the function's queue"),
    "init_timeout": Key(_integer(1, 900), "seconds (SCF's `InitTimeout`): an instance's start "
                        "past it is a failed cold start: an event function's (the "
                        "interpreter, then the code before the handler) answers 504; a web "
                        "function's (from the start of `scf_bootstrap` to listening on its "
                        "port) answers 502"),
    "role_credentials": Key(_boolean, "the instances get `TENCENTCLOUD_SECRETID`, "
                            "`TENCENTCLOUD_SECRETKEY`, `TENCENTCLOUD_SESSIONTOKEN` (see "
                            "below)"),
    "version": Key(_described(_array(_section(
        FunctionVersion, {"version": _version_number, "code": _existing("directory")},
        ("version", "code"))), "`[[function.version]]` tables"), "published versions: "
        "`version` (`\"1\"`, `\"2\"`, …; a number is read as its string) and `code` (its "
        "own directory). The function's own `code` is `$LATEST`", default="none"),
    "alias": Key(_described(_array(_alias), "`[[function.alias]]` tables"), "`name` (a name, "
                 "or `$DEFAULT` to point it elsewhere), `version` (`$LATEST` or a declared "
                 "version), and at most one of `additional_version_weights` or "
                 "`additional_version_matches`", default="`$DEFAULT` → `$LATEST`"),
    "type": Key(_choice(FUNCTION_TYPES), "SCF's function type: `Event` (the CLB event in, an "
                "integration response out) or `HTTP`, a **web function** (below)"),
    "instance_concurrency": Key(_integer(1, 100), "web functions: requests one instance "
                                "serves at once (SCF's `InstanceConcurrencyConfig."
                                "MaxConcurrency`); an event function must leave it at 1, as "
                                "on SCF"),
}
#: [[function.version]] and [[function.alias]] -> the Function's fields
FUNCTION_ARRAYS = {"version": "versions", "alias": "aliases"}



def _function(ctx: _Ctx, path: str, value: object) -> Function:
    values = _fields(ctx, path, value, FUNCTION_KEYS, ("name", "code"))
    for key, name in FUNCTION_ARRAYS.items():
        if key in values:
            values[name] = values.pop(key)
    fn = Function(**{"namespace": _DEFAULT_NAMESPACE, "handler": _DEFAULT_HANDLER, **values})
    if fn.min_instances > fn.concurrency:
        raise _bad(f"{path}.min_instances", f"must be <= concurrency ({fn.concurrency})",
                   fn.min_instances)
    if fn.type == "HTTP":
        _check_web_function(path, fn, values)
        if fn.invocations_ahead:
            raise _bad(f"{path}.invocations_ahead", 'must be 0 for a web function (type = '
                       '"HTTP": its instances take several requests at once instead)',
                       fn.invocations_ahead)
    elif fn.instance_concurrency != 1:
        # SCF: several requests per instance is for web functions only (clb-features.md §3.1)
        raise _bad(f"{path}.instance_concurrency", 'must be 1 for an event function (several '
                   'requests per instance is for type = "HTTP" only)', fn.instance_concurrency)
    _check_qualifiers(path, fn)
    return fn

def _check_qualifiers(path: str, fn: Function) -> None:
    """Versions and aliases unique; every version an alias names exists."""
    versions = {LATEST}
    for i, published in enumerate(fn.versions):
        if published.version in versions:
            raise _bad(f"{path}.version[{i}].version", "must be unique", published.version)
        versions.add(published.version)
    names: set[str] = set()
    for i, alias in enumerate(fn.aliases):
        where = f"{path}.alias[{i}]"
        if alias.name in names:
            raise _bad(f"{where}.name", "must be unique", alias.name)
        names.add(alias.name)
        known = ", ".join(sorted(versions))
        if alias.version not in versions:
            raise _bad(f"{where}.version", f"must be $LATEST or a [[function.version]] of "
                       f"{fn.key} ({known})", alias.version)
        for version, _ in alias.additional_version_weights:
            if version not in versions:
                raise _bad(f"{where}.additional_version_weights.{version}", "must be $LATEST or "
                           f"a [[function.version]] of {fn.key} ({known})", version)
        for j, match in enumerate(alias.additional_version_matches):
            if match.version not in versions:
                raise _bad(f"{where}.additional_version_matches[{j}].version", "must be $LATEST "
                           f"or a [[function.version]] of {fn.key} ({known})", match.version)


def _check_web_function(path: str, fn: Function, values: Mapping[str, Any]) -> None:
    """A web function is started by the executable scf_bootstrap in its code directory, not
    by a handler (SCF's rules, clb-features.md §3.1)."""
    if values.get("handler", _DEFAULT_HANDLER) != _DEFAULT_HANDLER:
        # the default is let through: write-back writes every function's handler
        raise _bad(f"{path}.handler", f'must not be set for type = "HTTP" (its {WEB_BOOTSTRAP} '
                   "starts the web server)", values["handler"])
    bootstrap = fn.code / WEB_BOOTSTRAP
    if not bootstrap.is_file():
        raise _Invalid(f"{path}.code", f'type = "HTTP" needs an executable {WEB_BOOTSTRAP} '
                       f"in the code directory, got no {bootstrap}")
    if not os.access(bootstrap, os.X_OK):
        raise _Invalid(f"{path}.code", f"{bootstrap} must be executable (SCF wants mode 755 "
                       f"or 777), got mode {bootstrap.stat().st_mode & 0o777:o}")


SCF_KEYS: dict[str, Key] = {
    "region": Key(_string(r"[a-z]{2,}(?:-[a-z0-9]+)+", "a region such as ap-guangzhou"),
                  "`X-TC-Region`"),
    "endpoint": Key(_described(_http_url, "an http(s) URL"), "the SCF API; the default "
                    "becomes `https://scf.<region>.tencentcloudapi.com`"),
    "action": Key(_choice(REMOTE_ACTIONS), "the API action that invokes"),
    "ca_file": Key(_existing("file"), "an extra CA bundle (a private endpoint)"),
}

_TOP_FIELDS: dict[str, Check] = {
    "listener": _array(_listener), "function": _array(_function),
    "scf": _section(RemoteScf, SCF_KEYS, ("region",)),
    "load_balancer_id": _string(r"[a-z0-9-]{1,60}", "letters a-z, digits and - (1..60)"),
}


# --- cross-field rules ----------------------------------------------------------------------


def _check_bind(path: str, host: str, port: int) -> None:
    _bind_host(_NO_FILES, f"{path}.host", host)
    _integer(0, 65535)(_NO_FILES, f"{path}.port", port)


def _check_listeners(listeners: Sequence[Listener]) -> None:
    """Names are unique; two listeners never bind the same port on overlapping addresses;
    the rewrites between their rules hold."""
    for i, lst in enumerate(listeners):
        for j, other in enumerate(listeners[:i]):
            if other.name == lst.name:
                raise _bad(f"listener[{i}].name", f"must be unique (listener[{j}] has it)",
                           lst.name)
            # "" binds every address, so it clashes with any host on the same port; port 0
            # is a fresh free port each time and never clashes.
            if lst.port and other.port == lst.port and (
                    other.host == lst.host or "" in (other.host, lst.host)):
                raise _bad(f"listener[{i}].port", f"must not be bound twice (listener[{j}] "
                           f"binds {_show_hostport(other.host, other.port)})", lst.port)
    _check_rewrites(listeners)


def _check_rewrites(listeners: Sequence[Listener]) -> None:
    """Each rewrite names a rule that exists, is another rule and redirects nowhere itself
    (CLB: rule to rule, 1:1); an auto one goes from an HTTP listener to an HTTPS one; a
    domain that has an auto rewrite has no manual one (CLB refuses ManualRewrite there)."""
    rules = {(lst.name, r.domain, r.url): r for lst in listeners for r in lst.rules}
    for i, lst in enumerate(listeners):
        auto = {r.domain for r in lst.rules if r.rewrite is not None and r.rewrite.auto}
        for j, rule in enumerate(lst.rules):
            to = rule.rewrite
            if to is None:
                continue
            path = f"listener[{i}].rule[{j}].rewrite"
            target = rules.get((to.listener, to.domain, to.url))
            if target is None:
                raise _Invalid(path, f"names no rule: listener {_show(to.listener)} has no "
                               f"rule {_show(to.domain)} {_show(to.url)}")
            if target is rule:
                raise _Invalid(path, "redirects the rule to itself")
            if target.rewrite is not None:
                raise _Invalid(path, f"its target {to.domain}{to.url} redirects too (a rewrite "
                               "goes from one rule to one rule that serves)")
            if to.auto and (lst.protocol, next(x.protocol for x in listeners
                                               if x.name == to.listener)) != ("HTTP", "HTTPS"):
                raise _Invalid(path, "auto (AutoRewrite) goes from an HTTP listener to an "
                               "HTTPS one")
            if not to.auto and rule.domain in auto:
                raise _Invalid(path, f"domain {_show(rule.domain)} has an auto rewrite "
                               "(AutoRewrite); CLB allows no manual one beside it")


def check_rewrites(listeners: Sequence[Listener]) -> None:
    """``_check_rewrites`` for the admin API (ConfigError when a rewrite is bad)."""
    with _errors_named(""):
        _check_rewrites(listeners)


def _check_functions(functions: Sequence[Function]) -> None:
    for i, fn in enumerate(functions):
        first = next(j for j, other in enumerate(functions) if other.key == fn.key)
        if first != i:
            raise _bad(f"function[{i}]", f"must be unique (function[{first}] defines it)", fn.key)


def _scf_targets(listeners: Sequence[Listener]) -> Iterator[tuple[str, Target]]:
    for i, lst in enumerate(listeners):
        for j, rule in enumerate(lst.rules):
            for k, target in enumerate(rule.targets):
                if target.type == "SCF":
                    yield f"listener[{i}].rule[{j}].target[{k}]", target


def _check_scf_targets(config: Config, environ: Mapping[str, str]) -> None:
    """SPEC §1: a local [[function]], an invoke_url, or a remote call with credentials."""
    local = {fn.key: fn for fn in config.functions}
    for path, target in _scf_targets(config.listeners):
        key = f"{target.namespace}/{target.function}"
        if target.invoke_url:
            continue
        if key in local:
            fn = local[key]
            if not fn.has_qualifier(target.qualifier):
                raise _bad(f"{path}.qualifier", f"must be $LATEST, $DEFAULT or a version or "
                           f"alias of {key} ({', '.join(qualifiers(fn))})", target.qualifier)
            continue
        if config.scf is None:
            raise _Invalid(f"{path}.function", f"no [[function]] {_show(key)} and no [scf] "
                           "section for remote invocation")
        missing = [name for name in SECRET_VARIABLES if not environ.get(name)]
        if missing:
            raise _Invalid(path, f"remote invocation of {_show(key)} needs "
                           f"{' and '.join(SECRET_VARIABLES)} in the environment, "
                           f"got no {', '.join(missing)}")


def qualifiers(fn: Function) -> list[str]:
    """Every qualifier of a local function: its versions, then its aliases."""
    names = [LATEST, *(v.version for v in fn.versions), *(a.name for a in fn.aliases)]
    return names + ([DEFAULT_ALIAS] if DEFAULT_ALIAS not in names else [])


def _with_location_ids(listener: Listener) -> Listener:
    rules = tuple(replace(rule, location_id=location_id(listener.name, rule.domain, rule.url))
                  for rule in listener.rules)
    return replace(listener, rules=rules)


def _copy_listener(base: Listener, host: str, port: int, tls: bool,
                   certificates: tuple[Certificate, ...], taken: set[str]) -> Listener:
    https = tls or port == 443
    name = f"listen-{port}"
    suffix = 2
    while name in taken:
        name, suffix = f"listen-{port}-{suffix}", suffix + 1
    return _with_location_ids(replace(
        base, name=name, host=host, port=port, protocol="HTTPS" if https else "HTTP",
        certificates=(certificates or base.certificates) if https else ()))
