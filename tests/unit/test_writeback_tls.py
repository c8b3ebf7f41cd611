"""The TLS keys of a listener (issue 15) round-trip through writeback.patch: a change to them,
or to anything else of a listener that has them, is written so that the loader reads the new
value back exactly (store/table.py refuses a change otherwise)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import tomlkit
import trustme

from proxy import writeback
from proxy.config import Config, parse_document

TEXT = """\
# TLS keys, kept with their comments
[[listener]]
name = "tls"
protocol = "HTTPS"
port = 0
certificates = [{ cert = "c.pem", key = "k.pem" }]
ssl_protocols = ["TLSv1.2", "TLSv1.3"]  # the versions
ssl_mode = "MUTUAL"
client_ca = "clients.pem"

  [[listener.rule]]
  domain = "a.test"
  url = "/"
  targets = [{ type = "CVM", address = "127.0.0.1:9", weight = 10 }]
"""


def _load(folder: Path, text: str) -> Config:
    return parse_document(text, folder / "rules.toml", folder)


def _round_trip(folder: Path, old: Config, new: Config) -> tuple[str, Config]:
    document = tomlkit.parse(TEXT)
    writeback.patch(document, old, new)
    text = writeback.render(document)
    return text, _load(folder, text)


def test_tls_keys_round_trip_through_writeback(tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("a.test")
    leaf.cert_chain_pems[0].write_to_path(tmp_path / "c.pem")
    leaf.private_key_pem.write_to_path(tmp_path / "k.pem")
    trustme.CA().cert_pem.write_to_path(tmp_path / "clients.pem")
    old = _load(tmp_path, TEXT)
    [listener] = old.listeners
    changed = replace(listener, ssl_protocols=("TLSv1.3",),
                      ssl_ciphers="ECDHE-ECDSA-AES256-GCM-SHA384", ssl_session_tickets=False,
                      ssl_verify_client="optional",
                      ssl_verify_depth=3, client_ca=tmp_path / "other.pem")
    trustme.CA().cert_pem.write_to_path(tmp_path / "other.pem")
    new = replace(old, listeners=(changed,))
    text, back = _round_trip(tmp_path, old, new)
    assert back.listeners == new.listeners, text
    assert text.startswith("# TLS keys, kept with their comments")
    # back to the defaults: the keys leave the file
    plain = replace(listener, ssl_mode="UNIDIRECTIONAL", client_ca=None, ssl_protocols=())
    text, back = _round_trip(tmp_path, old, replace(old, listeners=(plain,)))
    assert back.listeners == (plain,), text
    assert "ssl_mode" not in text and "client_ca" not in text and "ssl_protocols" not in text
