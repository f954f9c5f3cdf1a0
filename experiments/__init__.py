"""Experiments: bundled data, models, sweeps and benchmarks built on ikkuna_tune."""
