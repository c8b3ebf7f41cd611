"""The one-way data flow of docs/ARCHITECTURE.md, checked by reading every module's imports.

listener -> connection -> router -> backend -> writer; a module may import its own layer, the
layers after it, and the leaves. Nothing imports cli, server or connection but the process
shells (cli, server, invoke, and supervisor/worker/adminserver, which run servers).
"""

from __future__ import annotations

import ast
from pathlib import Path

PROXY = Path(__file__).resolve().parents[2] / "proxy"

LEAVES = {"messages", "errors", "config", "headers", "streams", "_native", "logs", "builtin",
          "metrics", "vocabulary", "recording", "deadlines", "handover",
          "_speedups", "__init__", "customconfig", "writeback", "traffic", "configdoc"}
# layer number per top-level module or package name; higher = later in the flow
LAYERS = {
    "cli": 0, "invoke": 0, "server": 0, "tls": 0, "admin": 0, "clbapi": 0, "sigv1": 0,
    "supervisor": 0, "worker": 0, "control": 0, "adminserver": 0, "store": 0,
    "statuspage": 0,
    "connection": 1, "http1": 1, "http2": 1, "listening": 1,
    "router": 2, "rules": 2, "balancer": 2, "sessions": 2,
    "scf": 3, "backends": 3,
    "writer": 4,
}
NEVER_IMPORTED = {"cli", "server", "connection"}
SHELLS = {"cli", "server", "invoke", "supervisor", "worker", "adminserver"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PROXY).with_suffix("")
    return ".".join(rel.parts)


def _imports(path: Path) -> list[str]:
    """The proxy modules ``path`` imports, as dotted names relative to the package."""
    tree = ast.parse(path.read_text())
    package = _module_name(path).split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                if node.module:
                    found.append(target)
                else:  # "from . import x": x may be a module or a name in the package
                    for alias in node.names:
                        dotted = f"{target}.{alias.name}".strip(".")
                        as_path = PROXY.joinpath(*dotted.split("."))
                        if as_path.with_suffix(".py").exists() or as_path.is_dir():
                            found.append(dotted)
            elif node.module and node.module.startswith("proxy"):
                found.append(node.module.removeprefix("proxy").lstrip("."))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("proxy."):
                    found.append(alias.name.removeprefix("proxy."))
    return [f for f in found if f]


def _layer(dotted: str) -> int | None:
    top = dotted.split(".")[0]
    if top in LEAVES:
        return None
    return LAYERS[top]


def test_every_module_has_a_layer() -> None:
    for path in PROXY.rglob("*.py"):
        top = _module_name(path).split(".")[0]
        assert top in LEAVES or top in LAYERS, f"{path}: add it to a layer in this test"


def test_imports_flow_one_way() -> None:
    problems = []
    for path in PROXY.rglob("*.py"):
        name = _module_name(path)
        own = _layer(name)
        for imported in _imports(path):
            top = imported.split(".")[0]
            if top in NEVER_IMPORTED and name.split(".")[0] not in SHELLS:
                problems.append(f"{name} imports {imported}")
                continue
            target = _layer(imported)
            if own is None and target is not None:
                problems.append(f"leaf {name} imports {imported}")
            elif own is not None and target is not None and target < own:
                problems.append(f"{name} (layer {own}) imports {imported} (layer {target})")
    assert not problems, "\n".join(problems)


def test_the_checker_sees_relative_imports() -> None:
    # A guard that the test above can fail: router imports rules and writer.
    router = _imports(PROXY / "router.py")
    assert "rules" in router and "writer" in router
