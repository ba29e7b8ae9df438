"""Benchmarks: they print numbers and the machine they ran on; they assert nothing."""
