"""Benchmarks: one-command measurements on real servers (not tests; see benchmarks/README.md)."""
