"""Start Ray on this machine the way the benchmarks need it: 2 CPUs, quiet, and workers that can
import ``experiments`` (Ray pickles the benchmarks' trainables by reference)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["ROOT", "init_local_ray"]

#: The repository root, put on the workers' ``PYTHONPATH``.
ROOT = Path(__file__).resolve().parents[1]


def init_local_ray(num_cpus: int = 2) -> None:
    """``ray.init`` a fresh local cluster (no dashboard, no worker logs on the driver)."""
    import ray

    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
