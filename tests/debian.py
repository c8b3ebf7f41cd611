"""Programs the tests run that come from Debian packages (etcd, Chromium, ab), installed on
first use, so ``make test`` needs nothing installed by hand.

``ensure(programs, packages, why)`` finds each program (PATH, then /usr/bin and
/usr/local/bin) and, when one is missing, installs the packages with apt-get, running
``apt-get update`` first if the first attempt fails (a fresh machine has no package lists).
CI runs as root; without root and without the programs the error says what to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

_APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
_PLACES = ("/usr/bin", "/usr/local/bin")
_lock = threading.Lock()  # one apt-get at a time (tests may ask from threads)


def which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in _PLACES:
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def ensure(programs: tuple[str, ...], packages: tuple[str, ...], why: str) -> list[str]:
    """The paths of ``programs``, installing ``packages`` first when one is missing."""
    with _lock:
        found = [which(p) for p in programs]
        if all(found):
            return [str(p) for p in found]
        wanted = " ".join(packages)
        if os.geteuid() != 0:
            raise RuntimeError(f"{why} needs {', '.join(programs)}: apt-get install {wanted} "
                               "(make test installs it itself when run as root)")
        argv = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
        if subprocess.run(argv, capture_output=True, env=_APT_ENV).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=_APT_ENV)
            done = subprocess.run(argv, capture_output=True, text=True, env=_APT_ENV)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()[-600:]}")
        found = [which(p) for p in programs]
        if not all(found):
            raise RuntimeError(f"{wanted} installed, but {', '.join(programs)} not found")
        return [str(p) for p in found]
