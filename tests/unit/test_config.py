"""The config loader: SPEC §1-2 schema, error messages naming file and field path, defaults,
location ids, the embedded default, the CLI's --listen overrides."""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

import pytest

from proxy.builtin import HELLO_CODE_DIR
from proxy.config import (
    Certificate, Config, HealthCheck, Target, embedded_default, load_config, location_id,
    normalize_domain, normalize_url, parse_config, parse_listen, with_listen_overrides,
)
from proxy.errors import ConfigError

SECRETS = {"TENCENTCLOUD_SECRETID": "AKIDexample", "TENCENTCLOUD_SECRETKEY": "example-key"}

SPEC_EXAMPLE = """
load_balancer_id = "lb-test1"

[[listener]]
name = "web"
protocol = "HTTPS"
port = 443
host = "127.0.0.1"
certificates = [{ cert = "certs/example.pem", key = "certs/example.key" }]
default_domain = "example.com"
client_header_timeout = 30
client_body_timeout = 31.5
keepalive_timeout = 0
client_max_body_size = 1048576
proxy_connect_timeout = 5
proxy_read_timeout = 120
trusted_proxies = ["10.0.0.0/8", "2001:db8::1/32"]
max_header_size = 32768
max_header_count = 50
max_request_line = 4096
max_connections = 100

  [[listener.rule]]
  domain = "example.com"
  url = "/"
  scheduler = "WRR"
  targets = [
    { type = "SCF", namespace = "default", function = "hello", qualifier = "$LATEST", weight = 90 },
    { type = "CVM", address = "10.0.0.7:8080", weight = 10 },
  ]
  [listener.rule.health_check]
  enabled = true
  interval = 10
  healthy_threshold = 4
  unhealthy_threshold = 5
  timeout = 3
  http_codes = 2
  path = "/health"
  method = "GET"
  domain = "Check.Example.com"

  [[listener.rule]]
  domain = "*.Example.com"
  url = "~* \\\\.png$"
  scheduler = "IP_HASH"
  targets = [{ type = "SCF", function = "remote-fn", qualifier = "2" },
             { type = "SCF", invoke_url = "http://127.0.0.1:9000/invoke" }]

[[function]]
namespace = "default"
name = "hello"
handler = "index.main_handler"
code = "functions/hello"
timeout = 3
memory = 128
concurrency = 8
environment = { GREETING = "hi" }
debug = true
idle_timeout = 0.5
min_instances = 2
queue_size = 7
queue_timeout = 0

[scf]
region = "ap-guangzhou"
endpoint = "https://scf.internal.example:8443"
action = "Invoke"
ca_file = "certs/ca.pem"
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A config folder holding the code directory and certificate files the example names."""
    (tmp_path / "functions" / "hello").mkdir(parents=True)
    (tmp_path / "certs").mkdir()
    for name in ("example.pem", "example.key", "ca.pem", "other.pem", "other.key"):
        (tmp_path / "certs" / name).write_text("not read by the loader\n")
    return tmp_path


def parse(text: str, folder: Path, environ: dict[str, str] | None = None) -> Config:
    return parse_config(tomllib.loads(text), folder / "rules.toml", folder,
                        {} if environ is None else environ)


def error_of(text: str, folder: Path, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, folder, environ)
    return str(info.value)


def one_rule(target: str = '{ type = "CVM", address = "10.0.0.1:80" }', rule: str = "",
             listener: str = "", domain: str = "example.com", url: str = "/") -> str:
    """One HTTP listener with one rule; extra TOML lines go into the listener or the rule."""
    return (f'[[listener]]\nprotocol = "HTTP"\nport = 8080\n{listener}\n'
            f'[[listener.rule]]\ndomain = "{domain}"\nurl = "{url}"\n{rule}\n'
            f"targets = [{target}]\n")


# --- the full example -----------------------------------------------------------------------


def test_spec_example_round_trips_into_values(folder: Path) -> None:
    (folder / "rules.toml").write_text(SPEC_EXAMPLE)
    config = load_config(folder / "rules.toml", environ=SECRETS)

    assert config.source == folder / "rules.toml"
    assert config.load_balancer_id == "lb-test1"
    (web,) = config.listeners
    assert (web.name, web.protocol, web.port, web.host) == ("web", "HTTPS", 443, "127.0.0.1")
    assert web.certificates == (Certificate(folder / "certs/example.pem",
                                            folder / "certs/example.key"),)
    assert web.default_domain == "example.com"
    assert (web.client_header_timeout, web.client_body_timeout, web.keepalive_timeout) == (
        30.0, 31.5, 0.0)
    assert (web.client_max_body_size, web.proxy_connect_timeout, web.proxy_read_timeout) == (
        1048576, 5.0, 120.0)
    assert web.trusted_proxies == ("10.0.0.0/8", "2001:db8::/32")
    assert (web.max_header_size, web.max_header_count, web.max_request_line,
            web.max_connections) == (32768, 50, 4096, 100)

    first, second = web.rules
    assert (first.domain, first.url, first.scheduler) == ("example.com", "/", "WRR")
    assert first.targets == (
        Target(type="SCF", weight=90, namespace="default", function="hello", qualifier="$LATEST"),
        Target(type="CVM", weight=10, address="10.0.0.7:8080"),
    )
    assert first.health_check == HealthCheck(enabled=True, interval=10, healthy_threshold=4,
                                             unhealthy_threshold=5, timeout=3, http_codes=2,
                                             path="/health", method="GET",
                                             domain="check.example.com")
    # wildcard domains fold to lower case; a space after a url regex modifier is dropped
    assert (second.domain, second.url, second.scheduler) == ("*.example.com", r"~*\.png$",
                                                             "IP_HASH")
    assert second.targets[0] == Target(type="SCF", function="remote-fn", qualifier="2")
    assert second.targets[1].invoke_url == "http://127.0.0.1:9000/invoke"
    assert second.targets[1].label == "SCF:http://127.0.0.1:9000/invoke"
    assert [r.location_id for r in web.rules] == [
        location_id("web", "example.com", "/"), location_id("web", "*.example.com", r"~*\.png$")]

    (hello,) = config.functions
    assert config.function("default", "hello") is hello
    assert (hello.key, hello.handler, hello.code) == ("default/hello", "index.main_handler",
                                                      folder / "functions" / "hello")
    assert (hello.timeout, hello.memory, hello.concurrency) == (3, 128, 8)
    assert hello.environment == (("GREETING", "hi"),)
    assert (hello.debug, hello.idle_timeout, hello.min_instances, hello.queue_size,
            hello.queue_timeout) == (True, 0.5, 2, 7, 0.0)

    assert config.scf is not None
    assert (config.scf.region, config.scf.endpoint, config.scf.action, config.scf.ca_file) == (
        "ap-guangzhou", "https://scf.internal.example:8443", "Invoke", folder / "certs/ca.pem")


def test_load_config_reads_a_relative_path_against_the_working_directory(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (folder / "rules.toml").write_text(one_rule())
    monkeypatch.chdir(folder)
    config = load_config("rules.toml", environ={})
    assert config.source == folder / "rules.toml" and config.source.is_absolute()


def test_toml_syntax_error_names_file_and_line(folder: Path) -> None:
    (folder / "rules.toml").write_text('[[listener]]\nprotocol = "HTTP"\nport = = 80\n')
    with pytest.raises(ConfigError, match=r"^rules\.toml: line 3: invalid TOML: "):
        load_config(folder / "rules.toml", environ={})


def test_unreadable_file_names_it(folder: Path) -> None:
    with pytest.raises(ConfigError, match=r"^missing\.toml: cannot read "):
        load_config(folder / "missing.toml", environ={})


def test_file_that_is_not_utf8_is_an_error(folder: Path) -> None:
    (folder / "rules.toml").write_bytes(b'load_balancer_id = "lb-\xff"\n')
    with pytest.raises(ConfigError, match=r"^rules\.toml: must be UTF-8"):
        load_config(folder / "rules.toml", environ={})


# --- error messages: "<file>: <field path>: <expected>, got <value>" ------------------------


def test_weight_out_of_range_gives_the_spec_message(folder: Path) -> None:
    rules = "".join(
        f'[[listener.rule]]\ndomain = "example.com"\nurl = "/{j}"\n'
        'targets = [{ type = "CVM", address = "10.0.0.1:80" }, '
        f'{{ type = "CVM", address = "10.0.0.2:80", weight = {150 if j == 2 else 10} }}]\n'
        for j in range(3))
    text = f'[[listener]]\nprotocol = "HTTP"\nport = 80\n{rules}'
    assert error_of(text, folder) == (
        "rules.toml: listener[0].rule[2].target[1].weight: must be 0..100, got 150")


def test_errors_without_a_file_are_named_config(folder: Path) -> None:
    with pytest.raises(ConfigError, match=r"^<config>: load_balancer_id: "):
        parse_config({"load_balancer_id": "LB_1"}, None, folder, {})


@pytest.mark.parametrize(("text", "expected"), [
    # unknown keys, named by their path
    (one_rule(rule='sheduler = "WRR"'),
     'listener[0].rule[0].sheduler: unknown key, expected one of domain, url'),
    (one_rule(listener="bind = 1"), "listener[0].bind: unknown key"),
    ('[scf]\nregion = "ap-guangzhou"\nregoin = "x"\n', "scf.regoin: unknown key"),
    ("colour = 1\n", "colour: unknown key, expected one of listener, function, scf"),
    (one_rule('{ type = "CVM", address = "10.0.0.1:80", function = "f" }'),
     "listener[0].rule[0].target[0].function: unknown key for a target of type CVM"),
    (one_rule('{ type = "SCF", function = "f", address = "10.0.0.1:80" }'),
     "listener[0].rule[0].target[0].address: unknown key for a target of type SCF"),
    # booleans are not integers
    (one_rule('{ type = "CVM", address = "10.0.0.1:80", weight = true }'),
     "listener[0].rule[0].target[0].weight: must be an integer 0..100, got true"),
    ('[[listener]]\nprotocol = "HTTP"\nport = true\n',
     "listener[0].port: must be an integer 0..65535, got true"),
    (one_rule(listener="client_header_timeout = false"),
     "listener[0].client_header_timeout: must be a number 0.001..3600, got false"),
    (one_rule(listener="proxy_read_timeout = inf"),
     "listener[0].proxy_read_timeout: must be a number 0.001..3600, got inf"),
    # required fields and types
    ('[[listener]]\nport = 80\n', "listener[0].protocol: is required, got nothing"),
    ('[[listener]]\nprotocol = "HTTP"\n', "listener[0].port: is required, got nothing"),
    ('[[listener]]\nprotocol = "http"\nport = 80\n',
     'listener[0].protocol: must be one of HTTP, HTTPS, got "http"'),
    ('[[listener]]\nprotocol = "HTTP"\nport = 65536\n',
     "listener[0].port: must be 0..65535, got 65536"),
    (one_rule("").replace('url = "/"\n', ""), "listener[0].rule[0].url: is required"),
    (one_rule('{ address = "10.0.0.1:80" }'),
     "listener[0].rule[0].target[0].type: is required (SCF or CVM), got nothing"),
    (one_rule('{ type = "ENI", address = "10.0.0.1:80" }'),
     'listener[0].rule[0].target[0].type: must be one of SCF, CVM, got "ENI"'),
    (one_rule(rule='scheduler = "RR"'),
     'listener[0].rule[0].scheduler: must be one of WRR, LEAST_CONN, IP_HASH, got "RR"'),
    (one_rule('{ type = "SCF", weight = 5 }'),
     "listener[0].rule[0].target[0].function: is required (or invoke_url), got nothing"),
    (one_rule('{ type = "SCF", invoke_url = "ftp://h/x" }'),
     'listener[0].rule[0].target[0].invoke_url: must be an http:// or https:// URL, got "ftp'),
    (one_rule('{ type = "SCF", function = "f", qualifier = "latest!" }'),
     "listener[0].rule[0].target[0].qualifier: must be $LATEST, $DEFAULT"),
    ("listener = 3\n", "listener: must be an array, got 3"),
    ('[[listener]]\nprotocol = "HTTP"\nport = 80\nrule = ["/"]\n',
     'listener[0].rule[0]: must be a table, got "/"'),
    # CVM addresses
    (one_rule('{ type = "CVM", address = "10.0.0.1" }'),
     'listener[0].rule[0].target[0].address: must be host:port (IPv6 as [::1]:80) with port '
     '1..65535, got "10.0.0.1"'),
    (one_rule('{ type = "CVM", address = "10.0.0.1:0" }'),
     "listener[0].rule[0].target[0].address: must be host:port"),
    (one_rule('{ type = "CVM", address = "::1:80" }'),
     "listener[0].rule[0].target[0].address: must be host:port"),
    (one_rule('{ type = "CVM", address = ":80" }'),
     "listener[0].rule[0].target[0].address: must be host:port"),
    (one_rule('{ type = "CVM", address = "[::g]:80" }'),
     "listener[0].rule[0].target[0].address: must be host:port"),
    # domains (clb-scf-facts.md §5.1)
    (one_rule(domain="~^(www"), "listener[0].rule[0].domain: must be a valid regular expression"),
    (one_rule(domain="~a~b"), "listener[0].rule[0].domain: must hold only one ~"),
    (one_rule(domain="_example.com"), "listener[0].rule[0].domain: must be an exact name"),
    (one_rule(domain="a.*.com"), "listener[0].rule[0].domain: must be an exact name"),
    (one_rule(domain="*"), "listener[0].rule[0].domain: must be an exact name"),
    (one_rule(domain="a..com"), "listener[0].rule[0].domain: must be an exact name"),
    (one_rule(domain="x" * 81), "listener[0].rule[0].domain: must be a domain of 1..80"),
    # urls (clb-scf-facts.md §5.2)
    (one_rule(url="~*(png"), "listener[0].rule[0].url: must be a valid regular expression"),
    (one_rule(url="~ "), "listener[0].rule[0].url: must have a regular expression after"),
    (one_rule(url="api"), 'listener[0].rule[0].url: must be /path, =/path, ^~/path'),
    (one_rule(url="/a b"), "listener[0].rule[0].url: must be /path"),
    (one_rule(url="=api"), "listener[0].rule[0].url: must be /path"),
    # listeners
    (one_rule(listener='default_domain = "other.com"'),
     'listener[0].default_domain: must be the domain of one of the listener\'s rules '
     '("example.com"), got "other.com"'),
    ('[[listener]]\nprotocol = "HTTPS"\nport = 443\n',
     "listener[0].certificates: an HTTPS listener needs at least one { cert, key }, got []"),
    (one_rule(listener='certificates = [{ cert = "certs/example.pem", '
                       'key = "certs/example.key" }]'),
     "listener[0].certificates: only an HTTPS listener takes certificates"),
    ('[[listener]]\nprotocol = "HTTPS"\nport = 443\n'
     'certificates = [{ cert = "certs/nope.pem", key = "certs/example.key" }]\n',
     'listener[0].certificates[0].cert: must be an existing file'),
    ('[[listener]]\nprotocol = "HTTPS"\nport = 443\ncertificates = [{ cert = "certs/ca.pem" }]\n',
     "listener[0].certificates[0].key: is required, got nothing"),
    (one_rule(listener='host = "not a host"'), "listener[0].host: must be \"\" (all addresses)"),
    (one_rule(listener='name = "has space"'), "listener[0].name: must be a name"),
    (one_rule(listener='trusted_proxies = ["10.0.0.0/33"]'),
     'listener[0].trusted_proxies[0]: must be an IP network such as 10.0.0.0/8'),
    (one_rule(listener="client_max_body_size = 0"),
     "listener[0].client_max_body_size: must be 1..10737418240, got 0"),
    (one_rule(listener='name = "x"') + one_rule(listener='name = "x"').replace("8080", "8081"),
     'listener[1].name: must be unique (listener[0] has it), got "x"'),
    (one_rule(listener='name = "a"\nhost = "127.0.0.1"')
     + one_rule(listener='name = "b"'),
     "listener[1].port: must not be bound twice (listener[0] binds 127.0.0.1:8080), got 8080"),
    # health checks (clb-scf-facts.md §6.2)
    (one_rule(rule="health_check = { interval = 1 }"),
     "listener[0].rule[0].health_check.interval: must be 2..300, got 1"),
    (one_rule(rule="health_check = { http_codes = 32 }"),
     "listener[0].rule[0].health_check.http_codes: must be 1..31, got 32"),
    (one_rule(rule="health_check = { healthy_threshold = 11 }"),
     "listener[0].rule[0].health_check.healthy_threshold: must be 2..10, got 11"),
    (one_rule(rule='health_check = { method = "POST" }'),
     'listener[0].rule[0].health_check.method: must be one of HEAD, GET, got "POST"'),
    (one_rule(rule='health_check = { path = "health" }'),
     'listener[0].rule[0].health_check.path: must be a path starting with /, got "health"'),
    (one_rule(rule='health_check = { domain = "*.example.com" }'),
     "listener[0].rule[0].health_check.domain: must be a fixed domain name"),
    (one_rule(rule="health_check = { interval = 3, timeout = 4 }"),
     "listener[0].rule[0].health_check.timeout: must be <= interval (3), got 4"),
    (one_rule(rule="health_check = { enabled = 1 }"),
     "listener[0].rule[0].health_check.enabled: must be true or false, got 1"),
    # functions
    ('[[function]]\nname = "f"\ncode = "functions/nope"\n',
     'function[0].code: must be an existing directory'),
    ('[[function]]\nname = "f"\ncode = "certs/ca.pem"\n',
     'function[0].code: must be an existing directory'),
    ('[[function]]\ncode = "functions/hello"\n', "function[0].name: is required, got nothing"),
    ('[[function]]\nname = "f"\ncode = "functions/hello"\ntimeout = 901\n',
     "function[0].timeout: must be 1..900, got 901"),
    ('[[function]]\nname = "f"\ncode = "functions/hello"\nmemory = 32\n',
     "function[0].memory: must be 64..3072, got 32"),
    ('[[function]]\nname = "f"\ncode = "functions/hello"\nconcurrency = 0\n',
     "function[0].concurrency: must be 1..1000, got 0"),
    ('[[function]]\nname = "f"\ncode = "functions/hello"\nconcurrency = 2\nmin_instances = 3\n',
     "function[0].min_instances: must be <= concurrency (2), got 3"),
    ('[[function]]\nname = "f"\ncode = "functions/hello"\nhandler = "main_handler"\n',
     'function[0].handler: must be file.function, such as index.main_handler'),
    ('[[function]]\nname = "f"\ncode = "functions/hello"\nhandler = "índex.main"\n',
     'function[0].handler: must be file.function'),
    ('[[function]]\nname = "f"\ncode = "functions/hello"\nruntime = "Node16"\n',
     'function[0].runtime: must be Python3.x, got "Node16"'),
    ('[[function]]\nname = "f"\ncode = "functions/hello"\nenvironment = { SCF_X = "1" }\n',
     'function[0].environment.SCF_X: must be a name of A-Z a-z 0-9 _ starting with a letter '
     'and not starting with SCF_, QCLOUD_, TENCENTCLOUD_, got "SCF_X"'),
    ('[[function]]\nname = "f"\ncode = "functions/hello"\n'
     'environment = { tencentcloud_region = "x" }\n',
     "function[0].environment.tencentcloud_region: must be a name"),
    ('[[function]]\nname = "f"\ncode = "functions/hello"\nenvironment = { "1X" = "1" }\n',
     "function[0].environment.1X: must be a name"),
    ('[[function]]\nname = "f"\ncode = "functions/hello"\nenvironment = { N = 1 }\n',
     "function[0].environment.N: must be a string without NUL, got 1"),
    ('[[function]]\nname = "f"\ncode = "functions/hello"\n' * 2,
     'function[1]: must be unique (function[0] defines it), got "default/f"'),
    # remote SCF
    ("[scf]\n", "scf.region: is required, got nothing"),
    ('[scf]\nregion = "ap-guangzhou"\naction = "Call"\n',
     'scf.action: must be one of InvokeFunction, Invoke, got "Call"'),
    ('[scf]\nregion = "ap-guangzhou"\nendpoint = "scf.tencentcloudapi.com"\n',
     "scf.endpoint: must be an http:// or https:// URL"),
    ('[scf]\nregion = "ap-guangzhou"\nca_file = "certs/none.pem"\n',
     "scf.ca_file: must be an existing file"),
    ('load_balancer_id = "LB 1"\n', 'load_balancer_id: must be letters a-z, digits and -'),
])
def test_bad_config_error_names_field_path(folder: Path, text: str, expected: str) -> None:
    message = error_of(text, folder, SECRETS)
    assert message.startswith("rules.toml: ")
    assert expected in message


def test_duplicate_rule_names_both_indexes(folder: Path) -> None:
    text = one_rule() + ('[[listener.rule]]\ndomain = "other.com"\nurl = "/"\n'
                         '[[listener.rule]]\ndomain = "EXAMPLE.com"\nurl = "/"\n')
    message = error_of(text, folder)
    assert message.startswith("rules.toml: listener[0].rule[2]: domain and url must be unique")
    assert "(first at listener[0].rule[0])" in message


def test_same_rule_on_two_listeners_is_allowed(folder: Path) -> None:
    text = one_rule() + one_rule(listener='name = "other"').replace("8080", "8081")
    first, second = parse(text, folder).listeners
    assert first.rules[0].location_id != second.rules[0].location_id


def test_scf_target_without_function_or_scf_section_is_an_error(folder: Path) -> None:
    message = error_of(one_rule('{ type = "CVM", address = "h:1" }, { type = "SCF", '
                                'function = "x" }'), folder, SECRETS)
    assert message == ('rules.toml: listener[0].rule[0].target[1].function: no [[function]] '
                       '"default/x" and no [scf] section for remote invocation')


def test_remote_scf_target_without_secrets_names_rule_and_variables(folder: Path) -> None:
    text = one_rule('{ type = "SCF", namespace = "prod", function = "x" }')
    text += '[scf]\nregion = "ap-guangzhou"\n'
    message = error_of(text, folder, {"TENCENTCLOUD_SECRETID": "AKID", "PATH": "/bin"})
    assert message.startswith('rules.toml: listener[0].rule[0].target[0]: remote invocation of '
                              '"prod/x" needs TENCENTCLOUD_SECRETID and TENCENTCLOUD_SECRETKEY')
    assert message.endswith("got no TENCENTCLOUD_SECRETKEY")
    assert "got no TENCENTCLOUD_SECRETID, TENCENTCLOUD_SECRETKEY" in error_of(text, folder, {})


def test_remote_scf_target_with_secrets_in_environment_loads(folder: Path) -> None:
    text = one_rule('{ type = "SCF", function = "x" }') + '[scf]\nregion = "ap-guangzhou"\n'
    config = parse(text, folder, SECRETS)
    assert config.scf is not None and config.scf.endpoint == "https://scf.tencentcloudapi.com"
    assert config.scf.action == "InvokeFunction" and config.scf.ca_file is None


def test_secrets_come_from_os_environ_by_default(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = one_rule('{ type = "SCF", function = "x" }') + '[scf]\nregion = "ap-guangzhou"\n'
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    assert parse_config(tomllib.loads(text), None, folder).scf is not None
    monkeypatch.delenv("TENCENTCLOUD_SECRETKEY")
    with pytest.raises(ConfigError, match="got no TENCENTCLOUD_SECRETKEY"):
        parse_config(tomllib.loads(text), None, folder)


def test_invoke_url_target_needs_neither_function_nor_scf(folder: Path) -> None:
    config = parse(one_rule('{ type = "SCF", invoke_url = "https://fn.example/run" }'), folder)
    assert config.listeners[0].rules[0].targets[0].invoke_url == "https://fn.example/run"


@pytest.mark.parametrize("key", ["secret_id", "secret_key", "SecretKey", "session_token"])
def test_secrets_in_file_are_refused_without_echoing_them(folder: Path, key: str) -> None:
    message = error_of(f'[scf]\nregion = "ap-guangzhou"\n{key} = "s3cr3t-value"\n', folder)
    assert message.startswith(f"rules.toml: scf.{key}: credentials are never read from the "
                              "config file; set TENCENTCLOUD_SECRETID, TENCENTCLOUD_SECRETKEY")
    assert "s3cr3t-value" not in message


# --- accepted syntax and normalisation ------------------------------------------------------


@pytest.mark.parametrize(("domain", "stored"), [
    ("Example.COM", "example.com"), ("*.Example.com", "*.example.com"),
    ("www.example.*", "www.example.*"), ("a_b-c.example.com", "a_b-c.example.com"),
    (r"~^www\d+\.example\.com$", r"~^www\d+\.example\.com$"), ("10.0.0.1", "10.0.0.1"),
])
def test_domain_forms_are_accepted_and_normalised(folder: Path, domain: str, stored: str) -> None:
    rule = parse(one_rule(domain=domain.replace("\\", "\\\\")), folder).listeners[0].rules[0]
    assert rule.domain == stored
    assert normalize_domain(domain) == stored


@pytest.mark.parametrize(("url", "stored"), [
    ("/", "/"), ("/api/v1/", "/api/v1/"), ("=/exact", "=/exact"), ("^~/static/", "^~/static/"),
    (r"~ ^/img/\d+$", r"~^/img/\d+$"), (r"~*\.PNG$", r"~*\.PNG$"), ("/q?a=1", "/q?a=1"),
])
def test_url_forms_are_accepted_and_normalised(folder: Path, url: str, stored: str) -> None:
    rule = parse(one_rule(url=url.replace("\\", "\\\\")), folder).listeners[0].rules[0]
    assert rule.url == stored
    assert normalize_url(url) == stored


def test_normalize_helpers_raise_config_error_with_field_name() -> None:
    with pytest.raises(ConfigError, match=r"^domain: must be an exact name"):
        normalize_domain("bad domain")
    with pytest.raises(ConfigError, match=r"^url: must be a valid regular expression"):
        normalize_url("~(")


@pytest.mark.parametrize("address", ["10.0.0.1:80", "[::1]:8080", "backend.internal:65535",
                                     "localhost:1"])
def test_cvm_address_forms_are_accepted(folder: Path, address: str) -> None:
    config = parse(one_rule(f'{{ type = "CVM", address = "{address}" }}'), folder)
    assert config.listeners[0].rules[0].targets[0].label == f"CVM:{address}"


def test_port_zero_listeners_never_clash(folder: Path) -> None:
    text = (one_rule(listener='name = "a"') + one_rule(listener='name = "b"')).replace(
        "port = 8080", "port = 0")
    assert [lst.port for lst in parse(text, folder).listeners] == [0, 0]


def test_absolute_code_path_is_kept(folder: Path) -> None:
    code = folder / "functions" / "hello"
    config = parse(f'[[function]]\nname = "f"\ncode = "{code}"\n', folder / "certs")
    assert config.functions[0].code == code


# --- defaults -------------------------------------------------------------------------------


def test_defaults_are_clbs(folder: Path) -> None:
    text = (one_rule('{ type = "SCF", function = "hello" }', domain="b.com")
            + '[[listener.rule]]\ndomain = "a.com"\nurl = "/"\n'
            + '[[function]]\nname = "hello"\ncode = "functions/hello"\n')
    config = parse(text, folder)
    assert (config.load_balancer_id, config.scf, config.source) == (
        "lb-local", None, folder / "rules.toml")
    (listener,) = config.listeners
    assert (listener.name, listener.host, listener.default_domain) == ("http-8080", "", "b.com")
    assert (listener.client_header_timeout, listener.keepalive_timeout,
            listener.client_max_body_size, listener.proxy_connect_timeout) == (
        60.0, 75.0, 62914560, 4.0)
    rule, empty = listener.rules
    assert (rule.scheduler, rule.health_check) == ("WRR", HealthCheck())
    assert empty.targets == ()
    assert rule.targets[0] == Target(type="SCF", weight=10, namespace="default",
                                     function="hello", qualifier="$LATEST")
    fn = config.functions[0]
    assert (fn.namespace, fn.handler, fn.runtime, fn.timeout, fn.memory, fn.concurrency,
            fn.environment, fn.debug) == (
        "default", "index.main_handler", "Python3.9", 3, 128, 8, (), False)


def test_https_listener_name_defaults_from_protocol_and_port(folder: Path) -> None:
    text = ('[[listener]]\nprotocol = "HTTPS"\nport = 8443\n'
            'certificates = [{ cert = "certs/example.pem", key = "certs/example.key" }]\n')
    (listener,) = parse(text, folder).listeners
    assert (listener.name, listener.default_domain, listener.rules) == ("https-8443", "", ())


def test_empty_config_is_valid(folder: Path) -> None:
    assert parse("", folder) == Config(source=folder / "rules.toml")


# --- location ids ---------------------------------------------------------------------------


def test_location_id_is_sha1_of_listener_domain_and_url() -> None:
    digest = hashlib.sha1(b"web\0example.com\0/api").hexdigest()
    assert location_id("web", "example.com", "/api") == "loc-" + digest[:8]
    assert re.fullmatch(r"loc-[0-9a-f]{8}", location_id("a", "b", "c"))


def test_location_ids_are_stable_across_reloads_and_distinct_per_rule(folder: Path) -> None:
    text = one_rule(listener='name = "web"') + (
        '[[listener.rule]]\ndomain = "example.com"\nurl = "/api"\n'
        '[[listener.rule]]\ndomain = "other.com"\nurl = "/"\n')
    first = [r.location_id for r in parse(text, folder).listeners[0].rules]
    again = [r.location_id for r in parse(text, folder).listeners[0].rules]
    assert first == again and len(set(first)) == 3
    renamed = parse(text.replace('"web"', '"api"'), folder).listeners[0].rules
    assert renamed[0].location_id != first[0]


# --- embedded default -----------------------------------------------------------------------


def test_embedded_default_sends_every_host_to_hello() -> None:
    config = embedded_default("127.0.0.1", 8080)
    (listener,) = config.listeners
    assert (listener.name, listener.protocol, listener.host, listener.port) == (
        "default", "HTTP", "127.0.0.1", 8080)
    assert listener.default_domain == "localhost" and listener.certificates == ()
    (rule,) = listener.rules
    assert (rule.domain, rule.url) == ("localhost", "/")
    assert rule.location_id == location_id("default", "localhost", "/")
    assert rule.targets == (Target(type="SCF", weight=10, namespace="default", function="hello"),)
    (hello,) = config.functions
    assert (hello.key, hello.handler) == ("default/hello", "index.main_handler")
    assert hello.code == HELLO_CODE_DIR.absolute() and (hello.code / "index.py").is_file()
    assert config.function("default", "hello") is hello and config.source is None


def test_embedded_default_with_tls_is_https_with_given_certificates(tmp_path: Path) -> None:
    cert = Certificate(tmp_path / "c.pem", tmp_path / "k.pem")
    listener = embedded_default("", 443, tls=True, certificates=(cert,)).listeners[0]
    assert (listener.protocol, listener.certificates) == ("HTTPS", (cert,))
    assert embedded_default("", 8443, tls=True).listeners[0].certificates == ()


def test_embedded_default_rejects_a_bad_port() -> None:
    with pytest.raises(ConfigError, match=r"^<config>: listener\[0\]\.port: must be 0\.\.65535"):
        embedded_default("", 70000)


# --- --listen overrides ---------------------------------------------------------------------


def two_listeners(folder: Path) -> Config:
    text = (one_rule(listener='name = "web"\nhost = "127.0.0.1"')
            + one_rule(listener='name = "api"').replace("8080", "9000"))
    return parse(text, folder)


def test_listen_on_a_configured_port_replaces_its_host(folder: Path) -> None:
    config = with_listen_overrides(two_listeners(folder), [("::1", 8080)], tls=False)
    assert [(lst.name, lst.host, lst.port) for lst in config.listeners] == [
        ("web", "::1", 8080), ("api", "", 9000)]


def test_listen_on_a_new_port_copies_the_first_listener(folder: Path) -> None:
    base = two_listeners(folder)
    config = with_listen_overrides(base, [("", 7000)], tls=False)
    added = config.listeners[2]
    assert (added.name, added.protocol, added.host, added.port) == ("listen-7000", "HTTP", "",
                                                                    7000)
    assert [r.domain for r in added.rules] == [r.domain for r in base.listeners[0].rules]
    assert added.rules[0].location_id == location_id("listen-7000", "example.com", "/")
    assert config.listeners[:2] == base.listeners


def test_listen_with_tls_or_port_443_adds_https_with_given_certificates(folder: Path) -> None:
    cert = Certificate(folder / "certs/other.pem", folder / "certs/other.key")
    config = with_listen_overrides(two_listeners(folder), [("", 443), ("", 8443)], tls=False,
                                   certificates=(cert,))
    assert [(lst.port, lst.protocol, lst.certificates) for lst in config.listeners[2:]] == [
        (443, "HTTPS", (cert,)), (8443, "HTTP", ())]
    bare = with_listen_overrides(two_listeners(folder), [("", 8443)], tls=True)
    assert (bare.listeners[2].protocol, bare.listeners[2].certificates) == ("HTTPS", ())


def test_listen_copy_of_https_listener_keeps_its_certificates(folder: Path) -> None:
    text = ('[[listener]]\nprotocol = "HTTPS"\nport = 443\n'
            'certificates = [{ cert = "certs/example.pem", key = "certs/example.key" }]\n')
    base = parse(text, folder)
    added = with_listen_overrides(base, [("", 8443)], tls=True).listeners[1]
    assert added.certificates == base.listeners[0].certificates


def test_repeated_listen_on_one_port_binds_both_addresses(folder: Path) -> None:
    listens = [("127.0.0.1", 8080), ("::1", 8080), ("127.0.0.2", 7000), ("127.0.0.3", 7000)]
    config = with_listen_overrides(two_listeners(folder), listens, tls=False)
    assert [(lst.name, lst.host, lst.port) for lst in config.listeners] == [
        ("web", "127.0.0.1", 8080), ("api", "", 9000), ("listen-8080", "::1", 8080),
        ("listen-7000", "127.0.0.2", 7000), ("listen-7000-2", "127.0.0.3", 7000)]


def test_listen_that_clashes_with_another_listener_is_an_error(folder: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--listen: listener\[2\]\.port: must not be bound "):
        with_listen_overrides(two_listeners(folder), [("127.0.0.1", 8080), ("", 8080)], tls=False)


def test_listen_without_any_configured_listener_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"^--listen: :8080: needs a listener in the config"):
        with_listen_overrides(Config(), [("", 8080)], tls=False)


@pytest.mark.parametrize(("text", "expected"), [
    (":8080", ("", 8080)), ("8080", ("", 8080)), ("0.0.0.0:8080", ("0.0.0.0", 8080)),
    ("[::1]:8080", ("::1", 8080)), ("localhost:0", ("localhost", 0)), ("[::]:443", ("::", 443)),
])
def test_parse_listen_accepts_host_and_port_forms(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["", "abc", ":", ":99999", "70000", "::1:8080", "[::1]",
                                  "[zz]:80", "[127.0.0.1]:80", "a b:80", "host:80x", "٨٠",
                                  "9" * 5000])
def test_parse_listen_rejects_junk(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--listen: must be \[host\]:port"):
        parse_listen(text)
