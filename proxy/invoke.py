"""``clbscf-proxy invoke NAMESPACE/FUNCTION``: one invocation of a local function, for debugging.

Owns the ``invoke`` subcommand: its arguments, finding the function, reading the event, running
it once in a real instance (scf/local.py: a worker process with the function's limits, exactly
as the proxy runs it) and printing the outcome. Must not know: listeners, routing, HTTP serving,
or how instances work inside.

Strategy: everything that can be wrong with the command line, the config or the event is found
before an instance starts and is a ConfigError (exit 2); once the function runs, the outcome is
printed: the return value (stdout, exit 0), or the failure (exit 1). What the handler prints is
logged by the runtime on ``proxy.function``, which goes to stderr like every other log line, so
stdout holds nothing but JSON and can be piped into ``jq``.

Decisions (ours; SPEC §10 only says "runs a local function once and prints the result"):
- The function is ``NAMESPACE/NAME`` or ``NAME`` (namespace ``default``). It is looked up in
  ``--config`` (validated as for serving, so remote targets in it need their credentials), else
  in the embedded default (which defines ``default/hello``, the Hello CLB function); or it is
  defined ad hoc with ``--code DIR`` (``--handler``, ``--timeout``, ``--memory`` apply then
  only), validated by the config loader's own checks.
- The event: ``--event FILE`` reads FILE; ``--event -`` reads stdin (empty is an error).
  Without ``--event``, stdin is read when it is not a terminal, and when it is a terminal or
  empty (``< /dev/null``), the event is the one the proxy builds for ``GET /`` with
  ``Host: localhost`` through the embedded default's rule, made by scf/event.py itself. An event
  must be a JSON object (UTF-8, a leading BOM allowed) of at most 6 MB, checked with the
  runtime's own parser.
- Output: the return value as indented UTF-8 JSON on stdout; a summary line (request id,
  duration, cold start) on stderr. A handler that raised prints SCF's error object on stdout
  (so a script sees either the result or the error, and the exit status says which); a timeout,
  crash, memory limit or unusable result has no object, and is one line on stderr.
- The region in the instance's environment is ``[scf] region`` if the config has one, else the
  local runtime's default.
"""

from __future__ import annotations

import argparse
import codecs
import io
import sys
import time
import uuid
from pathlib import Path
from typing import IO, Any

import orjson
import uvloop

from .config import Config, Function, embedded_default, load_config, location_id, parse_config
from .errors import ConfigError, FunctionError, ProxyError
from .headers import TrustedProxies, forwarded_headers
from .logs import setup_logging
from .messages import Invocation, Request, Route
from .scf.event import MAX_EVENT_BYTES, encode_event
from .scf.local import LocalFunctions

PROG = "clbscf-proxy invoke"
EXIT_OK, EXIT_FUNCTION_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_NAMESPACE = "default"
#: the ad hoc function's options -> its [[function]] keys (only those given are passed, so the
#: config's defaults and range checks apply to the rest)
AD_HOC_KEYS = {"handler": "handler", "timeout": "timeout", "memory": "memory"}
#: what ConfigError messages about an ad hoc function are prefixed with
AD_HOC_SOURCE = "--code function"
#: the default event is the embedded default's request for its own rule (config.py)
DEFAULT_LISTENER, DEFAULT_DOMAIN, DEFAULT_URL = "default", "localhost", "/"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run one invocation of a local function in a real instance and print its "
                    "return value (JSON) on stdout; logs and the handler's output go to stderr. "
                    "Exit status: 0 success, 1 the function failed, 2 usage, config or event "
                    "error.")
    parser.add_argument("function", metavar="NAMESPACE/FUNCTION",
                        help="the function (namespace 'default' when only FUNCTION is given)")
    parser.add_argument("--event", metavar="FILE|-",
                        help="the event (a JSON object); '-' reads stdin; when omitted, stdin "
                             "if it is not a terminal, else (or if empty) the CLB event of "
                             "GET / for Host localhost")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-c", "--config", type=Path, metavar="FILE",
                       help="look the function up in this config's [[function]] list "
                            "(default: the embedded default, which defines default/hello)")
    where.add_argument("--code", type=Path, metavar="DIR",
                       help="define the function ad hoc from the code in DIR instead")
    parser.add_argument("--handler", metavar="FILE.FUNCTION",
                        help="with --code: the handler (default index.main_handler)")
    parser.add_argument("--timeout", type=int, metavar="SECONDS",
                        help="with --code: the function's timeout (default 3)")
    parser.add_argument("--memory", type=int, metavar="MB",
                        help="with --code: the instance's memory limit (default 128)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        default="info", help="stderr verbosity (info shows handler output)")
    return parser


# --- finding the function -------------------------------------------------------------------


def split_name(text: str) -> tuple[str, str]:
    """``"ns/name"`` -> (ns, name); ``"name"`` -> ("default", name)."""
    namespace, slash, name = text.rpartition("/")
    if not name or (slash and not namespace):
        raise ConfigError(f"function: must be NAMESPACE/FUNCTION or FUNCTION, got {text!r}")
    return (namespace or DEFAULT_NAMESPACE), name


def ad_hoc_function(namespace: str, name: str, args: argparse.Namespace) -> Function:
    """The function ``--code`` and its companions describe, checked as a [[function]] is."""
    table: dict[str, Any] = {"namespace": namespace, "name": name, "code": str(args.code)}
    table.update({key: getattr(args, option) for option, key in AD_HOC_KEYS.items()
                  if getattr(args, option) is not None})
    config = parse_config({"function": [table]}, Path(AD_HOC_SOURCE), Path.cwd())
    return config.functions[0]


def find_function(args: argparse.Namespace) -> tuple[Function, Config | None]:
    """The function to run and the config it came from (None when defined ad hoc)."""
    namespace, name = split_name(args.function)
    if args.code is not None:
        return ad_hoc_function(namespace, name, args), None
    given = [f"--{option}" for option in AD_HOC_KEYS if getattr(args, option) is not None]
    if given:
        raise ConfigError(f"{', '.join(given)}: only with --code (a config's function has "
                          "its own settings)")
    config = load_config(args.config) if args.config is not None else embedded_default("", 0)
    function = config.function(namespace, name)
    if function is None:
        where = config.source.name if config.source is not None else "the embedded default"
        known = ", ".join(fn.key for fn in config.functions) or "none"
        raise ConfigError(f"function {namespace}/{name} is not defined in {where} "
                          f"(functions: {known}); use --code DIR to run code directly")
    if function.type == "HTTP":
        raise ConfigError(f"function {function.key} is a web function (type = \"HTTP\"): it "
                          "takes HTTP requests, not events; send it one through a listener")
    return function, config


# --- the event ------------------------------------------------------------------------------


def default_event(request_id: str, now: float | None = None) -> bytes:
    """The CLB event the proxy would send for ``GET /`` with ``Host: localhost`` through the
    embedded default's rule (built by scf/event.py, so it always has the current fields)."""
    request = Request(method="GET", path=DEFAULT_URL, query="",
                      headers=(("Host", DEFAULT_DOMAIN), ("User-Agent", PROG)), body=b"",
                      http_version="1.1", client_ip="127.0.0.1", client_port=0, scheme="http",
                      listener=DEFAULT_LISTENER,
                      received_at=time.time() if now is None else now)
    route = Route(DEFAULT_LISTENER, DEFAULT_DOMAIN, DEFAULT_URL,
                  location_id(DEFAULT_LISTENER, DEFAULT_DOMAIN, DEFAULT_URL), "")
    return encode_event(request, forwarded_headers(request, TrustedProxies(())), route,
                        request_id)


def check_event(raw: bytes, where: str) -> bytes:
    """``raw`` as the runtime will get it: a JSON object (orjson, the runtime's own parser)."""
    raw = raw.removeprefix(codecs.BOM_UTF8)
    if len(raw) > MAX_EVENT_BYTES:  # nothing would run: an event error, not a function's
        raise ConfigError(f"{where}: the event is {len(raw)} bytes, over SCF's limit of "
                          f"{MAX_EVENT_BYTES}")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{where}: the event is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: the event must be a JSON object, got "
                          f"{type(value).__name__}")
    return raw


def read_event(source: str | None, stdin: IO[bytes], interactive: bool,
               request_id: str) -> bytes:
    """The event bytes from ``--event`` (FILE or ``-``), or stdin, or the default event."""
    if source == "-" or (source is None and not interactive):
        raw = stdin.read()
        if not raw.strip():
            if source == "-":
                raise ConfigError("--event -: stdin is empty, expected a JSON object")
            return default_event(request_id)
        return check_event(raw, "stdin")
    if source is None:
        return default_event(request_id)
    try:
        raw = Path(source).read_bytes()
    except OSError as exc:
        raise ConfigError(f"--event {source}: cannot read it: {exc.strerror}") from None
    return check_event(raw, source)


# --- running it -----------------------------------------------------------------------------


async def invoke_once(function: Function, event: bytes, request_id: str,
                      region: str | None = None) -> Invocation:
    """One invocation of ``function`` in a fresh instance, which is gone when this returns."""
    # without a region, the local runtime's default one
    functions = LocalFunctions([function], region) if region else LocalFunctions([function])
    try:
        local = functions.get(function.namespace, function.name)
        assert local is not None  # it was built from this very function
        return await local.invoke(event, request_id)
    finally:
        await functions.close()


def _print_json(value: object, stream: IO[bytes]) -> None:
    stream.write(orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
                 + b"\n")
    stream.flush()


def report(outcome: Invocation | ProxyError, key: str, stdout: IO[bytes],
           stderr: IO[str]) -> int:
    """Print an invocation's outcome; the exit status."""
    if isinstance(outcome, Invocation):
        _print_json(orjson.loads(outcome.result), stdout)
        cold = ", cold start" if outcome.cold_start else ""
        print(f"{PROG}: {key} request_id={outcome.request_id} "
              f"{outcome.duration_ms:.1f} ms{cold}", file=stderr)
        return EXIT_OK
    if isinstance(outcome, FunctionError):
        _print_json(outcome.error, stdout)
    detail = f": {outcome.log_detail}" if outcome.log_detail else ""
    print(f"{PROG}: {key} failed ({type(outcome).__name__}, the proxy would answer "
          f"{outcome.status_hint}): {outcome}{detail}", file=stderr)
    return EXIT_FUNCTION_FAILED


async def _run(function: Function, event: bytes, request_id: str,
               region: str | None) -> Invocation | ProxyError:
    try:
        return await invoke_once(function, event, request_id, region)
    except ProxyError as exc:
        return exc


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    request_id = str(uuid.uuid4())
    try:
        function, config = find_function(args)
        # no stdin at all (a closed descriptor) counts as a terminal: nothing to read
        interactive = sys.stdin is None or sys.stdin.isatty()
        stdin = sys.stdin.buffer if sys.stdin is not None else io.BytesIO()
        event = read_event(args.event, stdin, interactive, request_id)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    region = config.scf.region if config is not None and config.scf is not None else None
    try:
        outcome = uvloop.run(_run(function, event, request_id, region))
    except KeyboardInterrupt:
        return 130  # the shell's convention for SIGINT
    return report(outcome, function.key, sys.stdout.buffer, sys.stderr)
