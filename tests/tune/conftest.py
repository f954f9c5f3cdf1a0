"""One Ray session shared by every Tune test of a test process (each pytest-xdist worker
starts its own)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray session (2 CPUs) for every Tune test in this process."""
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # a loaded 2-core machine can take longer than Ray's default to start its agents
    os.environ.setdefault("RAY_agent_register_timeout_ms", "120000")
    if not ray.is_initialized():
        ray.init(
            address="local",  # a new local instance, never a cluster left running
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
        )
    yield ray
    ray.shutdown()
