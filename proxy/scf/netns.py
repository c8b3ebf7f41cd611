"""Network namespaces for web-function instances: one each, so every instance binds port 9000.

Owns the Linux calls web-function instances need (``unshare``, ``setns``, the ``SIOCSIFFLAGS``
ioctl that brings a namespace's loopback up, and ``prctl(PR_SET_PDEATHSIG)``), through ctypes:
Python 3.11 has neither ``os.unshare`` nor ``os.setns``.

Strategy: the instance's process enters a new network namespace between fork and exec
(``enter_new``, a ``preexec_fn``) and brings its ``lo`` up, so its server listens on
0.0.0.0:9000 (or 127.0.0.1:9000) in a namespace of its own, untouched by the host's ports and
by the other instances. The proxy reaches it without a veth pair, an address plan or a relay
process: a socket belongs to the namespace of the thread that created it, so ``Namespace.socket``
switches the calling thread into the instance's namespace (``setns`` on /proc/PID/ns/net),
creates a TCP socket there and switches back; the socket then connects to 127.0.0.1:9000 *in
that namespace* from the proxy's event loop, and the bytes flow with no copy of ours in between.
Both calls need CAP_SYS_ADMIN (root, or a container that grants it); ``probe`` says once per
process whether the host allows them.

Must not know: HTTP, asyncio, the pool of instances.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import subprocess
from functools import cache

CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = "16sH14x"  # struct ifreq: the name, then ifr_flags (a short) in the union

_libc = ctypes.CDLL(None, use_errno=True)


def _call(name: str, *args: int) -> None:
    if getattr(_libc, name)(*args) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{name}: {os.strerror(errno)}")


def enter_new() -> None:
    """In a child between fork and exec: a network namespace of its own, loopback up (a new
    namespace's ``lo`` is down, so nothing could listen on 127.0.0.1 or 0.0.0.0)."""
    _call("unshare", CLONE_NEWNET)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        ifreq = struct.pack(_IFREQ, b"lo", 0)
        flags = struct.unpack(_IFREQ, fcntl.ioctl(probe, _SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(probe, _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | _IFF_UP))


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child between fork and exec: SIGKILL when the proxy (the forking thread) dies, so
    a proxy killed outright leaves no bootstrap running (what the bootstrap started without
    ``exec`` outlives it still: it is reparented, not signalled)."""
    _call("prctl", _PR_SET_PDEATHSIG, 9)  # SIGKILL


def child_setup(isolated: bool) -> None:
    """The web instance's ``preexec_fn``: its own namespace (when ``isolated``), then
    ``die_with_parent``."""
    if isolated:
        enter_new()
    die_with_parent()


@cache
def probe() -> str:
    """"" when instances can have namespaces of their own here, else why not (asked once)."""
    if os.geteuid() != 0:
        return "not running as root"
    try:
        subprocess.run(["true"], preexec_fn=enter_new, check=True, timeout=10,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot create a network namespace: {exc}"
    return ""


class Namespace:
    """The network namespace of a running process, held open by a file descriptor (so it
    outlives the process until ``close``)."""

    __slots__ = ("fd",)

    def __init__(self, pid: int) -> None:
        self.fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    def socket(self) -> socket.socket:
        """A non-blocking TCP socket that lives in this namespace."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _call("setns", self.fd, CLONE_NEWNET)
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            finally:
                _call("setns", home, CLONE_NEWNET)
        finally:
            os.close(home)
        sock.setblocking(False)
        return sock

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
