from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from ray import tune
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import ikkuna_tune as ik
from ikkuna_tune import keys
from ikkuna_tune.backends import EVENT_DIR, EVENT_FILE_SUFFIX
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.tune.session import TrialSession
from ikkuna_tune.tune.train_workers import TrainWorker
from tests.conftest import TinyNet
from tests.tune.trainables import StepCount, WeightSum, data, train_tiny

LAYERS = ("conv", "fc")


def _weight_sums(config: dict, iterations: int, steps: int = 2) -> list[dict[str, float]]:
    """Brute force: the layers' weight sums seen by the last step of each iteration."""
    torch.manual_seed(config.get("seed", 0))
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"])
    x, y = data()
    sums = []
    for _ in range(iterations):
        for _ in range(steps):
            seen = {n: getattr(model, n).weight.detach().sum().item() for n in LAYERS}
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        sums.append(seen)
    return sums


def test_standalone_run_reports_nested_metrics_without_ray() -> None:
    config = {"lr": 0.1, "iterations": 3}
    trainable = ik.instrument(train_tiny, [WeightSum(), StepCount()])
    trainable(config)
    results = ik.local_results()
    assert [r["iteration"] for r in results] == [0, 1, 2]
    assert [r["steps_seen"] for r in results] == [2.0, 4.0, 6.0]
    for result, expected in zip(results, _weight_sums(config, 3)):
        assert result["weight_sum"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
        assert result["frozen"] == {"conv": 0, "fc": 0}
        assert result["frozen_fraction"] == 0.0 and result["step_seconds"] > 0


def test_instrumented_trainable_called_directly_runs_locally_without_tune() -> None:
    ik.tune.instrument(lambda c: None)  # lambdas are fine trainables
    config = {"lr": 0.1, "iterations": 2, "freeze_at_iteration": 0}
    ik.instrument(train_tiny)(config)
    results = ik.local_results()
    assert [r["frozen"] for r in results] == [{"conv": 1, "fc": 0}, {"conv": 1, "fc": 0}]
    # conv was frozen after iteration 0 trained it: its parameters were frozen while
    # iteration 1 trained, not while 0 did
    assert results[0]["frozen_fraction"] == 0.0
    assert results[1]["frozen_fraction"] == pytest.approx(30 / 275)


def test_tune_run_reports_per_layer_metrics_for_every_trial(ray_session, tmp_path) -> None:
    # four trials on two CPUs: with reuse_actors=True two of them run in a reused actor
    config = {"lr": tune.grid_search([0.1, 0.2, 0.3, 0.4]), "iterations": 3}
    trainable = ik.instrument(train_tiny, [WeightSum(backend="tb"), StepCount()])
    assert trainable.__name__ == "train_tiny"
    analysis = tune.run(
        trainable, config=config, storage_path=str(tmp_path), verbose=0, reuse_actors=True
    )
    assert len(analysis.trials) == 4
    for trial in analysis.trials:
        df = analysis.trial_dataframes[trial.trial_id].sort_values("training_iteration")
        assert df["iteration"].tolist() == [0, 1, 2]
        # nothing shared between trials even though the actor is reused
        assert df["steps_seen"].tolist() == [2.0, 4.0, 6.0]
        expected = _weight_sums({"lr": trial.config["lr"]}, 3)
        for layer in LAYERS:
            # a sum of float32 weights near 0: a worker may add them in another order
            assert df[f"weight_sum/{layer}"].tolist() == pytest.approx(
                [e[layer] for e in expected], rel=1e-5, abs=1e-6
            )
            assert df[f"frozen/{layer}"].tolist() == [0, 0, 0]
        assert trial.last_result["weight_sum"].keys() == set(LAYERS)
        # the trial's own TensorBoard events land in its directory in storage, also when
        # its actor was reused
        events = EventAccumulator(str(Path(trial.path) / EVENT_DIR))
        events.Reload()
        assert {"weight_sum/conv", "weight_sum/fc"} <= set(events.Tags()["scalars"])
        assert [e.step for e in events.Scalars("weight_sum/conv")] == list(range(6))


def test_trials_given_one_log_dir_each_copy_their_own_event_files(ray_session, tmp_path) -> None:
    """Every trial writes to one folder the user chose: each trial's storage gets the file it
    wrote, whose values are its own (a later trial's held the earlier trials' files too)."""
    shared = tmp_path / "shared"
    config = {"lr": tune.grid_search([0.1, 0.3]), "iterations": 2, "log_dir": str(shared)}
    trainable = ik.instrument(train_tiny, [WeightSum(backend="tb")])
    analysis = tune.run(trainable, config=config, storage_path=str(tmp_path / "storage"), verbose=0)
    assert len(list(shared.glob("events.out.tfevents*"))) == 2
    for trial in analysis.trials:
        files = list(Path(trial.path).glob("events.out.tfevents*" + EVENT_FILE_SUFFIX))
        assert len(files) == 1, sorted(p.name for p in Path(trial.path).iterdir())
        events = EventAccumulator(str(files[0]))
        events.Reload()
        expected = _weight_sums({"lr": trial.config["lr"]}, 2)
        assert [e.value for e in events.Scalars("weight_sum/conv")][1::2] == pytest.approx(
            [e["conv"] for e in expected], rel=1e-5, abs=1e-6
        )


def test_a_relative_log_dir_keeps_its_place_in_the_trials_storage(ray_session, tmp_path) -> None:
    """``log_dir="tb"`` is a folder of the trial's directory (its working directory): its
    files go to ``tb/`` in the trial's storage too, not to the top beside Tune's own."""
    config = {"lr": 0.1, "iterations": 2, "log_dir": "tb"}
    trainable = ik.instrument(train_tiny, [WeightSum(backend="tb")])
    analysis = tune.run(trainable, config=config, storage_path=str(tmp_path), verbose=0)
    (trial,) = analysis.trials
    ours = sorted(
        str(p.relative_to(trial.path))
        for p in Path(trial.path).rglob("events.out.tfevents*" + EVENT_FILE_SUFFIX)
    )
    assert len(ours) == 1 and ours[0].startswith("tb/"), ours


def test_tuner_with_resources_and_parameters(ray_session, tmp_path) -> None:
    def spec(config):
        return [StepCount()]

    trainable = tune.with_resources(
        tune.with_parameters(ik.instrument(_train_with_data, spec), scale=2.0), {"cpu": 1}
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"lr": tune.grid_search([0.1, 0.2])},
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
        tune_config=tune.TuneConfig(reuse_actors=True),
    )
    grid = tuner.fit()
    assert not grid.errors
    df = grid.get_dataframe()
    assert sorted(df["scaled_lr"].tolist()) == [0.2, 0.4]
    for result in grid:
        history = result.metrics_dataframe.sort_values("training_iteration")
        assert history["steps_seen"].tolist() == [1.0, 2.0]
        assert history["frozen/conv"].tolist() == [0, 0]


def _train_with_data(config: dict, scale: float) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"])
    ik.watch(model, opt)
    x, y = data()
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        ik.report({"scaled_lr": scale * config["lr"]})


# ---------------------------------------------------------------- misuse


def test_report_before_watch_and_watch_twice() -> None:
    def early(config):
        ik.report({"x": 1})

    with pytest.raises(RuntimeError, match=r"report\(\) was called before watch"):
        ik.instrument(early)({})

    def twice(config):
        model = TinyNet()
        ik.watch(model)
        ik.watch(model)

    with pytest.raises(RuntimeError, match=r"watch\(\) was already called"):
        ik.instrument(twice)({})


def test_metric_name_colliding_with_an_output() -> None:
    def clash(config):
        ik.watch(TinyNet())
        ik.report({config["name"]: 1.0})

    # "frozen/fc" is the column Tune makes of the output "frozen" for a layer "fc"
    for name in ("steps_seen", "frozen", "frozen/fc", "steps_seen/extra"):
        with pytest.raises(ValueError, match=rf"Metric name\(s\) \['{name}'\] collide"):
            ik.instrument(clash, [StepCount()])({"name": name})
    for name in ("frozenness", "val/frozen", "loss/train"):  # not taken: reported as given
        ik.instrument(clash, [StepCount()])({"name": name})
        assert ik.local_results()[-1][name] == 1.0
    # the name of a Ray Train job's reports is taken in a job's workers only
    ik.instrument(clash, [StepCount()])({"name": keys.TRAIN_REPORT})
    assert ik.local_results()[-1][keys.TRAIN_REPORT] == 1.0
    in_job = TrialSession([], {}, worker=TrainWorker(rank=0, world_size=1, link=None))
    assert keys.TRAIN_REPORT in in_job.output_names()
    assert keys.TRAIN_REPORT not in TrialSession([], {}).output_names()


def test_two_metric_names_that_tune_flattens_to_one_are_refused() -> None:
    # Tune joins nested names with '/': one of the two values would be lost
    def report(config):
        ik.watch(TinyNet())
        ik.report(config["metrics"])

    with pytest.raises(ValueError, match=r"'val/loss' and 'val' -> 'loss' both become 'val/loss'"):
        ik.instrument(report, [])({"metrics": {"val/loss": 1.0, "val": {"loss": 2.0}}})
    ik.instrument(report, [])({"metrics": {"val/loss": 1.0, "val": {"acc": 2.0}}})
    assert ik.local_results()[-1]["val/loss"] == 1.0


def test_subscriber_spec_that_cannot_be_pickled() -> None:
    locked = StepCount()
    locked.lock = threading.Lock()
    with pytest.raises(ValueError, match="can be pickled.*pickling failed"):
        ik.instrument(train_tiny, [locked])


def test_bad_trainables_and_specs() -> None:
    class Trainable(tune.Trainable):
        pass

    with pytest.raises(ValueError, match="Expected a function trainable"):
        ik.instrument(Trainable)
    with pytest.raises(ValueError, match="list of subscribers or a function"):
        ik.instrument(train_tiny, StepCount())  # type: ignore[arg-type]
    # a class takes one argument, like a function of the config: each trial failed on
    # ik.TestAccuracySubscriber(config), told that its dataset was a dict
    for cls in (StepCount, ik.TestAccuracySubscriber):
        with pytest.raises(ValueError, match=rf"but got the class {cls.__name__}: pass instances"):
            ik.instrument(train_tiny, cls)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Subscriber objects but got int"):
        ik.instrument(train_tiny, [3])  # type: ignore[list-item]
    attached = StepCount()
    attached.attach(MessageBus())
    with pytest.raises(ValueError, match="already attached to a bus"):
        ik.instrument(train_tiny, [attached])

    async def train_async(config):  # type: ignore[no-untyped-def]
        ik.watch(TinyNet())

    # calling it would run nothing: Tune does not await it
    with pytest.raises(ValueError, match="coroutine function"):
        ik.instrument(train_async)


def test_report_from_a_thread_the_trial_started() -> None:
    """A training loop run in a thread of the trial's own reports to the trial's session."""

    def trainable(config):
        model = TinyNet()
        ik.watch(model)
        failures: list[BaseException] = []

        def loop() -> None:
            try:
                for epoch in range(2):
                    ik.report({"epoch": epoch})
            except BaseException as error:  # raised in the thread: handed to the trial
                failures.append(error)

        worker = threading.Thread(target=loop)
        worker.start()
        worker.join()
        if failures:
            raise failures[0]

    ik.instrument(trainable, [StepCount()])({})
    results = ik.local_results()
    assert [r["epoch"] for r in results] == [0, 1]
    assert all("steps_seen" in r and "frozen" in r for r in results)


def test_report_from_an_unrelated_thread_with_two_trials_running_is_a_clear_error() -> None:
    both_watching = threading.Barrier(3)
    reported = threading.Barrier(3)
    errors: list[BaseException] = []

    def trainable(config):
        ik.watch(TinyNet())
        both_watching.wait(timeout=30)
        reported.wait(timeout=30)

    runs = [threading.Thread(target=ik.instrument(trainable), args=({},)) for _ in range(2)]
    for run in runs:
        run.start()
    both_watching.wait(timeout=30)
    try:
        ik.report({"loss": 1.0})  # this thread runs neither trial
    except RuntimeError as error:
        errors.append(error)
    finally:
        reported.wait(timeout=30)
        for run in runs:
            run.join(timeout=30)
    assert len(errors) == 1
    assert "from a thread that runs no trial while 2 trials run in this process" in str(errors[0])


def test_resources_given_to_the_trainable_are_kept_by_instrument() -> None:
    """``instrument(tune.with_resources(f, ...))`` requests what ``with_resources`` asked for
    (the request was dropped: the trial got Tune's default of 1 CPU and no GPU)."""
    from ray import tune
    from ray.tune.trainable.function_trainable import wrap_function

    def trainable(config):  # with_resources marks the function itself: one of this test's own
        train_tiny(config)

    def plain(config):
        train_tiny(config)

    wrapped = ik.instrument(tune.with_resources(trainable, {"cpu": 0.5, "gpu": 1}))
    request = wrap_function(wrapped).default_resource_request({})
    assert request is not None and request.bundles == [{"CPU": 0.5, "GPU": 1.0}]
    assert wrap_function(ik.instrument(plain)).default_resource_request({}) is None


class _Publishes(ik.Subscriber):
    """Publishes a constant under ``kind`` for every weights message."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        super().__init__([ik.Subscription(self, ["weights"])], None, publishes={kind: "META"})

    def compute(self, message) -> None:
        self.publish(self.kind, torch.tensor(7.0), message)


def test_a_subscriber_output_named_like_a_key_of_every_report_is_refused() -> None:
    """Its values would be overwritten in every report by ikkuna_tune's own: refused where
    the subscribers enter (templates: instrument; a function's: watch)."""
    with pytest.raises(ValueError, match="publishes 'frozen_fraction', a key ikkuna_tune adds"):
        ik.instrument(train_tiny, [_Publishes("frozen_fraction")])
    wrapped = ik.instrument(train_tiny, lambda config: [_Publishes("step_seconds")])
    with pytest.raises(ValueError, match=r"ik.watch\(.*publishes 'step_seconds', a key"):
        wrapped({"lr": 0.1})


def _watch_unwrapped(config: dict) -> None:
    """A trainable that uses ik.watch and ik.report but was handed to Tune unwrapped."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exporter = ik.watch(TinyNet())
    said = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    ik.report({"warned": int(any("not wrapped by ik.instrument" in s for s in said))})
    exporter.close()


def test_watch_in_a_tune_trial_not_wrapped_by_instrument_is_warned(ray_session, tmp_path) -> None:
    """Forgetting ik.instrument leaves a trial without subscribers; the only sign was a
    message at INFO level, which a script without logging set up never shows."""
    analysis = tune.run(_watch_unwrapped, storage_path=str(tmp_path), verbose=0)
    assert analysis.trials[0].last_result["warned"] == 1
    # an instrumented trial (same call in its trainable) is not warned
    analysis = tune.run(ik.instrument(_watch_unwrapped), storage_path=str(tmp_path), verbose=0)
    assert analysis.trials[0].last_result["warned"] == 0
