"""Web functions in the config: type = "HTTP", its scf_bootstrap, instance_concurrency,
init_timeout; and their round trip through writeback."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import tomlkit

from proxy import writeback
from proxy.config import Config, parse_config
from proxy.errors import ConfigError


def _config(folder: Path, function: str) -> str:
    return ('[[listener]]\nprotocol = "HTTP"\nport = 8080\n'
            '[[listener.rule]]\ndomain = "example.com"\nurl = "/"\n'
            'targets = [{ type = "SCF", function = "site" }]\n'
            f'[[function]]\nname = "site"\ncode = "site"\n{function}\n')


def _parse(folder: Path, function: str) -> Config:
    return parse_config(tomllib.loads(_config(folder, function)), folder / "rules.toml",
                        folder, {})


def _error(folder: Path, function: str) -> str:
    with pytest.raises(ConfigError) as info:
        _parse(folder, function)
    return str(info.value)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    code = tmp_path / "site"
    code.mkdir()
    bootstrap = code / "scf_bootstrap"
    bootstrap.write_text("#!/bin/bash\nexec true\n")
    bootstrap.chmod(0o755)
    return code


def test_a_web_function_loads_with_its_settings(site: Path) -> None:
    fn = _parse(site.parent, 'type = "HTTP"\ninstance_concurrency = 10\ninit_timeout = 5\n'
                'concurrency = 3').functions[0]
    assert (fn.type, fn.instance_concurrency, fn.init_timeout, fn.concurrency) == \
        ("HTTP", 10, 5, 3)


def test_functions_are_event_functions_by_default(site: Path) -> None:
    fn = _parse(site.parent, "").functions[0]
    assert (fn.type, fn.instance_concurrency, fn.init_timeout) == ("Event", 1, 65)


def test_a_missing_scf_bootstrap_is_an_error_naming_the_file(site: Path) -> None:
    (site / "scf_bootstrap").unlink()
    message = _error(site.parent, 'type = "HTTP"')
    assert "function[0].code" in message
    assert f"got no {site / 'scf_bootstrap'}" in message


def test_a_scf_bootstrap_without_the_execute_bit_is_an_error_naming_it(site: Path) -> None:
    (site / "scf_bootstrap").chmod(0o644)
    message = _error(site.parent, 'type = "HTTP"')
    assert f"{site / 'scf_bootstrap'} must be executable" in message
    assert "got mode 644" in message


def test_a_directory_named_scf_bootstrap_is_not_one(site: Path) -> None:
    (site / "scf_bootstrap").unlink()
    (site / "scf_bootstrap").mkdir()
    assert "needs an executable scf_bootstrap" in _error(site.parent, 'type = "HTTP"')


def test_a_web_function_has_no_handler(site: Path) -> None:
    message = _error(site.parent, 'type = "HTTP"\nhandler = "app.main"')
    assert "function[0].handler: must not be set" in message
    # the default handler is what write-back writes for every function: it is let through
    assert _parse(site.parent, 'type = "HTTP"\nhandler = "index.main_handler"').functions


@pytest.mark.parametrize("line, expected", [
    ('type = "Web"', "function[0].type: must be one of Event, HTTP"),
    ('type = "HTTP"\ninstance_concurrency = 101',
     "function[0].instance_concurrency: must be 1..100"),
    ('type = "HTTP"\ninit_timeout = 0', "function[0].init_timeout: must be 1..900"),
    ("instance_concurrency = 2", "function[0].instance_concurrency: must be 1 for an event"),
    ('type = "HTTP"\ninvocations_ahead = 2',
     "function[0].invocations_ahead: must be 0 for a web function"),
    ("invocations_ahead = 17", "function[0].invocations_ahead: must be 0..16"),
])
def test_bad_web_settings_name_the_field(site: Path, line: str, expected: str) -> None:
    assert expected in _error(site.parent, line)


def test_web_settings_round_trip_through_writeback(site: Path) -> None:
    config = _parse(site.parent, 'type = "HTTP"\ninstance_concurrency = 7\ninit_timeout = 9')
    fn = config.functions[0]
    table = writeback.plain(fn)
    written = tomlkit.dumps({"function": [table]})
    again = tomllib.loads(written)["function"][0]
    assert (again["type"], again["instance_concurrency"], again["init_timeout"]) == \
        ("HTTP", 7, 9)
    reparsed = parse_config({**tomllib.loads(_config(site.parent, "")), "function": [again]},
                            site.parent / "rules.toml", site.parent, {})
    assert reparsed.functions[0] == fn
