"""Run a tiny SVCCAScheduler sweep on a simulated two-node cluster; print one JSON line.

The head node has no CPU, so every trial runs on the other node while the driver (and the
scheduler's mailbox) stay on the head. Used by test_scheduler_e2e.py in a subprocess.
"""

from __future__ import annotations

import tempfile
from typing import Any

from tests.tune.cluster import print_result, simulated_cluster


def main() -> dict[str, Any]:
    import ray
    from ray import tune

    import ikkuna_tune as ik
    from tests.tune.trainables import WeightCosine, WeightSum, eager_freezer, train_tiny

    with simulated_cluster(1) as (cluster, (worker,)), tempfile.TemporaryDirectory() as storage:
        analysis = tune.run(
            ik.instrument(train_tiny, [WeightCosine(), WeightSum()]),
            config={"lr": 0.01, "iterations": 4},
            scheduler=eager_freezer(),
            storage_path=storage,
            verbose=0,
        )
        df = next(iter(analysis.trial_dataframes.values()))
        return {
            "head": cluster.head_node.node_id,
            "worker": worker.node_id,
            "driver": ray.get_runtime_context().get_node_id(),
            "trial_nodes": sorted(set(df["node"])),
            "frozen_conv": df["frozen/conv"].tolist(),
            "weight_sum_conv": df["weight_sum/conv"].tolist(),
        }


if __name__ == "__main__":
    print_result(main)
