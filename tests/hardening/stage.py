"""Setting the stage for the hardening tests: configs for the real proxy in front of CVM
upstreams, and the checks that the proxy stayed healthy (no unhandled exception logged)."""

from __future__ import annotations

import re

from tests import configs
from tests.proxyproc import ProxyProcess

PARSERS = ["httptools", "h11"]

#: what an error log says when something escaped the proxy's error handling
_UNHANDLED = re.compile(r"Traceback|internal error|Exception in callback|never retrieved|"
                        r"Unhandled|exception=")


def cvm_rule(domain: str, url: str, address: str) -> str:
    return f"""
  [[listener.rule]]
  domain = "{domain}"
  url = "{url}"
  health_check = {{ enabled = false }}
  targets = [{{ type = "CVM", address = "{address}" }}]
"""


def listener(name: str, rules: str, **knobs: object) -> str:
    return configs.listener(name, **knobs) + rules + "\n"


def unhandled(proc: ProxyProcess, since: int = 0) -> list[str]:
    """Error-log lines (from line ``since`` on) that show an exception nobody handled."""
    return [line for line in proc.stderr.splitlines()[since:] if _UNHANDLED.search(line)]


def log_mark(proc: ProxyProcess) -> int:
    return len(proc.stderr.splitlines())


def assert_alive(proc: ProxyProcess, since: int = 0) -> None:
    assert proc.proc is not None and proc.proc.poll() is None, proc.stderr[-3000:]
    bad = unhandled(proc, since)
    assert not bad, "\n".join(bad[:20])
