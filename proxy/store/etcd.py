"""Store mode: the rule table in etcd (``--store etcd://HOST:PORT[,HOST:PORT...]/PREFIX``).

Owns the store URL's syntax, a small etcd v3 client and the etcd backend of store/table.py.

- URL: ``etcd://`` (plain) or ``etcds://`` (TLS, verified against the system's CAs or the file
  in ``CLBSCF_ETCD_CA``); one or more ``HOST:PORT`` endpoints; a non-empty ``/PREFIX``. The table
  is the one key ``PREFIX/table``, holding the TOML document as pushed (comments and all), so
  ``store pull`` prints what ``store push`` stored.
- Authentication: ``CLBSCF_ETCD_USER`` and ``CLBSCF_ETCD_PASSWORD`` in the environment (never
  the URL, where ``ps`` would show them); the token from ``/v3/auth/authenticate`` is sent as
  etcd's ``Authorization`` header and renewed once when etcd says it expired.
- The client speaks etcd's v3 JSON gateway (``/v3/kv/range``, ``/v3/kv/txn``), which every
  etcd 3.4+ serves on its client port (pyproject.toml says why no client library), through the
  proxy's own HTTP/1.1 client. An endpoint that cannot be reached is skipped for the next one;
  the one that answered is tried first next time.
- Writes are one transaction: compare the key's ``mod_revision`` with the revision the change
  was made on, put if equal (a key never written compares as 0). The table is one key, so a
  reader sees the old document or the new one, never a mix. A write is safe to send twice
  (the keep-alive race, failover to the next endpoint): when the compare fails and the key
  already holds exactly this document at a newer revision, it was this write that landed.

Errors name the endpoint: ``StoreError`` for unreachable (every endpoint's reason), refused
authentication and TLS failures; ``Conflict`` when the compare failed.

Must not know: TOML, the actions, what a table means.
"""

from __future__ import annotations

import base64
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ..backends.h1client import HTTPClient
from ..errors import ConfigError, UpstreamError
from . import Conflict, Snapshot, StoreError

SCHEMES = {"etcd": "http", "etcds": "https"}
USER_VARIABLE, PASSWORD_VARIABLE, CA_VARIABLE = ("CLBSCF_ETCD_USER", "CLBSCF_ETCD_PASSWORD",
                                                 "CLBSCF_ETCD_CA")
TABLE_KEY = "table"
CALL_TIMEOUT = 5.0  # seconds for one gateway call to one endpoint
CONNECT_TIMEOUT = 2.0

_URL_RE = re.compile(r"(?P<scheme>etcds?)://(?P<hosts>[^/]+)(?P<prefix>/[A-Za-z0-9._/-]*)")
_ENDPOINT_RE = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>[0-9]{1,5})")
_URL_SHAPE = "etcd://HOST:PORT[,HOST:PORT...]/PREFIX (etcds:// for TLS)"
#: etcd's messages when the credentials or the token are refused (gRPC Unauthenticated,
#: InvalidArgument for a missing user, PermissionDenied)
_AUTH_WORDS = ("authentication failed", "user name is empty", "invalid auth token",
               "permission denied", "auth: ", "invalid username or password")


@dataclass(frozen=True, slots=True)
class StoreURL:
    scheme: str  # "etcd" or "etcds"
    endpoints: tuple[str, ...]  # "host:port"
    prefix: str  # "/clbscf", no trailing slash

    @property
    def key(self) -> str:
        return f"{self.prefix}/{TABLE_KEY}"

    def __str__(self) -> str:
        return f"{self.scheme}://{','.join(self.endpoints)}{self.prefix}"


def parse_store_url(text: str) -> StoreURL:
    """``--store``'s value; ConfigError naming it when it does not parse."""
    match = _URL_RE.fullmatch(text.strip())
    bad = ConfigError(f"--store: must be {_URL_SHAPE}, got {text!r}")
    if match is None:
        raise bad
    endpoints = tuple(match["hosts"].split(","))
    for endpoint in endpoints:
        found = _ENDPOINT_RE.fullmatch(endpoint)
        if found is None or not 1 <= int(found["port"]) <= 65535:
            raise bad
    prefix = match["prefix"].rstrip("/")
    if not prefix or "//" in prefix:
        raise bad
    return StoreURL(match["scheme"], endpoints, prefix)


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


class EtcdClient:
    """The few v3 calls the table needs, with failover over the URL's endpoints."""

    def __init__(self, url: StoreURL, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.url = url
        self._user = env.get(USER_VARIABLE, "")
        self._password = env.get(PASSWORD_VARIABLE, "")
        context = None
        if url.scheme == "etcds":
            context = ssl.create_default_context(cafile=env.get(CA_VARIABLE) or None)
        self._http = HTTPClient(ssl_context=context, pool_size=4,
                                connect_timeout=CONNECT_TIMEOUT, read_timeout=CALL_TIMEOUT,
                                idle_timeout=20.0)
        self._token: str | None = None
        self._first = 0  # the endpoint that answered last

    def _base(self, endpoint: str) -> str:
        return f"{SCHEMES[self.url.scheme]}://{endpoint}"

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST one gateway call, trying each endpoint once; StoreError when none answers."""
        failures = []
        count = len(self.url.endpoints)
        for step in range(count):
            index = (self._first + step) % count
            endpoint = self.url.endpoints[index]
            try:
                answer = await self._call_one(endpoint, path, body)
            except _Unreachable as exc:
                failures.append(f"{endpoint}: {exc}")
                continue
            self._first = index
            return answer
        raise StoreError(f"etcd {self.url} is unreachable: " + "; ".join(failures))

    async def _call_one(self, endpoint: str, path: str, body: dict[str, Any],
                        renewed: bool = False) -> dict[str, Any]:
        if self._user and self._token is None:
            self._token = await self._authenticate(endpoint)
        headers = [("Content-Type", "application/json")]
        if self._token:
            headers.append(("Authorization", self._token))
        status, answer = await self._post(endpoint, path, body, headers)
        if status != 200:
            message = str(answer.get("message") or answer.get("error") or answer)
            if any(word in message.lower() for word in _AUTH_WORDS):
                if self._token and not renewed and "invalid auth token" in message.lower():
                    self._token = None  # expired: authenticate once more
                    return await self._call_one(endpoint, path, body, renewed=True)
                raise StoreError(f"etcd {endpoint} refused us: {message}"
                                 + ("" if self._user else f" (set {USER_VARIABLE} and "
                                    f"{PASSWORD_VARIABLE})"))
            if status >= 500 or status == 429:
                raise _Unreachable(f"HTTP {status}: {message}")
            raise StoreError(f"etcd {endpoint}: /v3/{path} failed: HTTP {status}: {message}")
        return answer

    async def _authenticate(self, endpoint: str) -> str:
        status, answer = await self._post(endpoint, "auth/authenticate",
                                          {"name": self._user, "password": self._password},
                                          [("Content-Type", "application/json")])
        if status != 200 or not answer.get("token"):
            message = answer.get("message") or answer.get("error") or f"HTTP {status}"
            raise StoreError(f"etcd {endpoint} refused authentication as {self._user!r}: "
                             f"{message}")
        return str(answer["token"])

    async def _post(self, endpoint: str, path: str, body: dict[str, Any],
                    headers: list[tuple[str, str]]) -> tuple[int, dict[str, Any]]:
        try:
            response = await self._http.request("POST", f"{self._base(endpoint)}/v3/{path}",
                                                headers, orjson.dumps(body),
                                                idempotent=True)
        except UpstreamError as exc:
            detail = exc.log_detail.split(": ", 1)[-1] if exc.log_detail else str(exc)
            if "TLS" in detail or "certificate" in detail:
                raise StoreError(f"etcd {endpoint}: {detail}") from None
            raise _Unreachable(detail) from None
        except ValueError as exc:
            raise StoreError(f"etcd {endpoint}: {exc}") from None
        except Exception as exc:  # a timeout (UpstreamTimeout) and the like
            raise _Unreachable(str(exc) or type(exc).__name__) from None
        try:
            answer = orjson.loads(response.body) if response.body else {}
        except orjson.JSONDecodeError:
            raise _Unreachable(f"HTTP {response.status}: not an etcd gateway answer") from None
        return response.status, answer if isinstance(answer, dict) else {}

    async def get(self, key: str) -> tuple[bytes | None, int]:
        """(value or None, the key's mod_revision, 0 when absent)."""
        answer = await self.call("kv/range", {"key": _b64(key)})
        kvs = answer.get("kvs") or []
        if not kvs:
            return None, 0
        return base64.b64decode(kvs[0].get("value", "")), int(kvs[0].get("mod_revision", 0))

    async def mod_revision(self, key: str) -> int:
        """The key's mod_revision (0 when absent), without its value."""
        answer = await self.call("kv/range", {"key": _b64(key), "keys_only": True})
        kvs = answer.get("kvs") or []
        return int(kvs[0].get("mod_revision", 0)) if kvs else 0

    async def put_if(self, key: str, value: bytes, mod_revision: int) -> int | None:
        """Put when the key's mod_revision is still ``mod_revision``: the new revision, or
        None when the compare failed."""
        answer = await self.call("kv/txn", {
            "compare": [{"key": _b64(key), "target": "MOD", "result": "EQUAL",
                         "mod_revision": str(mod_revision)}],
            "success": [{"request_put": {"key": _b64(key), "value": _b64(value)}}]})
        if not answer.get("succeeded"):
            return None
        return int(answer.get("header", {}).get("revision", 0))

    async def close(self) -> None:
        await self._http.close()


class _Unreachable(Exception):
    """One endpoint did not answer (the next is tried)."""


class EtcdBackend:
    kind = "etcd"

    def __init__(self, url: StoreURL, environ: Mapping[str, str] | None = None) -> None:
        self.url = url
        self.location = str(url)
        self.client = EtcdClient(url, environ)

    async def read(self) -> Snapshot:
        value, revision = await self.client.get(self.url.key)
        if value is None:
            return Snapshot(None, "0")
        return Snapshot(value.decode("utf-8", "replace"), str(revision))

    async def peek(self) -> str:
        return str(await self.client.mod_revision(self.url.key))

    async def write(self, text: str, expected: str) -> str:
        data = text.encode("utf-8")
        revision = await self.client.put_if(self.url.key, data, int(expected))
        if revision is None:
            # Either another writer came first, or this very write landed on an earlier
            # attempt whose answer was lost (a connection dropped after etcd applied it, or
            # an endpoint that timed out before the next one was asked): the key then holds
            # exactly this document at a newer revision, which is success, not a conflict.
            value, now = await self.client.get(self.url.key)
            if value == data and now > int(expected):
                return str(now)
            raise Conflict(f"{self.url} changed since revision {expected}")
        return str(revision)

    async def close(self) -> None:
        await self.client.close()
