"""The 10,000-rule table: its shape, that the real config loader accepts it, and that the real
matcher sends every probe where the generator meant it to go."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from benchmarks import confs, rulegen
from proxy.config import load_config
from proxy.rules import RuleTablePy


@pytest.fixture(scope="module")
def table() -> rulegen.RuleSet:
    return rulegen.build()


@pytest.fixture(scope="module")
def matcher(table: rulegen.RuleSet, tmp_path_factory: pytest.TempPathFactory) -> RuleTablePy:
    path = tmp_path_factory.mktemp("rules") / "rules.toml"
    target = confs.cvm_target(8080)
    path.write_text(confs.proxy_listener(rules=[(d, u, target) for d, u in table.rules],
                                         default_domain=table.rules[0][0]))
    return RuleTablePy(load_config(path).listeners[0])


def test_table_has_ten_thousand_unique_rules_of_every_kind(table: rulegen.RuleSet) -> None:
    assert len(table.rules) == 10_000
    assert len(set(table.rules)) == 10_000
    assert table.kinds["regex"] == rulegen.REGEX_DOMAINS
    assert min(table.kinds.values()) >= 50 and sum(table.kinds.values()) == 2_500
    urls = Counter(url for _, url in table.rules)
    assert set(urls) == set(rulegen.URLS) and set(urls.values()) == {2_500}


def test_kinds_are_spread_through_the_table_not_grouped(table: rulegen.RuleSet) -> None:
    first_half = {domain for domain, _ in table.rules[:5_000]}
    assert sum(d.startswith("~") for d in first_half) == rulegen.REGEX_DOMAINS // 2
    assert any(d.startswith("*.") for d, _ in table.rules[-100:])


def test_hit_rule_is_an_exact_domain_api_prefix_near_the_middle(
        table: rulegen.RuleSet) -> None:
    domain, url = table.rules[table.hit_index]
    assert (domain, url) == (table.hit_host, "/api/")
    assert 4_900 <= table.hit_index <= 5_100
    assert table.hit_path.startswith("/api/")


def test_rule_count_must_be_a_multiple_of_the_url_kinds() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        rulegen.build(10_001)


def test_real_matcher_sends_the_throughput_request_to_the_hit_rule(
        table: rulegen.RuleSet, matcher: RuleTablePy) -> None:
    assert matcher.match(table.hit_host, table.hit_path) == (table.hit_index, False)


def test_every_probe_lands_on_its_own_domain_and_url_kind(
        table: rulegen.RuleSet, matcher: RuleTablePy) -> None:
    probes = rulegen.probes()
    assert len(probes) == 4 * 3 * 4 + 4
    by_path = {"/index.html": "/", "/api/users/42": "/api/", "/static/app.js": "/static/",
               "/v2/items/42": rulegen.URLS[3]}
    for host, path in probes:
        index, redirect = matcher.match(host, path)
        domain, url = table.rules[index]
        assert not redirect and url == by_path[path], (host, path)
        assert domain == _domain_meant_for(host, table), (host, path)


def _domain_meant_for(host: str, table: rulegen.RuleSet) -> str:
    """The rule domain a probe host was made from (its number is in its first label)."""
    number = re.match(r"[a-z]+([0-9]*)", host).group(1)  # type: ignore[union-attr]
    meant = {"svc": host, "www": "*." + host.split(".", 1)[1], "app": f"app{number}.*",
             "api": rf"~^api{number}-[a-z0-9]+\.example\.org$",
             "unk": table.rules[0][0]}  # no domain matches: the listener's default domain
    return meant[host[:3]]


def test_one_rule_toml_loads_with_the_same_host_and_url(table: rulegen.RuleSet,
                                                        tmp_path: Path) -> None:
    path = tmp_path / "one.toml"
    hit = table.rules[table.hit_index]
    path.write_text(confs.proxy_listener(rules=[(*hit, confs.cvm_target(8080))],
                                         default_domain=hit[0]))
    (rule,) = load_config(path).listeners[0].rules
    assert (rule.domain, rule.url) == hit
    assert rule.health_check.enabled is False
