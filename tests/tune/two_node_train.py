"""Run an instrumented Tune trial whose training is a 2-worker Ray Train job on a simulated
cluster of three nodes; print one JSON line.

The head node has no CPU (the driver and the scheduler's mailbox stay there); each of the two
other nodes has room for one training worker, so the job's ranks run on different nodes. The
scheduler freezes ``conv`` during training. Used by test_train_workers.py in a subprocess.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from tests.tune.cluster import print_result, simulated_cluster

#: the training of the job (also run in one process by the test, as the reference)
CONFIG = {"lr": 0.1, "iterations": 6, "steps": 2}


def main() -> dict[str, Any]:
    import ray
    from ray import tune

    import ikkuna_tune as ik
    from tests.tune.train_job import subscribers, tune_trial
    from tests.tune.trainables import eager_freezer

    with simulated_cluster(2, 2) as (cluster, nodes), tempfile.TemporaryDirectory() as storage:
        config = {**CONFIG, "workers": 2, "worker_cpus": 1.5}
        analysis = tune.run(
            tune.with_resources(ik.instrument(tune_trial, subscribers()), {"cpu": 0.1}),
            config={**config, "storage": storage, "out": storage},
            scheduler=eager_freezer(),
            storage_path=storage,
            verbose=0,
        )
        df = next(iter(analysis.trial_dataframes.values()))
        ranks = [p.read_text().split() for p in sorted(Path(storage).glob("rank*"))]
        return {
            "head": cluster.head_node.node_id,
            "nodes": sorted(node.node_id for node in nodes),
            "driver": ray.get_runtime_context().get_node_id(),
            "rank_nodes": [rank[2] for rank in ranks],
            "rank_digests": [rank[0] for rank in ranks],
            "rank_frozen": [rank[1] for rank in ranks],
            "iterations": df["iteration"].tolist(),
            "frozen_conv": df["frozen/conv"].tolist(),
            "weight_sum_conv": df["weight_sum/conv"].tolist(),
            "gradient_norms": df[["weight_gradients_norm2/conv", "weight_gradients_norm2/fc"]]
            .to_numpy()
            .tolist(),
        }


if __name__ == "__main__":
    print_result(main)
