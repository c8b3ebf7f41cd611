"""HTTP/2's config (issue 15 item 1): the per-domain ``http2`` switch and the listener's ``h2c``,
as the loader checks them, as the CLB API sets and describes them (CreateRule, ModifyDomain
Attributes, DescribeListeners), as writeback keeps them, and as ``sni_http2`` turns them into
the TLS layer's choice per SNI name."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from proxy import writeback
from proxy.config import Config, parse_config
from proxy.errors import ConfigError
from proxy.http2 import sni_http2
from tests.unit.test_admin import LB, Admin, error_code

FUNCTIONS = Path(__file__).resolve().parents[1] / "functions"


@pytest.fixture()
def pem(tmp_path: Path) -> dict[str, str]:
    # the loader checks the files exist; what is in them is tls.py's to check, at start-up
    (tmp_path / "c.pem").write_text("cert")
    (tmp_path / "k.pem").write_text("key")
    return {"cert": str(tmp_path / "c.pem"), "key": str(tmp_path / "k.pem")}


def _https(pem: dict[str, str], rules: list[dict[str, Any]], **keys: Any) -> dict[str, Any]:
    return {"name": "tls", "protocol": "HTTPS", "port": 8443, "certificates": [pem],
            "rule": rules, **keys}


def _load(*listeners: dict[str, Any]) -> Config:
    return parse_config({"load_balancer_id": LB, "listener": list(listeners)}, None, FUNCTIONS)


def test_http2_is_on_by_default_and_one_rule_turns_its_domain_off(pem: dict[str, str]) -> None:
    config = _load(_https(pem, [{"domain": "a.test", "url": "/"},
                                {"domain": "a.test", "url": "/x", "http2": False},
                                {"domain": "b.test", "url": "/"}]))
    assert [(r.domain, r.url, r.http2) for r in config.listeners[0].rules] == [
        ("a.test", "/", False), ("a.test", "/x", False), ("b.test", "/", True)]


def test_http2_false_on_an_http_listener_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"rule\[0\]\.http2.*only for an HTTPS listener"):
        _load({"protocol": "HTTP", "port": 80,
               "rule": [{"domain": "a.test", "url": "/", "http2": False}]})


def test_h2c_is_an_http_listener_key(pem: dict[str, str]) -> None:
    assert not _load({"protocol": "HTTP", "port": 80}).listeners[0].h2c
    assert _load({"protocol": "HTTP", "port": 80, "h2c": True}).listeners[0].h2c
    with pytest.raises(ConfigError, match=r"h2c.*only for an HTTP listener"):
        _load(_https(pem, [], h2c=True))
    with pytest.raises(ConfigError, match=r"h2c"):
        _load({"protocol": "HTTP", "port": 80, "h2c": "yes"})


# --- what the TLS layer is told ---------------------------------------------------------------

def test_every_domain_on_offers_h2_to_every_handshake(pem: dict[str, str]) -> None:
    assert sni_http2(_load(_https(pem, [{"domain": "a.test", "url": "/"}])).listeners[0]) is None


def test_every_domain_off_offers_h2_to_none(pem: dict[str, str]) -> None:
    offers = sni_http2(_load(_https(pem, [{"domain": "a.test", "url": "/", "http2": False}]))
                       .listeners[0])
    assert offers is not None
    assert [offers(name) for name in ("a.test", "other.test", None)] == [False] * 3


def test_a_mutual_tls_listener_offers_h2_to_none(pem: dict[str, str]) -> None:
    # the client certificate's verdict and headers travel on HTTP/1.1 connections only
    listener = _load(_https(pem, [{"domain": "a.test", "url": "/"}], ssl_mode="MUTUAL",
                            client_ca=pem["cert"])).listeners[0]
    offers = sni_http2(listener)
    assert offers is not None
    assert [offers(name) for name in ("a.test", "other.test", None)] == [False] * 3


@pytest.mark.parametrize("default, expected", [
    ("on.test", {"on.test": True, "off.test": False, "x.w.test": False, "ON.TEST.": True,
                 "unknown.test": True, None: True, "regex-9.test": True}),
    ("off.test", {"on.test": True, "off.test": False, "unknown.test": False, None: False}),
])
def test_a_name_is_judged_by_the_domain_its_requests_are_routed_to(
        pem: dict[str, str], default: str, expected: dict[str | None, bool]) -> None:
    listener = _load(_https(pem, [
        {"domain": "on.test", "url": "/api"}, {"domain": "off.test", "url": "=/", "http2": False},
        {"domain": "*.w.test", "url": "/", "http2": False}, {"domain": "~^regex-[0-9]", "url": "/"},
    ], default_domain=default)).listeners[0]
    offers = sni_http2(listener)
    assert offers is not None
    assert {name: offers(name) for name in expected} == expected


# --- the CLB API ------------------------------------------------------------------------------

TLS = {"LoadBalancerId": LB, "ListenerId": "lbl-tls"}


@pytest.fixture()
def admin(pem: dict[str, str]) -> Admin:
    return Admin(_load(_https(pem, [{"domain": "a.test", "url": "/"},
                                    {"domain": "a.test", "url": "/x"}]),
                       {"name": "web", "protocol": "HTTP", "port": 80,
                        "rule": [{"domain": "a.test", "url": "/"}]}))


def _described(admin: Admin, listener: str = "lbl-tls") -> dict[tuple[str, str], bool]:
    answer = admin.call("DescribeListeners", {"LoadBalancerId": LB, "ListenerIds": [listener]})
    return {(r["Domain"], r["Url"]): r["Http2"] for r in answer["Listeners"][0]["Rules"]}


def test_describe_listeners_reports_the_switch(admin: Admin) -> None:
    assert _described(admin) == {("a.test", "/"): True, ("a.test", "/x"): True}
    assert _described(admin, "lbl-web") == {("a.test", "/"): False}  # no h2 over cleartext


def test_modify_domain_attributes_sets_the_domains_switch(admin: Admin) -> None:
    answer = admin.call("ModifyDomainAttributes", {**TLS, "Domain": "a.test", "Http2": False})
    assert "Error" not in answer, answer
    assert _described(admin) == {("a.test", "/"): False, ("a.test", "/x"): False}
    admin.call("ModifyDomainAttributes", {**TLS, "Domain": "a.test", "Http2": True})
    assert _described(admin) == {("a.test", "/"): True, ("a.test", "/x"): True}


def test_create_rule_http2_sets_the_domain_and_a_new_rule_follows_its_domain(
        admin: Admin) -> None:
    answer = admin.call("CreateRule", {**TLS, "Rules": [
        {"Domain": "b.test", "Url": "/", "Http2": False},
        {"Domain": "a.test", "Url": "/y"}]})
    assert "Error" not in answer, answer
    assert _described(admin)[("b.test", "/")] is False
    assert _described(admin)[("a.test", "/y")] is True
    admin.call("CreateRule", {**TLS, "Rules": [{"Domain": "a.test", "Url": "/z", "Http2": False}]})
    assert {k: v for k, v in _described(admin).items() if k[0] == "a.test"} == {
        ("a.test", "/"): False, ("a.test", "/x"): False, ("a.test", "/y"): False,
        ("a.test", "/z"): False}


def test_http2_on_an_http_listener(admin: Admin) -> None:
    web = {"LoadBalancerId": LB, "ListenerId": "lbl-web"}
    before = admin.config
    answer = admin.call("ModifyDomainAttributes", {**web, "Domain": "a.test", "Http2": True})
    assert error_code(answer) == "UnsupportedOperation"
    assert admin.config is before
    # False says what is true of a cleartext listener anyway: accepted, nothing changes
    answer = admin.call("CreateRule", {**web, "Rules": [
        {"Domain": "b.test", "Url": "/", "Http2": False}]})
    assert "Error" not in answer, answer


def test_writeback_keeps_http2_and_h2c(pem: dict[str, str]) -> None:
    text = (f'[[listener]]\nname = "tls"\nprotocol = "HTTPS"\nport = 8443\n'
            f'certificates = [{{ cert = "{pem["cert"]}", key = "{pem["key"]}" }}]\n'
            '  [[listener.rule]]\n  domain = "a.test"\n  url = "/"\n'
            '[[listener]]\nname = "web"\nprotocol = "HTTP"\nport = 80\n')
    old = parse_config(tomllib.loads(text), None, FUNCTIONS)
    tls, web = old.listeners
    new = replace(old, listeners=(
        replace(tls, rules=tuple(replace(r, http2=False) for r in tls.rules)),
        replace(web, h2c=True)))
    document = tomlkit.parse(text)
    writeback.patch(document, old, new)
    written = writeback.render(document)
    assert "http2 = false" in written and "h2c = true" in written
    again = parse_config(tomllib.loads(written), None, FUNCTIONS)
    assert again.listeners == new.listeners
    # and back to the defaults: the keys leave the file
    writeback.patch(document, new, old)
    assert writeback.render(document) == text
