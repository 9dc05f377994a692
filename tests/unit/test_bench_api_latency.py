"""bench.api_latency's pure parts: the tenant it reads, the order of the modes, the
summaries over repetitions (ratios per repetition, then their median and range), the
flat ratio names and the table. The benchmark itself is not run here."""
from bench.api_latency import MODES, free_ports, latency_summary, ratios, report, rotated, summarize, tenant_yaml
from topology.schema import load_tenant


def test_the_tenant_is_valid_and_lives_on_hv1_only():
    t = load_tenant(tenant_yaml("bench", ports=10), known_hosts=["hv1"])
    assert t.name == "bench"
    assert len(t.ports) == 10 and {p.host for p in t.ports} == {"hv1"}


def test_every_mode_leads_one_repetition_in_turn():
    assert [rotated(MODES, r)[0] for r in range(3)] == list(MODES)
    assert all(sorted(rotated(MODES, r)) == sorted(MODES) for r in range(7))


def test_latency_summary_is_in_ms_with_a_nearest_rank_p99():
    s = latency_summary([i / 1000 for i in range(1, 201)])  # 1..200 ms
    assert s == {"n": 200, "median_ms": 100.5, "p99_ms": 198.0}


def test_ratios_are_taken_per_repetition_then_summarized():
    runs = [{"unix": {"median_ms": 1.0}, "https_keepalive": {"median_ms": 2.0}},
            {"unix": {"median_ms": 2.0}, "https_keepalive": {"median_ms": 3.0}},
            {"unix": {"median_ms": 4.0}, "https_keepalive": {"median_ms": 20.0}}]
    s = summarize(runs, ("median_ms",))
    assert s["unix"]["median_ms"]["median"] == 2.0
    assert s["https_keepalive"]["median_ms"]["median"] == 3.0
    # 2.0, 1.5, 5.0: not the ratio of the medians (1.5)
    assert s["ratios"]["https_keepalive_over_unix_median_ms"] == {"median": 2.0, "min": 1.5, "max": 5.0,
                                                                 "runs": [2.0, 1.5, 5.0]}
    assert "unix_over_unix_median_ms" not in s["ratios"]


def test_a_figure_missing_in_a_repetition_is_left_out_not_made_up():
    runs = [{"unix": {"x": 1.0}, "https_new_tls": {"x": None}}, {"unix": {"x": 1.0}, "https_new_tls": {"x": 3.0}}]
    s = summarize(runs, ("x",))
    assert s["ratios"]["https_new_tls_over_unix_x"]["runs"] == [3.0]


def _result():
    def fig(v):
        return {"median": v, "min": v, "max": v, "runs": [v]}

    def mode(v):
        return {"median_ms": fig(v), "p99_ms": fig(2 * v), "server_cpu_ms": fig(0.1), "client_cpu_ms": fig(0.2)}

    seq = {op: {"unix": mode(0.5), "https_keepalive": mode(1.0), "https_new_tls": mode(5.0),
                "ratios": {"https_keepalive_over_unix_median_ms": fig(2.0),
                           "https_keepalive_over_unix_p99_ms": fig(2.0),
                           "https_new_tls_over_unix_median_ms": fig(10.0),
                           "https_new_tls_over_unix_p99_ms": fig(10.0)}}
           for op in ("tenant.show", "ping")}
    conc = {m: {"requests_per_s": fig(r), "median_ms": fig(1.0), "p99_ms": fig(3.0), "server_cpu_ms": fig(0.3)}
            for m, r in zip(MODES, (1000.0, 800.0, 200.0))}
    conc["ratios"] = {"https_keepalive_over_unix_requests_per_s": fig(0.8),
                      "https_new_tls_over_unix_requests_per_s": fig(0.2)}
    return {"sequential": {"requests": 200, "reps": 1, "answer_bytes": {"tenant.show": 3000, "ping": 14},
                           "ops": seq, "credential_load_ms": fig(0.5)},
            "concurrent": {"clients": 50, "per_client": 20, "op": "tenant.show", "reps": 1, **conc},
            "load_before": 0.1, "cpus": 2}


def test_flat_ratio_names_are_stable_and_sorted():
    got = ratios(_result())
    assert got["api_tenant_show_keepalive_over_unix_median"] == 2.0
    assert got["api_ping_new_tls_over_unix_p99"] == 10.0
    assert got["api_50clients_keepalive_over_unix_requests_per_s"] == 0.8
    assert "api_50clients_keepalive_over_unix_median" not in got  # not measured in this result
    assert list(got) == sorted(got)


def test_the_table_names_every_mode_and_ratio():
    text = report(_result())
    for m in ("unix socket", "kept-alive", "new TLS connection"):
        assert text.count(m) == 3  # tenant.show, ping, the clients at once
    assert "b/a: median 2.00x (2.00-2.00)" in text
    assert "c/a: throughput 0.20x" in text


def test_free_ports_differ():
    ports = free_ports(4)
    assert len(set(ports)) == 4
