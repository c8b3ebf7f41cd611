"""Web-function templates for the tests, with the one change docs/CONFIG.md documents.

The templates in tests/functions/web* are written as Tencent's are: an ``scf_bootstrap`` that
runs ``/var/lang/python3/bin/python3 ...`` and an app listening on 0.0.0.0:9000. This machine
has no /var/lang, so ``template`` copies one into a test's folder and replaces that path with
this interpreter's (the documented one-line change); ``port_from_env`` is the second change
the no-namespace mode needs (listen on $PORT).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from tests.configs import FUNCTIONS

SCF_PYTHON = "/var/lang/python3/bin/python3"


def template(name: str, folder: Path) -> Path:
    """tests/functions/``name`` copied under ``folder``, its interpreter path made ours."""
    code = folder / name
    shutil.copytree(FUNCTIONS / name, code)
    bootstrap = code / "scf_bootstrap"
    text = bootstrap.read_text()
    assert SCF_PYTHON in text, f"{name}: not a template in Tencent's shape"
    bootstrap.write_text(text.replace(SCF_PYTHON, sys.executable))
    return code


def port_from_env(code: Path) -> None:
    """Make the Flask template listen on $PORT (the mode without network namespaces)."""
    app = code / "app.py"
    text = app.read_text()
    assert "port=9000" in text
    app.write_text(text.replace("port=9000", 'port=int(os.environ["PORT"])'))


def _toml(value: object) -> str:
    if isinstance(value, dict):  # an inline table (JSON's objects are not TOML)
        return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def web_function(name: str, code: Path, **settings: object) -> str:
    """A ``[[function]]`` of type HTTP running ``code``."""
    extra = "".join(f"{key} = {_toml(value)}\n" for key, value in settings.items())
    return (f'\n[[function]]\nname = "{name}"\ntype = "HTTP"\n'
            f"code = {json.dumps(str(code))}\n{extra}")
