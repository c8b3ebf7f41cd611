"""The CLB API 3.0 actions, as pure functions of (the current Config, the call's parameters).

Owns what each action of SPEC §10 means: DescribeListeners, DescribeTargets, CreateRule,
DeleteRule, RegisterFunctionTargets, DeregisterFunctionTargets, ModifyFunctionTargets,
RegisterTargets, DeregisterTargets, ModifyTargetWeight, the rewrites (AutoRewrite,
ManualRewrite, DeleteRewrite, DescribeRewrite) and the others of ``ACTIONS``; their parameters and Tencent's error
codes for bad ones (``ApiError``). Each action returns ``(new Config or None, answer)``; a change
is a new Config built with ``dataclasses.replace`` (the caller applies it). ``ACTIONS`` is the
one table of actions with the parameters each accepts.

The gateway is one load balancer (``config.load_balancer_id``); a listener's ListenerId is
``lbl-`` + its name; a rule's LocationId is ``config.location_id(listener, domain, url)``. CVM
targets are addressed and shown by ``EniIp`` + ``Port`` (shown as the SDK's ``Backend``: Type
``ENI``, ``PrivateIpAddresses``, plus ``EniIp``); function targets as ``FunctionTargets``.

Must not know: HTTP, authentication, the envelope (admin.py), how a change is applied.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from .config import (REWRITE_DEFAULT_CODE, REWRITE_KEYS, RULE_KEYS, SECRET_VARIABLES,
                     TLS_FORWARD_TYPES, Config, HEALTH_CHECK_KEYS, TARGET_KEYS, HealthCheck,
                     Key, Listener, Rewrite, Rule, Target, api_names, bounds_of, checked,
                     check_rewrites, is_host, location_id, normalize_domain, normalize_url,
                     qualifiers)
from .errors import ConfigError
from .sigv1 import FormText

Params = Mapping[str, Any]
T = TypeVar("T")


class ApiError(Exception):
    """An action failed: Tencent's error ``code`` and a message for the caller."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


#: (listener name, LocationId, CVM address) -> CLB's HealthStatusDetail
TargetHealth = Callable[[str, str, str], str]


@dataclass(frozen=True, slots=True)
class ActionContext:
    config: Config
    environ: Mapping[str, str]
    #: where DescribeTargetHealth reads health; None (a supervisor's admin): all Unknown
    target_health: TargetHealth | None = None


Result = tuple[Config | None, dict[str, Any]]

# --- parameters ---------------------------------------------------------------------------

_TYPE_NAMES: dict[type, str] = {str: "a string", int: "an integer", list: "an array",
                                dict: "an object", bool: "a boolean"}


_FORM_BOOLEANS = {"true": True, "false": False, "1": True, "0": False}


def _from_form(value: FormText, kind: type) -> object:
    """A signature-v1 form value read as the integer or boolean the action expects."""
    if kind is int and value.lstrip("-").isdigit():
        return int(value)
    if kind is bool and value.lower() in _FORM_BOOLEANS:
        return _FORM_BOOLEANS[value.lower()]
    return value


def _opt(params: Params, name: str, kind: type[T], where: str = "") -> T | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, FormText) and kind is not str:
        value = _from_form(value, kind)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ApiError("InvalidParameter.FormatError",
                       f"{where}{name} must be {_TYPE_NAMES[kind]}")
    return value


def required_param(params: Params, name: str, kind: type[T], where: str = "") -> T:
    value = _opt(params, name, kind, where)
    if value is None:
        raise ApiError("MissingParameter", f"{where}{name} is required")
    return value


def _objects(params: Params, name: str) -> list[tuple[str, Params]]:
    """A required, non-empty array of objects, with each one's ``Name.i.`` prefix."""
    items = required_param(params, name, list)
    if not items:
        raise ApiError("InvalidParameterValue.Length", f"{name} must not be empty")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ApiError("InvalidParameter.FormatError", f"{name}.{i} must be an object")
    return [(f"{name}.{i}.", item) for i, item in enumerate(items)]


def _strings(params: Params, name: str) -> list[str] | None:
    values = _opt(params, name, list)
    if values is not None and not all(isinstance(v, str) for v in values):
        raise ApiError("InvalidParameter.FormatError", f"{name} must be an array of strings")
    return values


def _range(params: Params, name: str, lo: int, hi: int, default: int, where: str = "") -> int:
    value = _opt(params, name, int, where)
    if value is None:
        return default
    if not lo <= value <= hi:
        raise ApiError("InvalidParameterValue.Range", f"{where}{name} must be {lo}..{hi}, "
                       f"got {value}")
    return value


def _declared(params: Params, name: str, key: Key, kind: type[T], where: str = "") -> T | None:
    """``params[name]`` checked as the config declares ``key``, its values and range (one
    declaration for the file and the API); None when not given."""
    value = _opt(params, name, kind, where)
    if value is None:
        return None
    try:
        return checked(key, f"{where}{name}", value)  # type: ignore[no-any-return]
    except ValueError as exc:
        code = "InvalidParameterValue.Range" if bounds_of(key.check) else "InvalidParameterValue"
        raise ApiError(code, str(exc)) from None


def only_params(params: Params, allowed: frozenset[str], where: str, code: str) -> None:
    for key, value in params.items():
        if key not in allowed and value is not None:
            raise ApiError(code, f"{where}{key} is not supported by clbscf-proxy")


def _normalized(check: Callable[[str], str], value: str, where: str) -> str:
    try:
        return check(value)
    except ConfigError as exc:
        raise ApiError("InvalidParameterValue", f"{where}{str(exc).split(': ', 1)[-1]}") \
            from None


# --- finding the listener and the rule ------------------------------------------------------


def listener_id(listener: Listener) -> str:
    return "lbl-" + listener.name


def _check_lb(config: Config, params: Params) -> None:
    lb = required_param(params, "LoadBalancerId", str)
    if lb != config.load_balancer_id:
        raise ApiError("InvalidParameter.LBIdNotFound", f"no load balancer {lb!r}; this "
                       f"gateway is {config.load_balancer_id!r}")


def _listener(config: Config, params: Params, key: str = "ListenerId") -> int:
    _check_lb(config, params)
    wanted = required_param(params, key, str)
    for i, listener in enumerate(config.listeners):
        if listener_id(listener) == wanted:
            return i
    raise ApiError("InvalidParameter.ListenerIdNotFound", f"no listener {wanted!r}")


def _rule(listener: Listener, params: Params) -> int:
    """The rule named by LocationId, else by Domain + Url (as CLB's actions take them)."""
    loc = _opt(params, "LocationId", str)
    domain, url = _opt(params, "Domain", str), _opt(params, "Url", str)
    if loc:
        found = [i for i, rule in enumerate(listener.rules) if rule.location_id == loc]
    elif domain is None or url is None:
        raise ApiError("MissingParameter", "LocationId, or Domain and Url, is required")
    else:
        key = (_normalized(normalize_domain, domain, "Domain: "),
               _normalized(normalize_url, url, "Url: "))
        found = [i for i, rule in enumerate(listener.rules) if (rule.domain, rule.url) == key]
    if found:
        return found[0]
    shown = loc or f"{domain} {url}"
    raise ApiError("InvalidParameter.LocationNotFound",
                   f"no rule {shown!r} in listener {listener_id(listener)!r}")


def _with_listener(config: Config, index: int, listener: Listener) -> Config:
    listeners = config.listeners[:index] + (listener,) + config.listeners[index + 1:]
    return replace(config, listeners=listeners)


def _with_targets(ctx: ActionContext, params: Params,
                  change: Callable[[Rule], tuple[Target, ...]]) -> Result:
    li = _listener(ctx.config, params)
    listener = ctx.config.listeners[li]
    ri = _rule(listener, params)
    rules = list(listener.rules)
    rules[ri] = replace(rules[ri], targets=change(rules[ri]))
    return _with_listener(ctx.config, li, replace(listener, rules=tuple(rules))), {}


# --- targets ------------------------------------------------------------------------------

#: FunctionInfo's fields that are an SCF target's keys: API name -> config key
_FUNCTION_FIELDS = {key.api: name for name, key in TARGET_KEYS["SCF"].items() if key.api
                    and name != "weight"}
_QUALIFIER_TYPES = ("VERSION", "ALIAS")
_CVM_KEYS = frozenset({"EniIp", "Port", "Weight", "Type", "Tag"})
_FUNCTION_KEYS = frozenset({"FunctionNamespace", "FunctionName", "FunctionQualifier",
                            "FunctionQualifierType"})


def _qualifier_type(qualifier: str) -> str:
    """SCF: $LATEST and numbered versions are versions; $DEFAULT and names are aliases."""
    return "VERSION" if qualifier == "$LATEST" or qualifier.isdigit() else "ALIAS"


def _host_key(host: str) -> str:
    try:
        return ipaddress.ip_address(host.strip("[]")).compressed
    except ValueError:
        return host.lower()


def target_key(target: Target) -> tuple[str, ...]:
    """What identifies a bound target in a rule: its address, or its function + qualifier."""
    if target.type == "CVM":
        host, _, port = target.address.rpartition(":")
        return ("CVM", _host_key(host), port)
    return ("SCF", target.namespace, target.function, target.qualifier)


def _weight(item: Params, default: int, where: str) -> int:
    """A target's Weight, as the config declares ``weight``."""
    weight = _declared(item, "Weight", TARGET_KEYS["CVM"]["weight"], int, where)
    return default if weight is None else weight


def _cvm_targets(params: Params, default_weight: int = 10) -> list[Target]:
    targets = []
    for where, item in _objects(params, "Targets"):
        if item.get("InstanceId"):
            raise ApiError("UnsupportedOperation", f"{where}InstanceId: this gateway has no "
                           "CVM instances; name the backend by EniIp and Port")
        only_params(item, _CVM_KEYS, where, "UnsupportedOperation")
        host = required_param(item, "EniIp", str, where)
        try:
            ip = ipaddress.ip_address(host)
            shown = f"[{ip.compressed}]" if ip.version == 6 else ip.compressed
        except ValueError:
            if not is_host(host):  # the loader's own test of a host name
                raise ApiError("InvalidParameterValue", f"{where}EniIp must be an IP address "
                               f"or a host name, got {host!r}") from None
            shown = host.lower()
        port = _range(item, "Port", 1, 65535, 0, where)
        if not port:
            raise ApiError("MissingParameter", f"{where}Port is required")
        targets.append(Target(type="CVM", address=f"{shown}:{port}",
                              weight=_weight(item, default_weight, where)))
    return targets


def _function_targets(params: Params) -> list[Target]:
    targets = []
    for where, item in _objects(params, "FunctionTargets"):
        only_params(item, frozenset({"Function", "Weight"}), where, "UnsupportedOperation")
        fn = required_param(item, "Function", dict, where)
        where_fn = where + "Function."
        only_params(fn, _FUNCTION_KEYS, where_fn, "UnsupportedOperation")
        required_param(fn, "FunctionName", str, where_fn)
        # absent, or "" for the namespace and qualifier: the config's default
        given = {name: value for api, name in _FUNCTION_FIELDS.items()
                 if (fn.get(api) != "" or name == "function")
                 and (value := _declared(fn, api, TARGET_KEYS["SCF"][name], str, where_fn))
                 is not None}
        target = Target(type="SCF", **given, weight=_weight(item, 10, where))
        kind = _opt(fn, "FunctionQualifierType", str, where_fn)
        qualifier = target.qualifier
        if kind is not None and kind not in _QUALIFIER_TYPES:
            raise ApiError("InvalidParameterValue", f"{where_fn}FunctionQualifierType must be "
                           f"VERSION or ALIAS, got {kind!r}")
        if kind is not None and kind != _qualifier_type(qualifier):
            raise ApiError("InvalidParameterValue", f"{where_fn}FunctionQualifierType {kind} "
                           f"does not fit FunctionQualifier {qualifier!r}, a "
                           f"{_qualifier_type(qualifier)} ($LATEST and numbers are versions, "
                           "$DEFAULT and names aliases)")
        targets.append(target)
    return targets


def _resolve(ctx: ActionContext, target: Target) -> None:
    """SPEC §1, as the loader checks it: a local [[function]] or remote invocation."""
    key = f"{target.namespace}/{target.function}"
    if target.type != "SCF":
        return
    fn = ctx.config.function(target.namespace, target.function)
    if fn is not None:
        if not fn.has_qualifier(target.qualifier):
            raise ApiError("ResourceNotFound", f"{key} has no version or alias "
                           f"{target.qualifier!r} (it has {', '.join(qualifiers(fn))})")
        return
    if ctx.config.scf is None:
        raise ApiError("ResourceNotFound", f"no [[function]] {key} and no [scf] section for "
                       "remote invocation")
    if not all(ctx.environ.get(name) for name in SECRET_VARIABLES):
        raise ApiError("FailedOperation", f"remote invocation of {key} needs "
                       f"{' and '.join(SECRET_VARIABLES)} in the gateway's environment")


def _show(target: Target) -> str:
    return target.label + (f":{target.qualifier}" if target.type == "SCF" else "")


def _register(parse: Callable[[Params], list[Target]]) -> Callable[[ActionContext, Params], Result]:
    def action(ctx: ActionContext, params: Params) -> Result:
        new = parse(params)

        def change(rule: Rule) -> tuple[Target, ...]:
            seen = {target_key(t) for t in rule.targets}
            for target in new:
                if target_key(target) in seen:
                    raise ApiError("InvalidParameterValue.Duplicate", f"{_show(target)} is "
                                   f"already bound to {rule.location_id}")
                seen.add(target_key(target))
                _resolve(ctx, target)
            return rule.targets + tuple(new)
        return _with_targets(ctx, params, change)
    return action


def _bound(rule: Rule, targets: list[Target]) -> dict[tuple[str, ...], Target]:
    wanted = {target_key(t): t for t in targets}
    have = {target_key(t) for t in rule.targets}
    for key, target in wanted.items():
        if key not in have:
            raise ApiError("InvalidParameterValue", f"{_show(target)} is not bound to "
                           f"{rule.location_id}")
    return wanted


def _deregister(parse: Callable[[Params], list[Target]]) -> Callable[[ActionContext, Params], Result]:
    def action(ctx: ActionContext, params: Params) -> Result:
        gone = parse(params)

        def change(rule: Rule) -> tuple[Target, ...]:
            keys = _bound(rule, gone)
            return tuple(t for t in rule.targets if target_key(t) not in keys)
        return _with_targets(ctx, params, change)
    return action


def _reweigh(parse: Callable[[Params], list[Target]]) -> Callable[[ActionContext, Params], Result]:
    def action(ctx: ActionContext, params: Params) -> Result:
        changed = parse(params)

        def change(rule: Rule) -> tuple[Target, ...]:
            weights = {k: t.weight for k, t in _bound(rule, changed).items()}
            return tuple(replace(t, weight=weights.get(target_key(t), t.weight))
                         for t in rule.targets)
        return _with_targets(ctx, params, change)
    return action


def _weighted_cvm_targets(params: Params) -> list[Target]:
    # ModifyTargetWeight: Targets[].Weight wins over the request's Weight (default 10)
    return _cvm_targets(params, _weight(params, 10, ""))


def _batch_targets(params: Params) -> list[tuple[dict[str, Any], Target]]:
    """BatchRegisterTargets/BatchDeregisterTargets' Targets[BatchTarget]: (where, target)."""
    out = []
    for where, item in _objects(params, "Targets"):
        only_params(item, _CVM_KEYS | {"ListenerId", "LocationId", "InstanceId"}, where,
                    "UnsupportedOperation")
        at = {"LoadBalancerId": params.get("LoadBalancerId"),
              "ListenerId": required_param(item, "ListenerId", str, where),
              "LocationId": required_param(item, "LocationId", str, where)}
        target = {k: item[k] for k in _CVM_KEYS | {"InstanceId"} if k in item}
        [parsed] = _cvm_targets({"Targets": [target]})
        out.append((at, parsed))
    return out


def _batch(kind: Callable[[Callable[[Params], list[Target]]],
                          Callable[[ActionContext, Params], Result]]
           ) -> Callable[[ActionContext, Params], Result]:
    """A Batch action: the single-rule action run once per (listener, rule) named."""
    def action(ctx: ActionContext, params: Params) -> Result:
        _check_lb(ctx.config, params)
        groups: dict[tuple[str, str], list[Target]] = {}
        for at, target in _batch_targets(params):
            groups.setdefault((at["ListenerId"], at["LocationId"]), []).append(target)
        config = ctx.config
        for (listener, location), targets in groups.items():
            single = kind(lambda _params, targets=targets: targets)  # type: ignore[misc]
            new, _ = single(replace(ctx, config=config), {
                "LoadBalancerId": params["LoadBalancerId"], "ListenerId": listener,
                "LocationId": location})
            assert new is not None
            config = new
        # every change is checked before any applies, so no listener fails alone
        return config, {"FailListenerIdSet": [], "Message": ""}
    return action


def _batch_modify_target_weight(ctx: ActionContext, params: Params) -> Result:
    _check_lb(ctx.config, params)
    config = ctx.config
    for where, item in _objects(params, "ModifyList"):
        only_params(item, frozenset({"ListenerId", "LocationId", "Domain", "Url", "Targets",
                                     "Weight"}), where, "UnsupportedOperation")
        at = {"LoadBalancerId": params["LoadBalancerId"], **{
            k: item[k] for k in ("ListenerId", "LocationId", "Domain", "Url") if k in item}}
        try:
            targets = _weighted_cvm_targets(item)
        except ApiError as exc:
            raise ApiError(exc.code, where + exc.message) from None
        single = _reweigh(lambda _params, targets=targets: targets)  # type: ignore[misc]
        new, _ = single(replace(ctx, config=config), at)
        assert new is not None
        config = new
    return config, {}


def _modify_target_port(ctx: ActionContext, params: Params) -> Result:
    moved = _cvm_targets(params)
    new_port = _range(params, "NewPort", 1, 65535, 0)
    if not new_port:
        raise ApiError("MissingParameter", "NewPort is required")

    def change(rule: Rule) -> tuple[Target, ...]:
        keys = _bound(rule, moved)
        out = []
        for t in rule.targets:
            if target_key(t) in keys:
                t = replace(t, address=f"{t.address.rpartition(':')[0]}:{new_port}")
            out.append(t)
        if len({target_key(t) for t in out}) != len(out):
            raise ApiError("InvalidParameterValue.Duplicate", f"a target on port {new_port} "
                           f"is already bound to {rule.location_id}")
        return tuple(out)
    return _with_targets(ctx, params, change)


# --- rules --------------------------------------------------------------------------------

#: HealthCheck's API fields: API name -> config key (HEALTH_CHECK_KEYS)
_HEALTH_FIELDS = {key.api: name for name, key in HEALTH_CHECK_KEYS.items()}
#: the one the API sends as 0/1 where the file has a boolean
_HEALTH_SWITCH = HEALTH_CHECK_KEYS["enabled"].api
#: RuleInput fields we accept only with the value that means "nothing special"
_NEUTRAL_RULE_FIELDS: dict[str, object] = {"TargetType": "NODE", "Quic": False}
#: RuleInput's fields: the rule keys' API names, less RewriteTarget (RuleOutput's: the
#: rewrite actions set it), plus CreateRule's own: several Domains, and the listener's
#: DefaultServer
_RULE_KEYS = (api_names(RULE_KEYS) - {RULE_KEYS["rewrite"].api}) | {"Domains", "DefaultServer"}
#: ModifyRule's: RuleInput's less the domain's (ModifyDomainAttributes changes those)
_MODIFY_RULE_KEYS = _RULE_KEYS - {RULE_KEYS["domain"].api, "Domains", "DefaultServer",
                                  RULE_KEYS["http2"].api}


_DEFAULT_CHECK = HealthCheck()


def _health_check(value: Params | None, where: str,
                  base: HealthCheck = _DEFAULT_CHECK) -> HealthCheck:
    """A HealthCheck input: the fields given, the others as in ``base``."""
    if value is None:
        return base
    only_params(value, frozenset(_HEALTH_FIELDS), where, "UnsupportedOperation")
    fields: dict[str, Any] = {}
    switch = _range(value, _HEALTH_SWITCH, 0, 1, -1, where)
    if switch >= 0:
        fields[_HEALTH_FIELDS[_HEALTH_SWITCH]] = bool(switch)
    for api, name in _HEALTH_FIELDS.items():
        key = HEALTH_CHECK_KEYS[name]
        if api == _HEALTH_SWITCH or value.get(api) in (None, ""):  # "": as it is
            continue
        if bounds_of(key.check) is not None:
            fields[name] = _declared(value, api, key, int, where)
        else:  # a text; the method in any case, as CLB takes it
            text = required_param(value, api, str, where)
            fields[name] = _declared({api: text.upper() if name == "method" else text},
                                     api, key, str, where)
    check = replace(base, **fields)
    if check.timeout > check.interval:  # a check must end before the next one starts
        raise ApiError("InvalidParameterValue", f"{where}TimeOut must be <= IntervalTime")
    return check


def _session(item: Params, where: str, rule: Rule) -> Rule:
    """RuleInput/ModifyRule's SessionExpireTime and CookieName applied to ``rule``, checked as
    the config loader checks session_expire_time and cookie_name."""
    seconds = _declared(item, "SessionExpireTime", RULE_KEYS["session_expire_time"], int,
                        where)
    if seconds is None:
        seconds = rule.session_expire_time
    name = item.get("CookieName")
    name = item.get("CookieName")
    if name != "":  # "": CLB's own cookie name
        name = _declared(item, "CookieName", RULE_KEYS["cookie_name"], str, where)
        name = rule.cookie_name if name is None else name
    if seconds and rule.scheduler != "WRR":  # CLB: only WRR inserts the cookie
        raise ApiError("InvalidParameterValue", f"{where}SessionExpireTime needs Scheduler "
                       f"WRR, got {rule.scheduler}")
    return replace(rule, session_expire_time=seconds, cookie_name=name if seconds else "")


def _forward_type(item: Params, where: str, rule: Rule) -> Rule:
    """RuleInput/ModifyRule's ForwardType applied to ``rule`` (CLB's values; TRPC is not
    public, clb-features.md §2.4). A rule whose config file gives it a ``backend_ca`` keeps
    TLS: the API cannot see or drop that key, so leaving TLS is refused, not done halfway."""
    forward = _declared(item, "ForwardType", RULE_KEYS["forward_type"], str, where)
    if forward is None:
        return rule
    if rule.backend_ca is not None and forward not in TLS_FORWARD_TYPES:
        raise ApiError("InvalidParameterValue", f"{where}ForwardType {forward}: the rule "
                       f"verifies its backends against backend_ca ({rule.backend_ca.name}) "
                       "in the config file, which needs HTTPS or GRPCS; remove it there first")
    return replace(rule, forward_type=forward)


def _http2_input(listener: Listener, params: Params, where: str = "") -> bool | None:
    """CLB's Http2 (RuleInput, ModifyDomainAttributes): the domain's switch, HTTPS listeners
    only; None when not given (or False on an HTTP listener, where it means what it says:
    h2c is the listener's own switch)."""
    value = _opt(params, "Http2", bool, where)
    if value is None or listener.protocol == "HTTPS":
        return value
    if value:
        raise ApiError("UnsupportedOperation", f"{where}Http2: only for an HTTPS listener's "
                       "domains (HTTP listeners speak h2c only with their h2c key)")
    return None


def _with_http2(rules: list[Rule], domain: str, http2: bool | None) -> list[Rule]:
    """Every rule of ``domain`` with the domain's Http2 switch set to ``http2`` (None: as
    it is)."""
    if http2 is None:
        return rules
    return [replace(r, http2=http2) if r.domain == domain else r for r in rules]


def _rule_input(listener: Listener, where: str, item: Params) -> tuple[list[Rule], bool]:
    """The rules of one RuleInput: one per domain (``Domain``, or each of ``Domains``: a
    rule here has one domain, so CLB's rule of several domains is one rule each)."""
    for key, neutral in _NEUTRAL_RULE_FIELDS.items():
        if _opt(item, key, type(neutral), where) not in (None, neutral):
            raise ApiError("UnsupportedOperation", f"{where}{key}: only {neutral!r} is "
                           "supported by clbscf-proxy")
    only_params(item, _RULE_KEYS | frozenset(_NEUTRAL_RULE_FIELDS), where, "UnsupportedOperation")
    url = _normalized(normalize_url, required_param(item, "Url", str, where), where + "Url: ")
    domains = _strings(item, "Domains") or []
    one = _opt(item, "Domain", str, where)
    if one and domains:
        raise ApiError("InvalidParameter", f"{where}Domain and Domains are exclusive")
    names = [one] if one else domains
    if not names:
        raise ApiError("MissingParameter", f"{where}Domain (or Domains) is required")
    made = [_normalized(normalize_domain, name, f"{where}Domain: ") for name in names]
    if len(set(made)) != len(made):
        raise ApiError("InvalidParameterValue.Duplicate", f"{where}Domains names a domain "
                       "twice")
    return [_domain_rule(listener, where, item, url, domain) for domain in made], \
        bool(_opt(item, "DefaultServer", bool, where))


def _domain_rule(listener: Listener, where: str, item: Params, url: str, domain: str) -> Rule:
    scheduler = _declared(item, "Scheduler", RULE_KEYS["scheduler"], str, where) or "WRR"
    health = _health_check(_opt(item, "HealthCheck", dict, where), where + "HealthCheck.")
    # Http2: the domain's switch when given; else the domain's own when it has rules already
    # (one switch per domain), else on (CLB's default for a new domain: UNCONFIRMED)
    http2 = _http2_input(listener, item, where)
    if http2 is None:
        http2 = next((r.http2 for r in listener.rules if r.domain == domain), True)
    rule = _session(item, where, Rule(domain=domain, url=url, scheduler=scheduler,
                                      health_check=health, http2=http2,
                                      location_id=location_id(listener.name, domain, url)))
    return _forward_type(item, where, rule)


def _create_rule(ctx: ActionContext, params: Params) -> Result:
    li = _listener(ctx.config, params)
    listener = ctx.config.listeners[li]
    rules, default = list(listener.rules), listener.default_domain
    for where, item in _objects(params, "Rules"):
        made, make_default = _rule_input(listener, where, item)
        for rule in made:
            if any((r.domain, r.url) == (rule.domain, rule.url) for r in rules):
                raise ApiError("InvalidParameterValue.Duplicate", f"{where}: listener "
                               f"{listener_id(listener)} already has {rule.domain} {rule.url}")
            rules = _with_http2(rules, rule.domain, rule.http2) + [rule]
        # CLB: the first domain of a listener becomes its default (clb-scf-facts §5.1)
        default = made[0].domain if make_default or not default else default
    new = replace(listener, rules=tuple(rules), default_domain=default)
    return _with_listener(ctx.config, li, new), {
        "LocationIds": [r.location_id for r in rules[len(listener.rules):]]}


def _delete_rule(ctx: ActionContext, params: Params) -> Result:
    li = _listener(ctx.config, params)
    listener = ctx.config.listeners[li]
    ids = _strings(params, "LocationIds")
    if ids:
        gone = {_rule(listener, {"LocationId": loc}) for loc in ids}
    else:
        gone = {_rule(listener, {"Domain": params.get("Domain"), "Url": params.get("Url")})}
    rules = tuple(r for i, r in enumerate(listener.rules) if i not in gone)
    domains = [r.domain for r in rules]
    default = listener.default_domain
    named = _opt(params, "NewDefaultServerDomain", str)
    if named:
        default = _normalized(normalize_domain, named, "NewDefaultServerDomain: ")
        if default not in domains:
            raise ApiError("InvalidParameterValue", f"NewDefaultServerDomain {default!r} is "
                           "not the domain of a remaining rule")
    elif default not in domains:
        # CLB: deleting the default domain without naming one makes the earliest left default
        default = domains[0] if domains else ""
    new = replace(listener, rules=rules, default_domain=default)
    return _with_listener(ctx.config, li, new), {}


def _modify_rule(ctx: ActionContext, params: Params) -> Result:
    """ModifyRule: the fields given change, the others stay; the LocationId stays, as on CLB,
    even when the Url changes."""
    li = _listener(ctx.config, params)
    listener = ctx.config.listeners[li]
    ri = _rule(listener, {"LocationId": required_param(params, "LocationId", str)})
    rule = listener.rules[ri]
    url = _opt(params, "Url", str)
    if url is not None:
        url = _normalized(normalize_url, url, "Url: ")
        if any((r.domain, r.url) == (rule.domain, url) for i, r in enumerate(listener.rules)
               if i != ri):
            raise ApiError("InvalidParameterValue.Duplicate", f"listener "
                           f"{listener_id(listener)} already has {rule.domain} {url}")
    scheduler = _declared(params, "Scheduler", RULE_KEYS["scheduler"], str) or rule.scheduler
    if scheduler != "WRR" and params.get("SessionExpireTime") is None:
        params = {**params, "SessionExpireTime": 0}  # CLB keeps sessions only under WRR
    health = _health_check(_opt(params, "HealthCheck", dict), "HealthCheck.", rule.health_check)
    new = _session(params, "", replace(rule, url=url or rule.url, scheduler=scheduler,
                                       health_check=health))
    new = _forward_type(params, "", new)
    rules = list(listener.rules)
    rules[ri] = new
    return _with_listener(ctx.config, li, replace(listener, rules=tuple(rules))), {}


def _modify_domain_attributes(ctx: ActionContext, params: Params) -> Result:
    """ModifyDomainAttributes: rename a domain (NewDomain, or NewDomains with one name) and
    choose the listener's default domain (DefaultServer, NewDefaultServerDomain); Http2 sets the
    domain's HTTP/2 switch (HTTPS listeners)."""
    li = _listener(ctx.config, params)
    listener = ctx.config.listeners[li]
    if _opt(params, "Quic", bool) not in (None, False):
        raise ApiError("UnsupportedOperation", "Quic: only False is supported by clbscf-proxy")
    http2 = _http2_input(listener, params)
    domain = _normalized(normalize_domain, required_param(params, "Domain", str), "Domain: ")
    if all(r.domain != domain for r in listener.rules):
        raise ApiError("InvalidParameter.DomainNotFound", f"no rule of listener "
                       f"{listener_id(listener)} has domain {domain!r}")
    names = _strings(params, "NewDomains")
    renamed = _opt(params, "NewDomain", str)
    if names is not None and renamed is not None:
        raise ApiError("InvalidParameter", "NewDomain and NewDomains are exclusive")
    if names is not None:
        if len(names) != 1:
            raise ApiError("UnsupportedOperation", "NewDomains: clbscf-proxy rules have one "
                           "domain each; give one name")
        renamed = names[0]
    new_domain = domain if renamed is None else _normalized(normalize_domain, renamed,
                                                            "NewDomain: ")
    rules = tuple(_with_http2([replace(r, domain=new_domain) if r.domain == domain else r
                               for r in listener.rules], new_domain, http2))
    keys = [(r.domain, r.url) for r in rules]
    if len(set(keys)) != len(keys):
        raise ApiError("InvalidParameterValue.Duplicate", f"listener {listener_id(listener)} "
                       f"already has rules of {new_domain!r} with the same Url")
    default = new_domain if listener.default_domain == domain else listener.default_domain
    flag = _opt(params, "DefaultServer", bool)
    named = _opt(params, "NewDefaultServerDomain", str)
    if flag:
        default = new_domain
    elif flag is False and default == new_domain:
        if not named:  # a listener always has a default domain (CLB)
            raise ApiError("MissingParameter", "NewDefaultServerDomain is required to switch "
                           "the default domain off")
    if named and flag is not True:
        default = _normalized(normalize_domain, named, "NewDefaultServerDomain: ")
        if all(r.domain != default for r in rules):
            raise ApiError("InvalidParameterValue", f"NewDefaultServerDomain {default!r} is "
                           "not the domain of a rule of the listener")
    new = replace(listener, rules=rules, default_domain=default)
    return _with_listener(ctx.config, li, new), {}


# --- rewrites (CLB's redirects between rules) ---------------------------------------------------


def _rewritten(config: Config, listeners: list[Listener]) -> Config:
    """The config with ``listeners``, its rewrites checked (config.check_rewrites)."""
    try:
        check_rewrites(listeners)
    except ConfigError as exc:
        raise ApiError("FailedOperation", str(exc)) from None
    return replace(config, listeners=tuple(listeners))


def _code(value: int | None, where: str) -> int:
    code = _declared({"": value}, "", REWRITE_KEYS["code"], int, where)
    return REWRITE_DEFAULT_CODE if code is None else code


def _http_listener_for(config: Config) -> int:
    """Where AutoRewrite puts its rules: the HTTP listener on port 80, else the only HTTP
    listener (this gateway binds no listener an API call asks for)."""
    http = [i for i, lst in enumerate(config.listeners) if lst.protocol == "HTTP"]
    on_80 = [i for i in http if config.listeners[i].port == 80]
    if on_80:
        return on_80[0]
    if len(http) == 1:
        return http[0]
    raise ApiError("FailedOperation", "AutoRewrite needs an HTTP listener on port 80, or a "
                   f"single HTTP listener; this gateway has {len(http)} HTTP listeners and "
                   "creates none through the API")


def _auto_target(rewrite: Rewrite, targets: list[Rule], url: str) -> Rewrite:
    """``rewrite`` to the HTTPS rule of ``url``, else of "/", else the domain's first."""
    target = next((r for r in targets if r.url == url), None) or next(
        (r for r in targets if r.url == "/"), targets[0])
    return replace(rewrite, url=target.url)


def _auto_rewrite(ctx: ActionContext, params: Params) -> Result:
    """AutoRewrite: HTTP to HTTPS per domain of the HTTPS listener. Every rule of the domain
    on the HTTP listener redirects (to the HTTPS rule of the same Url, else the domain's
    first); a domain without a "/" rule there gets one, with no targets (BeAutoCreated)."""
    config = ctx.config
    ti = _listener(config, params)
    https = config.listeners[ti]
    if https.protocol != "HTTPS":
        raise ApiError("InvalidParameter", f"ListenerId {listener_id(https)} is "
                       f"{https.protocol}; AutoRewrite redirects to an HTTPS listener")
    own = list(dict.fromkeys(r.domain for r in https.rules))
    named = _strings(params, "Domains")
    domains = [_normalized(normalize_domain, d, f"Domains.{i}: ")
               for i, d in enumerate(named)] if named else own
    codes = _opt(params, "RewriteCodes", list)
    takes = _opt(params, "TakeUrls", list)
    for name, values in (("RewriteCodes", codes), ("TakeUrls", takes)):
        if values is not None and len(values) != len(domains):
            raise ApiError("InvalidParameterValue.Length", f"{name} has {len(values)} "
                           f"values for {len(domains)} domains")
    hi = _http_listener_for(config)
    http = config.listeners[hi]
    rules = list(http.rules)
    for k, domain in enumerate(domains):
        targets = [r for r in https.rules if r.domain == domain]
        if not targets:
            raise ApiError("InvalidParameter.DomainNotFound", f"Domains.{k}: listener "
                           f"{listener_id(https)} has no rule of {domain!r}")
        take = takes[k] if takes is not None else True
        if not isinstance(take, bool):
            raise ApiError("InvalidParameter.FormatError", f"TakeUrls.{k} must be a boolean")
        code = _code(codes[k] if codes is not None else None, f"RewriteCodes.{k}")
        if any(r.domain == domain and r.rewrite is not None and not r.rewrite.auto
               for r in rules):
            raise ApiError("FailedOperation", f"domain {domain!r} of listener "
                           f"{listener_id(http)} has a ManualRewrite; delete it first")
        rewrite = Rewrite(https.name, domain, "", code, take, auto=True)
        rules = [replace(r, rewrite=_auto_target(rewrite, targets, r.url))
                 if r.domain == domain else r for r in rules]
        if not any((r.domain, r.url) == (domain, "/") for r in rules):
            rules.append(Rule(domain=domain, url="/", rewrite=_auto_target(rewrite, targets, "/"),
                              location_id=location_id(http.name, domain, "/")))
    listeners = list(config.listeners)
    listeners[hi] = replace(http, rules=tuple(rules),
                            default_domain=http.default_domain or rules[0].domain)
    return _rewritten(config, listeners), {}


def _rewrite_infos(config: Config, params: Params) -> tuple[int, int, list[tuple[str, int,
                                                                                    Params]]]:
    """(source listener, target listener, [(where, source rule index, info)])."""
    si = _listener(config, params, "SourceListenerId")
    ti = _listener(config, params, "TargetListenerId")
    source = config.listeners[si]
    infos = [(where, _rule(source, {"LocationId": required_param(item, "SourceLocationId", str,
                                                                 where)}), item)
             for where, item in _objects(params, "RewriteInfos")]
    return si, ti, infos


def _manual_rewrite(ctx: ActionContext, params: Params) -> Result:
    """ManualRewrite: each source rule (SourceLocationId) redirects to a target rule
    (TargetLocationId) of TargetListenerId."""
    config = ctx.config
    si, ti, infos = _rewrite_infos(config, params)
    source, target = config.listeners[si], config.listeners[ti]
    rules = list(source.rules)
    for where, ri, item in infos:
        only_params(item, frozenset({"SourceLocationId", "TargetLocationId", "RewriteCode",
                                     "TakeUrl", "SourceDomain"}), where, "UnknownParameter")
        to = target.rules[_rule(target, {"LocationId": required_param(
            item, "TargetLocationId", str, where)})]
        code = _opt(item, "RewriteCode", int, where)
        take = _opt(item, "TakeUrl", bool, where)
        domain = _opt(item, "SourceDomain", str, where)
        if code is not None and (take is None or domain is None):
            raise ApiError("MissingParameter", f"{where}TakeUrl and {where}SourceDomain are "
                           "required with RewriteCode")
        if domain is not None and _normalized(normalize_domain, domain,
                                              where + "SourceDomain: ") != rules[ri].domain:
            raise ApiError("InvalidParameterValue", f"{where}SourceDomain {domain!r} is not "
                           f"the domain of {rules[ri].location_id} ({rules[ri].domain})")
        rules[ri] = replace(rules[ri], rewrite=Rewrite(
            target.name, to.domain, to.url, _code(code, where + "RewriteCode"), bool(take)))
    listeners = list(config.listeners)
    listeners[si] = replace(source, rules=tuple(rules))
    return _rewritten(config, listeners), {}


def _delete_rewrite(ctx: ActionContext, params: Params) -> Result:
    """DeleteRewrite: the named rewrites go; a rule AutoRewrite created (no targets of its
    own) goes with its rewrite."""
    config = ctx.config
    si, ti, infos = _rewrite_infos(config, params)
    source, target = config.listeners[si], config.listeners[ti]
    rules: list[Rule | None] = list(source.rules)
    for where, ri, item in infos:
        rule = source.rules[ri]
        to = target.rules[_rule(target, {"LocationId": required_param(
            item, "TargetLocationId", str, where)})]
        now = rule.rewrite
        if now is None or (now.listener, now.domain, now.url) != (target.name, to.domain,
                                                                   to.url):
            raise ApiError("InvalidParameter", f"{where}: {rule.location_id} does not "
                           f"redirect to {to.location_id}")
        rules[ri] = None if now.auto and not rule.targets else replace(rule, rewrite=None)
    kept = tuple(r for r in rules if r is not None)
    domains = [r.domain for r in kept]
    default = source.default_domain if source.default_domain in domains else (
        domains[0] if domains else "")
    listeners = list(config.listeners)
    listeners[si] = replace(source, rules=kept, default_domain=default)
    return _rewritten(config, listeners), {}


def _rewrite_target(config: Config, rewrite: Rewrite) -> dict[str, Any]:
    target = next(lst for lst in config.listeners if lst.name == rewrite.listener)
    return {"TargetListenerId": listener_id(target),
            "TargetLocationId": location_id(target.name, rewrite.domain, rewrite.url),
            "RewriteCode": rewrite.code, "TakeUrl": rewrite.take_url,
            "RewriteType": "Auto" if rewrite.auto else "Manual"}


def _describe_rewrite(ctx: ActionContext, params: Params) -> Result:
    config = ctx.config
    _check_lb(config, params)
    ids = _strings(params, "SourceListenerIds")
    locations = _strings(params, "SourceLocationIds")
    found = [rule_output(config, lst, r) for lst in config.listeners
             if ids is None or listener_id(lst) in ids
             for r in lst.rules if r.rewrite is not None
             and (locations is None or r.location_id in locations)]
    return None, {"RewriteSet": found}


# --- describing -------------------------------------------------------------------------------


def _select(config: Config, params: Params) -> list[Listener]:
    _check_lb(config, params)
    ids = _strings(params, "ListenerIds")
    protocol = _opt(params, "Protocol", str)
    port = _opt(params, "Port", int)
    return [lst for lst in config.listeners
            if (ids is None or listener_id(lst) in ids)
            and (protocol is None or lst.protocol == protocol.upper())
            and (port is None or lst.port == port)]


def _health_output(check: HealthCheck) -> dict[str, Any]:
    return {api: int(value) if isinstance(value, bool) else value
            for api, value in ((api, getattr(check, name))
                               for api, name in _HEALTH_FIELDS.items())}


def rule_output(config: Config, listener: Listener, rule: Rule) -> dict[str, Any]:
    """CLB's RuleOutput of ``rule``."""
    rewrite = rule.rewrite
    return {"LocationId": rule.location_id, "Domain": rule.domain, "Url": rule.url,
            "Domains": [rule.domain], "Scheduler": rule.scheduler,
            "ListenerId": listener_id(listener), "HealthCheck": _health_output(rule.health_check),
            "DefaultServer": rule.domain == listener.default_domain,
            "ForwardType": rule.forward_type,
            "TargetType": "NODE", "SessionExpireTime": rule.session_expire_time,
            "CookieName": rule.cookie_name,
            "Http2": listener.protocol == "HTTPS" and rule.http2,
            "RewriteTarget": _rewrite_target(config, rewrite) if rewrite is not None else None,
            # a rule AutoRewrite made: its redirect and no targets of its own
            "BeAutoCreated": rewrite is not None and rewrite.auto and not rule.targets}


def _describe_listeners(ctx: ActionContext, params: Params) -> Result:
    listeners = [{"ListenerId": listener_id(lst), "ListenerName": lst.name,
                  "Protocol": lst.protocol, "Port": lst.port, "TargetType": "NODE",
                  "SniSwitch": int(len(lst.certificates) > 1), "KeepaliveEnable": 1,
                  "Rules": [rule_output(ctx.config, lst, r) for r in lst.rules]}
                 for lst in _select(ctx.config, params)]
    return None, {"Listeners": listeners, "TotalCount": len(listeners)}


def _target_output(target: Target) -> dict[str, Any]:
    if target.type == "CVM":
        host, _, port = target.address.rpartition(":")
        return {"Type": "ENI", "InstanceId": "", "EniIp": host.strip("[]"), "Port": int(port),
                "Weight": target.weight, "PrivateIpAddresses": [host.strip("[]")]}
    return {"Function": {"FunctionNamespace": target.namespace,
                         "FunctionName": target.function,
                         "FunctionQualifier": target.qualifier,
                         "FunctionQualifierType": _qualifier_type(target.qualifier)},
            "Weight": target.weight}


#: DescribeTargets filter name -> (applies to "rule" or "target", does it pass given the values)
_FILTERS: dict[str, tuple[str, Callable[[Any, set[str]], bool]]] = {
    "location-id": ("rule", lambda rule, values: rule.location_id in values),
    "private-ip-address": ("target", lambda target, values: target.type == "CVM"
                           and target_key(target)[1] in {_host_key(v) for v in values}),
    "tag": ("target", lambda target, values: False),  # no target of ours carries a tag
}
_Check = Callable[[Any], bool]


def _bind(test: Callable[[Any, set[str]], bool], values: set[str]) -> _Check:
    return lambda item: test(item, values)


def _filters(params: Params) -> dict[str, list[_Check]]:
    """The request's Filters as predicates, by what they apply to ("rule" or "target")."""
    out: dict[str, list[_Check]] = {"rule": [], "target": []}
    for where, item in ([] if params.get("Filters") is None else _objects(params, "Filters")):
        name = required_param(item, "Name", str, where)
        if name not in _FILTERS:
            raise ApiError("InvalidParameterValue.InvalidFilter", f"{where}Name must be one of "
                           f"{', '.join(_FILTERS)}, got {name!r}")
        level, test = _FILTERS[name]
        out[level].append(_bind(test, set(_strings(item, "Values") or [])))
    return out


def _describe_targets(ctx: ActionContext, params: Params) -> Result:
    filters = _filters(params)
    listeners = []
    for lst in _select(ctx.config, params):
        rules = []
        for rule in lst.rules:
            if not all(check(rule) for check in filters["rule"]):
                continue
            shown = [t for t in rule.targets if all(check(t) for check in filters["target"])]
            if shown or not filters["target"]:
                rules.append({"LocationId": rule.location_id, "Domain": rule.domain,
                              "Url": rule.url,
                              "Targets": [_target_output(t) for t in shown if t.type == "CVM"],
                              "FunctionTargets": [_target_output(t) for t in shown
                                                  if t.type == "SCF"]})
        listeners.append({"ListenerId": listener_id(lst), "Protocol": lst.protocol,
                          "Port": lst.port, "Rules": rules, "Targets": [], "EndPort": 0})
    return None, {"Listeners": listeners}


def _describe_target_health(ctx: ActionContext, params: Params) -> Result:
    lbs = _strings(params, "LoadBalancerIds")
    if lbs is not None and ctx.config.load_balancer_id not in lbs:
        return None, {"LoadBalancers": []}
    listener_ids = _strings(params, "ListenerIds")
    locations = _strings(params, "LocationIds")
    health = ctx.target_health
    listeners = []
    for lst in ctx.config.listeners:
        if listener_ids is not None and listener_id(lst) not in listener_ids:
            continue
        rules = []
        for rule in lst.rules:
            if locations is not None and rule.location_id not in locations:
                continue
            targets = []
            for t in rule.targets:
                if t.type != "CVM":  # CLB reports the health of servers only
                    continue
                host, _, port = t.address.rpartition(":")
                detail = health(lst.name, rule.location_id, t.address) if health else "Unknown"
                targets.append({"IP": host.strip("[]"), "Port": int(port), "TargetId": "",
                                "HealthStatus": detail == "Alive",
                                "HealthStatusDetail": detail, "Weight": t.weight})
            rules.append({"LocationId": rule.location_id, "Domain": rule.domain,
                          "Url": rule.url, "Targets": targets})
        listeners.append({"ListenerId": listener_id(lst), "ListenerName": lst.name,
                          "Protocol": lst.protocol, "Port": lst.port, "Rules": rules})
    return None, {"LoadBalancers": [{"LoadBalancerId": ctx.config.load_balancer_id,
                                     "LoadBalancerName": ctx.config.load_balancer_id,
                                     "Listeners": listeners}]}


# --- the action table ---------------------------------------------------------------------

_AT_RULE = frozenset({"LoadBalancerId", "ListenerId", "LocationId", "Domain", "Url"})
_SELECT = frozenset({"LoadBalancerId", "ListenerIds", "Protocol", "Port"})
_REWRITE_PAIR = frozenset({"LoadBalancerId", "SourceListenerId", "TargetListenerId",
                           "RewriteInfos"})


@dataclass(frozen=True, slots=True)
class Action:
    run: Callable[[ActionContext, Params], Result]
    params: frozenset[str]
    mutates: bool = True


ACTIONS: dict[str, Action] = {
    "DescribeListeners": Action(_describe_listeners, _SELECT, mutates=False),
    "DescribeTargets": Action(_describe_targets, _SELECT | {"Filters"}, mutates=False),
    "CreateRule": Action(_create_rule, frozenset({"LoadBalancerId", "ListenerId", "Rules"})),
    "DeleteRule": Action(_delete_rule, _AT_RULE - {"LocationId"}
                          | {"LocationIds", "NewDefaultServerDomain"}),
    "DescribeTargetHealth": Action(_describe_target_health, frozenset({
        "LoadBalancerIds", "ListenerIds", "LocationIds"}), mutates=False),
    "BatchRegisterTargets": Action(_batch(_register), frozenset({"LoadBalancerId",
                                                                "Targets"})),
    "BatchDeregisterTargets": Action(_batch(_deregister), frozenset({"LoadBalancerId",
                                                                    "Targets"})),
    "BatchModifyTargetWeight": Action(_batch_modify_target_weight, frozenset({
        "LoadBalancerId", "ModifyList"})),
    "ModifyTargetPort": Action(_modify_target_port, _AT_RULE | {"Targets", "NewPort"}),
    "ModifyRule": Action(_modify_rule, frozenset({"LoadBalancerId", "ListenerId",
                                                  "LocationId"}) | _MODIFY_RULE_KEYS),
    "ModifyDomainAttributes": Action(_modify_domain_attributes, frozenset({
        "LoadBalancerId", "ListenerId", "Domain", "NewDomain", "NewDomains", "DefaultServer",
        "NewDefaultServerDomain", "Http2", "Quic"})),
    "AutoRewrite": Action(_auto_rewrite, frozenset({"LoadBalancerId", "ListenerId", "Domains",
                                                     "RewriteCodes", "TakeUrls"})),
    "ManualRewrite": Action(_manual_rewrite, _REWRITE_PAIR),
    "DeleteRewrite": Action(_delete_rewrite, _REWRITE_PAIR),
    "DescribeRewrite": Action(_describe_rewrite, frozenset({
        "LoadBalancerId", "SourceListenerIds", "SourceLocationIds"}), mutates=False),
    "RegisterFunctionTargets": Action(_register(_function_targets),
                                       _AT_RULE | {"FunctionTargets"}),
    "DeregisterFunctionTargets": Action(_deregister(_function_targets),
                                         _AT_RULE | {"FunctionTargets"}),
    "ModifyFunctionTargets": Action(_reweigh(_function_targets),
                                     _AT_RULE | {"FunctionTargets"}),
    "RegisterTargets": Action(_register(_cvm_targets), _AT_RULE | {"Targets"}),
    "DeregisterTargets": Action(_deregister(_cvm_targets), _AT_RULE | {"Targets"}),
    "ModifyTargetWeight": Action(_reweigh(_weighted_cvm_targets),
                                  _AT_RULE | {"Targets", "Weight"}),
}
TASK_ACTION = "DescribeTaskStatus"
