"""The benchmarks behind `scripts/bench` (entry point: __main__.py)."""
