"""proxy/headers.py: the forwarded header set (RFC 9110 §7.6.1, SPEC §5) and trusted proxies."""

from __future__ import annotations

import pytest

from proxy.headers import (CLB_HEADERS, HOP_BY_HOP, TrustedProxies, forwarded_headers,
                           redirect_prefixes, rewrite_redirects)
from proxy.messages import Headers, Request

NOBODY = TrustedProxies([])


def make_request(headers: Headers, client_ip: str = "203.0.113.7", scheme: str = "http",
                 http_version: str = "1.1", received_at: float = 1591692977.7741) -> Request:
    return Request(method="GET", path="/", query="", headers=headers, body=b"",
                   http_version=http_version, client_ip=client_ip, client_port=40000,
                   scheme=scheme, listener="web", received_at=received_at)


def names(headers: Headers) -> list[str]:
    return [name for name, _ in headers]


def value(headers: Headers, name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name.lower()]


def client_part(headers: Headers) -> Headers:
    """The headers before the CLB ones we append."""
    return headers[: len(headers) - len(CLB_HEADERS)]


def test_client_headers_keep_their_spelling_and_order_and_host() -> None:
    sent = (("host", "a.test"), ("User-AGENT", "ua"), ("accept", "*/*"), ("X-Mine", "1"),
            ("x-mine", "2"), ("Content-Length", "0"))
    out = forwarded_headers(make_request(sent), NOBODY)
    assert client_part(out) == sent


def test_clb_headers_are_appended_in_order_with_their_values() -> None:
    out = forwarded_headers(make_request((("Host", "a.test"),), scheme="https",
                                         http_version="1.0"), NOBODY)
    assert out[-len(CLB_HEADERS):] == (
        ("X-Stgw-Time", "1591692977.774"),
        ("X-Client-Proto", "https"),
        ("X-Forwarded-Proto", "https"),
        ("X-Client-Proto-Ver", "HTTP/1.0"),
        ("X-Real-IP", "203.0.113.7"),
        ("X-Forwarded-For", "203.0.113.7"),
    )


def test_stgw_time_always_has_three_decimals() -> None:
    out = forwarded_headers(make_request((), received_at=1700000000.0), NOBODY)
    assert value(out, "X-Stgw-Time") == ["1700000000.000"]


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
def test_every_hop_by_hop_header_is_removed(name: str) -> None:
    out = forwarded_headers(make_request((("Host", "a"), (name.title(), "x"), ("X-A", "1"))),
                            NOBODY)
    assert client_part(out) == (("Host", "a"), ("X-A", "1"))


def test_connection_header_and_every_field_it_names_are_removed() -> None:
    sent = (("Host", "a"), ("X-Keep", "gone"), ("Connection", "keep-alive, X-Keep"),
            ("connection", " x-other ,,"), ("X-Other", "gone"), ("X-Stays", "here"))
    out = forwarded_headers(make_request(sent), NOBODY)
    assert client_part(out) == (("Host", "a"), ("X-Stays", "here"))


def test_client_cannot_nominate_our_headers_for_removal() -> None:
    sent = (("Host", "a"), ("Connection", "X-Forwarded-For, X-Real-IP, X-Stgw-Time"))
    out = forwarded_headers(make_request(sent), NOBODY)
    assert value(out, "X-Forwarded-For") == ["203.0.113.7"]
    assert value(out, "X-Real-IP") == ["203.0.113.7"]
    assert len(value(out, "X-Stgw-Time")) == 1


def test_connection_cannot_remove_host_or_content_length() -> None:
    sent = (("Host", "a"), ("Content-Length", "3"), ("Connection", "host, content-length"))
    out = forwarded_headers(make_request(sent), NOBODY)
    assert client_part(out) == (("Host", "a"), ("Content-Length", "3"))


@pytest.mark.parametrize("name", CLB_HEADERS)
def test_forged_clb_headers_are_removed_in_any_spelling(name: str) -> None:
    sent = (("Host", "a"), (name.upper(), "6.6.6.6"), (name.lower(), "forged"))
    out = forwarded_headers(make_request(sent), NOBODY)
    assert client_part(out) == (("Host", "a"),)
    assert "6.6.6.6" not in value(out, name) and "forged" not in value(out, name)
    assert len(value(out, name)) == 1


def test_forwarded_for_is_replaced_for_an_untrusted_peer() -> None:
    sent = (("Host", "a"), ("X-Forwarded-For", "1.1.1.1, 2.2.2.2"))
    trusted = TrustedProxies(["10.0.0.0/8"])
    out = forwarded_headers(make_request(sent, client_ip="198.51.100.1"), trusted)
    assert value(out, "X-Forwarded-For") == ["198.51.100.1"]


def test_forwarded_for_is_extended_for_a_trusted_peer() -> None:
    sent = (("Host", "a"), ("X-Forwarded-For", "1.1.1.1, 2.2.2.2"),
            ("x-forwarded-for", " 3.3.3.3 "))
    out = forwarded_headers(make_request(sent, client_ip="10.1.2.3"),
                            TrustedProxies(["10.0.0.0/8"]))
    assert client_part(out) == (("Host", "a"),)
    assert value(out, "X-Forwarded-For") == ["1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.2.3"]


def test_trusted_peer_without_forwarded_for_gets_its_own_address() -> None:
    out = forwarded_headers(make_request((("Host", "a"),), client_ip="10.1.2.3"),
                            TrustedProxies(["10.0.0.0/8"]))
    assert value(out, "X-Forwarded-For") == ["10.1.2.3"]


def test_real_ip_stays_the_peer_behind_a_trusted_proxy() -> None:
    sent = (("Host", "a"), ("X-Forwarded-For", "1.1.1.1"), ("X-Real-IP", "1.1.1.1"))
    out = forwarded_headers(make_request(sent, client_ip="10.1.2.3"),
                            TrustedProxies(["10.0.0.0/8"]))
    assert value(out, "X-Real-IP") == ["10.1.2.3"]


def test_trusted_proxy_nominating_forwarded_for_drops_the_incoming_list() -> None:
    sent = (("Host", "a"), ("X-Forwarded-For", "1.1.1.1"), ("Connection", "X-Forwarded-For"))
    out = forwarded_headers(make_request(sent, client_ip="10.1.2.3"),
                            TrustedProxies(["10.0.0.0/8"]))
    assert value(out, "X-Forwarded-For") == ["10.1.2.3"]


def test_no_cidrs_trust_nobody() -> None:
    assert "127.0.0.1" not in NOBODY
    assert not NOBODY


@pytest.mark.parametrize(("ip", "inside"), [
    ("10.0.0.1", True), ("10.255.255.255", True), ("11.0.0.1", False),
    ("192.168.1.9", True), ("192.168.2.9", False),
    ("2001:db8::1", True), ("2001:db9::1", False),
    ("::ffff:10.9.9.9", True), ("::ffff:11.9.9.9", False),
    ("fe80::1%eth0", True),
    ("not-an-ip", False), ("", False),
])
def test_trusted_proxies_membership(ip: str, inside: bool) -> None:
    trusted = TrustedProxies(["10.0.0.0/8", "192.168.1.5/24", "2001:db8::/32", "fe80::/10"])
    assert (ip in trusted) is inside
    assert (ip in trusted) is inside  # the cached answer agrees


def test_trusted_proxies_cache_stays_bounded() -> None:
    trusted = TrustedProxies(["10.0.0.0/8"])
    for i in range(5000):
        assert f"10.0.{i // 256}.{i % 256}" in trusted
    assert len(trusted._cache) <= 1024
    assert "11.0.0.1" not in trusted


def test_bad_cidr_is_rejected() -> None:
    with pytest.raises(ValueError):
        TrustedProxies(["10.0.0.0/33"])


# --- proxy_redirect default ------------------------------------------------------------------


def _redirect_request(host: str | None, scheme: str = "http") -> Request:
    headers = (("Host", host),) if host is not None else ()
    return Request("GET", "/", "", headers, b"", "1.1", "1.2.3.4", 5, scheme, "web", 0.0)


def test_redirect_prefixes_name_the_target_and_port_80_without_port() -> None:
    assert redirect_prefixes("10.0.0.1:8080") == ("http://10.0.0.1:8080/",)
    assert redirect_prefixes("Up.Local:80") == ("http://up.local:80/", "http://up.local/")
    assert redirect_prefixes("[::1]:80") == ("http://[::1]:80/", "http://[::1]/")


def test_rewrite_redirects_location_and_refresh_only_for_the_target() -> None:
    prefixes = redirect_prefixes("10.0.0.1:8080")
    headers = (("Location", "http://10.0.0.1:8080/a?b"), ("Refresh", "5; URL=http://10.0.0.1:8080/n"),
               ("X-Other", "http://10.0.0.1:8080/keep"), ("location", "http://10.0.0.1:80801/no"))
    out = rewrite_redirects(headers, prefixes, _redirect_request("shop.test", "https"))
    assert out == (("Location", "https://shop.test/a?b"), ("Refresh", "5; URL=https://shop.test/n"),
                   ("X-Other", "http://10.0.0.1:8080/keep"),
                   ("location", "http://10.0.0.1:80801/no"))
    assert rewrite_redirects(headers[:1], prefixes, _redirect_request(None)) == (
        ("Location", "/a?b"),)
