"""The TLS policy and mutual TLS keys of an HTTPS listener (issue 15 items 2 and 3): config
validation (config.py, pure), the checks that read files or ask OpenSSL (tls.listener_policy,
tls.config_tls), the contexts they make, the client certificate verdict, and handshakes in
memory against those contexts. Certificates are trustme's."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme

from proxy import tls
from proxy.config import Config, parse_document
from proxy.errors import ConfigError


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def folder(tmp_path: Path, ca: trustme.CA) -> Path:
    leaf = ca.issue_cert("a.test")
    leaf.cert_chain_pems[0].write_to_path(tmp_path / "c.pem")
    leaf.private_key_pem.write_to_path(tmp_path / "k.pem")
    trustme.CA().cert_pem.write_to_path(tmp_path / "clients.pem")
    return tmp_path


def https(folder: Path, keys: str = "", protocol: str = "HTTPS") -> Config:
    certs = 'certificates = [{ cert = "c.pem", key = "k.pem" }]\n' if protocol == "HTTPS" \
        else ""
    text = (f'[[listener]]\nprotocol = "{protocol}"\nport = 0\n{certs}{keys}\n'
            '[[listener.rule]]\ndomain = "a.test"\nurl = "/"\n'
            'targets = [{ type = "CVM", address = "127.0.0.1:9" }]\n')
    return parse_document(text, folder / "rules.toml", folder)


def error(folder: Path, keys: str, protocol: str = "HTTPS") -> str:
    with pytest.raises(ConfigError) as info:
        tls.config_tls(https(folder, keys, protocol))
    return str(info.value)


@pytest.mark.parametrize(("keys", "message"), [
    ('ssl_mode = "MUTUAL"', 'listener[0].client_ca: is required with ssl_mode = "MUTUAL"'),
    ('client_ca = "clients.pem"', 'listener[0].client_ca: only with ssl_mode = "MUTUAL"'),
    ('ssl_verify_client = "optional"', "listener[0].ssl_verify_client: only with ssl_mode"),
    ('ssl_mode = "BOTH"', "listener[0].ssl_mode: must be one of UNIDIRECTIONAL, MUTUAL"),
    ('ssl_mode = "MUTUAL"\nclient_ca = "none.pem"', "listener[0].client_ca: must be an "
                                                     "existing file"),
    ('ssl_mode = "MUTUAL"\nclient_ca = "clients.pem"\nssl_verify_client = "ON"',
     "listener[0].ssl_verify_client: must be one of on, optional"),
    ("ssl_verify_depth = 0", "listener[0].ssl_verify_depth: must be 1..10, got 0"),
    ('ssl_protocols = ["TLSv1", "TLSv1.2"]', "listener[0].ssl_protocols: must be consecutive "
                                             "versions (OpenSSL negotiates a range), TLSv1 "
                                             "TLSv1.2 leaves out TLSv1.1"),
    ('ssl_protocols = ["SSLv3"]', "listener[0].ssl_protocols: must be among TLSv1"),
    ("ssl_protocols = []", "listener[0].ssl_protocols: must name at least one"),
    ('ssl_ciphers = "NOT-A-CIPHER"', "listener[0].ssl_ciphers: OpenSSL selects no cipher"),
    ('custom_config = "ssl_verify_depth 11;"', "line 1: ssl_verify_depth must be an integer "
                                               "1..10, got '11'"),
    ('custom_config = "ssl_protocols TLSv1.1 TLSv1.3;"', "leaves out TLSv1.2"),
])
def test_bad_tls_keys_are_config_errors_naming_the_field(folder: Path, keys: str,
                                                         message: str) -> None:
    assert message in error(folder, keys)


@pytest.mark.parametrize("key", ['ssl_protocols = ["TLSv1.3"]', 'ssl_mode = "MUTUAL"',
                                 "ssl_session_tickets = false", "ssl_verify_depth = 2"])
def test_tls_keys_on_an_http_listener_are_errors(folder: Path, key: str) -> None:
    assert "only for an HTTPS listener" in error(folder, key, "HTTP")


def test_custom_config_tls_directives_on_an_http_listener_are_ignored_as_before(
        folder: Path) -> None:
    config = https(folder, 'custom_config = "ssl_protocols TLSv1.3;"', "HTTP")
    assert config.listeners[0].ssl_protocols == ("TLSv1.3",)
    assert tls.config_tls(config) == {}


@pytest.mark.parametrize(("content", "message"), [
    (b"not a certificate\n", "no PEM certificate in the file"),
    (b"\x30\x82\x01\x0a\xff\xfe", "not a PEM file (binary content"),
])
def test_a_client_ca_file_that_is_no_pem_names_the_field_and_the_file(
        folder: Path, content: bytes, message: str) -> None:
    (folder / "bad.pem").write_bytes(content)
    text = error(folder, 'ssl_mode = "MUTUAL"\nclient_ca = "bad.pem"')
    assert text.startswith(f"rules.toml: listener[0].client_ca: {folder / 'bad.pem'}: ")
    assert message in text


def test_a_client_ca_no_longer_valid_is_refused(folder: Path) -> None:
    # a certificate that expired: nothing it signed can verify now
    leaf_of_past = trustme.CA().issue_cert(
        "x.test", not_before=datetime.now(UTC) - timedelta(days=30),
        not_after=datetime.now(UTC) - timedelta(days=1))
    (folder / "expired.pem").write_bytes(leaf_of_past.cert_chain_pems[0].bytes())
    assert "no certificate in it is valid now" in error(
        folder, 'ssl_mode = "MUTUAL"\nclient_ca = "expired.pem"')


def test_the_default_policy_is_mozilla_intermediate_with_tickets(folder: Path) -> None:
    [(policy, _)] = tls.config_tls(https(folder)).values()
    assert policy == tls.DEFAULT_POLICY
    assert (policy.minimum, policy.maximum) == (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)
    assert policy.ciphers == tls.TLS12_CIPHERS and policy.tickets and not policy.verify_client


def test_old_protocols_get_cbc_suites_and_security_level_0(folder: Path) -> None:
    [(policy, certs)] = tls.config_tls(
        https(folder, 'custom_config = "ssl_protocols TLSv1 TLSv1.1 TLSv1.2;"')).values()
    assert policy.minimum == ssl.TLSVersion.TLSv1 and policy.maximum == ssl.TLSVersion.TLSv1_2
    assert policy.ciphers == f"{tls.TLS12_CIPHERS}:{tls.LEGACY_CIPHERS}:@SECLEVEL=0"
    for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1_2):
        assert tls._memory_handshake(tls.ServerTLS(certs, policy=policy).select("a.test")
                                     .context, version=version)
    assert not tls._memory_handshake(certs[0].context, version=ssl.TLSVersion.TLSv1_3)


def test_old_protocols_with_only_aead_ciphers_are_refused(folder: Path) -> None:
    text = error(folder, 'ssl_protocols = ["TLSv1.1", "TLSv1.2"]\n'
                         'ssl_ciphers = "ECDHE-ECDSA-AES128-GCM-SHA256"')
    assert "listener[0].ssl_ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256:@SECLEVEL=0' has no " \
           "suite TLSv1/TLSv1.1 can negotiate" in text


def test_the_default_policy_refuses_tls1_and_tls11(folder: Path) -> None:
    [(_, certs)] = tls.config_tls(https(folder)).values()
    assert tls._memory_handshake(certs[0].context, version=ssl.TLSVersion.TLSv1_2)
    assert not tls._memory_handshake(certs[0].context, version=ssl.TLSVersion.TLSv1)
    assert not tls._memory_handshake(certs[0].context, version=ssl.TLSVersion.TLSv1_1)


def test_chosen_ciphers_and_protocols_reach_both_contexts(folder: Path) -> None:
    [(policy, certs)] = tls.config_tls(https(
        folder, 'ssl_protocols = ["TLSv1.2"]\nssl_ciphers = "ECDHE-ECDSA-AES256-GCM-SHA384"\n'
                "ssl_session_tickets = false")).values()
    server = tls.ServerTLS(certs, policy=policy)
    for ctx in (server.context, *server._active.contexts):
        assert ctx.maximum_version == ssl.TLSVersion.TLSv1_2
        assert [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"] == [
            "ECDHE-ECDSA-AES256-GCM-SHA384"]
        assert ctx.options & ssl.OP_NO_TICKET


def test_mutual_tls_contexts_ask_for_a_certificate_and_only_certificate_contexts_trust(
        folder: Path) -> None:
    [(policy, certs)] = tls.config_tls(https(
        folder, 'ssl_mode = "MUTUAL"\nclient_ca = "clients.pem"\n'
                'ssl_verify_client = "optional"\nssl_verify_depth = 3')).values()
    assert (policy.verify_client, policy.verify_depth) == ("optional", 3)
    assert policy.client_ca == (folder / "clients.pem").read_text()
    server = tls.ServerTLS(certs, policy=policy)
    assert server.context.verify_mode == ssl.CERT_OPTIONAL
    assert server.context.cert_store_stats()["x509_ca"] == 0
    [cert_ctx] = server._active.contexts
    assert cert_ctx.verify_mode == ssl.CERT_OPTIONAL
    assert cert_ctx.cert_store_stats()["x509_ca"] == 1


def test_a_reload_with_another_policy_makes_a_new_listening_context(folder: Path) -> None:
    [(policy, certs)] = tls.config_tls(https(folder)).values()
    server = tls.ServerTLS(certs, policy=policy)
    first = server.context
    assert server.reload(certs, policy) is False and server.context is first
    [(mutual, again)] = tls.config_tls(https(
        folder, 'ssl_mode = "MUTUAL"\nclient_ca = "clients.pem"')).values()
    assert server.reload(again, mutual) is True
    assert server.context is not first and server.context.verify_mode == ssl.CERT_OPTIONAL
    assert server.policy == mutual


class _FakeSsl:
    def __init__(self, der: bytes | None, chain: list[object] | None) -> None:
        self.der = der
        self.chain = chain

    def getpeercert(self, binary_form: bool = False) -> bytes | None:
        return self.der

    def get_verified_chain(self) -> list[object] | None:
        return self.chain


def test_the_verdict_on_a_client_certificate(folder: Path) -> None:
    client_ca = trustme.CA()
    (folder / "clients.pem").write_bytes(client_ca.cert_pem.bytes())
    [(policy, certs)] = tls.config_tls(https(
        folder, 'ssl_mode = "MUTUAL"\nclient_ca = "clients.pem"')).values()
    server = tls.ServerTLS(certs, policy=policy)
    assert server.client_certificate(_FakeSsl(None, None)).verify == "NONE"
    leaf = client_ca.issue_cert("alice@a.test")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    parsed = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    der = parsed.public_bytes(serialization.Encoding.DER)
    direct = server.client_certificate(_FakeSsl(der, ["leaf", "root"]))
    assert direct.verify == "SUCCESS"
    assert direct.subject == parsed.subject.rfc4514_string()
    assert direct.fingerprint == parsed.fingerprint(hashes.SHA256()).hex()
    # depth 1: one intermediate passes, two do not, and the refusal outlives resumption
    assert server.client_certificate(_FakeSsl(der, ["leaf", "i1", "root"])).verify == "SUCCESS"
    assert server.client_certificate(_FakeSsl(der, ["leaf", "i1", "i2", "root"])).verify == \
        "FAILED:certificate chain too long"
    assert server.client_certificate(_FakeSsl(der, None)).verify == \
        "FAILED:certificate chain too long"
    assert server.client_certificate(_FakeSsl(b"0\x03\x02\x01\x00", ["x"])).verify == \
        "FAILED:unreadable certificate"


def test_subjects_are_made_safe_for_a_header() -> None:
    assert tls._header_safe("CN=alice,O=A") == "CN=alice,O=A"
    assert tls._header_safe("CN=a\r\nX-Injected: 1") == "CN=a\\0D\\0AX-Injected: 1"
    assert tls._header_safe("CN=é") == "CN=\\C3\\A9"


def test_the_refusal_each_verdict_gets() -> None:
    from proxy.errors import ClientCertificateInvalid, ClientCertificateRequired
    from proxy.messages import ClientCertificate

    assert ClientCertificate("SUCCESS", "CN=a", "ab").refusal(True) is None
    assert ClientCertificate("NONE").refusal(False) is None
    assert isinstance(ClientCertificate("NONE").refusal(True), ClientCertificateRequired)
    for required in (True, False):  # nginx refuses a failed certificate with optional too
        refused = ClientCertificate("FAILED:certificate chain too long", "CN=a").refusal(required)
        assert isinstance(refused, ClientCertificateInvalid)
        assert refused.log_detail == "client certificate CN=a FAILED:certificate chain too long"
