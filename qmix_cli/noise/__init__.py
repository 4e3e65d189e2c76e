"""Corruption models for benchmarks: label noise, image degradations and the mixed-noise protocol."""
