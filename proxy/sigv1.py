"""API 3.0 signature v1 (HmacSHA1, HmacSHA256) over form parameters, for the admin API.

Owns the v1 wire form (clb-features.md §1.10): a GET query or an
``application/x-www-form-urlencoded`` POST body carrying ``Action``, ``Version``, ``Region``,
``Timestamp``, ``Nonce``, ``SecretId``, ``Signature`` (and optionally ``SignatureMethod``,
``Token``, ``Language``, ``RequestClient``) next to the action's own parameters flattened with
dots (``Rules.0.Domains.1``). The string to sign is ``METHOD + host + path + "?" +`` the
parameters but ``Signature`` as ``k=v`` joined by ``&``, sorted by key, values raw (not
URL-encoded), ``_`` in keys read as ``.``; the signature is base64(HMAC(key, string)) with SHA-1
unless ``SignatureMethod`` is ``HmacSHA256`` (the Serverless toolkit sends none and means SHA-1).

``unflatten`` turns the dotted parameters back into the JSON shape the actions take; a form
carries no types, so every leaf is a ``FormText`` (a ``str``) that clbapi reads as an integer
or a boolean where the action expects one.

Pure: bytes and strings in, values out; no I/O, no clock (the caller checks the Timestamp).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any
from urllib.parse import parse_qsl

FORM_TYPE = "application/x-www-form-urlencoded"
#: the envelope's parameters: signed, but not the action's own
COMMON = frozenset({"Action", "Version", "Region", "Timestamp", "Nonce", "SecretId",
                    "Signature", "SignatureMethod", "Token", "Language", "RequestClient"})
DIGESTS = {"HmacSHA1": hashlib.sha1, "HmacSHA256": hashlib.sha256}
DEFAULT_METHOD = "HmacSHA1"


class FormText(str):
    """A form value: text that clbapi may read as an integer or a boolean."""

    __slots__ = ()


class FormError(ValueError):
    """The form cannot be read (bad encoding, a key twice, array indexes with holes)."""


def parse_form(text: str) -> dict[str, str]:
    """``a=1&b=x`` -> {"a": "1", "b": "x"}; a key given twice is an error."""
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text),
                          encoding="utf-8", errors="strict")
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormError(f"the form parameters cannot be read: {exc}") from None
    params: dict[str, str] = {}
    for key, value in pairs:
        if key in params:
            raise FormError(f"parameter {key!r} is given twice")
        params[key] = value
    return params


def is_v1(params: dict[str, str]) -> bool:
    return "Signature" in params and "Action" in params


def string_to_sign(method: str, host: str, path: str, params: dict[str, str]) -> str:
    fixed = {key.replace("_", "."): value for key, value in params.items()
             if key != "Signature"}
    query = "&".join(f"{key}={fixed[key]}" for key in sorted(fixed))
    return f"{method}{host}{path}?{query}"


def signature(secret_key: str, text: str, method: str) -> str:
    digest = hmac.new(secret_key.encode(), text.encode(), DIGESTS[method]).digest()
    return base64.b64encode(digest).decode()


def unflatten(params: dict[str, str]) -> dict[str, Any]:
    """The action's parameters (the COMMON ones left out) as nested objects and arrays."""
    root: dict[str, Any] = {}
    for key, value in params.items():
        if key in COMMON:
            continue
        parts = key.split(".")
        if not all(parts):
            raise FormError(f"parameter {key!r}: an empty name between dots")
        node = root
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise FormError(f"parameter {key!r}: {part!r} is also given a value")
            node = child
        if parts[-1] in node:
            raise FormError(f"parameter {key!r}: also given as an object")
        node[parts[-1]] = FormText(value)
    shaped = _arrays(root, "")
    if not isinstance(shaped, dict):
        raise FormError("the parameters must have names, not only array indexes")
    return shaped


def _arrays(node: Any, where: str) -> Any:
    """Objects whose keys are all 0..n-1 become arrays, as the SDK's flattening made them."""
    if not isinstance(node, dict):
        return node
    items = {key: _arrays(value, f"{where}{key}.") for key, value in node.items()}
    if items and all(key.isdigit() and key == str(int(key)) for key in items):
        indexes = sorted(int(key) for key in items)
        if indexes != list(range(len(indexes))):
            raise FormError(f"{where or 'the parameters'}: array indexes must be 0..n-1")
        return [items[str(i)] for i in indexes]
    return items
