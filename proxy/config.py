"""The configuration as a value: TOML -> validated, frozen dataclasses.

Owns the schema of SPEC §1-2 (listeners, rules, targets, functions, remote SCF), its defaults
(CLB's), and its validation. Every error is a ConfigError naming the file, the path to the field
and what was expected: ``rules.toml: listener[0].rule[2].target[1].weight: must be 0..100, got
150``. Unknown keys are errors. No I/O beyond reading the file in ``load_config`` (certificate
*contents* are checked by tls.py, code directories by scf/local.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

SCHEDULERS = ("WRR", "LEAST_CONN", "IP_HASH")
PROTOCOLS = ("HTTP", "HTTPS")
TARGET_TYPES = ("SCF", "CVM")
REMOTE_ACTIONS = ("InvokeFunction", "Invoke")
DEFAULT_ENDPOINT = "https://scf.tencentcloudapi.com"


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
        return f"SCF:{self.namespace}/{self.function}"


@dataclass(frozen=True, slots=True)
class Rule:
    domain: str
    url: str
    scheduler: str = "WRR"
    health_check: HealthCheck = field(default_factory=HealthCheck)
    targets: tuple[Target, ...] = ()
    #: stable id from listener name + domain + url ("loc-" + 8 hex digits)
    location_id: str = ""


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
    trusted_proxies: tuple[str, ...] = ()  # CIDRs
    # our limits (SPEC §9)
    max_header_size: int = 65536
    max_header_count: int = 100
    max_request_line: int = 8192
    max_connections: int = 10000


@dataclass(frozen=True, slots=True)
class Function:
    namespace: str
    name: str
    handler: str  # "index.main_handler"
    code: Path  # absolute (resolved against the config file's folder)
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

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


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


def _unused() -> ConfigError:  # placeholder removed by the loader implementation
    return ConfigError("")
