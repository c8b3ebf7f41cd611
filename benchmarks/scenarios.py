"""The scenarios, each a function ``Bench -> list[Row]``, and their registry; the targets are
issue 12's (which replaced issue 8's).

Each builds its rows (what is compared, the issue's targets), then fills both sides through
``harness.compare`` (wrk scenarios; ``cvm`` and ``https`` also run the floor relay, whose rows
stand beside ours against the same peer runs) or its own measurement (match time, idle
memory). A failure
lands in the row's ``error`` and the run goes on. Knows the configs to generate and the targets;
knows nothing of how rows are printed.
"""

from __future__ import annotations

from collections.abc import Callable

from benchmarks import confs, idle, matchbench, procs, resume, rulegen
from benchmarks.harness import FLOOR, OURS, PEER, Bench, Load, compare, fail, pick_round
from benchmarks.report import Check, Row, Side

ORIGIN = confs.ORIGIN_BODY.encode()
HELLO = b"Hello CLB"


def _cvm_rule(bench: Bench) -> list[tuple[str, str, str]]:
    return [(confs.BENCH_DOMAIN, "/", confs.cvm_target(bench.origin_port()))]


# -- our proxy's configs of the three request paths (profile.py loads the same) ---------------

def cvm_toml(bench: Bench) -> str:
    return confs.proxy_listener(rules=_cvm_rule(bench))


def scf_toml(bench: Bench, concurrency: int) -> str:
    return (confs.proxy_listener(rules=[(confs.BENCH_DOMAIN, "/", confs.SCF_TARGET)])
            + "\n" + confs.hello_function(bench.code.hello_code, concurrency,
                                          bench.invocations_ahead))


def https_toml(bench: Bench) -> str:
    return confs.proxy_listener(protocol="HTTPS", rules=_cvm_rule(bench),
                                tls=bench.certificate())


def floor_row(name: str, beside: Row, label: str) -> Row:
    """The floor relay's row: its own ours side, ``beside``'s peer (the same runs)."""
    return Row(name, f"floor relay (benchmarks/floor_relay.py) in place of ours: "
               f"{beside.description}", beside.unit, Side(label), beside.peer)


def cvm(bench: Bench) -> list[Row]:
    row = Row("cvm", "CVM path: proxy -> origin vs nginx proxy_pass (keepalive) -> origin",
              "req/s", Side("clbscf-proxy"), Side("nginx proxy_pass"),
              checks=(Check("value", ">=", 0.9), Check("p99", "<=", 1.5)))
    floor = floor_row("cvm-floor", row, "floor relay")
    compare(bench, [Load(row, ORIGIN, floor=floor)], {
        OURS: lambda: bench.proxy("proxy-cvm", cvm_toml(bench)),
        PEER: lambda: bench.nginx_proxy("nginx-cvm", bench.origin_port()),
        FLOOR: lambda: bench.floor("floor-cvm")})
    return [row, floor]


def cvm_log(bench: Bench) -> list[Row]:
    """The CVM path with both access logs on, JSON lines to a file."""
    row = Row("cvm-log", "CVM path with the JSON access log to a file: ours (stdout to a file) "
              "vs nginx log_format escape=json", "req/s", Side("clbscf-proxy log"),
              Side("nginx proxy_pass log"))
    compare(bench, [Load(row, ORIGIN)], {
        OURS: lambda: bench.proxy("proxy-cvm-log", cvm_toml(bench), access_log=True),
        PEER: lambda: bench.nginx_proxy("nginx-cvm-log", bench.origin_port(), access_log=True)})
    return [row]


def _scf(bench: Bench, name: str, concurrency: int, checks: tuple[Check, ...]) -> Row:
    row = Row(name, f"SCF path: Hello CLB function (concurrency {concurrency}) vs nginx -> "
              f"uvicorn ASGI app ({concurrency} worker{'s' if concurrency > 1 else ''})",
              "req/s", Side(f"clbscf-proxy scf x{concurrency}"),
              Side(f"nginx+uvicorn x{concurrency}"), checks=checks)

    def peer() -> procs.Server:
        app = bench.uvicorn(concurrency)
        try:
            front = bench.nginx_proxy(f"nginx-{name}", app.port)
        except BaseException:
            app.stop()
            raise
        front.companions.append(app)  # stopping nginx stops uvicorn too
        return front

    compare(bench, [Load(row, HELLO)], {
        OURS: lambda: bench.proxy(f"proxy-{name}", scf_toml(bench, concurrency)), PEER: peer})
    return row


def scf(bench: Bench) -> list[Row]:
    """One function instance vs one uvicorn worker: the honest one-instance comparison."""
    return [_scf(bench, "scf", 1, (Check("value", ">=", 1.0),))]


def scf2(bench: Bench) -> list[Row]:
    """Two instances vs two uvicorn workers."""
    return [_scf(bench, "scf-c2", 2, (Check("value", ">=", 1.0),))]


def https(bench: Bench) -> list[Row]:
    keep = Row("https-keepalive", "HTTPS keep-alive: TLS listener -> origin vs nginx ssl "
               "proxy_pass, same certificate", "req/s", Side("clbscf-proxy tls"),
               Side("nginx tls"), checks=(Check("value", ">=", 0.8),))
    fresh = Row("https-handshake", "HTTPS new handshake per request (Connection: close)",
                "req/s", Side("clbscf-proxy tls"), Side("nginx tls"),
                checks=(Check("value", ">=", 0.8),))
    floor = floor_row("https-floor", keep, "floor relay tls")
    fresh_floor = floor_row("https-handshake-floor", fresh, "floor relay tls")
    loads = [Load(keep, ORIGIN, scheme="https", floor=floor),
             Load(fresh, ORIGIN, scheme="https", closing=True, floor=fresh_floor)]
    compare(bench, loads, {
        OURS: lambda: bench.proxy("proxy-https", https_toml(bench)),
        PEER: lambda: bench.nginx_proxy("nginx-https", bench.origin_port(), tls=True),
        FLOOR: lambda: bench.floor("floor-https", tls=True)})
    return [keep, floor, fresh, fresh_floor]


#: h2load's load of the HTTP/2 scenario: connections, and concurrent streams on each
H2_CONNECTIONS, H2_STREAMS = 10, 10


def h2(bench: Bench) -> list[Row]:
    """HTTP/2 (issue 15): h2load over TLS with ALPN h2 against the HTTPS listener (its rules'
    ``http2`` is on by default) and against nginx ``listen ... ssl http2``, both proxying to
    the origin over HTTP/1.1 keep-alive; the same certificate, alternating rounds."""
    row = Row("h2", f"HTTP/2 over TLS (ALPN h2), h2load {H2_CONNECTIONS} connections x "
              f"{H2_STREAMS} streams: HTTPS listener -> origin vs nginx ssl http2 proxy_pass, "
              "same certificate", "req/s", Side("clbscf-proxy h2"), Side("nginx h2"))
    compare(bench, [Load(row, ORIGIN, scheme="https", h2_streams=H2_STREAMS,
                         connections=H2_CONNECTIONS)], {
        OURS: lambda: bench.proxy("proxy-h2", https_toml(bench)),
        PEER: lambda: bench.nginx_proxy("nginx-h2", bench.origin_port(), tls=True, http2=True)})
    return [row]


#: parallel ``openssl s_time`` clients of the resumption scenario
RESUME_CLIENTS = 4


def https_resume(bench: Bench) -> list[Row]:
    """Resumed TLS handshakes (issue 15): ``openssl s_time -reuse`` clients, each request a
    new connection resuming the client's session (tickets), TLS 1.2 and 1.3; ours and nginx
    (shared session cache, tickets on by default) with the same certificate, in alternating
    rounds, each side's round kept by ``bench.statistic``."""
    rows = {version: Row(f"https-resume-{label}", f"resumed {label} handshakes, a GET each "
                         f"({RESUME_CLIENTS} openssl s_time -reuse clients), same certificate",
                         "conn/s", Side("clbscf-proxy tls"), Side("nginx tls"))
            for version, label in (("-tls1_3", "tls13"), ("-tls1_2", "tls12"))}
    starters: dict[str, Callable[[], procs.Server]] = {
        OURS: lambda: bench.proxy("proxy-resume", https_toml(bench)),
        PEER: lambda: bench.nginx_proxy("nginx-resume", bench.origin_port(), tls=True)}
    servers: dict[str, procs.Server] = {}
    try:
        for which, start in starters.items():
            bench.log(f"  {which}: {getattr(rows['-tls1_3'], which).label}")
            try:
                servers[which] = start()
            except Exception as exc:  # noqa: BLE001 - fail soft: the rows say why
                fail(list(rows.values()), which, exc)
        runs: dict[tuple[str, str], list[resume.Resumed]] = {}
        for round_no in range(bench.rounds):
            for which, server in servers.items():
                for version, row in rows.items():
                    try:
                        got = resume.measure(server, seconds=bench.duration,
                                             clients=RESUME_CLIENTS, version=version,
                                             cpus=bench.load_cpus)
                    except Exception as exc:  # noqa: BLE001
                        fail([row], which, exc, server)
                        continue
                    row.extra.setdefault("rounds", {}).setdefault(which, []).append(
                        round(got.rate))
                    runs.setdefault((version, which), []).append(got)
                    bench.log(f"    {row.scenario} {which} round {round_no + 1}: "
                              f"{got.rate:,.0f} conn/s, {got.resumed_share:.0%} resumed, CPU "
                              f"{got.cpu_us or 0:.1f} µs/conn")
        for (version, which), got_runs in runs.items():
            got = got_runs[pick_round([g.rate for g in got_runs], bench.statistic)]
            side: Side = getattr(rows[version], which)
            side.value = got.rate
            side.cpu_us_per_request = None if got.cpu_us is None else round(got.cpu_us, 2)
            side.notes = f"{got.resumed:,} of {got.connections:,} resumed"
    finally:
        for server in servers.values():
            server.stop()
    return list(rows.values())


def _rules_toml(bench: Bench, rules: rulegen.RuleSet) -> str:
    target = confs.cvm_target(bench.origin_port())
    return confs.proxy_listener(rules=[(d, u, target) for d, u in rules.rules],
                                default_domain=rules.rules[0][0])


def rules(bench: Bench) -> list[Row]:
    table = rulegen.build()
    row = Row("rules-10k", f"{len(table.rules):,} rules (domains: "
              + ", ".join(f"{n} {kind}" for kind, n in table.kinds.items())
              + f"; urls: prefix and regex) vs 1 rule; request hits rule {table.hit_index}",
              "req/s", Side(f"{len(table.rules):,} rules"), Side("1 rule"),
              checks=(Check("value", ">=", 0.95),))
    hit = table.rules[table.hit_index]
    one = rulegen.RuleSet(rules=(hit,), hit_index=0, hit_host=table.hit_host,
                          hit_path=table.hit_path, kinds={})
    compare(bench, [Load(row, ORIGIN, path=table.hit_path, host=table.hit_host)], {
        OURS: lambda: bench.proxy("proxy-rules-10k", _rules_toml(bench, table)),
        PEER: lambda: bench.proxy("proxy-rules-1", _rules_toml(bench, one))})
    return [row]


def match(bench: Bench) -> list[Row]:
    table = rulegen.build()
    row = Row("match", f"RuleTable.match per request over {len(table.rules):,} rules: native "
              "vs pure Python", "match/s", Side("native"), Side("pure Python"),
              checks=(Check("value", ">=", 5.0),))
    path = bench.workdir / "match-rules.toml"
    # the origin is not needed to match; any port makes the config valid
    target = confs.cvm_target(9)
    path.write_text(confs.proxy_listener(rules=[(d, u, target) for d, u in table.rules],
                                         default_domain=table.rules[0][0]))
    bench.log("  timing RuleTablePy / RuleTable ...")
    try:
        result = matchbench.run(path, rulegen.probes(),
                                (table.hit_host, table.hit_path, table.hit_index))
    except Exception as exc:  # noqa: BLE001 - fail soft: the row says why
        row.error = f"{exc}"
        return [row]
    row.peer.value = 1e9 / result.py_ns
    row.peer.notes = f"{result.py_ns:,.0f} ns/match"
    row.extra = {"py_ns": result.py_ns, "native_ns": result.native_ns,
                 "native": result.native_status, "py_build_s": result.build_s,
                 "probes": result.probes}
    if result.native_ns is None:
        row.error = f"native: {result.native_status}"
    else:
        row.ours.value = 1e9 / result.native_ns
        row.ours.notes = f"{result.native_ns:,.0f} ns/match"
    return [row]


def idle_memory(bench: Bench) -> list[Row]:
    count = bench.idle_connections
    row = Row("idle-memory", f"RSS growth per idle keep-alive connection, {count:,} open "
              "(one request each, CVM path)", "B/conn", Side("clbscf-proxy"),
              Side("nginx proxy_pass"), checks=(Check("value", "<=", 4.0),))
    # beyond the default 10,000 so the run's own connections are never refused
    toml = confs.proxy_listener(rules=_cvm_rule(bench), max_connections=count * 2 + 1000)
    starters: dict[str, Callable[[], procs.Server]] = {
        OURS: lambda: bench.proxy("proxy-idle", toml),
        PEER: lambda: bench.nginx_proxy("nginx-idle", bench.origin_port(),
                                        worker_connections=count * 2 + 1000),
    }
    for which, start in starters.items():
        side = {OURS: row.ours, PEER: row.peer}[which]
        bench.log(f"  {which}: {side.label}, opening {count:,} connections")
        try:
            server = start()
        except Exception as exc:  # noqa: BLE001 - fail soft: the row says why
            fail([row], which, exc)
            continue
        try:
            result = idle.measure(server.port, count, server.rss_bytes)
            side.value = result.per_connection
            side.notes = (f"RSS {result.rss_before / 2**20:.1f} -> "
                          f"{result.rss_after / 2**20:.1f} MiB, {result.still_open:,} open")
            bench.log(f"    {side.value:,.0f} B/conn ({side.notes})")
        except Exception as exc:  # noqa: BLE001
            fail([row], which, exc, server)
        finally:
            server.stop()
    return [row]


#: --only names -> scenario, in the order a full run goes
SCENARIOS: dict[str, Callable[[Bench], list[Row]]] = {
    "cvm": cvm, "cvm-log": cvm_log, "scf": scf, "scf2": scf2, "https": https,
    "https-resume": https_resume, "h2": h2, "rules": rules, "match": match, "idle": idle_memory,
}
