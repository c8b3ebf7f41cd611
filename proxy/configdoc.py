"""docs/CONFIG.md's key tables, made from the config's one declaration of each key
(config.Key: its check, meaning and CLB API name; the default from the dataclass field).

Owns the rendering and the marked blocks it fills: ``<!-- keys: NAME -->`` ... ``<!-- end keys
-->``. ``python -m proxy.configdoc`` rewrites docs/CONFIG.md; tests/unit/test_configdoc.py
checks that the file is current.

Must not know: how a value is checked (config.py's).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import (FIELD_NAMES, FUNCTION_ARRAYS, FUNCTION_KEYS, HEALTH_CHECK_KEYS,
                     LISTENER_KEYS, REWRITE_KEYS, RULE_KEYS, SCF_KEYS, TARGET_KEYS, Function,
                     HealthCheck, Key, Listener, RemoteScf, Rewrite, Rule, Target, values_of)

DOC = Path(__file__).resolve().parent.parent / "docs" / "CONFIG.md"
#: marked block name -> (the dataclass whose defaults apply, its keys, the required ones)
SECTIONS: dict[str, tuple[type, Mapping[str, Key], tuple[str, ...]]] = {
    "listener": (Listener, LISTENER_KEYS, ("protocol", "port")),
    "rule": (Rule, RULE_KEYS, ("domain", "url")),
    "health_check": (HealthCheck, HEALTH_CHECK_KEYS, ()),
    "rewrite": (Rewrite, REWRITE_KEYS, ("listener", "domain", "url")),
    "target-scf": (Target, TARGET_KEYS["SCF"], ()),
    "target-cvm": (Target, TARGET_KEYS["CVM"], ()),
    "function": (Function, FUNCTION_KEYS, ("name", "code")),
    "scf": (RemoteScf, SCF_KEYS, ("region",)),
}
_BLOCK = re.compile(r"(<!-- keys: (?P<name>[a-z_-]+) -->\n)(.*?)(<!-- end keys -->)",
                    re.S)
#: TOML keys that are another field name on the dataclass
_FIELD_OF = {**FIELD_NAMES, **FUNCTION_ARRAYS}


def _shown(value: Any) -> str:
    """A default as TOML spells it."""
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (int, float)):
        return f"{value:g}"
    if isinstance(value, str):
        return f'`"{value}"`'
    if value is None:
        return "none"
    if isinstance(value, tuple) and not value:
        return "`[]`"
    return f"`{value}`"


def default_of(kind: type, name: str, key: Key, required: tuple[str, ...]) -> str:
    if key.default:
        return key.default
    if name in required:
        return "required"
    field = next(f for f in dataclasses.fields(kind) if f.name == _FIELD_OF.get(name, name))
    if field.default is not dataclasses.MISSING:
        return _shown(field.default)
    if field.default_factory is not dataclasses.MISSING:
        return _shown(field.default_factory())
    return "required"


def table(name: str) -> str:
    kind, keys, required = SECTIONS[name]
    rows = ["| key | default | values | meaning | CLB API |", "|---|---|---|---|---|"]
    for key_name, key in keys.items():
        api = f"`{key.api}`" if key.api else ""
        rows.append(f"| `{key_name}` | {default_of(kind, key_name, key, required)} | "
                    f"{values_of(key.check)} | {key.doc} | {api} |")
    return "\n".join(rows) + "\n"


def render(text: str) -> str:
    """``text`` with every marked block filled from the declarations."""
    def fill(match: re.Match[str]) -> str:
        return match.group(1) + table(match["name"]) + match.group(4)
    return _BLOCK.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    path = Path(argv[0]) if argv else DOC
    text = path.read_text()
    new = render(text)
    if new != text:
        path.write_text(new)
        print(f"{path}: the key tables rewritten")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
