"""Benchmarks: scripts named ``bench_*.py`` (never collected by pytest), run by hand."""
