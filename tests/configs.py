"""TOML snippets for the integration tests' rule tables, spelled once.

A test's config is ``listener(...) + rule(...) + ... + function(...)``: a loopback listener on
port 0 (the proxy prints the real port), rules under it, and local functions whose code is in
tests/functions. Values are written with ``json.dumps``, which is valid TOML for the strings,
numbers, booleans and lists the tests use.
"""

from __future__ import annotations

import json
from pathlib import Path

FUNCTIONS = Path(__file__).resolve().parent / "functions"


def _settings(settings: dict[str, object]) -> str:
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())


def listener(name: str = "web", protocol: str = "HTTP", **settings: object) -> str:
    """A ``[[listener]]`` on 127.0.0.1 port 0, with any other listener keys."""
    return (f'\n[[listener]]\nname = "{name}"\nprotocol = "{protocol}"\nhost = "127.0.0.1"\n'
            f"port = 0\n" + _settings(settings))


def rule(domain: str, url: str, targets: str, **settings: object) -> str:
    """A ``[[listener.rule]]`` of the listener above; ``targets`` is the TOML array."""
    return (f"\n  [[listener.rule]]\n  domain = {json.dumps(domain)}\n  url = {json.dumps(url)}\n"
            f"  targets = {targets}\n" + _settings(settings))


def scf_rule(domain: str, url: str, function: str, **target: object) -> str:
    """A rule with one SCF target: ``function`` plus any target keys (weight, namespace...)."""
    keys = "".join(f", {key} = {json.dumps(value)}" for key, value in target.items())
    return rule(domain, url, f'[{{ type = "SCF", function = {json.dumps(function)}{keys} }}]')


def function(name: str, code: str | None = None, **settings: object) -> str:
    """A ``[[function]]`` running tests/functions/``code`` (default: ``name``)."""
    return (f'\n[[function]]\nname = "{name}"\nhandler = "index.main_handler"\n'
            f"code = {json.dumps(str(FUNCTIONS / (code or name)))}\n" + _settings(settings))
