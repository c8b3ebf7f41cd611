"""Issue 9: the wheel built exactly as the Dockerfile builds it, installed into a fresh
virtualenv from those wheels only, starts and serves Hello CLB.

The Dockerfile's build stage runs ``pip wheel --no-cache-dir --wheel-dir /wheels .`` on the
build context and the runtime stage ``pip install --no-index --find-links /wheels
clbscf-proxy``; this test runs the same two commands (with pip's cache allowed, so a second run
does not download the dependencies again) on a copy of the tree filtered by .dockerignore.
"""

from __future__ import annotations

import fnmatch
import http.client
import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.proxyproc import LISTENING

ROOT = Path(__file__).resolve().parents[2]
HELLO = b"<html><body><h1>Hello CLB</h1></body></html>"


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines
            if line.strip() and not line.startswith("#") and not line.startswith("!")]


def _build_context(dest: Path) -> Path:
    """The tree as `docker build` sees it: .dockerignore patterns left out."""
    patterns = _dockerignore()

    def ignore(directory: str, names: list[str]) -> set[str]:
        rel = Path(directory).relative_to(ROOT)
        return {n for n in names if any(fnmatch.fnmatch(str(rel / n), p.lstrip("/"))
                                        or fnmatch.fnmatch(n, p) for p in patterns)}
    context = dest / "context"
    shutil.copytree(ROOT, context, ignore=ignore, symlinks=True)
    return context


def test_the_dockerfile_wheel_installs_into_a_fresh_venv_and_serves(tmp_path: Path) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip wheel --no-cache-dir --wheel-dir /wheels ." in dockerfile
    assert "pip install --no-cache-dir --no-index --find-links /wheels clbscf-proxy" in dockerfile
    context = _build_context(tmp_path)
    assert not (context / ".venv").exists() and (context / "native").is_dir()
    wheels = tmp_path / "wheels"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir",
                    str(wheels), "."], cwd=context, env=env, check=True, timeout=600)
    built = list(wheels.glob("clbscf_proxy-*.whl"))
    assert len(built) == 1

    target = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(target)
    python = target / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-index",
                    "--find-links", str(wheels), "clbscf-proxy"], env=env, check=True,
                   timeout=300)
    proxy = target / "bin" / "clbscf-proxy"
    version = subprocess.run([str(proxy), "--version"], capture_output=True, text=True,
                             check=True, timeout=60, cwd=tmp_path).stdout
    assert version.startswith("clbscf-proxy ")
    if not os.environ.get("PROXY_NO_NATIVE") and shutil.which("cc"):
        assert "native: rules" in version, version  # the wheel carries the compiled modules

    # started from the fresh venv, away from the source tree, so nothing is imported from it
    process = subprocess.Popen([str(proxy), "--listen", "127.0.0.1:0", "--no-access-log"],
                               cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        port = 0
        assert process.stderr is not None
        for line in process.stderr:
            match = LISTENING.search(line)
            if match:
                port = int(match.group(3))
            if "clbscf-proxy: ready" in line:
                break
        assert port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, HELLO)
        conn.close()
        process.terminate()
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(autouse=True)
def _no_stray_build_files() -> Iterator[None]:
    """The build happens on a copy: the source tree gets no build/ or egg-info from it."""
    before = {p.name for p in ROOT.iterdir()}
    yield
    assert {p.name for p in ROOT.iterdir()} - before == set()
