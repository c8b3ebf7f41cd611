"""What a run needs on the machine, installed when missing: nginx, wrk, h2load, trustme, uvicorn;
py-spy for the profiles.

Strategy: a table of tools -> (how to tell it is there, how to install it). System tools come
from Debian's packages (``apt-get install``; ``apt-get update`` once first if that fails, since a
fresh machine has no package lists); Python packages go into the interpreter running the
benchmark (the project's virtualenv), through its own pip. Never touches a tool's system
configuration. Knows nothing of the scenarios.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path


class InstallError(Exception):
    """A tool the run needs could not be installed."""


def _apt(*packages: str) -> Callable[[], None]:
    def install() -> None:
        argv = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        if subprocess.run(argv, capture_output=True, env=env).returncode == 0:
            return
        subprocess.run(["apt-get", "update"], capture_output=True, env=env)
        done = subprocess.run(argv, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise InstallError(f"{' '.join(argv)} failed: {done.stderr.strip()[-400:]}")
    return install


def _pip(package: str) -> Callable[[], None]:
    def install() -> None:
        argv = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                package]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise InstallError(f"{' '.join(argv)} failed: {done.stderr.strip()[-400:]}")
    return install


def _program(name: str) -> Callable[[], bool]:
    return lambda: shutil.which(name) is not None


def _module(name: str) -> Callable[[], bool]:
    return lambda: importlib.util.find_spec(name) is not None


def _py_spy() -> str | None:
    """py-spy's program: pip puts it next to this interpreter, which may not be on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def py_spy() -> str:
    found = _py_spy()
    if found is None:
        raise InstallError("py-spy is not installed (pip install py-spy)")
    return found


#: tool -> (present?, install); nginx-light is Debian's small build (a transitional name for
#: "nginx" on recent releases), plain "nginx" where it is gone
TOOLS: dict[str, tuple[Callable[[], bool], Callable[[], None]]] = {
    "nginx": (_program("nginx"), _apt("nginx-light")),
    "wrk": (_program("wrk"), _apt("wrk")),
    # h2load: nghttp2's HTTP/2 load generator (the h2 scenario and tests/integration/test_http2)
    "h2load": (_program("h2load"), _apt("nghttp2-client")),
    "uvicorn": (_module("uvicorn"), _pip("uvicorn")),
    "trustme": (_module("trustme"), _pip("trustme")),
    "py-spy": (lambda: _py_spy() is not None, _pip("py-spy")),
}
#: what run.py needs (profile.py needs these and py-spy)
RUN_TOOLS = ("nginx", "wrk", "h2load", "uvicorn", "trustme")
_FALLBACKS: dict[str, Callable[[], None]] = {"nginx": _apt("nginx")}


def ensure(names: list[str] | None = None, log: Callable[[str], None] = print) -> dict[str, str]:
    """Install each missing tool; returns tool -> "present" | "installed" | "error: ...".

    A failure is reported, not raised: scenarios that need that tool then fail soft.
    """
    status: dict[str, str] = {}
    for name in names or list(TOOLS):
        present, install = TOOLS[name]
        if present():
            status[name] = "present"
            continue
        log(f"installing {name} ...")
        try:
            try:
                install()
            except InstallError:
                fallback = _FALLBACKS.get(name)
                if fallback is None:
                    raise
                fallback()
            importlib.invalidate_caches()
            status[name] = "installed" if present() else "error: installed but not found"
        except (InstallError, OSError) as exc:
            status[name] = f"error: {exc}"
        log(f"  {name}: {status[name]}")
    return status


def versions() -> dict[str, str]:
    """The versions of the tools in this run, for the JSON file."""
    def first_line(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "missing"
        text = (done.stdout + done.stderr).strip()
        return text.splitlines()[0] if text else "unknown"

    found = {"nginx": first_line(["nginx", "-v"]), "wrk": first_line(["wrk", "-v"]),
             "h2load": first_line(["h2load", "--version"]),
             "python": sys.version.split()[0]}
    try:
        import uvicorn

        found["uvicorn"] = uvicorn.__version__
    except ImportError:
        found["uvicorn"] = "missing"
    return found
