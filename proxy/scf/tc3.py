"""TC3-HMAC-SHA256, the Tencent Cloud API 3.0 request signature, as pure functions.

Owns the signing algorithm of the API 3.0 "signature v3" document (reference
clb-scf-facts.md §4.4): the canonical request, the string to sign, the derived signing key,
the signature and the header set of a signed POST. Strategy: each step is its own function so a
test can check every intermediate value of the documented example; ``sign`` composes them.
Only ``hmac`` and ``hashlib``; no I/O, no clock (the caller passes the timestamp), no
knowledge of SCF, of connections or of where credentials come from.

The signed headers are exactly ``content-type;host``, as the official SDKs sign them; the
``Content-Type`` and ``Host`` values signed must be byte-identical to the ones sent.
"""

from __future__ import annotations

import hashlib
import hmac
import time

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
