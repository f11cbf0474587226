"""Caxton benchmarks (`make bench`).

A package so that `python -m bench.baselines ...` runs the bare gRPC baseline
servers, and so that the benchmark modules can share `bench.report` and
`bench.support`. Not collected by a plain `pytest` (testpaths is `tests`).
"""
