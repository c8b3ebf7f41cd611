"""Issue 16 items 2, 3 and 7 in the loader and the pure cores: ``[[function.version]]`` and
``[[function.alias]]`` (SCF's RoutingConfig, errors naming the field), target qualifiers
checked against them, ``init_timeout`` and ``role_credentials``; scf/aliases.py's routing
(weights by a given draw, exact and range rules); runtime.role_credentials' sources; and the
write-back of a function with versions and aliases reading back as the same value."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
import tomlkit

from proxy import writeback
from proxy.config import Alias, Config, FunctionVersion, VersionMatch, parse_config
from proxy.errors import ConfigError
from proxy.scf import runtime
from proxy.scf.aliases import Routing, resolve


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name in ("latest", "v1", "v2"):
        (tmp_path / name).mkdir()
    return tmp_path


def document(function: str = "", qualifier: str = "$LATEST") -> str:
    return (f'[[listener]]\nprotocol = "HTTP"\nport = 0\n[[listener.rule]]\ndomain = "a.test"\n'
            f'url = "/"\ntargets = [{{ type = "SCF", function = "fn", qualifier = "{qualifier}" '
            f'}}]\n[[function]]\nname = "fn"\ncode = "latest"\n{function}\n'
            '[[function.version]]\nversion = "1"\ncode = "v1"\n'
            '[[function.version]]\nversion = 2\ncode = "v2"\n')


def parse(text: str, folder: Path) -> Config:
    return parse_config(tomllib.loads(text), folder / "rules.toml", folder, {})


def error_of(text: str, folder: Path) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, folder)
    return str(info.value)


ALIASES = '''
[[function.alias]]
name = "live"
version = "1"
additional_version_weights = { "2" = 0.25 }

[[function.alias]]
name = "$DEFAULT"
version = "2"

[[function.alias]]
name = "rule"
version = "$LATEST"
[[function.alias.additional_version_matches]]
version = "1"
key = "invoke.headers.User"
method = "exact"
expression = "Bob"
[[function.alias.additional_version_matches]]
version = "2"
key = "invoke.headers.Tier"
method = "range"
expression = "(1,5]"
'''


def test_versions_and_aliases_load_into_values(folder: Path) -> None:
    fn = parse(document("init_timeout = 5\nrole_credentials = true") + ALIASES,
               folder).functions[0]
    assert fn.versions == (FunctionVersion("1", folder / "v1"), FunctionVersion("2", folder / "v2"))
    assert fn.aliases[0] == Alias("live", "1", (("2", 0.25),))
    assert fn.aliases[2].additional_version_matches[1] == VersionMatch(
        "2", "invoke.headers.Tier", "range", "(1,5]")
    assert (fn.init_timeout, fn.role_credentials) == (5, True)
    assert fn.code_of("2") == folder / "v2" and fn.code_of("$LATEST") == folder / "latest"


def test_defaults_are_scfs(folder: Path) -> None:
    fn = parse(document(), folder).functions[0]
    assert (fn.init_timeout, fn.role_credentials, fn.aliases) == (65, False, ())
    assert fn.alias("$DEFAULT") == Alias("$DEFAULT", "$LATEST")  # undeclared: $LATEST


@pytest.mark.parametrize(("extra", "expected"), [
    ('[[function.alias]]\nname = "a"\nversion = "1"\n'
     'additional_version_weights = { "2" = 0.7, "$LATEST" = 0.5 }',
     "function[0].alias[0].additional_version_weights: must add up to at most 1"),
    ('[[function.alias]]\nname = "a"\nversion = "1"\nadditional_version_weights = { "2" = 1.5 }',
     "function[0].alias[0].additional_version_weights.2: must be 0..1, got 1.5"),
    ('[[function.alias]]\nname = "a"\nversion = "7"',
     "function[0].alias[0].version: must be $LATEST or a [[function.version]] of default/fn "
     '($LATEST, 1, 2), got "7"'),
    ('[[function.alias]]\nname = "a"\nversion = "1"\nadditional_version_weights = { "9" = 0.1 }',
     "function[0].alias[0].additional_version_weights.9: must be $LATEST or a"),
    ('[[function.alias]]\nname = "a"\nversion = "1"\nadditional_version_weights = { "1" = 0.1 }',
     "function[0].alias[0].additional_version_weights.1: must differ from the alias's version"),
    ('[[function.alias]]\nname = "a"\nversion = "1"\n'
     '[[function.alias.additional_version_matches]]\nversion = "3"\n'
     'key = "invoke.headers.U"\nmethod = "exact"\nexpression = "x"',
     "function[0].alias[0].additional_version_matches[0].version: must be $LATEST or a"),
    ('[[function.alias]]\nname = "a"\nversion = "1"\n'
     '[[function.alias.additional_version_matches]]\nversion = "2"\n'
     'key = "headers.U"\nmethod = "exact"\nexpression = "x"',
     "function[0].alias[0].additional_version_matches[0].key: must be invoke.headers.NAME"),
    ('[[function.alias]]\nname = "a"\nversion = "1"\n'
     '[[function.alias.additional_version_matches]]\nversion = "2"\n'
     'key = "invoke.headers.U"\nmethod = "regex"\nexpression = "x"',
     "function[0].alias[0].additional_version_matches[0].method: must be one of exact, range"),
    ('[[function.alias]]\nname = "a"\nversion = "1"\n'
     '[[function.alias.additional_version_matches]]\nversion = "2"\n'
     'key = "invoke.headers.U"\nmethod = "range"\nexpression = "[9,1]"',
     "function[0].alias[0].additional_version_matches[0].expression: must be [a,b] or (a,b)"),
    ('[[function.alias]]\nname = "a"\nversion = "1"\nadditional_version_weights = { "2" = 0.1 }'
     '\n[[function.alias.additional_version_matches]]\nversion = "2"\n'
     'key = "invoke.headers.U"\nmethod = "exact"\nexpression = "x"',
     "function[0].alias[0]: takes additional_version_weights or additional_version_matches"),
    ('[[function.alias]]\nname = "a"\nversion = "1"\n[[function.alias]]\nname = "a"\n'
     'version = "2"', 'function[0].alias[1].name: must be unique, got "a"'),
    ('[[function.alias]]\nname = "1a"\nversion = "1"', "function[0].alias[0].name: must be"),
    ('[[function.version]]\nversion = "2"\ncode = "v1"',
     'function[0].version[2].version: must be unique, got "2"'),
    ('[[function.version]]\nversion = "$LATEST"\ncode = "v1"',
     "function[0].version[2].version: must be a version number"),
    ("init_timeout = 0", "function[0].init_timeout: must be 1..900, got 0"),
    ('role_credentials = "yes"', 'function[0].role_credentials: must be true or false'),
])
def test_bad_versions_and_aliases_name_the_field(folder: Path, extra: str, expected: str) -> None:
    # the extra lines go after the versions, so [[function.alias]] belongs to the function
    text = document() + extra if extra.startswith("[[") else document(extra)
    assert expected in error_of(text, folder)


def test_a_target_qualifier_must_name_a_version_or_alias(folder: Path) -> None:
    for good in ("$LATEST", "$DEFAULT", "1", "2", "live"):
        parse(document(qualifier=good) + ALIASES, folder)
    message = error_of(document(qualifier="3"), folder)
    assert "listener[0].rule[0].target[0].qualifier: must be $LATEST, $DEFAULT or a version " \
           'or alias of default/fn ($LATEST, 1, 2, $DEFAULT), got "3"' in message


def test_routing_by_weight_follows_the_draw() -> None:
    routing = Routing("1", Alias("a", "1", (("2", 0.25), ("$LATEST", 0.5))))
    assert routing.fixed is None and routing.versions == ("1", "2", "$LATEST")
    picks = [routing.pick(lambda name: None, lambda d=d: d) for d in (0.0, 0.2499, 0.25, 0.74,
                                                                      0.75, 0.9999)]
    assert picks == ["2", "2", "$LATEST", "$LATEST", "1", "1"]


@pytest.mark.parametrize(("keys", "version"), [
    ({"User": "Bob"}, "1"), ({"User": "bob"}, "$LATEST"), ({"Tier": "1"}, "$LATEST"),
    ({"Tier": "2"}, "2"), ({"Tier": " 5 "}, "2"), ({"Tier": "6"}, "$LATEST"),
    ({"Tier": "x"}, "$LATEST"), ({}, "$LATEST")])
def test_routing_by_rules(folder: Path, keys: dict[str, str], version: str) -> None:
    fn = parse(document() + ALIASES, folder).functions[0]
    routing = resolve(fn, "rule")
    assert routing is not None
    assert routing.pick(keys.get) == version


def test_resolve_knows_versions_aliases_and_default(folder: Path) -> None:
    fn = parse(document() + ALIASES, folder).functions[0]
    assert [resolve(fn, q).fixed for q in ("$LATEST", "1", "$DEFAULT")] == [  # type: ignore
        "$LATEST", "1", "2"]  # $DEFAULT declared: version 2
    assert resolve(fn, "nope") is None and resolve(fn, "3") is None
    plain = parse(document(), folder).functions[0]
    assert resolve(plain, "$DEFAULT").fixed == "$LATEST"  # type: ignore[union-attr]


def test_role_credentials_come_from_the_first_source_with_a_pair() -> None:
    scf = {"TENCENTCLOUD_SECRETID": "AKIDa", "TENCENTCLOUD_SECRETKEY": "ka",
           "TENCENTCLOUD_SESSIONTOKEN": "tok"}
    # with a token: the SCF names only (the SDK's names take no token)
    assert runtime.role_credentials({**scf, "TENCENTCLOUD_SECRET_ID": "AKIDb",
                                     "TENCENTCLOUD_SECRET_KEY": "kb"}) == {
        "TENCENTCLOUD_SECRETID": "AKIDa", "TENCENTCLOUD_SECRETKEY": "ka",
        "TENCENTCLOUD_SESSIONTOKEN": "tok"}
    # the SDK's names in the proxy's environment; no token: the SDK's names are set as well
    assert runtime.role_credentials({"TENCENTCLOUD_SECRET_ID": "AKIDb",
                                     "TENCENTCLOUD_SECRET_KEY": "kb"}) == {
        "TENCENTCLOUD_SECRETID": "AKIDb", "TENCENTCLOUD_SECRETKEY": "kb",
        "TENCENTCLOUD_SESSIONTOKEN": "", "TENCENTCLOUD_SECRET_ID": "AKIDb",
        "TENCENTCLOUD_SECRET_KEY": "kb"}
    # the local SCF API's keys last, so a function's SDK call to --scf-api verifies
    assert runtime.role_credentials({"CLBSCF_SCF_API_SECRET_ID": "AKIDc",
                                     "CLBSCF_SCF_API_SECRET_KEY": "kc"})["TENCENTCLOUD_SECRETID"] \
        == "AKIDc"
    assert runtime.role_credentials({"TENCENTCLOUD_SECRETID": "AKIDa"}) is None  # no key


def test_a_function_with_versions_and_aliases_writes_back_as_itself(folder: Path) -> None:
    config = parse(document("init_timeout = 7\nrole_credentials = true") + ALIASES, folder)
    fn = config.functions[0]
    # a whole function written afresh (as a new array item is) reads back as the same value
    doc = tomlkit.document()
    doc["function"] = writeback._array_item(Config, "functions", (fn,))
    text = tomlkit.dumps(doc)
    again = parse_config(tomllib.loads(text), None, folder, {}).functions[0]
    assert again == fn


def test_a_versions_environment_names_it_and_only_latest_is_debugged(folder: Path) -> None:
    fn = parse(document('environment = { CLBSCF_DEBUGPY_NOT = "x" }'), folder).functions[0]
    debugged = replace(fn, environment=(*fn.environment,
                                        (runtime.DEBUG_VARIABLE, "127.0.0.1:5678")))
    latest = runtime.instance_environment(debugged, "ap-guangzhou", "1", "2", {})
    one = runtime.instance_environment(debugged, "ap-guangzhou", "1", "2", {}, version="1")
    assert latest[runtime.DEBUG_VARIABLE] == "127.0.0.1:5678"
    assert runtime.DEBUG_VARIABLE not in one
    assert (one["SCF_FUNCTIONVERSION"], one["USER_CODE_ROOT"]) == ("1", str(folder / "v1"))
    assert runtime.static_context(fn, "ap-guangzhou", "1", "2", "1")["function_version"] == "1"
    assert "TENCENTCLOUD_SECRETID" not in one  # no credentials unless handed over
