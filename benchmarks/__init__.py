"""Benchmarks and kernel reports: scripts that use the library as a user would."""
