"""The README's example of ``instrument`` + ``tune.run``, run as written (two epochs instead
of ten), and the keys the README says every report then holds."""

from __future__ import annotations

import re

from tests.tune.conftest import ROOT


def _readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    (example,) = [b for b in blocks if "ik.instrument(train, subscribers)" in b]
    return example


def test_the_readme_example_runs_as_written(ray_session, tmp_path) -> None:
    code = _readme_example()
    shortened = code.replace('"epochs": 10', '"epochs": 2').replace(
        'stop={"training_iteration": 10}', 'stop={"training_iteration": 2}'
    )
    where = f"    storage_path={str(tmp_path)!r},\n    verbose=0,\n"
    shortened = shortened.replace('    mode="max",\n)', f'    mode="max",\n{where})')
    # the README's budget and call as this test expects them: else update the test
    assert '"epochs": 2' in shortened and '"training_iteration": 2}' in shortened
    assert "storage_path" in shortened
    scope: dict = {"__name__": "readme_example"}
    exec(compile(shortened, "README.md", "exec"), scope)  # the README's own code
    analysis = scope["analysis"]
    assert [t.status for t in analysis.trials] == ["TERMINATED", "TERMINATED"]
    for trial in analysis.trials:
        last = trial.last_result
        assert last["training_iteration"] == 2
        assert 0.0 <= last["test_accuracy"] <= 1.0 and 0.0 < last["test_accuracy_chance"] < 1.0
        # the README's list of what every report holds, per layer of SmallCNN
        for layer in ("conv1", "conv2", "fc1", "fc2"):
            assert last["frozen"][layer] in (0, 1)
            assert layer in last["freeze_reason"]
            assert layer in last["weight_updates_weights_ratio"]
        assert set(last["self_similarity"]) >= {"conv1", "conv2", "fc1"}
        assert 0.0 <= last["frozen_fraction"] <= 1.0
        assert "step_seconds" in last and "step_seconds_unfrozen" in last
