"""Benchmarks: `make bench` (python -m bench.run). Not run by the test suite."""
