# The two set-up commands (see README): `make demo` and `make test`.
# Both install what a fresh Debian 12 machine needs (as root), then run.
# `make unit` needs neither root nor Debian packages: only python3 -m venv (python3-venv).
VENV   ?= .venv
PY     := $(VENV)/bin/python
# made when the venv holds nvctl and its test extras (pip only: no root, no Debian package)
STAMP  := $(VENV)/.installed
DEBS   := openvswitch-switch openvswitch-common iperf3 ethtool tcpdump iputils-ping \
          iproute2 mininet bridge-utils python3-venv ovn-central ovn-host \
          isc-dhcp-client busybox-static dnsutils podman runc containernetworking-plugins \
          docker.io golang-go golang-github-appc-cni-dev etcd-server etcd-client \
          chromium chromium-driver qemu-system-x86 linux-image-amd64 bird2

.PHONY: demo test unit integration slo bench bench-scale deps venv clean
# prerequisites in the order written: the Debian packages (python3-venv among them) before the venv
.NOTPARALLEL:

demo: deps $(STAMP)
	$(VENV)/bin/nvctl demo

bench: deps $(STAMP)
	$(PY) -m bench.run

# nvctl and OVN side by side at 10 hosts / 1,000 ports (and 3 hosts for growth): ~25 min
bench-scale: deps $(STAMP)
	$(PY) -m bench.run --only scale

# everything, slo tests included
test: deps $(STAMP)
	NVCTL_REQUIRE_INTEGRATION=1 $(PY) -m pytest -v --durations=25 tests

# no root, no lab: the venv is all it needs (about 40 s)
unit: $(STAMP)
	$(PY) -m pytest -v -m "not integration" tests

integration: deps $(STAMP)
	NVCTL_REQUIRE_INTEGRATION=1 $(PY) -m pytest -v -m integration tests

# only the service-level numbers (pings lost, gaps, durations), with the functional
# tests that measure them in the same lab run (marked measures)
slo: deps $(STAMP)
	NVCTL_REQUIRE_INTEGRATION=1 $(PY) -m pytest -v -m "slo or measures" tests

# policy-rc.d (when the machine has none) keeps the packages from starting services of
# their own while they install: no system dockerd; tests start their own daemons by PID.
deps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  made=""; if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made=1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  rc=$$?; if [ -n "$$made" ]; then rm -f /usr/sbin/policy-rc.d; fi; exit $$rc; \
	fi

$(STAMP): pyproject.toml
	@python3 -m venv $(VENV) || { echo "python3 -m venv failed: Debian needs python3-venv (as root: make deps)" >&2; exit 1; }
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

clean:
	rm -rf $(VENV) *.egg-info
