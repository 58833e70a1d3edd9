"""Tooling around the core: training, data, benchmarks and references."""
