"""Ray Tune integration: per-trial buses and subscribers, reported as Tune metrics."""

from ikkuna_tune.tune.instrument import instrument, local_results, report, watch

__all__ = ["instrument", "local_results", "report", "watch"]
