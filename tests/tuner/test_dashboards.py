"""--mlflow: every trial's (and a plain run's) per-step metrics in MLflow, read back with MLflow's own client
(--wandb: tests/tuner/test_wandb.py; a missing package, either one, here)."""

from __future__ import annotations

import pytest

from reid_core.train import main as train_main
from tests.tuner.conftest import MAX_STEPS, run_search

mlflow = pytest.importorskip("mlflow")

pytestmark = pytest.mark.ray


def runs_of(uri: str, experiment: str) -> list:
    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    return client.search_runs([found.experiment_id])


def test_a_search_logs_one_mlflow_run_per_trial_with_every_steps_ce_ema(ray_session, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    code, exp = run_search(tmp_path, "dash", [{"head_lr": 1e-2}, {"head_lr": 1e-6}], extra=["--mlflow", uri, "--skip-preflight"])
    assert code == 0
    runs = runs_of(uri, exp.name)  # grouped in an MLflow experiment named as the search's
    assert len(runs) == 2 and {float(r.data.params["head_lr"]) for r in runs} == {1e-2, 1e-6}
    client = mlflow.MlflowClient(uri)
    steps = {float(r.data.params["head_lr"]): [m.step for m in client.get_metric_history(r.info.run_id, "ce_ema")] for r in runs}
    assert sorted(steps[1e-2]) == list(range(1, MAX_STEPS + 1))  # every optimizer step, the learner to its budget
    assert 0 < len(steps[1e-6]) < MAX_STEPS  # the stuck trial's run ends where the chance-level rule stopped it


@pytest.mark.slow
def test_the_plain_job_logs_the_same_way(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "run"
    argv = ["--set", "synthetic_identities=20", "batch_size=8", "max_steps=5", "threads=1", "--out", str(out), "--mlflow", uri]
    assert train_main(argv) == 0
    (run,) = runs_of(uri, "reid-tune-train")
    history = mlflow.MlflowClient(uri).get_metric_history(run.info.run_id, "ce_ema")
    assert [m.step for m in history] == [1, 2, 3, 4, 5] and run.data.params["max_steps"] == "5"
    assert run.info.status == "FINISHED"


@pytest.mark.parametrize("package", ["mlflow", "wandb"])
@pytest.mark.parametrize("command", ["search", "train"])
def test_without_the_package_installed_the_flag_is_one_line_naming_the_extra(package, command, tmp_path, monkeypatch, capsys):
    import importlib.util

    from tuner.search import main as search_main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))
    argv = [f"--{package}", "--out" if command == "train" else "--storage-path", str(tmp_path / "out")]
    code = (train_main if command == "train" else search_main)(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"pip install 'reid-tune[{package}]'" in err[0]
    assert not (tmp_path / "out").exists()
