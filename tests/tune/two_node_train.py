"""Run an instrumented Tune trial whose training is a 2-worker Ray Train job on a simulated
cluster of three nodes; print one JSON line.

The head node has no CPU (the driver and the scheduler's mailbox stay there); each of the two
other nodes has room for one training worker, so the job's ranks run on different nodes. The
scheduler freezes ``conv`` during training. Used by test_train_workers.py in a subprocess, so
that its cluster does not clash with the suite's shared Ray session.
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
    from tests.tune.train_job import subscribers, tune_trial

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=2), cluster.add_node(num_cpus=2)]
    ray.init(
        address=cluster.address,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    scheduler = ik.SVCCAScheduler(
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
    )
    try:
        with tempfile.TemporaryDirectory() as storage:
            config = {"lr": 0.1, "iterations": 6, "steps": 2, "workers": 2, "worker_cpus": 1.5}
            analysis = tune.run(
                tune.with_resources(ik.instrument(tune_trial, subscribers()), {"cpu": 0.1}),
                config={**config, "storage": storage, "out": storage},
                scheduler=scheduler,
                storage_path=storage,
                verbose=0,
            )
            df = next(iter(analysis.trial_dataframes.values()))
            ranks = [p.read_text().split() for p in sorted(Path(storage).glob("rank*"))]
            out = {
                "head": cluster.head_node.node_id,
                "nodes": sorted(node.node_id for node in nodes),
                "driver": ray.get_runtime_context().get_node_id(),
                "rank_nodes": [rank[2] for rank in ranks],
                "rank_digests": [rank[0] for rank in ranks],
                "rank_frozen": [rank[1] for rank in ranks],
                "iterations": df["iteration"].tolist(),
                "frozen_conv": df["frozen/conv"].tolist(),
                "weight_sum_conv": df["weight_sum/conv"].tolist(),
            }
    finally:
        ray.shutdown()
        cluster.shutdown()
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
