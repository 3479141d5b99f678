"""Benchmarks of cure_ext: `python -m bench` (see bench/README.md)."""
