"""The supervisor <-> worker control channel: config values round-trip, nothing else unpickles,
and requests over a real socket pair are answered in order."""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
from pathlib import Path
from typing import Any

import pytest
import uvloop

from proxy import control
from proxy.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def test_a_config_and_a_worker_setup_round_trip() -> None:
    config = load_config(ROOT / "deploy" / "config.example.toml")
    assert control.loads(control.dumps(config)) == config
    setup = control.WorkerSetup(config, "h11", 5.0, False, "info", {"web": [7, 8]}, 1)
    assert control.loads(control.dumps(setup)) == setup


@pytest.mark.parametrize("foreign", [os.system, Exception("x"), socket.socket])
def test_anything_but_config_values_is_refused(foreign: Any) -> None:
    with pytest.raises(pickle.UnpicklingError, match="not a config value"):
        control.loads(pickle.dumps(foreign))


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
