"""Headless Debian Chromium for the status page's browser test, driven over the DevTools
protocol on a pipe, with no driver library.

``chromium_path()`` finds ``chromium`` and, when it is missing, installs Debian's package
(tests/debian.py), so ``make test`` brings what it needs. A
``Browser`` is one Chromium process started with ``--remote-debugging-pipe``: it reads
commands on its fd 3 and writes answers and events on its fd 4, each a JSON text ended by NUL
(the transport Puppeteer's ``pipe: true`` uses). That is all a test needs here (navigate, run
an expression, take a screenshot): playwright would bring a Node.js driver and its own
browser downloads for the same three calls.

The flags are the ones this machine's notes give for Chromium as root on a closed network
(``--no-sandbox``; no background networking, component updates or sync, which would try to
reach Google and fail), with a fresh ``--user-data-dir`` per browser.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests import debian

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars")
#: argv[1], argv[2] (fds) onto 3 and 4, by way of fds above both, then exec argv[3:]
_ON_3_AND_4 = """import fcntl, os, sys
given = [int(fd) for fd in sys.argv[1:3]]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in given]
for target, fd in zip((3, 4), high):
    os.dup2(fd, target)
for fd in {*given, *high} - {3, 4}:
    os.close(fd)
os.execv(sys.argv[3], sys.argv[3:])
"""


def chromium_path() -> str:
    """Debian's Chromium, installed first (tests/debian.py) when it is missing."""
    [found] = debian.ensure(("chromium",), ("chromium",), "the status page's browser test")
    return found


class BrowserError(RuntimeError):
    pass


class Browser:
    """One headless Chromium with one page; ``with Browser(tmp_path) as b: b.goto(url)``."""

    def __init__(self, profile: Path, timeout: float = 60.0) -> None:
        self.profile = profile
        self.timeout = timeout
        self._ids = 0
        self._answers: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        #: what the page printed: console messages, exceptions, the browser's log entries
        self.console: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.session = ""

    def start(self) -> Browser:
        self.profile.mkdir(parents=True, exist_ok=True)
        self._log = (self.profile / "chromium.log").open("wb")
        commands_read, self._commands = os.pipe()
        self._events, events_write = os.pipe()
        # a small Python trampoline puts our pipe ends on fds 3 and 4, where
        # --remote-debugging-pipe wants them (a shell cannot name fds above 9), then execs
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _ON_3_AND_4, str(commands_read), str(events_write),
             chromium_path(), *FLAGS, f"--user-data-dir={self.profile}",
             "--window-size=1100,900", "--remote-debugging-pipe", "about:blank"],
            pass_fds=(commands_read, events_write), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=self._log)
        os.close(commands_read)
        os.close(events_write)
        threading.Thread(target=self._read, daemon=True).start()
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target,
                                                           "flatten": True})["sessionId"]
        for domain in ("Runtime", "Page", "Log"):
            self.call(f"{domain}.enable", session=True)
        return self

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._events, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        waiting = self._answers.get(message["id"])
                    if waiting is not None:
                        waiting.put(message)
                elif message.get("method") == "Runtime.consoleAPICalled":
                    self.console.append(" ".join(str(a.get("value", a.get("description")))
                                                 for a in message["params"]["args"]))
                elif message.get("method") == "Runtime.exceptionThrown":
                    self.console.append(str(message["params"]["exceptionDetails"]))
                elif message.get("method") == "Log.entryAdded":  # CSP violations, network
                    entry = message["params"]["entry"]
                    self.console.append(f"{entry['level']}: {entry['text']}")

    def call(self, method: str, params: dict[str, Any] | None = None, *,
             session: bool = False) -> dict[str, Any]:
        with self._lock:
            self._ids += 1
            ident = self._ids
            answer: queue.Queue[dict[str, Any]] = queue.Queue()
            self._answers[ident] = answer
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        try:
            os.write(self._commands, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            raise BrowserError(f"chromium is gone: {self.log()}") from None
        try:
            reply = answer.get(timeout=self.timeout)
        except queue.Empty:
            raise BrowserError(f"chromium did not answer {method} in {self.timeout}s: "
                               f"{self.log()}") from None
        finally:
            with self._lock:
                self._answers.pop(ident, None)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    def log(self) -> str:
        """The end of Chromium's own output (its stderr)."""
        return (self.profile / "chromium.log").read_text("utf-8", "replace")[-2000:]

    # -- what a test does ------------------------------------------------------------------

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (a promise is awaited)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True}, session=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        """Open ``url`` and wait until its document has loaded."""
        self.call("Page.navigate", {"url": url}, session=True)
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'")

    def wait_for(self, expression: str, timeout: float | None = None) -> Any:
        """Poll ``expression`` until it is truthy; its value (BrowserError on timeout)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.evaluate(expression)
            except BrowserError:  # the page is between two documents
                last = None
            if last:
                return last
            time.sleep(0.1)
        raise BrowserError(f"waited {timeout or self.timeout}s for {expression}, last "
                           f"{last!r}; console: {self.console}")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", {"format": "png",
                                                    "captureBeyondViewport": True},
                         session=True)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        if self.proc is None:
            return
        try:
            self.call("Browser.close")
        except (BrowserError, OSError):
            pass
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        os.close(self._commands)
        self._log.close()
        self.proc = None

    def __enter__(self) -> Browser:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
