"""customconfig.parse: CLB's personalised configuration text -> CustomConfig, and its errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from proxy.config import parse_config
from proxy.customconfig import CustomConfig, parse, response_headers
from proxy.errors import ConfigError

FULL = """
# CLB's example, and the rest of what we accept
add_header Access-Control-Allow-Origin *;
add_header X-Always "yes it is" always;
more_set_headers "X-A: 1" 'X-B:two';
keepalive_requests 500;   keepalive_timeout 2m;
send_timeout 10; proxy_send_timeout 30s; proxy_read_timeout 1h;
proxy_connect_timeout 4s; client_max_body_size 1024M; client_header_timeout 30s;
client_body_timeout 120s; proxy_request_buffering off; proxy_redirect off;
proxy_set_header X-Real-Port $remote_port; proxy_set_header Stgw-request-id $stgw_request_id;
proxy_set_header X-clb-stgw-vip $server_addr;
ssl_protocols TLSv1.3 TLSv1.2; ssl_ciphers ECDHE-RSA-AES128-GCM-SHA256:!aNULL;
server_tokens on;
"""


def test_every_directive_is_read_with_its_units() -> None:
    cc = parse(FULL)
    assert cc.add_headers == (("Access-Control-Allow-Origin", "*", False),
                              ("X-Always", "yes it is", True))
    assert cc.set_headers == (("X-A", "1"), ("X-B", "two"))
    assert (cc.keepalive_requests, cc.keepalive_timeout, cc.send_timeout) == (500, 120.0, 10.0)
    assert (cc.proxy_send_timeout, cc.proxy_read_timeout, cc.proxy_connect_timeout) == (
        30.0, 3600.0, 4.0)
    assert cc.client_max_body_size == 1024 << 20
    assert (cc.client_header_timeout, cc.client_body_timeout) == (30.0, 120.0)
    assert cc.proxy_request_buffering is False and cc.proxy_redirect is False
    assert cc.proxy_set_headers == ("X-Real-Port", "Stgw-request-id", "X-clb-stgw-vip")
    assert cc.ssl_protocols == ("TLSv1.2", "TLSv1.3")
    assert cc.ssl_ciphers == "ECDHE-RSA-AES128-GCM-SHA256:!aNULL"
    assert cc.server_tokens is True
    assert parse("") == CustomConfig()


@pytest.mark.parametrize(("text", "message"), [
    ("gzip on;", "line 1: gzip unknown directive"),
    ("add_header A b;\n\nkeepalive_requests 0;",
     "line 3: keepalive_requests must be an integer 1..10000"),
    ("keepalive_requests 10001;", "must be an integer 1..10000"),
    ("keepalive_timeout 901s;", "must be 0s..900s"),
    ("proxy_read_timeout 29s;", "must be 30s..3600s"),
    ("proxy_connect_timeout 3;", "must be 4s..120s"),
    ("client_header_timeout 121;", "must be 30s..120s"),
    ("client_max_body_size 10241M;", "must be 1M..10240M"),
    ("client_max_body_size 0;", "must be 1M..10240M"),
    ("send_timeout 0;", "must be 1s..3600s"),
    ("proxy_request_buffering maybe;", "must be on or off"),
    ("server_tokens on", "must end with ';'"),
    ("add_header X;", "takes a name, a value"),
    ('more_set_headers "X-A 1";', 'takes "Name: value"'),
    ("proxy_set_header X-Real-IP $remote_addr;", "only 'X-Real-Port $remote_port'"),
    ("proxy_redirect http:// https://;", "only 'default' and 'off'"),
    ("ssl_protocols SSLv3;", "must be among TLSv1"),
    ("ssl_ciphers NOPE-NOT-A-CIPHER;", "OpenSSL selects no cipher"),
    ("send_timeout 5;\nsend_timeout 6;", "line 2: send_timeout is set twice (first on line 1)"),
    ("proxy_buffers 8 4k;", "does not implement"),
    ('add_header X "unclosed;', "unbalanced quote"),
    ("add_header X $host;", "without variables"),
    ("add_header Content-Length 5;", "cannot set Content-Length"),
    ("more_set_headers 'Server: x';", "cannot set Server"),
])
def test_bad_text_is_an_error_naming_the_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match="line") as info:
        parse(text)
    assert message in str(info.value)


def test_a_domain_takes_only_what_acts_after_routing() -> None:
    assert parse("add_header A b; proxy_read_timeout 60s;", domain=True).proxy_read_timeout == 60
    with pytest.raises(ConfigError, match="line 1: keepalive_requests acts on the listener"):
        parse("keepalive_requests 5;", domain=True)


def test_response_headers_inherit_as_nginx() -> None:
    listener = parse("add_header A 1; more_set_headers 'S: 1';")
    domain = parse("add_header B 2 always;", domain=True)
    plan = response_headers(listener, domain)
    assert plan is not None
    assert plan.apply(404, (("S", "old"), ("C", "3"))) == (("C", "3"), ("S", "1"), ("B", "2"))
    plan = response_headers(listener)
    assert plan is not None and plan.apply(200, ()) == (("S", "1"), ("A", "1"))
    assert plan.apply(500, ()) == (("S", "1"),)
    assert response_headers(CustomConfig()) is None


def _config(listener_extra: str, rule_extra: str = "") -> dict[str, object]:
    import tomllib
    return tomllib.loads(f"""
[[listener]]
protocol = "HTTP"
port = 0
{listener_extra}
[[listener.rule]]
domain = "a.test"
url = "/"
targets = [{{ type = "CVM", address = "127.0.0.1:9" }}]
{rule_extra}
[[listener.rule]]
domain = "a.test"
url = "/b"
targets = [{{ type = "CVM", address = "127.0.0.1:9" }}]
""")


def test_the_config_lays_custom_config_over_the_listener_and_names_the_field() -> None:
    config = parse_config(_config('client_header_timeout = 1\n'
                                  'custom_config = "client_header_timeout 45s;\\n'
                                  'keepalive_requests 7;"',
                                  'custom_config = "proxy_read_timeout 40s;"'), None, Path("/"))
    listener = config.listeners[0]
    assert listener.client_header_timeout == 45 and listener.keepalive_requests == 7
    # the domain's text reaches every rule of the domain
    assert [r.custom_config.proxy_read_timeout for r in listener.rules] == [40, 40]
    with pytest.raises(ConfigError, match=r"listener\[0\]\.custom_config: line 2: gzip"):
        parse_config(_config('custom_config = "send_timeout 5;\\ngzip on;"'), None, Path("/"))
    with pytest.raises(ConfigError,
                       match=r"listener\[0\]\.rule\[0\]\.custom_config: line 1: send_timeout"):
        parse_config(_config("", 'custom_config = "send_timeout 5;"'), None, Path("/"))


def test_cvm_targets_take_the_domains_proxy_settings_over_the_listeners() -> None:
    from proxy.backends.cvm import CvmUpstreams

    config = parse_config(_config('custom_config = "proxy_connect_timeout 10s;'
                                  ' proxy_send_timeout 40s; proxy_set_header X-Real-Port'
                                  ' $remote_port;"',
                                  'custom_config = "proxy_connect_timeout 20s; '
                                  'proxy_redirect off;"'), None, Path("/"))
    listener = config.listeners[0]
    assert (listener.proxy_connect_timeout, listener.proxy_send_timeout) == (10, 40)
    upstreams = CvmUpstreams()
    bound, _ = upstreams.bind(listener, listener.rules[0], listener.rules[0].targets[0])
    assert (bound.connect_timeout, bound.send_timeout) == (20, 40)
    assert bound.redirect_prefixes == () and bound.optional_headers == ("X-Real-Port",)
    plain = replace(listener.rules[0], custom_config=CustomConfig())
    bound, _ = upstreams.bind(listener, plain, plain.targets[0])
    assert bound.connect_timeout == 10 and bound.redirect_prefixes == ("http://127.0.0.1:9/",)
