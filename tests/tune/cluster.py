"""A simulated Ray cluster for the scripts that test a sweep across nodes (run in a subprocess,
so that its cluster does not clash with the suite's shared Ray session)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def simulated_cluster(*node_cpus: int) -> Iterator[tuple[Any, list[Any]]]:
    """A head node without CPUs (the driver and the scheduler's mailbox stay there) and one
    node per entry of ``node_cpus``, with Ray connected to it; yields (cluster, nodes)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_agent_register_timeout_ms", "120000")
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        nodes = [cluster.add_node(num_cpus=cpus) for cpus in node_cpus]
        ray.init(
            address=cluster.address,
            log_to_driver=False,
            configure_logging=False,
            runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
        )
        yield cluster, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()


def print_result(run: Callable[[], dict[str, Any]]) -> None:
    """Print ``run()`` as one JSON line (what run_script reads)."""
    sys.stdout.write(json.dumps(run()) + "\n")
