"""CLB's redirects between rules (issue 14): a rule's ``rewrite`` key and the loader's checks,
the Location the router answers, write-back, and the actions AutoRewrite, ManualRewrite,
DescribeRewrite and DeleteRewrite on a config held in memory (the real process and the
official SDK: tests/integration/test_rewrite.py)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from proxy import writeback
from proxy.config import Config, Rewrite
from proxy.messages import Request
from proxy.router import Backends, Router
from proxy.scf.local import LocalFunctions
from tests.unit.test_admin import Admin, error_code
from tests.unit.test_config import error_of, folder, parse  # noqa: F401

LB = "lb-test"
CVM = '{ type = "CVM", address = "10.0.0.1:80" }'


def two_listeners(http_rules: str = "", https_port: int = 8443, https_extra: str = "") -> str:
    """An HTTP listener (its rules given) and an HTTPS one with a.test / and /new/, *.w.test."""
    return (f'load_balancer_id = "{LB}"\n'
            '[[listener]]\nname = "web"\nprotocol = "HTTP"\nport = 80\n' + http_rules
            + f'\n[[listener]]\nname = "tls"\nprotocol = "HTTPS"\nport = {https_port}\n'
            + https_extra
            + 'certificates = [{ cert = "certs/example.pem", key = "certs/example.key" }]\n'
            + f'[[listener.rule]]\ndomain = "a.test"\nurl = "/"\ntargets = [{CVM}]\n'
            + f'[[listener.rule]]\ndomain = "a.test"\nurl = "/new/"\ntargets = [{CVM}]\n'
            + f'[[listener.rule]]\ndomain = "*.w.test"\nurl = "/"\ntargets = [{CVM}]\n')


def http_rule(domain: str, url: str, rewrite: str, targets: str = "[]") -> str:
    return (f'[[listener.rule]]\ndomain = "{domain}"\nurl = "{url}"\ntargets = {targets}\n'
            f"rewrite = {{ {rewrite} }}\n")


# --- the config -----------------------------------------------------------------------------


def test_a_rewrite_reads_with_clbs_defaults(folder: Path) -> None:  # noqa: F811
    config = parse(two_listeners(http_rule("a.test", "/old/",
                                           'listener = "tls", domain = "a.test", url = "/new/"')),
                   folder)
    assert config.listeners[0].rules[0].rewrite == Rewrite("tls", "a.test", "/new/", 302,
                                                           take_url=False, auto=False)


@pytest.mark.parametrize(("rewrite", "message"), [
    ('listener = "nope", domain = "a.test", url = "/"', 'listener "nope" has no rule'),
    ('listener = "tls", domain = "a.test", url = "/gone/"', 'no rule "a.test" "/gone/"'),
    ('listener = "web", domain = "a.test", url = "/old/"', "redirects the rule to itself"),
    ('listener = "tls", domain = "a.test", url = "/", code = 303', "one of 301, 302, 307"),
    ('listener = "tls", domain = "a.test"', "rewrite.url: is required"),
    ('listener = "tls", domain = "a.test", url = "/", why = 1', "unknown key"),
])
def test_the_loader_names_a_bad_rewrite(folder: Path, rewrite: str,  # noqa: F811
                                        message: str) -> None:
    error = error_of(two_listeners(http_rule("a.test", "/old/", rewrite)), folder)
    assert "listener[0].rule[0].rewrite" in error and message in error, error


def test_no_chains_no_auto_from_https_and_no_manual_beside_auto(folder: Path) -> None:  # noqa: F811
    chain = (http_rule("a.test", "/one/", 'listener = "web", domain = "a.test", url = "/two/"')
             + http_rule("a.test", "/two/", 'listener = "tls", domain = "a.test", url = "/"'))
    assert "redirects too" in error_of(two_listeners(chain), folder)
    beside = (http_rule("a.test", "/", 'listener = "tls", domain = "a.test", url = "/", '
                        "auto = true")
              + http_rule("a.test", "/x/", 'listener = "tls", domain = "a.test", url = "/"'))
    assert "CLB allows no manual one beside it" in error_of(two_listeners(beside), folder)
    backwards = (f'load_balancer_id = "{LB}"\n[[listener]]\nname = "web"\nprotocol = "HTTP"\n'
                 f'port = 80\n[[listener.rule]]\ndomain = "a.test"\nurl = "/"\ntargets = [{CVM}]\n'
                 '[[listener]]\nname = "tls"\nprotocol = "HTTPS"\nport = 8443\ncertificates = '
                 '[{ cert = "certs/example.pem", key = "certs/example.key" }]\n'
                 + http_rule("a.test", "/", 'listener = "web", domain = "a.test", url = "/", '
                             "auto = true"))
    assert "from an HTTP listener to an HTTPS one" in error_of(backwards, folder)


def test_redirect_https_port_says_what_replaces_it(folder: Path) -> None:  # noqa: F811
    error = error_of(two_listeners("redirect_https_port = 443\n"), folder)
    assert "listener[0].redirect_https_port" in error and "AutoRewrite" in error
    assert "rewrite = {" in error


# --- the Location ---------------------------------------------------------------------------


async def _no_cvm(request: Request, route: Any) -> Any:
    raise AssertionError("a rewritten rule's target took a request")


def _answer(config: Config, host: str, path: str, query: str = "",
            ports: dict[str, int] | None = None) -> tuple[int, str]:
    backends = Backends(local=LocalFunctions(()), ports=ports or {},
                        cvm=lambda listener, rule, target: (_no_cvm, None))
    router = Router(config, backends)
    request = Request("GET", path, query, (("Host", host),), b"", "1.1", "127.0.0.1", 1,
                      "http", "web", 0.0)
    outcome = asyncio.run(router.handle(request))
    return outcome.response.status, dict(outcome.response.headers).get("Location", "")


def test_the_location_names_the_target_rule(folder: Path) -> None:  # noqa: F811
    rules = (http_rule("a.test", "/old/", 'listener = "tls", domain = "a.test", url = "/new/"')
             + http_rule("a.test", "/keep/", 'listener = "tls", domain = "a.test", url = "/", '
                         "code = 307, take_url = true")
             + http_rule("x.w.test", "/", 'listener = "tls", domain = "*.w.test", url = "/", '
                         "code = 301, take_url = true", targets=f"[{CVM}]"))
    config = parse(two_listeners(rules), folder)
    # take_url false: the target rule's url, no query; the port named (not 443)
    assert _answer(config, "a.test", "/old/x", "q=1") == (302, "https://a.test:8443/new/")
    # take_url: the request's path and query; 307
    assert _answer(config, "a.test:80", "/keep/a", "q=1") == (307,
                                                              "https://a.test:8443/keep/a?q=1")
    # a wildcard target domain: the request's host (its port dropped); the rule's targets
    # take nothing while the rewrite stands
    assert _answer(config, "x.w.test:80", "/p") == (301, "https://x.w.test:8443/p")
    # no rewrite for a path no rewritten rule matches
    assert _answer(config, "a.test", "/elsewhere")[0] == 404


def test_the_port_is_public_port_or_the_bound_one_and_443_is_left_out(
        folder: Path) -> None:  # noqa: F811
    rules = http_rule("a.test", "/", 'listener = "tls", domain = "a.test", url = "/"')
    on_443 = parse(two_listeners(rules, https_port=443), folder)
    assert _answer(on_443, "a.test", "/") == (302, "https://a.test/")
    natted = parse(two_listeners(rules, https_extra="public_port = 443\n"), folder)
    assert _answer(natted, "a.test", "/") == (302, "https://a.test/")
    unbound = parse(two_listeners(rules, https_port=0), folder)
    assert _answer(unbound, "a.test", "/", ports={"tls": 40123}) == (
        302, "https://a.test:40123/")


# --- write-back -----------------------------------------------------------------------------


def test_a_rewrite_is_written_as_an_inline_table_and_read_back(folder: Path) -> None:  # noqa: F811
    text = two_listeners(f'[[listener.rule]]\ndomain = "a.test"\nurl = "/"  # kept\n'
                         f"targets = [{CVM}]\n")
    old = parse(text, folder)
    web = old.listeners[0]
    moved = replace(web.rules[0], rewrite=Rewrite("tls", "a.test", "/new/", 301, True))
    new = replace(old, listeners=(replace(web, rules=(moved,)),) + old.listeners[1:])
    document = tomlkit.parse(text)
    writeback.patch(document, old, new)
    written = writeback.render(document)
    assert 'rewrite = {listener = "tls", domain = "a.test", url = "/new/", code = 301, ' \
           "take_url = true}" in written and "# kept" in written
    assert parse(written, folder).listeners[0].rules[0] == moved
    writeback.patch(document, new, old)
    assert "rewrite" not in writeback.render(document)


# --- the actions ------------------------------------------------------------------------------


@pytest.fixture
def admin(folder: Path) -> Admin:  # noqa: F811
    rules = (f'[[listener.rule]]\ndomain = "a.test"\nurl = "/old/"\ntargets = [{CVM}]\n'
             f'[[listener.rule]]\ndomain = "a.test"\nurl = "/api/"\ntargets = [{CVM}]\n')
    return Admin(parse(two_listeners(rules), folder))


def _loc(admin: Admin, listener: int, url: str, domain: str = "a.test") -> str:
    return next(r.location_id for r in admin.config.listeners[listener].rules
                if (r.domain, r.url) == (domain, url))


def test_auto_rewrite_redirects_every_rule_of_the_domain(admin: Admin) -> None:
    answer = admin.call("AutoRewrite", {"LoadBalancerId": LB, "ListenerId": "lbl-tls",
                                        "Domains": ["a.test"], "RewriteCodes": [301]})
    assert "Error" not in answer, answer
    web = admin.config.listeners[0]
    made = {(r.domain, r.url): r for r in web.rules}
    # the HTTP listener's own rules of a.test redirect (to the HTTPS rule of their url, else
    # "/"), and a "/" rule was made for the rest of the domain, without targets
    assert made[("a.test", "/old/")].rewrite == Rewrite("tls", "a.test", "/", 301, True, True)
    assert made[("a.test", "/")].rewrite == Rewrite("tls", "a.test", "/", 301, True, True)
    assert made[("a.test", "/")].targets == ()
    described = admin.call("DescribeRewrite", {"LoadBalancerId": LB})["RewriteSet"]
    shown = {r["Url"]: (r["RewriteTarget"], r["BeAutoCreated"]) for r in described}
    assert shown["/"] == ({"TargetListenerId": "lbl-tls", "TargetLocationId":
                           _loc(admin, 1, "/"), "RewriteCode": 301, "TakeUrl": True,
                           "RewriteType": "Auto"}, True)
    assert shown["/old/"][1] is False  # it has targets of its own
    # a ManualRewrite beside it is refused, and nothing changes
    before = admin.config
    answer = admin.call("ManualRewrite", {
        "LoadBalancerId": LB, "SourceListenerId": "lbl-web", "TargetListenerId": "lbl-tls",
        "RewriteInfos": [{"SourceLocationId": _loc(admin, 0, "/api/"),
                          "TargetLocationId": _loc(admin, 1, "/new/")}]})
    assert error_code(answer) == "FailedOperation" and admin.config is before
    # DeleteRewrite: the made rule goes with its rewrite, the listener's own rule stays
    answer = admin.call("DeleteRewrite", {
        "LoadBalancerId": LB, "SourceListenerId": "lbl-web", "TargetListenerId": "lbl-tls",
        "RewriteInfos": [{"SourceLocationId": _loc(admin, 0, u),
                          "TargetLocationId": _loc(admin, 1, "/")} for u in ("/", "/old/",
                                                                              "/api/")]})
    assert "Error" not in answer, answer
    assert [(r.url, r.rewrite) for r in admin.config.listeners[0].rules] == [
        ("/old/", None), ("/api/", None)]


def test_auto_rewrite_checks_its_parameters(admin: Admin) -> None:
    base = {"LoadBalancerId": LB, "ListenerId": "lbl-tls"}
    for params, code in [({**base, "ListenerId": "lbl-web"}, "InvalidParameter"),
                         ({**base, "Domains": ["b.test"]}, "InvalidParameter.DomainNotFound"),
                         ({**base, "Domains": ["a.test"], "RewriteCodes": [301, 302]},
                          "InvalidParameterValue.Length"),
                         ({**base, "Domains": ["a.test"], "RewriteCodes": [303]},
                          "InvalidParameterValue")]:
        before = admin.config
        assert error_code(admin.call("AutoRewrite", params)) == code, params
        assert admin.config is before


def test_manual_rewrite_and_describe_and_delete(admin: Admin) -> None:
    pair = {"LoadBalancerId": LB, "SourceListenerId": "lbl-web", "TargetListenerId": "lbl-tls"}
    old, new = _loc(admin, 0, "/old/"), _loc(admin, 1, "/new/")
    # RewriteCode needs TakeUrl and SourceDomain (CLB)
    answer = admin.call("ManualRewrite", {**pair, "RewriteInfos": [
        {"SourceLocationId": old, "TargetLocationId": new, "RewriteCode": 301}]})
    assert error_code(answer) == "MissingParameter"
    answer = admin.call("ManualRewrite", {**pair, "RewriteInfos": [
        {"SourceLocationId": old, "TargetLocationId": new, "RewriteCode": 301,
         "TakeUrl": False, "SourceDomain": "other.test"}]})
    assert error_code(answer) == "InvalidParameterValue"
    answer = admin.call("ManualRewrite", {**pair, "RewriteInfos": [
        {"SourceLocationId": old, "TargetLocationId": new, "RewriteCode": 301,
         "TakeUrl": False, "SourceDomain": "a.test"},
        {"SourceLocationId": _loc(admin, 0, "/api/"), "TargetLocationId": new}]})
    assert "Error" not in answer, answer
    assert admin.rule(old).rewrite == Rewrite("tls", "a.test", "/new/", 301, False)
    assert admin.rule(_loc(admin, 0, "/api/")).rewrite == Rewrite("tls", "a.test", "/new/")
    only = admin.call("DescribeRewrite", {"LoadBalancerId": LB, "SourceLocationIds": [old]})
    assert [r["LocationId"] for r in only["RewriteSet"]] == [old]
    assert only["RewriteSet"][0]["RewriteTarget"]["RewriteType"] == "Manual"
    listed = admin.call("DescribeListeners", {"LoadBalancerId": LB})["Listeners"]
    assert listed[1]["Rules"][0]["RewriteTarget"] is None
    # deleting a rewrite that is not there is refused; a real one goes, the rule stays
    answer = admin.call("DeleteRewrite", {**pair, "RewriteInfos": [
        {"SourceLocationId": old, "TargetLocationId": _loc(admin, 1, "/")}]})
    assert error_code(answer) == "InvalidParameter"
    answer = admin.call("DeleteRewrite", {**pair, "RewriteInfos": [
        {"SourceLocationId": old, "TargetLocationId": new}]})
    assert "Error" not in answer and admin.rule(old).rewrite is None
    assert admin.rule(old).targets  # a rule of its own keeps its targets


def test_create_rule_with_several_domains_makes_one_rule_each(admin: Admin) -> None:
    answer = admin.call("CreateRule", {"LoadBalancerId": LB, "ListenerId": "lbl-web",
                                       "Rules": [{"Domains": ["m1.test", "M2.test"],
                                                  "Url": "/shop/", "Scheduler": "WRR"}]})
    assert "Error" not in answer, answer
    made = [r for r in admin.config.listeners[0].rules if r.url == "/shop/"]
    assert [r.domain for r in made] == ["m1.test", "m2.test"]
    assert answer["LocationIds"] == [r.location_id for r in made]
    both = admin.call("CreateRule", {"LoadBalancerId": LB, "ListenerId": "lbl-web",
                                     "Rules": [{"Domain": "x.test", "Domains": ["y.test"],
                                                "Url": "/"}]})
    assert error_code(both) == "InvalidParameter"
