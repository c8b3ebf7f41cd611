"""The metrics registry: exposition format 0.0.4 (checked with prometheus_client's parser),
label escaping, histogram buckets, scrape-time collectors, the multi-worker merge and the
proxy's own metric set."""

from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import (CONTENT_TYPE, ProxyMetrics, Registry, format_value,
                           merge_expositions)


def parse(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by (sample name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def families(text: bytes) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text.decode())}


def test_counter_values_parse_back_with_their_labels() -> None:
    registry = Registry()
    hits = registry.counter("app_hits_total", "Hits.", ("path", "code"))
    hits.labels("/a", "200").inc()
    hits.labels(path="/a", code="200").inc(2)
    hits.labels("/b", "404").inc()
    samples = parse(registry.render())
    assert samples[("app_hits_total", (("code", "200"), ("path", "/a")))] == 3
    assert samples[("app_hits_total", (("code", "404"), ("path", "/b")))] == 1
    assert families(registry.render()) == {"app_hits": "counter"}


def test_unlabelled_metrics_exist_as_zero_before_any_observation() -> None:
    registry = Registry()
    registry.counter("app_starts_total", "Starts.")
    registry.gauge("app_temperature", "Temperature.")
    samples = parse(registry.render())
    assert samples[("app_starts_total", ())] == 0
    assert samples[("app_temperature", ())] == 0


def test_label_values_with_quotes_backslashes_and_newlines_are_escaped() -> None:
    registry = Registry()
    nasty = 'a "quoted" \\ back\nslash'
    registry.counter("app_odd_total", "Odd.", ("value",)).labels(nasty).inc()
    text = registry.render()
    assert b'value="a \\"quoted\\" \\\\ back\\nslash"' in text
    assert parse(text)[("app_odd_total", (("value", nasty),))] == 1


def test_help_text_newlines_and_backslashes_are_escaped() -> None:
    registry = Registry()
    registry.counter("app_x_total", "line one\nline two \\ end")
    assert b"# HELP app_x_total line one\\nline two \\\\ end\n" in registry.render()
    [family] = text_string_to_metric_families(registry.render().decode())
    assert family.documentation == "line one\nline two \\ end"


def test_histogram_buckets_are_cumulative_and_end_in_inf() -> None:
    registry = Registry()
    latency = registry.histogram("app_seconds", "Latency.", ("route",), buckets=(0.1, 1, 10))
    for value in (0.05, 0.1, 0.5, 2, 20):
        latency.labels("r").observe(value)
    samples = parse(registry.render())
    bucket = {le: samples[("app_seconds_bucket", (("le", le), ("route", "r")))]
              for le in ("0.1", "1", "10", "+Inf")}
    # 0.1 is "less or equal" to the 0.1 bucket; bounds are spelled like other values
    assert bucket == {"0.1": 2, "1": 3, "10": 4, "+Inf": 5}
    assert samples[("app_seconds_count", (("route", "r"),))] == 5
    assert samples[("app_seconds_sum", (("route", "r"),))] == pytest.approx(22.65)


def test_gauge_set_inc_dec_and_collector_runs_at_render() -> None:
    registry = Registry()
    busy = registry.gauge("app_busy", "Busy.", ("pool",))
    source = {"a": 3}
    registry.add_collector(lambda: busy.labels("a").set(source["a"]))
    assert parse(registry.render())[("app_busy", (("pool", "a"),))] == 3
    source["a"] = 5
    assert parse(registry.render())[("app_busy", (("pool", "a"),))] == 5
    busy.labels("b").inc(2)
    busy.labels("b").dec()
    assert parse(registry.render())[("app_busy", (("pool", "b"),))] == 1


def test_a_failing_collector_does_not_break_the_scrape(caplog: pytest.LogCaptureFixture) -> None:
    registry = Registry()
    registry.counter("app_ok_total", "Ok.").labels().inc()

    def broken() -> None:
        raise RuntimeError("source gone")
    registry.add_collector(broken)
    assert parse(registry.render())[("app_ok_total", ())] == 1
    assert "source gone" in caplog.text


def test_counters_refuse_to_go_down() -> None:
    with pytest.raises(ValueError):
        Registry().counter("app_total", "x").labels().inc(-1)


def test_wrong_label_count_or_names_are_errors() -> None:
    family = Registry().counter("app_total", "x", ("a", "b"))
    with pytest.raises(ValueError):
        family.labels("only-one")
    with pytest.raises(ValueError):
        family.labels(a="1", c="2")


def test_bad_metric_and_label_names_are_refused() -> None:
    registry = Registry()
    with pytest.raises(ValueError):
        registry.counter("9bad", "x")
    with pytest.raises(ValueError):
        registry.histogram("app_h", "x", ("le",))
    with pytest.raises(ValueError):
        registry.gauge("app_g", "x", ("__reserved",))


def test_registering_the_same_definition_returns_the_same_family() -> None:
    registry = Registry()
    first = registry.counter("app_total", "x", ("a",))
    assert registry.counter("app_total", "x", ("a",)) is first
    with pytest.raises(ValueError):
        registry.gauge("app_total", "x", ("a",))
    with pytest.raises(ValueError):
        registry.counter("app_total", "x", ("b",))


def test_label_values_given_as_numbers_reach_the_same_series() -> None:
    family = Registry().counter("app_total", "x", ("code",))
    family.labels(200).inc()  # type: ignore[arg-type]  # a caller's slip must not lose counts
    family.labels("200").inc()
    assert family.labels("200").value == 2


def test_format_value_spells_integers_specials_and_fractions() -> None:
    assert [format_value(v) for v in (3.0, 0.25, math.inf, -math.inf)] == \
        ["3", "0.25", "+Inf", "-Inf"]
    assert format_value(math.nan) == "NaN"


def test_merge_sums_counters_histograms_and_gauges_across_workers() -> None:
    texts = []
    for worker, (hits, observations, busy) in enumerate(((2, (0.2,), 1), (3, (0.2, 5.0), 4))):
        registry = Registry()
        registry.counter("app_hits_total", "Hits.", ("path",)).labels("/").inc(hits)
        hist = registry.histogram("app_seconds", "Latency.", (), buckets=(1.0,))
        for value in observations:
            hist.labels().observe(value)
        registry.gauge("app_busy", "Busy.").labels().set(busy)
        if worker == 1:  # a series only the second worker has
            registry.counter("app_hits_total", "Hits.", ("path",)).labels("/late").inc()
        texts.append(registry.render())
    merged = merge_expositions(texts)
    samples = parse(merged)
    assert samples[("app_hits_total", (("path", "/"),))] == 5
    assert samples[("app_hits_total", (("path", "/late"),))] == 1
    assert samples[("app_seconds_bucket", (("le", "1"),))] == 2
    assert samples[("app_seconds_bucket", (("le", "+Inf"),))] == 3
    assert samples[("app_seconds_count", ())] == 3
    assert samples[("app_seconds_sum", ())] == pytest.approx(5.4)
    assert samples[("app_busy", ())] == 5
    assert merged.count(b"# TYPE app_hits_total counter") == 1


def test_merge_takes_min_or_max_for_the_families_told() -> None:
    texts = []
    for healthy in (1, 0, 1):
        registry = Registry()
        registry.gauge("app_up", "Up.", ("target",)).labels("t").set(healthy)
        registry.gauge("app_peak", "Peak.").labels().set(healthy * 7)
        texts.append(registry.render())
    samples = parse(merge_expositions(texts, {"app_up": "min", "app_peak": "max"}))
    assert samples[("app_up", (("target", "t"),))] == 0
    assert samples[("app_peak", ())] == 7


def test_proxy_metrics_count_requests_by_route_and_status() -> None:
    metrics = ProxyMetrics()
    for status in (200, 200, 502):
        metrics.observe_request("web", "example.com/", "SCF:default/hello", status, 0.02, 100,
                                bytes_received=10)
    metrics.observe_request("web", "", "", 404, 0.001, 50)
    samples = parse(metrics.render())
    route = (("listener", "web"), ("rule", "example.com/"), ("target", "SCF:default/hello"))
    assert samples[("clbscf_requests_total", tuple(sorted(route + (("status", "200"),))))] == 2
    assert samples[("clbscf_requests_total", tuple(sorted(route + (("status", "502"),))))] == 1
    assert samples[("clbscf_response_bytes_total", route)] == 300
    assert samples[("clbscf_request_body_bytes_total", route)] == 30
    assert samples[("clbscf_request_duration_seconds_count", route)] == 3
    unmatched = (("listener", "web"), ("rule", ""), ("status", "404"), ("target", ""))
    assert samples[("clbscf_requests_total", unmatched)] == 1


def invocation_counts(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float],
                      function: str) -> dict[str, float]:
    """A function's invocation series: ok and timed-out invocations, cold starts, and the
    invocations with a duration observed."""
    fn = (("function", function),)
    return {"ok": samples[("clbscf_function_invocations_total", fn + (("outcome", "ok"),))],
            "timeout": samples[("clbscf_function_invocations_total",
                                fn + (("outcome", "timeout"),))],
            "cold": samples[("clbscf_function_cold_starts_total", fn)],
            "timed": samples[("clbscf_function_duration_seconds_count", fn)]}


def test_proxy_metrics_invocations_cold_starts_queue_and_instances() -> None:
    metrics = ProxyMetrics()
    metrics.observe_invocation("default/hello", True, "ok", 0.3)
    metrics.observe_invocation("default/hello", False, "ok", 0.01)
    metrics.observe_invocation("default/hello", False, "timeout")
    metrics.observe_queue_wait("default/hello", 0.5)
    stats = {"default/hello": {"busy": 2, "idle": 1}}
    metrics.track_instances(lambda: stats)
    samples = parse(metrics.render())
    fn = (("function", "default/hello"),)
    assert invocation_counts(samples, "default/hello") == {
        "ok": 2, "timeout": 1, "cold": 1, "timed": 2}
    assert samples[("clbscf_function_queue_wait_seconds_count", fn)] == 1
    assert samples[("clbscf_function_instances", fn + (("state", "busy"),))] == 2
    stats.clear()  # the function went away at a reload: its instance series go too
    assert not any(name == "clbscf_function_instances" for name, _ in parse(metrics.render()))


def test_a_function_route_counts_every_invocation_by_outcome_and_its_warm_durations() -> None:
    metrics = ProxyMetrics()
    meter = metrics.route_meter("web", "a.test/", "SCF:default/hello", "SCF")
    meter.observe_target("", True, 300.0)  # cold
    for ms in (10.0, 20.0, 2500.0):  # warm, through the series resolved once
        meter.observe_target("", False, ms)
    meter.observe_target("timeout", False, 0.0)
    samples = parse(metrics.render())
    fn = (("function", "default/hello"),)
    assert invocation_counts(samples, "default/hello") == {
        "ok": 4, "timeout": 1, "cold": 1, "timed": 4}
    assert samples[("clbscf_function_duration_seconds_sum", fn)] == pytest.approx(2.83)
    assert samples[("clbscf_function_duration_seconds_bucket", fn + (("le", "+Inf"),))] == 4


def test_proxy_metrics_upstreams_connections_and_reloads() -> None:
    metrics = ProxyMetrics()
    metrics.set_upstream_health("web", "example.com/", "10.0.0.7:8080", False)
    metrics.set_upstream_pool("10.0.0.7:8080", active=2, idle=3)
    metrics.observe_upstream_error("10.0.0.7:8080", "connect")
    metrics.set_client_connections("web", 12)
    metrics.observe_reload(True)
    metrics.observe_reload(False)
    samples = parse(metrics.render())
    assert samples[("clbscf_upstream_healthy", (("listener", "web"), ("rule", "example.com/"),
                                                ("upstream", "10.0.0.7:8080")))] == 0
    assert samples[("clbscf_upstream_connections", (("state", "idle"),
                                                    ("upstream", "10.0.0.7:8080")))] == 3
    assert samples[("clbscf_upstream_errors_total", (("kind", "connect"),
                                                     ("upstream", "10.0.0.7:8080")))] == 1
    assert samples[("clbscf_client_connections", (("listener", "web"),))] == 12
    assert samples[("clbscf_config_reloads_total", (("result", "refused"),))] == 1


def test_proxy_metrics_merge_table_keeps_a_target_down_if_one_worker_sees_it_down() -> None:
    texts = []
    for healthy in (True, False):
        metrics = ProxyMetrics()
        metrics.set_upstream_health("web", "r", "10.0.0.7:8080", healthy)
        metrics.observe_request("web", "r", "CVM:10.0.0.7:8080", 200, 0.01, 10)
        texts.append(metrics.render())
    samples = parse(merge_expositions(texts, ProxyMetrics.MERGE))
    assert samples[("clbscf_upstream_healthy", (("listener", "web"), ("rule", "r"),
                                                ("upstream", "10.0.0.7:8080")))] == 0
    assert samples[("clbscf_requests_total", (("listener", "web"), ("rule", "r"),
                                              ("status", "200"),
                                              ("target", "CVM:10.0.0.7:8080")))] == 2


def test_content_type_is_the_text_format_0_0_4() -> None:
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
