"""nvctl controller: tenant intent -> per-host OpenFlow, kept in sync with each host's OVS."""
