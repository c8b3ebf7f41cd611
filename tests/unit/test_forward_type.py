"""A rule's ``forward_type`` and ``backend_ca`` (CLB's ForwardType): the loader's checks, the
CLB API's CreateRule/ModifyRule/DescribeListeners, the write-back of both keys, and the TLS
client contexts (tlsclient.py) an HTTPS rule's pools are made with."""

from __future__ import annotations

import os
import ssl
from dataclasses import replace
from pathlib import Path

import pytest
import tomlkit
import trustme

from proxy import writeback
from proxy.backends.tlsclient import Contexts, client_context
from proxy.errors import ConfigError
from tests.unit.test_admin import WEB, Admin, error_code
from tests.unit.test_config import error_of, folder, one_rule, parse  # noqa: F401


def test_forward_type_defaults_to_http_and_reads_clb_values(folder: Path) -> None:  # noqa: F811
    assert parse(one_rule(), folder).listeners[0].rules[0].forward_type == "HTTP"
    for kind in ("HTTPS", "GRPC", "GRPCS"):
        rule = parse(one_rule(rule=f'forward_type = "{kind}"'), folder).listeners[0].rules[0]
        assert rule.forward_type == kind and rule.backend_ca is None


def test_backend_ca_is_a_file_relative_to_the_config(folder: Path) -> None:  # noqa: F811
    rule = parse(one_rule(rule='forward_type = "HTTPS"\nbackend_ca = "certs/ca.pem"'),
                 folder).listeners[0].rules[0]
    assert rule.backend_ca == folder / "certs" / "ca.pem"


@pytest.mark.parametrize(("rule", "target", "message"), [
    ('forward_type = "TRPC"', None,
     'listener[0].rule[0].forward_type: must be one of HTTP, HTTPS, GRPC, GRPCS, got "TRPC"'),
    ('backend_ca = "certs/ca.pem"', None,
     "listener[0].rule[0].backend_ca: needs forward_type HTTPS or GRPCS, got HTTP"),
    ('forward_type = "GRPC"\nbackend_ca = "certs/ca.pem"', None,
     "backend_ca: needs forward_type HTTPS or GRPCS, got GRPC"),
    ('forward_type = "HTTPS"\nbackend_ca = "certs/missing.pem"', None,
     "listener[0].rule[0].backend_ca: must be an existing file"),
    ('forward_type = "GRPCS"', '{ type = "SCF", invoke_url = "http://127.0.0.1:9/" }',
     "listener[0].rule[0].target[0]: a GRPCS rule forwards gRPC to CVM targets only"),
])
def test_loader_checks_the_forwarding_keys(folder: Path, rule: str,  # noqa: F811
                                           target: str | None, message: str) -> None:
    text = one_rule(rule=rule) if target is None else one_rule(target, rule=rule)
    assert message in error_of(text, folder)


def test_https_may_mix_scf_targets(folder: Path) -> None:  # noqa: F811
    # forward_type says how CVM targets are reached; an SCF target is invoked as ever
    text = one_rule('{ type = "SCF", invoke_url = "http://127.0.0.1:9/" }',
                    rule='forward_type = "HTTPS"')
    assert parse(text, folder).listeners[0].rules[0].forward_type == "HTTPS"


# --- the CLB API ----------------------------------------------------------------------------


def test_create_rule_takes_forward_type_and_describe_listeners_shows_it() -> None:
    admin = Admin()
    answer = admin.call("CreateRule", {**WEB, "Rules": [
        {"Domain": "grpc.example.com", "Url": "/", "ForwardType": "GRPC"},
        {"Domain": "tls.example.com", "Url": "/", "ForwardType": "HTTPS"}]})
    grpc_loc, tls_loc = answer["LocationIds"]
    assert admin.rule(grpc_loc).forward_type == "GRPC"
    assert admin.rule(tls_loc).forward_type == "HTTPS"
    listed = admin.call("DescribeListeners", {"LoadBalancerId": "lb-test"})
    shown = {r["LocationId"]: r["ForwardType"] for r in listed["Listeners"][0]["Rules"]}
    assert shown[grpc_loc] == "GRPC" and shown[tls_loc] == "HTTPS"
    assert set(shown.values()) == {"HTTP", "GRPC", "HTTPS"}


def test_modify_rule_changes_forward_type_and_keeps_the_rest() -> None:
    admin = Admin()
    loc = admin.config.listeners[0].rules[1].location_id
    before = admin.rule(loc)
    answer = admin.call("ModifyRule", {**WEB, "LocationId": loc, "ForwardType": "GRPCS"})
    assert "Error" not in answer, answer
    assert admin.rule(loc) == replace(before, forward_type="GRPCS")
    admin.call("ModifyRule", {**WEB, "LocationId": loc, "Scheduler": "WRR"})
    assert admin.rule(loc).forward_type == "GRPCS"  # not given: unchanged


def test_modify_rule_refuses_an_unknown_forward_type_and_changes_nothing() -> None:
    admin = Admin()
    loc = admin.config.listeners[0].rules[1].location_id
    before = admin.config
    answer = admin.call("ModifyRule", {**WEB, "LocationId": loc, "ForwardType": "TRPC"})
    assert error_code(answer) == "InvalidParameterValue"
    assert "ForwardType" in answer["Error"]["Message"]
    assert admin.config is before


def test_modify_rule_cannot_leave_tls_while_the_file_names_a_backend_ca(tmp_path: Path) -> None:
    admin = Admin()
    listener = admin.config.listeners[0]
    rules = list(listener.rules)
    rules[1] = replace(rules[1], forward_type="HTTPS", backend_ca=tmp_path / "ca.pem")
    admin.config = replace(admin.config, listeners=(replace(listener, rules=tuple(rules)),)
                           + admin.config.listeners[1:])
    answer = admin.call("ModifyRule", {**WEB, "LocationId": rules[1].location_id,
                                       "ForwardType": "HTTP"})
    assert error_code(answer) == "InvalidParameterValue"
    assert "backend_ca (ca.pem)" in answer["Error"]["Message"]
    answer = admin.call("ModifyRule", {**WEB, "LocationId": rules[1].location_id,
                                       "ForwardType": "GRPCS"})
    assert "Error" not in answer, answer
    assert admin.rule(rules[1].location_id).backend_ca == tmp_path / "ca.pem"


# --- write-back -----------------------------------------------------------------------------


def test_forward_type_round_trips_through_writeback(folder: Path) -> None:  # noqa: F811
    text = one_rule(rule='forward_type = "HTTPS"\nbackend_ca = "certs/ca.pem"  # our CA')
    old = parse(text, folder)
    listener = old.listeners[0]
    new = replace(old, listeners=(replace(listener, rules=(
        replace(listener.rules[0], forward_type="GRPCS"),)),))
    document = tomlkit.parse(text)
    writeback.patch(document, old, new)
    written = writeback.render(document)
    assert 'forward_type = "GRPCS"' in written and "# our CA" in written
    assert parse(written, folder).listeners[0].rules[0] == new.listeners[0].rules[0]
    # back to the default: the key leaves the file, as a person would write it
    back = replace(new, listeners=(replace(listener, rules=(
        replace(listener.rules[0], forward_type="HTTP", backend_ca=None),)),))
    writeback.patch(document, new, back)
    written = writeback.render(document)
    assert "forward_type" not in written and "backend_ca" not in written
    assert parse(written, folder).listeners[0].rules[0] == back.listeners[0].rules[0]


def test_a_new_rule_with_a_forward_type_is_written_whole(folder: Path) -> None:  # noqa: F811
    text = one_rule()
    old = parse(text, folder)
    listener = old.listeners[0]
    added = replace(listener.rules[0], url="/grpc/", forward_type="GRPC", targets=())
    new = replace(old, listeners=(replace(listener, rules=listener.rules + (added,)),))
    document = tomlkit.parse(text)
    writeback.patch(document, old, new)
    rules = parse(writeback.render(document), folder).listeners[0].rules
    assert [(r.url, r.forward_type) for r in rules] == [("/", "HTTP"), ("/grpc/", "GRPC")]


# --- TLS client contexts --------------------------------------------------------------------


def test_without_a_ca_the_backend_is_not_verified_and_alpn_is_one_protocol() -> None:
    context = client_context(None, "http/1.1")
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_with_a_ca_the_backend_is_verified_against_it_alone(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    context = client_context(ca, "h2")
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert len(context.get_ca_certs()) == 1  # not the system store


def test_a_bad_ca_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="backend_ca: cannot load .*ca.pem"):
        client_context(bad, "http/1.1")


def test_contexts_are_shared_per_ca_and_renewed_when_the_file_changes(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    contexts = Contexts()
    key, first = contexts.get(ca, "http/1.1")
    assert contexts.get(ca, "http/1.1") == (key, first)
    assert contexts.get(ca, "h2")[1] is not first
    stat = ca.stat()
    trustme.CA().cert_pem.write_to_path(str(ca))

    os.utime(ca, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    key2, second = contexts.get(ca, "http/1.1")
    assert key2 != key and second is not first
    contexts.retain({key2})
    assert contexts.get(ca, "http/1.1")[1] is second
