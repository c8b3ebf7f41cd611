"""What runs inside a local function instance: one worker process, one invocation at a time.

Owns the SCF Python runtime contract of SPEC §7 and clb-scf-facts.md §3 as seen from inside the
instance: the handler string (``index.main_handler`` = ``main_handler`` in ``index.py``;
``pkg.mod.func`` = ``func`` in ``pkg/mod.py``), the import (once per instance, so module-level
state persists between invocations), the call ``handler(event, context)`` with both as dicts,
SCF's error object for an exception (status 430), the 6 MB result check (SCF 407), and the
address-space limit that enforces ``memory`` (a MemoryError is reported as SCF 434).

Also owns the rest of the contract that the pool applies from outside: the command line
(``worker_argv``), the environment (``instance_environment``) and the fixed ``context`` fields
(``static_context``), so one module says what an instance sees.

Strategy: started by scf/instance.py as ``python -c BOOTSTRAP root fd handler memory`` with the
code directory as working directory, an already clean environment, fd 1 and 2 on pipes the pool
reads (so prints, C extensions and subprocesses all land in the log, never in the protocol) and
``fd`` one end of a socketpair carrying the frames of scf/frames.py. A plain blocking loop: read
an invoke, run it, reply. EOF on the socket means the pool is done with us: exit 0.

Decisions (ours, where SCF is silent or unobservable):
- The memory limit is RLIMIT_AS = this process's own address space just before the handler is
  imported (measured from /proc/self/status: ~17 MB for CPython 3.11 with orjson) + HEADROOM_MB
  + ``memory`` MB, so ``memory = 128`` really lets the handler allocate about 128 MB more. The
  baseline is measured per instance rather than fixed because it varies by Python build; it falls
  back to FALLBACK_BASELINE_MB where /proc is missing. Thread stacks (8 MB each) count too.
- A handler that cannot be imported leaves the instance up: each invocation retries the import
  (a fixed file starts working without a restart) and answers with SCF's error object, status
  437 (HandlerNotFound: no such module or attribute) or 443 (UserCodeError: the import raised).
- A return value orjson cannot serialise is reported as ``not_json`` (the pool makes it a
  BadFunctionResponse, 502 "Analyse scf response failed."). Non-string dict keys are allowed
  (OPT_NON_STR_KEYS), as the json module the SCF runtime uses allows them.
- Each reply carries the process's peak resident memory (``mem_kb``, ru_maxrss: one system call)
  and READY the import's duration (``init_function_ms``), for SCF's Report and Init Report lines
  (scf/instance.py): the peak, not the current size, as SCF's MemUsage is what the instance used.
- SystemExit / KeyboardInterrupt from the handler are not caught: the process exits, which the
  pool reports as a crash (SCF 439, user process exit).
- The environment is an allow-list (INHERITED_ENV) of the proxy's, never the whole of it, so its
  secrets (TENCENTCLOUD_SECRETID, ...) cannot reach a function; then DEFAULT_ENV, the function's
  variables, and SCF's built-ins (SPEC §7) plus USER_CODE_ROOT (clb-scf-facts.md §3.3). No
  SCF_MEMORY_SIZE: SCF documents no such variable; ``context`` has ``memory_limit_in_mb``.
  Only a function with ``role_credentials = true`` gets credentials (``role_credentials``).

Must not know: asyncio, HTTP, the pool's bookkeeping. In the worker it imports no proxy module
but scf/frames.py (config is imported for type checking only), to keep cold starts cheap.
"""

from __future__ import annotations

import importlib
import gc
import io
import os
import re
import resource
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from . import frames

if TYPE_CHECKING:  # the pool passes its config values in; the worker never imports config
    from ..config import Function

#: how scf/local.py starts us: put the proxy's source root first so this module imports even
#: when the package is not installed, then hand over to main() (which removes it again)
BOOTSTRAP = ("import sys; sys.path.insert(0, sys.argv[1]); "
             "from proxy.scf.runtime import main; sys.exit(main(sys.argv[1:]))")
#: address space allowed above the measured baseline besides ``memory``: malloc bookkeeping,
#: the reply's buffers, the frames of a deep traceback
HEADROOM_MB = 16
FALLBACK_BASELINE_MB = 24
#: SCF's error object fields (clb-scf-facts.md §3.4)
USER_EXCEPTION = "user code exception caught"
STATUS_USER_EXCEPTION = 430
STATUS_HANDLER_NOT_FOUND = 437
STATUS_USER_CODE_ERROR = 443

#: variables of the proxy's environment an instance inherits: what an interpreter needs to run,
#: nothing else (the proxy's own secrets, TENCENTCLOUD_SECRETID and the like, stay out)
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "HOME", "TZ", "TMPDIR", "LD_LIBRARY_PATH",
                 "PYTHONHOME", "PYTHONPATH")
#: set in every instance unless the function's own variables say otherwise
DEFAULT_ENV = {
    "PYTHONDONTWRITEBYTECODE": "x",  # as SCF sets it (clb-scf-facts.md §3.3)
    # One malloc arena: each extra arena reserves 64 MB of address space, so a handler with a
    # few threads would hit RLIMIT_AS with almost nothing allocated.
    "MALLOC_ARENA_MAX": "1",
}
VERSION = "$LATEST"
#: ``role_credentials``: where the proxy's environment holds the pair (and token) a function
#: gets, in order: the SCF names (what ``[scf]`` remote invocation signs with), the Python
#: SDK's names, then the local SCF API's keys (so a function's SDK call to ``--scf-api`` passes)
ROLE_SOURCES = (
    ("TENCENTCLOUD_SECRETID", "TENCENTCLOUD_SECRETKEY", "TENCENTCLOUD_SESSIONTOKEN"),
    ("TENCENTCLOUD_SECRET_ID", "TENCENTCLOUD_SECRET_KEY", "TENCENTCLOUD_SESSION_TOKEN"),
    ("CLBSCF_SCF_API_SECRET_ID", "CLBSCF_SCF_API_SECRET_KEY", ""),
)
#: ``--debug``: the instance listens for a debugpy attach at this HOST:PORT (scf/devloop.py)
DEBUG_VARIABLE = "CLBSCF_DEBUGPY"

_VMSIZE = re.compile(rb"^VmSize:\s+(\d+) kB", re.MULTILINE)

Handler = Callable[[Any, Any], Any]


def worker_argv(root: str, fd: int, handler: str, memory_mb: int,
                marks: bool = False) -> list[str]:
    """The command line of a worker: the socket's fd number, the handler, ``memory`` in MB,
    and whether it marks the end of each invocation's output (frames.END_OF_OUTPUT)."""
    return [sys.executable, "-c", BOOTSTRAP, root, str(fd), handler, str(memory_mb),
            "1" if marks else "0"]


def role_credentials(environ: Mapping[str, str]) -> dict[str, str] | None:
    """What a ``role_credentials`` function gets, from the proxy's credential source: the
    SCF names (``TENCENTCLOUD_SECRETID``, ``_SECRETKEY``, ``_SESSIONTOKEN``, as SCF sets them
    from the execution role) filled from the first pair the proxy's environment has of
    ROLE_SOURCES; None when it has none. The Python SDK's own names (``TENCENTCLOUD_SECRET_ID``
    and ``_SECRET_KEY``, read by its DefaultCredentialProvider, which takes no token) are set
    too when the pair has no session token: with one, a credential built from them alone would
    be refused, so code builds ``Credential(id, key, token)`` from the SCF names, as on SCF."""
    for id_name, key_name, token_name in ROLE_SOURCES:
        secret_id = environ.get(id_name, "").strip()
        secret_key = environ.get(key_name, "").strip()
        if secret_id and secret_key:
            token = environ.get(token_name, "").strip() if token_name else ""
            out = {"TENCENTCLOUD_SECRETID": secret_id, "TENCENTCLOUD_SECRETKEY": secret_key,
                   "TENCENTCLOUD_SESSIONTOKEN": token}
            if not token:
                out.update({"TENCENTCLOUD_SECRET_ID": secret_id,
                            "TENCENTCLOUD_SECRET_KEY": secret_key})
            return out
    return None


def instance_environment(fn: Function, region: str, appid: str, uin: str,
                         inherited: Mapping[str, str], version: str = VERSION,
                         credentials: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of an instance of ``fn`` running ``version`` (SPEC §7,
    clb-scf-facts.md §3.3); ``credentials``: role_credentials() for a function that has
    ``role_credentials`` on, else None (then no TENCENTCLOUD_SECRET* variable at all)."""
    env = {name: inherited[name] for name in INHERITED_ENV if name in inherited}
    env.update(DEFAULT_ENV)
    env.update(fn.environment)
    # The built-ins last: config.py already refuses user variables with these prefixes.
    env.update({
        "SCF_FUNCTIONNAME": fn.name, "SCF_FUNCTIONVERSION": version,
        "SCF_NAMESPACE": fn.namespace, "SCF_RUNTIME": fn.runtime,
        "TENCENTCLOUD_RUNENV": "SCF", "TENCENTCLOUD_REGION": region,
        "TENCENTCLOUD_APPID": appid, "TENCENTCLOUD_UIN": uin,
        "USER_CODE_ROOT": str(fn.code_of(version)),
    })
    if credentials:
        env.update(credentials)
    if version != VERSION:
        # --debug runs $LATEST under debugpy: a published version's pool must not listen on
        # the same address too
        env.pop(DEBUG_VARIABLE, None)
    return env


def static_context(fn: Function, region: str, appid: str, uin: str,
                   version: str = VERSION) -> dict[str, Any]:
    """The ``context`` fields that are the same for every invocation (all but request_id).

    ``environment`` is a JSON string and ``environ`` a ``K=V;K=V`` string of the function's
    variables plus SCF_NAMESPACE, as in SCF's documented example (clb-scf-facts.md §3.2).
    """
    variables = {**dict(fn.environment), "SCF_NAMESPACE": fn.namespace}
    return {
        "function_name": fn.name, "function_version": version, "namespace": fn.namespace,
        "memory_limit_in_mb": fn.memory, "time_limit_in_ms": fn.timeout * 1000,
        "tencentcloud_region": region, "tencentcloud_appid": appid, "tencentcloud_uin": uin,
        "environment": orjson.dumps(variables).decode(),
        "environ": ";".join(f"{k}={v}" for k, v in variables.items()),
    }


def _address_space_kb() -> int | None:
    try:
        with open("/proc/self/status", "rb") as f:
            m = _VMSIZE.search(f.read())
    except OSError:
        return None
    return int(m.group(1)) if m else None


def limit_memory(memory_mb: int) -> int:
    """Set RLIMIT_AS so about ``memory_mb`` MB more can be allocated; returns the baseline kB."""
    baseline_kb = _address_space_kb() or FALLBACK_BASELINE_MB * 1024
    limit = (baseline_kb + HEADROOM_MB * 1024 + memory_mb * 1024) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return baseline_kb


def _error_object(message: str, trace: str, status: int) -> dict[str, Any]:
    return {"errorCode": -1, "errorMessage": message, "stackTrace": trace.rstrip("\n"),
            "statusCode": status}


def _user_trace(exc: BaseException) -> str:
    """The traceback of ``exc`` without this module's and importlib's frames: the user's code
    only, as SCF shows it (clb-scf-facts.md §3.4)."""
    trace = traceback.TracebackException.from_exception(exc)
    trace.stack = traceback.StackSummary.from_list([
        frame for frame in trace.stack
        if frame.filename != __file__ and not frame.filename.startswith("<frozen importlib")])
    return "".join(trace.format())


def load_handler(handler: str) -> tuple[Handler | None, dict[str, Any] | None]:
    """Import the handler: (the function, None) or (None, SCF's error object without id)."""
    module_name, _, attr = handler.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # The handler's own module (or a package on its path) missing is HandlerNotFound; a
        # dependency the module imports being missing is an error in the user's code.
        missing = exc.name or ""
        own = module_name == missing or module_name.startswith(missing + ".")
        status = STATUS_HANDLER_NOT_FOUND if own else STATUS_USER_CODE_ERROR
        return None, _error_object(f"cannot import handler {handler!r}: {exc}",
                                   _user_trace(exc), status)
    except Exception as exc:  # noqa: BLE001 - any error in user code at import
        return None, _error_object(
            f"cannot import handler {handler!r}: {type(exc).__name__}: {exc}",
            _user_trace(exc), STATUS_USER_CODE_ERROR)
    func = getattr(module, attr, None)
    if not callable(func):
        return None, _error_object(
            f"cannot import handler {handler!r}: module {module_name!r} has no function "
            f"{attr!r}", "", STATUS_HANDLER_NOT_FOUND)
    return func, None


def _encode_result(result: Any) -> tuple[str, bytes]:
    try:
        body = orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS)
    except MemoryError:
        return frames.MEMORY, b"memory limit exceeded while encoding the result"
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        return frames.NOT_JSON, f"return value is not JSON-serialisable: {exc}".encode()
    if len(body) > frames.MAX_RESULT_BYTES:
        return frames.TOO_LARGE, (f"result of {len(body)} bytes is over "
                                  f"{frames.MAX_RESULT_BYTES}").encode()
    return frames.OK, body


def invoke(func: Handler | None, handler: str, import_error: dict[str, Any] | None,
           header: dict[str, Any], event: bytes | bytearray
           ) -> tuple[str, bytes, Handler | None, dict[str, Any] | None]:
    """Run one invocation: (status, body, handler, import error) — the last two for reuse."""
    request_id = header["request_id"]
    if func is None:
        func, import_error = load_handler(handler)
        if func is None:
            assert import_error is not None
            return (frames.IMPORT_ERROR, orjson.dumps({**import_error, "requestId": request_id}),
                    None, import_error)
    context = dict(header["context"])
    context["request_id"] = request_id
    out_of_memory = False
    try:
        result = func(orjson.loads(event), context)
    except MemoryError:
        # Leave the except block before replying: its traceback holds the frames (and so the
        # memory) that ran out.
        out_of_memory = True
    except Exception as exc:  # noqa: BLE001 - SCF reports any user exception as status 430
        error = _error_object(USER_EXCEPTION, _user_trace(exc), STATUS_USER_EXCEPTION)
        error["requestId"] = request_id
        return frames.ERROR, orjson.dumps(error), func, None
    if out_of_memory:
        return frames.MEMORY, b"memory limit exceeded", func, None
    status, body = _encode_result(result)
    return status, body, func, None


#: read from the proxy this much at a time: an invocation's two frames usually come in one
RECV_SIZE = 64 * 1024


class _FrameReader:
    """Frames from the proxy's end of the socket pair, read with as few ``recv`` calls as
    they arrive in (the proxy writes an invocation's header and event frames at once: one
    call instead of four)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()

    def _fill(self, size: int) -> bool:
        buf = self._buf
        while len(buf) < size:
            chunk = self._sock.recv(max(RECV_SIZE, size - len(buf)))
            if not chunk:
                return False
            buf += chunk
        return True

    def read(self) -> bytes | None:
        """The next frame's payload, or None at EOF."""
        prefix = frames.LENGTH.size
        if not self._fill(prefix):
            return None
        (size,) = frames.LENGTH.unpack_from(self._buf)
        if size > frames.MAX_FRAME_BYTES:
            raise frames.FrameError(f"frame length {size} is over {frames.MAX_FRAME_BYTES}")
        if not self._fill(prefix + size):
            return None
        payload = bytes(memoryview(self._buf)[prefix:prefix + size])
        del self._buf[:prefix + size]
        return payload


def _peak_kb() -> int:
    """The process's peak resident set size in kB (Linux's ru_maxrss unit)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _flush_output() -> None:
    # Output written before the reply must reach the pipes before the reply reaches the pool,
    # so the pool can tell which request it belongs to.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # the handler closed or broke it
            pass


def _mark_output() -> None:
    # After the flush: what the invocation printed is in the pipes before the mark, and the
    # mark before the reply (a write this short to a pipe is atomic).
    for fd in (1, 2):
        try:
            os.write(fd, frames.END_OF_OUTPUT)
        except OSError:  # the handler closed it: nothing of it to tell apart
            pass


def listen_for_debugger(address: str) -> None:
    """``--debug``: listen for a debugpy attach at ``HOST:PORT`` (before the memory limit, so
    debugpy's adapter process is not held to it, and before the handler's import)."""
    import debugpy  # only when debugging: the proxy checked it is installed

    host, _, port = address.rpartition(":")
    bound = debugpy.listen((host.strip("[]"), int(port)))
    print(f"debugpy listening on {bound[0]}:{bound[1]}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    """Worker entry point: ``argv`` = [proxy source root, socket fd, handler, memory MB,
    marks ("1": mark the end of each invocation's output)]."""
    root, fd, handler, memory_mb = argv[0], int(argv[1]), argv[2], int(argv[3])
    marks = argv[4:5] == ["1"]
    debug = os.environ.pop(DEBUG_VARIABLE, "")  # not for the handler's own subprocesses
    if debug:
        listen_for_debugger(debug)
    # The proxy's root was only needed to import us; the code directory comes first (SPEC §7).
    if root in sys.path:
        sys.path.remove(root)
    code = os.getcwd()
    sys.path[:] = [code] + [p for p in sys.path if p not in ("", code)]
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)  # subprocesses of the handler must not hold the protocol
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    baseline_kb = limit_memory(memory_mb)
    began = time.perf_counter()
    func, import_error = load_handler(handler)
    init_function_ms = (time.perf_counter() - began) * 1000.0
    # What start-up made (the interpreter's modules, the handler's) is kept for the
    # instance's life: out of the cyclic collector's sight, its passes stay short.
    gc.freeze()
    _flush_output()
    ready = {"pid": os.getpid(), "baseline_kb": baseline_kb,
             "import_error": import_error["errorMessage"] if import_error else None,
             "init_function_ms": init_function_ms, "mem_kb": _peak_kb()}
    sock.sendall(frames.encode(orjson.dumps(ready)))
    reader = _FrameReader(sock)
    while True:
        header = reader.read()
        event = reader.read() if header is not None else None
        if header is None or event is None:
            return 0
        status, body, func, import_error = invoke(func, handler, import_error,
                                                  orjson.loads(header), event)
        del event
        _flush_output()
        if marks:
            _mark_output()
        # the instance's peak resident memory so far: one getrusage, for SCF's MemUsage
        sock.sendall(frames.encode(orjson.dumps({"status": status, "mem_kb": _peak_kb()}),
                                   body))
        if status == frames.MEMORY:
            # The pool replaces an instance that ran out of memory: run nothing more, so an
            # invocation it was sent ahead can go to another instance without having started.
            while True:
                signal.pause()
