"""Benchmarks of the models against the original methods, one module per use case."""
