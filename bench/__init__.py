"""Benchmarks: `make bench` runs the stack benchmark; `python -m bench.bench_gateway` the simulated gateway alone."""
