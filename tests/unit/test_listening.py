"""Binding a listener's address (listening.py): what is bound, and which failures are errors."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from proxy import listening
from proxy.config import Listener
from proxy.errors import ConfigError


def _listener(host: str, port: int) -> Listener:
    return Listener(name="web", protocol="HTTP", port=port, host=host)


def test_a_host_gets_one_inheritable_listening_socket() -> None:
    [sock] = listening.bind_listener(_listener("127.0.0.1", 0))
    try:
        assert sock.getsockname()[0] == "127.0.0.1" and sock.getsockname()[1] > 0
        assert sock.get_inheritable()
        with socket.create_connection(sock.getsockname()[:2], timeout=2):
            pass  # it listens
    finally:
        sock.close()


def test_an_address_in_use_is_a_config_error_naming_the_listener() -> None:
    [taken] = listening.bind_listener(_listener("127.0.0.1", 0))
    try:
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=r"listener 'web': cannot listen on 127.0.0.1:"):
            listening.bind_listener(_listener("127.0.0.1", port))
    finally:
        taken.close()


def test_all_addresses_without_ipv6_still_listen_on_ipv4(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    real = listening._listening_socket
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()

    def no_ipv6(family: int, *args: Any) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(97, "Address family not supported by protocol")
        return real(family, *args)
    monkeypatch.setattr(listening, "_listening_socket", no_ipv6)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::", port, 0, 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("0.0.0.0", port))])
    sockets = listening.bind_listener(_listener("", port))
    try:
        assert [s.family for s in sockets] == [socket.AF_INET]
    finally:
        for s in sockets:
            s.close()


def test_all_addresses_without_ipv4_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(family: int, *args: Any) -> socket.socket:
        raise OSError(13, "Permission denied")
    monkeypatch.setattr(listening, "_listening_socket", refuse)
    with pytest.raises(ConfigError, match="Permission denied"):
        listening.bind_listener(_listener("", 80))
