"""Run a tiny SVCCAScheduler sweep on a simulated two-node cluster; print one JSON line.

The head node has no CPU, so every trial runs on the other node while the driver (and the
scheduler's mailbox) stay on the head. Used by test_scheduler_e2e.py in a subprocess, so that
its cluster does not clash with the suite's shared Ray session.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_agent_register_timeout_ms", "120000")
    import ray
    from ray import tune
    from ray.cluster_utils import Cluster

    import ikkuna_tune as ik
    from tests.tune.trainables import WeightCosine, WeightSum, train_tiny

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    worker = cluster.add_node(num_cpus=1)
    ray.init(
        address=cluster.address,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    try:
        with tempfile.TemporaryDirectory() as storage:
            analysis = tune.run(
                ik.instrument(train_tiny, [WeightCosine(), WeightSum()]),
                config={"lr": 0.01, "iterations": 4},
                scheduler=ik.SVCCAScheduler(
                    metric="loss",
                    mode="min",
                    freeze_at=0.9,
                    patience=1,
                    min_travel=0.0,
                    settle_window=1,
                    settle_tol=1e9,
                    plateau=1,
                    min_delta=10.0,
                    grace=0,
                    stop=False,
                    freeze_best=True,
                ),
                storage_path=storage,
                verbose=0,
            )
            df = next(iter(analysis.trial_dataframes.values()))
            out = {
                "head": cluster.head_node.node_id,
                "worker": worker.node_id,
                "driver": ray.get_runtime_context().get_node_id(),
                "trial_nodes": sorted(set(df["node"])),
                "frozen_conv": df["frozen/conv"].tolist(),
                "weight_sum_conv": df["weight_sum/conv"].tolist(),
            }
    finally:
        ray.shutdown()
        cluster.shutdown()
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
