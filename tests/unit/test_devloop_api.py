"""The pure parts of issue 16 items 4 and 5: the --scf-api and --debug values, which
functions a change touches, the debugged function's config, and the SCF error object of each
failure the local SCF API reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import Config, Function
from proxy.errors import (ConfigError, FunctionCrashed, FunctionError, FunctionTimeout,
                          Overloaded, PayloadTooLarge)
from proxy.scf.api import failure, parse_scf_api
from proxy.scf.devloop import (DEBUG_TIMEOUT, DebugTarget, changed_functions, debug_config,
                               parse_debug, watched_directories)


@pytest.mark.parametrize(("text", "expected"), [
    (":9001", ("127.0.0.1", 9001)), ("9001", ("127.0.0.1", 9001)),
    ("0.0.0.0:9001", ("0.0.0.0", 9001)), ("[::1]:0", ("::1", 0)),
])
def test_scf_api_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_scf_api(text) == expected


@pytest.mark.parametrize("text", ["", "x", "1.2.3.4:70000", "host:port"])
def test_bad_scf_api_addresses_name_the_flag(text: str) -> None:
    with pytest.raises(ConfigError, match="--scf-api: must be"):
        parse_scf_api(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("ns/fn", DebugTarget("ns", "fn", "127.0.0.1", 5678)),
    ("fn", DebugTarget("default", "fn", "127.0.0.1", 5678)),
    ("ns/fn:5679", DebugTarget("ns", "fn", "127.0.0.1", 5679)),
    ("ns/fn:0.0.0.0:5679", DebugTarget("ns", "fn", "0.0.0.0", 5679)),
    ("ns/fn:[::1]:5679", DebugTarget("ns", "fn", "::1", 5679)),
])
def test_debug_values(text: str, expected: DebugTarget) -> None:
    assert parse_debug(text) == expected


@pytest.mark.parametrize("text", ["", "ns/", "a/b/c", "ns/fn:port", "ns/fn:1.2.3.4:99999"])
def test_bad_debug_values(text: str) -> None:
    with pytest.raises(ConfigError, match="--debug: must be"):
        parse_debug(text)


def _fn(name: str, code: str, **kw: object) -> Function:
    return Function(namespace="default", name=name, handler="index.main_handler",
                    code=Path(code), **kw)  # type: ignore[arg-type]


def test_debug_config_lifts_the_timeouts_of_one_instance() -> None:
    config = Config(functions=(_fn("a", "/c/a", timeout=3, concurrency=8), _fn("b", "/c/b")))
    debugged = debug_config(config, parse_debug("default/a:127.0.0.1:6000"))
    a, b = debugged.functions
    assert (a.concurrency, a.min_instances, a.timeout) == (1, 1, DEBUG_TIMEOUT)
    assert a.queue_timeout == a.idle_timeout == DEBUG_TIMEOUT
    assert ("CLBSCF_DEBUGPY", "127.0.0.1:6000") in a.environment
    assert b == config.functions[1]
    with pytest.raises(ConfigError, match="default/zz is not a local function"):
        debug_config(config, parse_debug("zz"))


def test_a_change_recycles_the_functions_of_its_directory() -> None:
    config = Config(functions=(_fn("a", "/c/a"), _fn("a2", "/c/a"), _fn("b", "/c/b")))
    dirs = watched_directories(config)
    assert changed_functions(dirs, {"/c/a/index.py"}) == {("default", "a"), ("default", "a2")}
    assert changed_functions(dirs, {"/c/b/pkg/mod.py", "/c/ab/x.py"}) == {("default", "b")}
    assert changed_functions(dirs, {"/elsewhere/x.py"}) == set()


@pytest.mark.parametrize(("exc", "status"), [
    (FunctionTimeout("t"), 433), (FunctionCrashed("memory limit exceeded"), 434),
    (FunctionCrashed("function instance crashed"), 439), (PayloadTooLarge(), 406),
    (Overloaded("busy"), 432),
])
def test_each_failure_has_its_scf_status(exc: Exception, status: int) -> None:
    error = failure(exc, "rid")  # type: ignore[arg-type]
    assert error["statusCode"] == status and error["requestId"] == "rid"


def test_a_handler_error_keeps_its_own_error_object() -> None:
    raised = FunctionError("x", error={"errorCode": -1, "errorMessage": "boom",
                                       "statusCode": 430, "requestId": "r1"})
    assert failure(raised, "other") == {"errorCode": -1, "errorMessage": "boom",
                                        "statusCode": 430, "requestId": "r1"}


def _signed(body: bytes, key: str = "k3y", stamp: int = 1_700_000_000) -> dict[str, str]:
    from proxy.scf import tc3

    headers = tc3.sign("AKIDx", key, "scf", "127.0.0.1:9", "Invoke", "2018-04-16", "", stamp,
                       body)
    return {k.lower(): v for k, v in headers.items()}


def test_tc3_verify_accepts_what_sign_makes_and_names_each_failure() -> None:
    from proxy.scf import tc3

    keys = {"AKIDx": "k3y"}.get
    headers = _signed(b'{"a":1}')
    assert tc3.verify("POST", headers.get, b'{"a":1}', keys, 1_700_000_100) == "AKIDx"
    failures = [
        (headers, b'{"a":2}', 1_700_000_100, "AuthFailure.SignatureFailure"),  # body changed
        (_signed(b'{"a":1}', key="other"), b'{"a":1}', 1_700_000_100,
         "AuthFailure.SignatureFailure"),
        (headers, b'{"a":1}', 1_700_000_400, "AuthFailure.SignatureExpire"),
        ({**headers, "authorization": "TC3-HMAC-SHA256 nonsense"}, b'{"a":1}', 1_700_000_100,
         "AuthFailure.InvalidAuthorization"),
        ({**headers, "authorization": headers["authorization"].replace("AKIDx", "AKIDy")},
         b'{"a":1}', 1_700_000_100, "AuthFailure.SecretIdNotFound"),
    ]
    for given, body, now, code in failures:
        with pytest.raises(tc3.SignatureError) as info:
            tc3.verify("POST", given.get, body, keys, now)
        assert info.value.code == code
