"""TC3-HMAC-SHA256, the Tencent Cloud API 3.0 request signature, as pure functions.

Owns the signing algorithm of the API 3.0 "signature v3" document (reference
clb-scf-facts.md §4.4): the canonical request, the string to sign, the derived signing key,
the signature and the header set of a signed POST, and its check on the server side
(``verify``, used by the admin API and the local SCF API alike). Strategy: each step is its own
function so a test can check every intermediate value of the documented example; ``sign``
composes them. Only ``hmac``, ``hashlib`` and ``re``; no I/O, no clock (the caller passes the
timestamp), no knowledge of SCF, of connections or of where credentials come from.

The signed headers are exactly ``content-type;host``, as the official SDKs sign them; the
``Content-Type`` and ``Host`` values signed must be byte-identical to the ones sent.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable

ALGORITHM = "TC3-HMAC-SHA256"
SIGNED_HEADERS = "content-type;host"
#: the last element of the credential scope and of the key derivation chain
TERMINATOR = "tc3_request"


def utc_date(timestamp: int) -> str:
    """The UTC calendar date (YYYY-MM-DD) of a unix timestamp: the date in the scope."""
    return time.strftime("%Y-%m-%d", time.gmtime(timestamp))


def hashed_payload(payload: bytes) -> str:
    """HashedRequestPayload: lowercase hex SHA-256 of the exact body bytes sent."""
    return hashlib.sha256(payload).hexdigest()


def canonical_request(method: str, content_type: str, host: str, payload: bytes, *,
                      uri: str = "/", query: str = "") -> str:
    """CanonicalRequest: method, URI, query, canonical headers, signed headers, payload hash.

    For POST the query is empty and the URI is ``/``; the canonical headers are the lowercase
    ``content-type`` and ``host`` lines, each ending in a newline, sorted by name.
    """
    canonical_headers = f"content-type:{content_type}\nhost:{host}\n"
    return "\n".join((method, uri, query, canonical_headers, SIGNED_HEADERS,
                      hashed_payload(payload)))


def credential_scope(date: str, service: str) -> str:
    """CredentialScope: ``Date/service/tc3_request``."""
    return f"{date}/{service}/{TERMINATOR}"


def string_to_sign(timestamp: int, scope: str, canonical: str) -> str:
    """StringToSign: algorithm, the X-TC-Timestamp value, the scope, hash of the request."""
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{timestamp}\n{scope}\n{digest}"


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def signing_key(secret_key: str, date: str, service: str) -> bytes:
    """SecretSigning: HMAC chain TC3+key -> date -> service -> tc3_request (raw bytes)."""
    secret_date = _hmac(("TC3" + secret_key).encode("utf-8"), date)
    secret_service = _hmac(secret_date, service)
    return _hmac(secret_service, TERMINATOR)


def signature(secret_key: str, date: str, service: str, to_sign: str) -> str:
    """Signature: lowercase hex HMAC-SHA256 of the string to sign under the signing key."""
    key = signing_key(secret_key, date, service)
    return hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def authorization(secret_id: str, scope: str, sig: str) -> str:
    """The Authorization header value."""
    return (f"{ALGORITHM} Credential={secret_id}/{scope}, "
            f"SignedHeaders={SIGNED_HEADERS}, Signature={sig}")


def sign(secret_id: str, secret_key: str, service: str, host: str, action: str, version: str,
         region: str, timestamp: int, payload: bytes, content_type: str = "application/json",
         token: str | None = None, language: str | None = None) -> dict[str, str]:
    """The headers of a signed API 3.0 POST of ``payload`` to ``host``.

    ``region`` may be "" for region-less APIs (then no X-TC-Region); ``token`` is the session
    token of temporary credentials (X-TC-Token). The timestamp must be within 5 minutes of the
    server's clock or the API answers AuthFailure.SignatureExpire.
    """
    date = utc_date(timestamp)
    scope = credential_scope(date, service)
    canonical = canonical_request("POST", content_type, host, payload)
    sig = signature(secret_key, date, service, string_to_sign(timestamp, scope, canonical))
    headers = {
        "Authorization": authorization(secret_id, scope, sig),
        "Content-Type": content_type,
        "Host": host,
        "X-TC-Action": action,
        "X-TC-Timestamp": str(timestamp),
        "X-TC-Version": version,
    }
    if region:
        headers["X-TC-Region"] = region
    if token:
        headers["X-TC-Token"] = token
    if language:
        headers["X-TC-Language"] = language
    return headers


#: API 3.0 rejects a timestamp further off the server's clock than this (seconds)
SIGNATURE_WINDOW = 300

_AUTHORIZATION_RE = re.compile(
    r"TC3-HMAC-SHA256 Credential=([^/\s,]+)/(\d{4}-\d\d-\d\d)/([a-z0-9-]+)/"
    r"tc3_request,\s*SignedHeaders=([a-z0-9;-]+),\s*Signature=([0-9a-f]{64})")


class SignatureError(Exception):
    """A request whose TC3 signature does not verify: ``code`` is the API's AuthFailure.*."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def verify(method: str, header: Callable[[str], str | None], payload: bytes,
           secret_key_of: Callable[[str], str | None], now: float, *,
           unknown_id_hint: str = "unknown SecretId", query: str = "") -> str:
    """Check a signed request as the API does (5-minute window, payload signed, signed headers
    ``content-type;host``); ``header`` looks a request header up by name, ``secret_key_of``
    the key of a SecretId (None: unknown); ``query`` is a GET's query string as sent (its
    canonical query string; the payload is then empty). Returns the SecretId; raises
    SignatureError with
    the API's code (AuthFailure.InvalidAuthorization, .SecretIdNotFound, .SignatureExpire,
    .SignatureFailure)."""
    match = _AUTHORIZATION_RE.fullmatch((header("authorization") or "").strip())
    if match is None or match.group(4) != SIGNED_HEADERS:
        raise SignatureError("AuthFailure.InvalidAuthorization", "malformed TC3 Authorization "
                             f"(signed headers must be {SIGNED_HEADERS})")
    secret_id, date, service, _, given = match.groups()
    secret_key = secret_key_of(secret_id)
    if secret_key is None:
        raise SignatureError("AuthFailure.SecretIdNotFound", unknown_id_hint)
    stamp = header("x-tc-timestamp") or ""
    if not stamp.isdigit() or abs(now - int(stamp)) > SIGNATURE_WINDOW:
        raise SignatureError("AuthFailure.SignatureExpire", "X-TC-Timestamp is missing or more "
                             "than 5 minutes off the server's clock")
    if header("x-tc-content-sha256") is not None:
        raise SignatureError("AuthFailure.SignatureFailure", "unsigned payloads are refused")
    canonical = canonical_request(method, header("content-type") or "", header("host") or "",
                                  payload, query=query)
    to_sign = string_to_sign(int(stamp), credential_scope(date, service), canonical)
    expected = signature(secret_key, date, service, to_sign)
    if utc_date(int(stamp)) != date or not hmac.compare_digest(expected, given):
        raise SignatureError("AuthFailure.SignatureFailure", "the TC3 signature does not match")
    return secret_id
