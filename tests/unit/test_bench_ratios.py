"""results.json's top-level ratios: stable names, picked from the figures that were
measured, nothing made up for the ones that were not."""
from bench.run import ratios


def test_ratios_keep_the_versus_names_and_add_the_others_only_when_measured():
    res = {"versus": {"ratios": {"flows_per_host_nvctl_over_ovn": 0.49}},
           "install": {"ratio_controller_to_ofctl": 0.94},
           "verify": {"ports": 10000, "full_verify_s": {"median": 85.8, "min": 66.6, "max": 88.1},
                      "recheck_ms": {"median": 187.2, "min": 158.6, "max": 338.4}},
           "observe": {"cpu": {"refresh_share": {"median": 0.0373}}}}
    got = ratios(res)
    assert got == {"flows_per_host_nvctl_over_ovn": 0.49, "install_controller_over_ofctl_bundle": 0.94,
                   "verify_seconds_10k_ports": 85.8, "verify_seconds_10k_ports_min": 66.6,
                   "verify_seconds_10k_ports_max": 88.1, "verify_recheck_ms_10k_ports": 187.2,
                   "verify_recheck_ms_10k_ports_min": 158.6, "verify_recheck_ms_10k_ports_max": 338.4,
                   "controller_cpu_share_at_1s_stats_refresh": 0.0373}
    assert list(got) == sorted(got)


def test_a_verify_at_another_size_is_not_reported_as_the_10k_figure():
    assert "verify_seconds_10k_ports" not in ratios({"verify": {"ports": 1000, "full_verify_s": 3.0}})
    assert ratios({}) == {}


def test_northd_and_the_largest_scale_lab_get_their_stable_names():
    res = {"northd": {"ratios": {"compile_nvctl_over_northd": 0.41, "change_one_port_nvctl_over_northd": 0.006}},
           "scale": {"sizes": {"3": {"ratios": {"convergence_plugged_nvctl_over_ovn": 0.2}},
                               "10": {"ratios": {"convergence_plugged_nvctl_over_ovn": 0.3,
                                                 "memory_nvctl_over_ovn": None}}},
                     "growth": {"memory_nvctl": 1.5}}}
    got = ratios(res)
    assert got == {"compile_nvctl_over_northd": 0.41, "change_one_port_nvctl_over_northd": 0.006,
                   "scale10_convergence_plugged_nvctl_over_ovn": 0.3,
                   "scale10_growth_from_3_hosts_memory_nvctl": 1.5}


def test_the_one_port_change_at_10k_ports_is_reported_with_its_spread():
    res = {"change": {"ports": 10000, "change_ms_median": 4.1, "change_ms_min": 3.6, "change_ms_max": 9.0,
                      "ratio_change_to_full": 0.0013}}
    got = ratios(res)
    assert got == {"change_one_port_ms_10k_ports": 4.1, "change_one_port_ms_10k_ports_min": 3.6,
                   "change_one_port_ms_10k_ports_max": 9.0, "change_one_port_over_full_recompile": 0.0013}
    assert "change_one_port_ms_10k_ports" not in ratios({"change": {"ports": 1000, "change_ms_median": 2.0}})


def test_a_controller_restart_at_10_hosts_1000_ports_is_reported_with_its_spread():
    res = {"cluster": {"restart": {"hosts": 10, "ports": 1000,
                                   "restart_to_in_sync_s": {"median": 2.9, "min": 2.5, "max": 3.4, "n": 3}}}}
    assert ratios(res) == {"restart_seconds_10_hosts_1000_ports": 2.9, "restart_seconds_10_hosts_1000_ports_min": 2.5,
                           "restart_seconds_10_hosts_1000_ports_max": 3.4}
    quick = {"cluster": {"restart": {"hosts": 3, "ports": 60, "restart_to_in_sync_s": {"median": 1.0}}}}
    assert "restart_seconds_10_hosts_1000_ports" not in ratios(quick)
