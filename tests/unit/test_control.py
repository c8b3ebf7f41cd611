"""The supervisor <-> worker control channel: a worker setup round-trips as JSON, nothing else
decodes as one, a worker reads the same config from the same command line and document, and
requests over a real socket pair are answered in order."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest
import uvloop

from proxy import control
from proxy.cli import config_of
from proxy.config import load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "config.example.toml"


def test_a_worker_setup_round_trips() -> None:
    setup = control.WorkerSetup(["--config", str(EXAMPLE), "--workers", "2"],
                                EXAMPLE.read_text(), {"web": [7, 8]}, 1, scf_api_fd=9)
    assert control.WorkerSetup.decode(setup.encode()) == setup
    assert control.decode_document(control.encode_document("a = 1\n")) == "a = 1\n"
    assert control.decode_document(control.encode_document(None)) is None


@pytest.mark.parametrize("foreign", [b"\x80\x04\x95", b"[]", b'{"argv": "x"}',
                                     b'{"argv": [], "document": 1, "sockets": {}, "index": 0}',
                                     b'{"argv": [1], "document": null, "sockets": {}, '
                                     b'"index": 0}'])
def test_anything_but_a_worker_setup_is_refused(foreign: bytes) -> None:
    with pytest.raises(ValueError, match="not a worker setup"):
        control.WorkerSetup.decode(foreign)


def test_a_worker_reads_the_config_the_supervisor_serves() -> None:
    # the file's document, read with the supervisor's command line, is the file's config
    args, config = config_of(["--config", str(EXAMPLE), "--workers", "2", "--http", "h11"],
                             EXAMPLE.read_text())
    assert config == load_config(EXAMPLE) and args.http == "h11" and args.workers == 2
    # a document that differs from the file is what the worker serves (the table's, not
    # the disk's): the store's revision or a change written back moments ago
    changed = EXAMPLE.read_text().replace('function = "hello", weight = 10 }',
                                          'function = "hello", weight = 7 }', 1)
    [target] = config_of(["--config", str(EXAMPLE)], changed)[1].listeners[0].rules[0].targets
    assert target.weight == 7
    # no document: the command line alone (the embedded default, --listen)
    _, default = config_of(["--listen", "127.0.0.1:0"], None)
    assert [l.port for l in default.listeners] == [0]


def test_requests_are_answered_in_order_until_eof() -> None:
    async def main() -> None:
        ours, theirs = socket.socketpair()
        supervisor = await control.Channel.open(ours)
        worker = await control.Channel.open(theirs)

        async def echo(body: bytes) -> tuple[dict[str, Any], bytes]:
            return {"ok": True}, body.upper()

        async def fail(body: bytes) -> tuple[dict[str, Any], bytes]:
            return {"ok": False, "error": "refused"}, b""

        serving = asyncio.ensure_future(worker.serve({"echo": echo, "fail": fail}))
        answers = await asyncio.gather(*(supervisor.request("echo", b"m%d" % i)
                                         for i in range(5)))
        assert [body for _, body in answers] == [b"M%d" % i for i in range(5)]
        assert (await supervisor.request("fail"))[0] == {"ok": False, "error": "refused"}
        header, _ = await supervisor.request("nope")
        assert header["ok"] is False and "unknown op" in header["error"]
        supervisor.close()
        await asyncio.wait_for(serving, 5)  # EOF ends serve()
    uvloop.run(main())
