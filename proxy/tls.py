"""TLS termination: certificate checks, the listening context, SNI, the development certificate.

Owns: reading and checking certificate/key PEM files with ``cryptography`` (key matches leaf,
chain order, names, validity), the server policy (by default Mozilla "intermediate": TLS 1.2/1.3,
the six ECDHE AEAD suites, no compression, no renegotiation, X25519/P-256/P-384; a listener's
``ssl_protocols``/``ssl_ciphers`` change it, ``TlsPolicy``), ALPN (h2 then http/1.1, or
http/1.1 alone for SNI names whose domain turned HTTP/2 off), session resumption (tickets and
the session cache), mutual TLS (the client CA, the verdict on a client certificate and the
values its headers carry), certificate choice by SNI, atomic certificate reload, the
self-signed development certificate and the OpenSSL config file that limits key-exchange groups.

Strategy: policy lives on one listening ``ssl.SSLContext`` per listener, which stays the same
object while the listener's policy does; each certificate gets its own context (same policy, so
whatever OpenSSL consults after the switch agrees) and ``sni_callback`` switches to it, which
changes the certificate only (http-proxy-rules.md §3.6 pitfall 1). The callback reads one
immutable snapshot, so a reload of certificates is a single attribute swap: new handshakes see
the new set, running ones keep theirs. A reload that changes the policy builds a new listening
context (the server then serves its sockets with it, listening.py): OpenSSL keeps the session
cache and the ticket key on the listening context, so a session made under the old policy (an
old client CA, say) is never resumed under the new one.

What OpenSSL takes from which context, after the switch (OpenSSL 3.0 ``SSL_set_SSL_CTX``): the
certificate, the cipher list, the security level and the store client certificates are verified
against come from the certificate's context; the protocol range, the options, the verify mode
and the session cache and ticket key stay the listening context's. Hence both get the policy,
and the client CA is loaded into the certificate contexts only (a failed switch then refuses a
client certificate rather than checking it against a stale store). Python's ``ssl`` has no
verify-depth setter: ``ssl_verify_depth`` is checked after the handshake, on the verified chain.
Groups cannot be set per context in Python 3.11 (no ``set_groups``); OpenSSL reads them from its
config file once, when it initialises, hence ``ensure_openssl_groups_config`` re-executes the
process with ``OPENSSL_CONF`` set (see its docstring).

Must not know: HTTP, rules, backends, the config file format (it takes ``config.Certificate``,
and a ``config.Config`` only to name each listener's certificates by their field path).
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import ssl
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .config import Certificate, Config, Listener
from .errors import ConfigError
from .messages import ClientCertificate

__all__ = [
    "ALPN_HTTP1", "ALPN_PROTOCOLS", "DEFAULT_POLICY", "GROUPS", "HANDSHAKE_TIMEOUT",
    "HSTS_MAX_AGE", "LEGACY_CIPHERS", "TLS12_CIPHERS", "CertFileError", "KeyFileError",
    "LoadedCertificate", "ServerTLS", "SniTable", "TlsPolicy", "config_certificates",
    "config_tls", "default_state_dir", "ensure_dev_certificate", "ensure_openssl_groups_config",
    "hsts_header", "listener_policy", "load_certificate", "load_certificates",
]

log = logging.getLogger("proxy.error")

#: seconds a client may take to finish its handshake; pass as ``ssl_handshake_timeout`` to
#: ``loop.create_server`` (asyncio's own default is 60 s)
HANDSHAKE_TIMEOUT = 10.0
EXPIRY_WARNING = timedelta(days=14)
#: Mozilla recommends certificate lifetimes of at most 90 days
DEV_CERT_LIFETIME = timedelta(days=90)
DEV_CERT_NAMES = ("localhost", "127.0.0.1", "::1")
#: two years, Mozilla's recommendation (RFC 6797 §6.1.1 max-age)
HSTS_MAX_AGE = 63072000

# Mozilla server-side TLS guidelines 6.0, "intermediate": the TLS 1.2 suites in Mozilla's order.
# TLS 1.3 suites are OpenSSL's defaults, which are exactly Mozilla's three.
TLS12_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
))
GROUPS = ("X25519", "P-256", "P-384")
#: ALPN (RFC 7301) in our order of preference: OpenSSL picks the first of ours the client offers
ALPN_PROTOCOLS = ("h2", "http/1.1")
#: what a handshake whose SNI name's domain has HTTP/2 off is offered (ServerTLS ``http2``)
ALPN_HTTP1 = ("http/1.1",)

#: TLS 1.0 and 1.1 have no AEAD suites: with them chosen and no ssl_ciphers, these ECDHE CBC
#: suites (RFC 4492 names, OpenSSL spelling) follow Mozilla's six so that they can negotiate
LEGACY_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-SHA", "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA", "ECDHE-RSA-AES256-SHA",
))
#: OpenSSL 3 allows TLS 1.0/1.1 only at security level 0 (their handshake signs with SHA-1
#: and MD5-SHA1); the level is part of the cipher string (SSL_CTX_set_security_level(3))
_LEGACY_LEVEL = "@SECLEVEL=0"
_VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLSv1": ssl.TLSVersion.TLSv1, "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}
#: whether this OpenSSL build speaks each version at all
_BUILT_IN = {"TLSv1": ssl.HAS_TLSv1, "TLSv1.1": ssl.HAS_TLSv1_1, "TLSv1.2": ssl.HAS_TLSv1_2,
             "TLSv1.3": ssl.HAS_TLSv1_3}

# Options set on every server context, and why.
_OPTIONS_ON: dict[str, str] = {
    "OP_NO_COMPRESSION": "CRIME; TLS compression is gone from TLS 1.3 (RFC 8446 §4.1.2)",
    "OP_NO_RENEGOTIATION": "client renegotiation is a DoS lever; TLS 1.3 has none",
}
# Session tickets (RFC 5077, RFC 8446 §4.6.1) are on unless ssl_session_tickets = false, which
# sets OP_NO_TICKET: OpenSSL then resumes TLS 1.2 by session id and sends TLS 1.3 stateful
# tickets, both from the listening context's cache. The ticket key is made by OpenSSL with the
# listening context, so it lives until the process restarts or the listener's policy changes
# (Python cannot set or rotate it); each worker process has its own (docs/BEHAVIOUR.md §8).
# Mozilla intermediate: server_preferred_order false (every suite offered is strong; the client
# knows whether it has AES hardware). CPython turns server preference on by default.
_OPTIONS_OFF = ("OP_CIPHER_SERVER_PREFERENCE",)

# Key types a certificate may have (Mozilla intermediate: ECDSA on P-256/P-384, or RSA >= 2048).
# P-521 is refused because, on TLS 1.2, an ECDSA certificate's curve must be among our GROUPS.
_EC_CURVES = ("secp256r1", "secp384r1")


def _rsa_problem(key: Any) -> str | None:
    return None if key.key_size >= 2048 else f"RSA key of {key.key_size} bits (need >= 2048)"


def _ec_problem(key: Any) -> str | None:
    name = key.curve.name
    return None if name in _EC_CURVES else f"ECDSA key on {name} (use P-256 or P-384)"


_KEY_RULES: dict[type[Any], Callable[[Any], str | None]] = {
    rsa.RSAPrivateKey: _rsa_problem,
    ec.EllipticCurvePrivateKey: _ec_problem,
}


# --------------------------------------------------------------------------- policy

@dataclass(frozen=True, slots=True)
class TlsPolicy:
    """What one HTTPS listener's ssl_* keys ask of its contexts, resolved and checked once,
    when the config is loaded (``listener_policy``)."""

    #: the protocol range (ssl_protocols); RFC 8996 deprecates TLS 1.0 and 1.1, so the
    #: default starts at 1.2
    minimum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    maximum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    #: the OpenSSL cipher string for TLS 1.2 and older (TLS 1.3 suites are OpenSSL's three,
    #: Mozilla's; Python cannot change them)
    ciphers: str = TLS12_CIPHERS
    tickets: bool = True
    #: mutual TLS: "" (off), "on" (a certificate is required) or "optional"
    verify_client: str = ""
    #: the client CA bundle (PEM text), read when the policy was made
    client_ca: str = ""
    #: intermediate CAs allowed between a client certificate and client_ca (nginx's and
    #: OpenSSL's meaning of the depth: the leaf and the trust anchor do not count)
    verify_depth: int = 1

    @property
    def legacy(self) -> bool:
        """TLS 1.0 or 1.1 is allowed."""
        return self.minimum < ssl.TLSVersion.TLSv1_2


DEFAULT_POLICY = TlsPolicy()


def listener_policy(listener: Listener, where: str) -> TlsPolicy:
    """The TlsPolicy of an HTTPS listener, with the checks config.py cannot make (this
    OpenSSL's protocols and suites, the client CA file's contents); ``where`` names the
    listener (``rules.toml: listener[0]``) and every ConfigError its field:
    ``rules.toml: listener[0].client_ca: /etc/ca.pem: no PEM certificate in the file``."""
    names = listener.ssl_protocols or ("TLSv1.2", "TLSv1.3")
    for name in names:
        if not _BUILT_IN[name]:
            raise ConfigError(f"{where}.ssl_protocols: this OpenSSL ({ssl.OPENSSL_VERSION}) "
                              f"cannot speak {name}")
    minimum, maximum = _VERSIONS[names[0]], _VERSIONS[names[-1]]
    legacy = minimum < ssl.TLSVersion.TLSv1_2
    ciphers = listener.ssl_ciphers or (
        f"{TLS12_CIPHERS}:{LEGACY_CIPHERS}" if legacy else TLS12_CIPHERS)
    if legacy and "@SECLEVEL" not in ciphers:
        ciphers = f"{ciphers}:{_LEGACY_LEVEL}"
    _check_ciphers(where, names, ciphers)
    policy = TlsPolicy(minimum=minimum, maximum=maximum, ciphers=ciphers,
                       tickets=listener.ssl_session_tickets)
    if listener.ssl_mode != "MUTUAL" or listener.client_ca is None:
        return policy
    return replace(policy, verify_client=listener.ssl_verify_client,
                   client_ca=_read_client_ca(f"{where}.client_ca", listener.client_ca),
                   verify_depth=listener.ssl_verify_depth)


def _check_ciphers(where: str, names: Sequence[str], ciphers: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.set_ciphers(ciphers)
    except ssl.SSLError:
        raise ConfigError(f"{where}.ssl_ciphers: OpenSSL selects no cipher from "
                          f"{ciphers!r}") from None
    # OpenSSL's own "protocol" of a suite is the oldest version that can use it.
    oldest = {suite["protocol"] for suite in ctx.get_ciphers()}
    if {"TLSv1", "TLSv1.1"} & set(names) and not oldest - {"TLSv1.2", "TLSv1.3"}:
        raise ConfigError(f"{where}.ssl_ciphers: {ciphers!r} has no suite TLSv1/TLSv1.1 can "
                          "negotiate (they have no AEAD suites); add CBC suites such as "
                          f"{LEGACY_CIPHERS}, or drop them from ssl_protocols")


def _read_client_ca(where: str, path: Path) -> str:
    try:
        text = path.read_bytes().decode("ascii")
    except OSError as exc:
        raise ConfigError(f"{where}: {path}: cannot read the client CA file: "
                          f"{exc.strerror}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {path}: not a PEM file (binary content; convert DER "
                          "with openssl x509 -inform der)") from None
    try:
        cas = x509.load_pem_x509_certificates(text.encode("ascii"))
    except ValueError as exc:
        raise ConfigError(f"{where}: {path}: no PEM certificate in the file ({exc})") from exc
    now = datetime.now(timezone.utc)
    if not any(ca.not_valid_before_utc <= now < ca.not_valid_after_utc for ca in cas):
        raise ConfigError(f"{where}: {path}: no certificate in it is valid now (every client "
                          "certificate would be refused)")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cadata=text)
    except ssl.SSLError as exc:
        raise ConfigError(f"{where}: {path}: OpenSSL refused the client CA file: "
                          f"{exc}") from exc
    return text


def config_tls(config: Config) -> dict[str, tuple[TlsPolicy, tuple[LoadedCertificate, ...]]]:
    """Every HTTPS listener's policy and certificates, checked (start-up and reload take
    these; ``config_certificates`` runs the same checks for --check-config and the store)."""
    label = config.source.name if config.source is not None else "<command line>"
    out = {}
    for index, listener in enumerate(config.listeners):
        if listener.protocol != "HTTPS":
            continue
        where = f"{label}: listener[{index}]"
        policy = listener_policy(listener, where)
        out[listener.name] = (policy, load_certificates(
            listener.certificates, f"{where}.certificates", policy=policy))
    return out


# --------------------------------------------------------------------------- certificates

class CertFileError(ConfigError):
    """A certificate the checks refuse; the message starts with the file it is about, and
    ``field`` says which field of ``config.Certificate`` names that file."""

    field = "cert"


class KeyFileError(CertFileError):
    """A private key the checks refuse (unreadable, of a refused type, not the leaf's)."""

    field = "key"


@dataclass(frozen=True, slots=True)
class LoadedCertificate:
    """A certificate chain and key that passed every check; what ``ServerTLS`` serves."""

    source: Certificate
    #: SAN DNS names (lower-case; ``*.x`` wildcards kept) and IP addresses, or the subject CN
    names: tuple[str, ...]
    subject: str
    #: the leaf's not-after time (UTC)
    not_after: datetime
    #: SHA-256 of the leaf, hex
    fingerprint: str
    #: the server context serving it, once ``load_certificates`` had OpenSSL load it
    context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)

    def matches(self, host: str) -> bool:
        """Whether ``host`` (no port) is one of this certificate's names (RFC 6125 §6.4)."""
        names = set(self.names)
        return any(key in names for key in _lookup_keys(host))


def load_certificate(cert: Certificate, *, now: datetime | None = None) -> LoadedCertificate:
    """Read and check ``cert``; ConfigError naming the file if anything is wrong.

    Checks: both files parse; the chain is in order (each certificate issued by the next: name,
    and signature where cryptography can verify it); the key type is allowed and matches the
    leaf; the leaf is for TLS servers and has names; every certificate is within its validity.
    Logs a warning on ``proxy.error`` when one expires within 14 days.
    """
    now = now or datetime.now(timezone.utc)
    loaded, expires = _read_and_check(cert, now)
    if expires - now < EXPIRY_WARNING:
        log.warning("%s: certificate expires on %s (in %d days): renew it",
                    cert.cert, _iso(expires), (expires - now).days)
    return loaded


def load_certificates(certs: Sequence[Certificate], where: str, *,
                      policy: TlsPolicy = DEFAULT_POLICY,
                      now: datetime | None = None) -> tuple[LoadedCertificate, ...]:
    """The certificates of one HTTPS listener, with every check start-up, reload and
    ``--check-config`` make (one definition for the three): ``load_certificate``'s, then
    OpenSSL loading each into a server context of ``policy`` (kept: it is the one served);
    with TLS 1.0/1.1 in the policy, an in-memory handshake at the oldest version must
    succeed with each certificate (else ``<where>[i].cert: ...``: OpenSSL refuses it).

    ``where`` names the listener's field, e.g. ``rules.toml: listener[0].certificates``; an
    error names the certificate's field and its file:
    ``rules.toml: listener[0].certificates[1].key: /etc/k.pem: private key does not match ...``.
    """
    loaded = []
    for index, cert in enumerate(certs):
        try:
            one = load_certificate(cert, now=now)
            context = _certificate_context(one, policy)
            if policy.legacy and not _memory_handshake(context, version=policy.minimum):
                raise CertFileError(f"{cert.cert}: OpenSSL completes no "
                                    f"{_version_name(policy.minimum)} handshake with this "
                                    "certificate and ssl_ciphers (check the suites for its "
                                    "key type)")
            loaded.append(replace(one, context=context))
        except CertFileError as exc:
            raise ConfigError(f"{where}[{index}].{exc.field}: {exc}") from exc
    return tuple(loaded)


def config_certificates(config: Config) -> dict[str, tuple[LoadedCertificate, ...]]:
    """``load_certificates`` for every HTTPS listener of ``config``, in order, by listener
    name, after its policy's checks (``config_tls``); the field paths are the config
    file's (``<command line>`` for the embedded default, whose certificates come from
    --tls-cert/--tls-key or the development one)."""
    return {name: certs for name, (_, certs) in config_tls(config).items()}


def _version_name(version: ssl.TLSVersion) -> str:
    return next(name for name, v in _VERSIONS.items() if v == version)


def _read_and_check(cert: Certificate, now: datetime) -> tuple[LoadedCertificate, datetime]:
    """The checks of ``load_certificate``, without logging; also the chain's earliest expiry."""
    chain = _read_chain(cert.cert)
    key = _read_key(cert.key)
    _check_chain_order(cert.cert, chain)
    problem = next((rule(key) for kind, rule in _KEY_RULES.items() if isinstance(key, kind)),
                   "key type not supported (use ECDSA P-256/P-384 or RSA >= 2048)")
    if problem:
        raise KeyFileError(f"{cert.key}: {problem}")
    if _spki(key.public_key()) != _spki(chain[0].public_key()):
        raise KeyFileError(
            f"{cert.key}: private key does not match the certificate in {cert.cert}")
    for index, one in enumerate(chain):
        what = f"{cert.cert}: certificate {index + 1} ({one.subject.rfc4514_string()})"
        if one.not_valid_after_utc <= now:
            raise CertFileError(f"{what} expired on {_iso(one.not_valid_after_utc)}")
        if one.not_valid_before_utc > now:
            raise CertFileError(
                f"{what} is not valid before {_iso(one.not_valid_before_utc)}")
    leaf = chain[0]
    _check_server_usage(cert.cert, leaf)
    names = _names(leaf)
    if not names:
        raise CertFileError(f"{cert.cert}: certificate has no DNS names or IP addresses")
    loaded = LoadedCertificate(
        source=cert, names=names, subject=leaf.subject.rfc4514_string(),
        not_after=leaf.not_valid_after_utc, fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
    )
    return loaded, min(one.not_valid_after_utc for one in chain)


def _read_chain(path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as exc:
        raise CertFileError(f"{path}: cannot read certificate file: {exc.strerror}") from exc
    except ValueError as exc:
        raise CertFileError(f"{path}: no PEM certificate in the file ({exc})") from exc


def _read_key(path: Path) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file: {exc.strerror}") from exc
    except TypeError as exc:  # cryptography says "password was not given": an encrypted key
        raise KeyFileError(f"{path}: encrypted private keys are not supported") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: no usable PEM private key in the file ({exc})") from exc


def _check_chain_order(path: Path, chain: Sequence[x509.Certificate]) -> None:
    # RFC 8446 §4.4.2 (and RFC 5246 §7.4.2): the sender's certificate first, then each one
    # certifying the one before it.
    for index, (child, parent) in enumerate(zip(chain, chain[1:]), start=1):
        wrong = f"{path}: certificate {index} is not issued by certificate {index + 1}"
        if child.issuer != parent.subject:
            raise CertFileError(f"{wrong} (issuer {child.issuer.rfc4514_string()}, next is "
                              f"{parent.subject.rfc4514_string()}): put the chain in order, "
                              "leaf first")
        try:
            child.verify_directly_issued_by(parent)
        except InvalidSignature as exc:
            raise CertFileError(f"{wrong}: its signature does not verify") from exc
        except (ValueError, TypeError):
            pass  # an algorithm cryptography cannot verify; the name check above still held


def _check_server_usage(path: Path, leaf: x509.Certificate) -> None:
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return  # no EKU means any usage (RFC 5280 §4.2.1.12)
    if not {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE} & set(
            usages):
        raise CertFileError(
            f"{path}: certificate is not for TLS servers (no serverAuth usage)")


def _names(leaf: x509.Certificate) -> tuple[str, ...]:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        # Legacy certificates without SAN: clients that still accept them use the subject CN.
        return tuple(str(attr.value).lower()
                     for attr in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
    dns = [name.lower() for name in san.get_values_for_type(x509.DNSName)]
    return tuple(dns + [str(ip) for ip in san.get_values_for_type(x509.IPAddress)])


def _spki(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)


def _iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- SNI

def _lookup_keys(name: str) -> tuple[str, ...]:
    """The keys a certificate name table is searched with for ``name``: the name itself, then the
    wildcard that covers it. RFC 6125 §6.4.3: ``*`` only as the whole left-most label, matching
    exactly one label (``*.w.test`` covers ``x.w.test``, not ``w.test`` nor ``y.x.w.test``)."""
    name = name.lower().rstrip(".")  # DNS names are case-insensitive (RFC 4343)
    label, dot, rest = name.partition(".")
    if not (label and dot and rest) or _is_ip(name):
        return (name,)
    return (name, "*." + rest)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


#: SNI names whose certificate choice a listener remembers (SniTable.select)
SNI_CACHE_MAX = 4096


class SniTable:
    """Which certificate (by index) a handshake gets for an SNI name; pure.

    Exact name first, then the one-label wildcard; when two certificates claim a name, the one
    listed first wins. No SNI (RFC 6066 §3 forbids IP literals in it, so IP clients send none)
    or an unknown name gets certificate 0, the listener's first.
    """

    __slots__ = ("_index", "_chosen")

    def __init__(self, names_per_certificate: Sequence[Sequence[str]]) -> None:
        index: dict[str, int] = {}
        for position, names in enumerate(names_per_certificate):
            for name in names:
                index.setdefault(name.lower(), position)
        self._index = index
        #: ``select``'s answers by the name as sent: a handshake's lookup is one dict probe
        #: (the name's folding and its IP-literal test cost more than the rest of it);
        #: bounded, so names made up by a scanner cannot grow it
        self._chosen: dict[str, int] = {}

    def lookup(self, server_name: str) -> int | None:
        for key in _lookup_keys(server_name):
            hit = self._index.get(key)
            if hit is not None:
                return hit
        return None

    def select(self, server_name: str | None) -> int:
        if not server_name:
            return 0
        chosen = self._chosen.get(server_name)
        if chosen is None:
            hit = self.lookup(server_name)
            chosen = 0 if hit is None else hit
            if len(self._chosen) >= SNI_CACHE_MAX:
                self._chosen.clear()
            self._chosen[server_name] = chosen
        return chosen


# --------------------------------------------------------------------------- contexts

def _policy_context(policy: TlsPolicy = DEFAULT_POLICY,
                    alpn: Sequence[str] = ALPN_PROTOCOLS) -> ssl.SSLContext:
    """A server context with ``policy`` (Mozilla's intermediate by default) offering ``alpn``,
    no certificate and no client CA yet."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():  # Python deprecates TLSv1/TLSv1.1; CLB still offers them
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = policy.minimum
        ctx.maximum_version = policy.maximum
    ctx.set_ciphers(policy.ciphers)
    for name in _OPTIONS_ON:
        ctx.options |= getattr(ssl, name, 0)
    for name in _OPTIONS_OFF:
        ctx.options &= ~getattr(ssl, name, 0)
    if not policy.tickets:
        ctx.options |= ssl.OP_NO_TICKET
    if policy.verify_client:
        # Always OPTIONAL: with no certificate the handshake completes and the HTTP layer
        # answers nginx's 400 for "on"; a certificate that fails verification still aborts
        # the handshake (Python cannot install a verify callback that defers it).
        ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.set_alpn_protocols(list(alpn))  # RFC 7301
    return ctx


def _certificate_context(cert: LoadedCertificate, policy: TlsPolicy = DEFAULT_POLICY,
                         alpn: Sequence[str] = ALPN_PROTOCOLS) -> ssl.SSLContext:
    # The same policy as the listening context: after the SNI switch OpenSSL takes the
    # certificate, the cipher list, the security level, the verify store and a few callbacks
    # such as ALPN selection from this context.
    ctx = _load_into(_policy_context(policy, alpn), cert.source)
    if policy.client_ca:
        ctx.load_verify_locations(cadata=policy.client_ca)
    return ctx


def _load_into(ctx: ssl.SSLContext, source: Certificate) -> ssl.SSLContext:
    try:
        ctx.load_cert_chain(source.cert, source.key)
    except (ssl.SSLError, OSError) as exc:
        raise CertFileError(f"{source.cert}: OpenSSL refused the certificate or its key "
                          f"{source.key}: {exc}") from exc
    return ctx


@dataclass(frozen=True, slots=True)
class _Active:
    """The certificate set one handshake sees; replaced whole on reload."""

    certificates: tuple[LoadedCertificate, ...]
    contexts: tuple[ssl.SSLContext, ...]
    table: SniTable
    #: ALPN: whether a handshake with this SNI name (None: none sent) is offered h2; None:
    #: every one is (see ServerTLS)
    http2: Callable[[str | None], bool] | None = None
    #: the same certificates offering http/1.1 only, for the names ``http2`` says no to
    http1_contexts: tuple[ssl.SSLContext, ...] = ()


def _activate(certs: Sequence[LoadedCertificate], policy: TlsPolicy,
              http2: Callable[[str | None], bool] | None = None) -> _Active:
    if not certs:
        raise ConfigError("an HTTPS listener needs at least one certificate")
    contexts = tuple(c.context if c.context is not None else _certificate_context(c, policy)
                     for c in certs)
    http1 = () if http2 is None else tuple(
        _certificate_context(c, policy, ALPN_HTTP1) for c in certs)
    return _Active(tuple(certs), contexts, SniTable([c.names for c in certs]), http2, http1)


#: X509_V_ERR_CERT_CHAIN_TOO_LONG's text, as nginx's $ssl_client_verify would say it
_TOO_LONG = "FAILED:certificate chain too long"
_NO_CERTIFICATE = ClientCertificate("NONE")
#: leaf fingerprints refused for their chain's depth, remembered per listening context (a
#: resumed session shows no verified chain); bounded, the oldest forgotten first
_REFUSED_MAX = 4096


class ServerTLS:
    """The TLS side of one HTTPS listener.

    ``context`` goes to ``loop.create_server(ssl=..., ssl_handshake_timeout=handshake_timeout)``
    and stays the same object across a ``reload`` that keeps the policy; a reload that
    changes it makes a new one (``reload`` says so, and the server serves its sockets with
    the new context). A failed reload (ConfigError) changes nothing.
    ``http2``: which SNI names are offered ALPN h2 (CLB's per-domain switch, decided by the
    caller); None offers it to every handshake. OpenSSL selects ALPN after the SNI callback,
    from the context the callback switched to, so a name told no gets its certificate's
    http/1.1-only twin.
    """

    def __init__(self, certs: Sequence[LoadedCertificate], *,
                 policy: TlsPolicy = DEFAULT_POLICY,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 http2: Callable[[str | None], bool] | None = None) -> None:
        self.handshake_timeout = handshake_timeout
        self.policy = policy
        self._active = _activate(certs, policy, http2)
        self._context = self._listening(certs[0], policy)
        self._refused: dict[str, None] = {}

    def _listening(self, first: LoadedCertificate, policy: TlsPolicy) -> ssl.SSLContext:
        # The first certificate is only the start-up default: the callback always picks from
        # ``_active``, which is what ``reload`` replaces. No client CA here (module docstring).
        context = _load_into(_policy_context(policy), first.source)
        context.sni_callback = self._on_server_name
        return context

    @property
    def context(self) -> ssl.SSLContext:
        return self._context

    @property
    def certificates(self) -> tuple[LoadedCertificate, ...]:
        return self._active.certificates

    def select(self, server_name: str | None) -> LoadedCertificate:
        """The certificate a handshake with this SNI name (or none) is served."""
        active = self._active
        return active.certificates[active.table.select(server_name)]

    def reload(self, certs: Sequence[LoadedCertificate],
               policy: TlsPolicy | None = None,
               http2: Callable[[str | None], bool] | None = None) -> bool:
        """Serve ``certs`` (loaded with ``policy``, by default the current one, and offering h2
        as ``http2`` says) to handshakes that start from now on; no rebind, no dropped client.
        Returns True when the policy changed, and with it ``context``: the caller must serve
        its sockets with the new one."""
        policy = self.policy if policy is None else policy
        active = _activate(certs, policy, http2)
        if policy == self.policy:
            self._active = active  # one assignment: a handshake sees old or new, never a mix
            return False
        context = self._listening(certs[0], policy)
        self._active, self._context, self.policy = active, context, policy
        self._refused = {}  # its sessions die with the old context
        return True

    def client_certificate(self, ssl_object: Any) -> ClientCertificate:
        """The verdict on a finished handshake's client certificate (mutual TLS), and the
        values of its headers: ``NONE`` without one; ``SUCCESS`` when OpenSSL verified it
        against client_ca (the handshake fails otherwise) within ``verify_depth``;
        ``FAILED:certificate chain too long`` beyond it."""
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            return _NO_CERTIFICATE
        try:
            leaf = x509.load_der_x509_certificate(der)
            fingerprint = leaf.fingerprint(hashes.SHA256()).hex()
            subject = _header_safe(leaf.subject.rfc4514_string())
        except ValueError:  # OpenSSL took it, cryptography cannot read it: refuse, never crash
            return ClientCertificate("FAILED:unreadable certificate")
        chain = _verified_chain(ssl_object)
        if chain is None:  # resumed: its full handshake was judged by this context
            verify = _TOO_LONG if fingerprint in self._refused else "SUCCESS"
        elif max(len(chain) - 2, 0) > self.policy.verify_depth:
            verify = _TOO_LONG
            if len(self._refused) >= _REFUSED_MAX:
                del self._refused[next(iter(self._refused))]
            self._refused[fingerprint] = None
        else:
            verify = "SUCCESS"
        return ClientCertificate(verify, subject, fingerprint)

    def _on_server_name(self, conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                        _listening: ssl.SSLContext) -> int | None:
        # Must never raise: an exception here aborts the handshake with a reset (§3.6 pitfall 4).
        try:
            active = self._active
            index = active.table.select(server_name)
            http2 = active.http2
            conn.context = active.contexts[index] if http2 is None or http2(server_name) \
                else active.http1_contexts[index]
        except Exception:  # noqa: BLE001 - logged; the client keeps the default certificate
            log.exception("SNI: could not switch certificate for %r", server_name)
        return None

    def groups_policy_in_effect(self) -> bool:
        """Whether OpenSSL in this process refuses X448 and P-521 and accepts X25519 (see
        ``ensure_openssl_groups_config``); an in-memory handshake against ``context``."""
        return (not _memory_handshake(self._context, "X448")
                and not _memory_handshake(self._context, "secp521r1")
                and _memory_handshake(self._context, "X25519"))


def _verified_chain(ssl_object: Any) -> list[Any] | None:
    """The chain OpenSSL verified (leaf first, trust anchor last), or None when there is none
    to see: a resumed session, or a Python without the (3.10+, public in 3.13) accessor."""
    native = getattr(ssl_object, "_sslobj", ssl_object)
    getter = getattr(native, "get_verified_chain", None)
    chain = getter() if getter is not None else None
    return list(chain) if chain else None


def _header_safe(text: str) -> str:
    """``text`` with every character outside printable ASCII written as RFC 4514 escapes of
    its UTF-8 bytes (``\\0A``): a subject can hold any character, a header value may not
    hold CR, LF or NUL (RFC 9110 §5.5)."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(ch if " " <= ch <= "~" else "".join(f"\\{b:02X}" for b in ch.encode())
                   for ch in text)


def _memory_handshake(server_ctx: ssl.SSLContext, group: str | None = None, *,
                      version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> bool:
    """Whether a client offering only ``group`` (or OpenSSL's groups), pinned to
    ``version``, completes a handshake with ``server_ctx``."""
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # TLS 1.3 by default: groups alone decide, any certificate type does
        client_ctx.minimum_version = client_ctx.maximum_version = version
    if version < ssl.TLSVersion.TLSv1_2:
        client_ctx.set_ciphers(f"ALL:{_LEGACY_LEVEL}")
    try:
        if group is not None:
            client_ctx.set_ecdh_curve(group)
    except ssl.SSLError:  # this OpenSSL does not know the group at all: nobody can use it
        return False
    wires = [ssl.MemoryBIO() for _ in range(4)]
    client = client_ctx.wrap_bio(wires[0], wires[1])
    server = server_ctx.wrap_bio(wires[2], wires[3], server_side=True)
    done = [False, False]
    for _ in range(8):  # a TLS 1.3 handshake needs two round trips
        for side, (end, outgoing, peer_in) in enumerate(((client, wires[1], wires[2]),
                                                         (server, wires[3], wires[0]))):
            if not done[side]:
                try:
                    end.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError:
                    return False
            peer_in.write(outgoing.read())
        if all(done):
            return True
    return False


# --------------------------------------------------------------------------- OpenSSL groups

_OPENSSL_CNF = """\
# Written by clbscf-proxy (proxy/tls.py). Python 3.11's ssl cannot limit TLS key-exchange groups
# per context, so this file does it for the whole process: Mozilla "intermediate" groups only.
openssl_conf = clbscf_proxy_init

[clbscf_proxy_init]
ssl_conf = clbscf_proxy_ssl

[clbscf_proxy_ssl]
system_default = clbscf_proxy_tls

[clbscf_proxy_tls]
Groups = {groups}
"""
_REEXEC_MARK = "CLBSCF_PROXY_OPENSSL_REEXEC"


def ensure_openssl_groups_config(state_dir: Path) -> None:
    """Limit key-exchange groups to X25519/P-256/P-384 for this process; call it first in main.

    OpenSSL reads ``OPENSSL_CONF`` once, when it initialises, and importing ``hashlib`` or
    ``ssl`` initialises it (checked on 3.11.7 / OpenSSL 3.0: setting the variable after either
    import has no effect), so the only reliable route is a fresh process:

    - writes ``state_dir/openssl.cnf`` (its ``system_default`` section applies to every context);
    - ``OPENSSL_CONF`` already names that file: returns, the policy is in effect;
    - ``OPENSSL_CONF`` names another file: the operator owns OpenSSL's policy; warns, returns
      (so does an unwritable ``state_dir``: the server still starts, with OpenSSL's groups);
    - otherwise sets ``OPENSSL_CONF`` and replaces the process (``os.execv``: same pid, same
      command line), so it never returns. Call it before opening sockets or starting threads.
    """
    path = state_dir / "openssl.cnf"
    current = os.environ.get("OPENSSL_CONF", "")
    problem = "" if current in ("", str(path)) else f"OPENSSL_CONF is set to {current}"
    try:
        _write_if_changed(path, _OPENSSL_CNF.format(groups=":".join(GROUPS)).encode(), 0o644)
    except OSError as exc:
        problem = problem or f"cannot write {path}: {exc.strerror}"
    if not problem and current == str(path):
        return
    if problem or os.environ.get(_REEXEC_MARK):
        # A server that still works with OpenSSL's default groups beats one that will not start.
        log.warning("%s: TLS key-exchange groups are OpenSSL's defaults, not only %s",
                    problem or f"OPENSSL_CONF={path} did not survive the re-exec",
                    ", ".join(GROUPS))
        return
    os.environ["OPENSSL_CONF"] = str(path)
    os.environ[_REEXEC_MARK] = "1"  # never loop, whatever happens to OPENSSL_CONF
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


# --------------------------------------------------------------------------- dev certificate

def default_state_dir() -> Path:
    """$CLBSCF_PROXY_STATE, else $XDG_STATE_HOME/clbscf-proxy, else ~/.local/state/clbscf-proxy."""
    explicit = os.environ.get("CLBSCF_PROXY_STATE", "")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME", "")
    if os.path.isabs(xdg):  # the XDG spec says to ignore relative paths
        return Path(xdg) / "clbscf-proxy"
    return Path.home() / ".local" / "state" / "clbscf-proxy"


def ensure_dev_certificate(state_dir: Path, *, now: datetime | None = None) -> Certificate:
    """A self-signed certificate for localhost/127.0.0.1/::1 under ``state_dir/devcert``.

    Reused while it is valid for more than 14 more days, generated (ECDSA P-256, 90 days)
    otherwise; the key file is kept at mode 0600. Says which on ``proxy.error``.
    """
    now = now or datetime.now(timezone.utc)
    folder = state_dir / "devcert"
    cert = Certificate(cert=folder / "cert.pem", key=folder / "key.pem")
    with _locked(folder):  # several workers may start at once
        expires = _reusable_until(cert, now)
        if expires is not None:
            os.chmod(cert.key, 0o600)  # someone may have widened it
            log.warning("using the self-signed development certificate %s (valid until %s); "
                        "for development only", cert.cert, _iso(expires))
            return cert
        key_pem, cert_pem, expires = _mint_dev_certificate(now)
        _write_if_changed(cert.key, key_pem, 0o600)
        _write_if_changed(cert.cert, cert_pem, 0o644)
    log.warning("generated a self-signed development certificate for %s: %s (valid until %s); "
                "for development only: clients must trust it, e.g. curl --cacert %s",
                ", ".join(DEV_CERT_NAMES), cert.cert, _iso(expires), cert.cert)
    return cert


def _reusable_until(cert: Certificate, now: datetime) -> datetime | None:
    try:
        loaded, expires = _read_and_check(cert, now)
    except ConfigError:
        return None  # missing, damaged, expired: make a new one
    if expires - now <= EXPIRY_WARNING or not set(DEV_CERT_NAMES) <= set(loaded.names):
        return None
    return expires


def _mint_dev_certificate(now: datetime) -> tuple[bytes, bytes, datetime]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "clbscf-proxy development certificate"),
    ])
    san: list[x509.GeneralName] = [x509.DNSName(DEV_CERT_NAMES[0])]
    san.extend(x509.IPAddress(ipaddress.ip_address(ip)) for ip in DEV_CERT_NAMES[1:])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    expires = now + DEV_CERT_LIFETIME
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))  # tolerate small clock skew
        .not_valid_after(expires)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM), expires


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_if_changed(path: Path, data: bytes, mode: int) -> None:
    """Write atomically (temp file + rename) with ``mode`` from the start, unless already so."""
    try:
        if path.read_bytes() == data and (path.stat().st_mode & 0o777) == mode:
            return
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, mode)  # exactly ``mode``, whatever the umask
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- HSTS

def hsts_header(max_age: int = HSTS_MAX_AGE) -> tuple[str, str]:
    """The Strict-Transport-Security header for HTTPS responses only (RFC 6797 §7.2: never
    over plain HTTP). Mozilla's value, no includeSubDomains: that is the owner's decision."""
    if max_age < 0:
        raise ValueError(f"HSTS max-age must be >= 0, got {max_age}")
    return ("Strict-Transport-Security", f"max-age={max_age}")
