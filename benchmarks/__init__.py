"""Benchmarks run by `make bench` (`python -m benchmarks.run_all`); results go to BENCHMARKS.md.

To add one, create `benchmarks/bench_<name>.py` with a module docstring (its first line
is the section title) and `def run(args) -> str` returning a markdown section body;
`run_all` discovers it, runs it, and replaces only its own section in BENCHMARKS.md.
"""
