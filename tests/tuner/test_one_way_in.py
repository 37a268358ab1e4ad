"""One way in: our own training function is a function under the contract like any user's.

The same function, ours, is searched twice on the same seed, one trial at a time: as the default
(`reid-tune search`) and wrapped in a module of its own, as a user would wrap it, through
``--trainable``. Both searches must propose the same trials, end them for the same reasons and
train them on the same curves; the plain re-runs ``reid-tune train`` and ``reid-tune run`` of the
winner are one command and write the same files.
"""

from __future__ import annotations

import json
import textwrap

import pandas as pd
import pytest
import yaml

from reid_core.job import ReIDJob, job_for
from tests.tuner.conftest import BATCH
from tuner.cli import main as cli_main
from tuner.lineage import PERTURBABLE

pytestmark = [pytest.mark.ray]

WRAPPER = textwrap.dedent(
    '''
    """A user's module that tunes reid-tune's own function, as anyone would wrap a function they call."""
    from reid_core.train import train as reid_train


    def train(config, report):
        return reid_train(config, report)
    '''
)
POINTS = [{"head_lr": 1e-2}, {"head_lr": 1e-6}, {"head_lr": 3e-3}]


def _ce(run) -> list[float]:
    return pd.read_csv(run / "metrics.csv")["ce"].tolist()


def _curves(exp) -> dict[float, list[float]]:
    """head_lr -> the ce of every step its trial reported."""
    table = pd.read_csv(exp / "results.csv", dtype={"trial_id": str})
    out = {}
    for _, row in table.iterrows():
        lines = (exp / row["trial_dir"] / "result.json").read_text().splitlines()
        out[row["head_lr"]] = [json.loads(line)["ce"] for line in lines]
    return out


@pytest.fixture(scope="module")
def both(ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one-way")
    (tmp / "space.yaml").write_text("head_lr: {loguniform: [1.0e-6, 1.0e-1]}\n")
    (tmp / "points.json").write_text(json.dumps(POINTS))
    common = [
        "--space", str(tmp / "space.yaml"), "--points-to-evaluate", str(tmp / "points.json"), "--num-trials", "3",
        "--max-concurrent", "1", "--max-steps", "60", "--grace-steps", "30", "--skip-preflight", "--seed", "0",
        "--storage-path", str(tmp / "results"), "--chance-margin", "0.5",
        # the window verdict: the early one reads our function's head at once but a user's function only on exact
        # wiring evidence (docs/verdicts.md), which would stop the two differently by design
        "--verdict", "window",
    ]  # fmt: skip
    ours = cli_main(["search", *common, "--name", "ours", "--set", "ce_only_steps=1000", f"batch_size={BATCH}"])
    # the user's copy of the same base config: what the first search wrote, as their own YAML file
    base = json.loads((tmp / "results" / "ours" / "reid_tune.json").read_text())["base"]
    (tmp / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp / "my_tune.py").write_text(WRAPPER)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)  # the user runs from their own folder
        wrapped = cli_main(["search", *common, "--name", "wrapped", "--trainable", "my_tune:train", "--config", "base.yaml"])
    return ours, wrapped, tmp


def test_ours_and_ours_wrapped_as_a_user_function_run_the_same_trials_on_the_same_curves(both):
    ours, wrapped, tmp = both
    assert ours == 0 and wrapped == 0
    a, b = (pd.read_csv(tmp / "results" / name / "results.csv", dtype={"trial_id": str}).set_index("head_lr") for name in ("ours", "wrapped"))
    assert sorted(a.index) == sorted(b.index) == sorted(p["head_lr"] for p in POINTS)
    columns = ["end_reason", "stuck_cause", "steps", "samples"]
    assert a.loc[sorted(a.index), columns].equals(b.loc[sorted(b.index), columns])
    assert a.loc[1e-6, "end_reason"] == "stuck_at_chance" and a.loc[1e-2, "end_reason"] == "completed"
    curves_a, curves_b = _curves(tmp / "results" / "ours"), _curves(tmp / "results" / "wrapped")
    assert curves_a == curves_b  # bit for bit: the same function, seed, threads and data order
    settings = json.loads((tmp / "results" / "wrapped" / "reid_tune.json").read_text())
    assert settings["trainable"] == "my_tune:train" and settings["grace_samples"] == 30 * BATCH  # one unit: images


def test_train_and_run_are_one_command_writing_the_same_files(both, monkeypatch):
    _, _, tmp = both
    best = tmp / "results" / "ours" / "best_config.json"
    assert cli_main(["train", "--config", str(best), "--out", str(tmp / "by-train"), "--max-steps", "5"]) == 0
    assert cli_main(["run", "--config", str(best), "--out", str(tmp / "by-run"), "--max-steps", "5"]) == 0
    header = [(tmp / d / "metrics.csv").read_text().splitlines()[0] for d in ("by-train", "by-run")]
    assert header[0] == header[1]
    assert _ce(tmp / "by-train") == _ce(tmp / "by-run")
    # the user's winner names its function; run finds it from best_config.json
    monkeypatch.chdir(tmp)
    wrapped_best = tmp / "results" / "wrapped" / "best_config.json"
    assert json.loads(wrapped_best.read_text())["trainable"] == "my_tune:train"
    assert cli_main(["run", "--config", str(wrapped_best), "--out", str(tmp / "wrapped-run"), "--max-steps", "5"]) == 0
    assert _ce(tmp / "wrapped-run") == _ce(tmp / "by-run")


def test_the_searchs_chance_margin_reaches_the_runs_own_judgements(both):
    """--chance-margin is written into our config (where the head-LR raise and sdm_start=go_line read it)."""
    _, _, tmp = both
    settings = json.loads((tmp / "results" / "ours" / "reid_tune.json").read_text())
    assert settings["chance_margin"] == 0.5 and settings["base"]["chance_margin"] == 0.5
    best = json.loads((tmp / "results" / "ours" / "best_config.json").read_text())
    assert best["config"]["chance_margin"] == 0.5 and best["search"]["chance_margin"] == 0.5


def test_what_differs_between_functions_is_asked_of_the_job():
    ours, theirs = job_for(None), job_for("my_tune:train")
    assert isinstance(ours, ReIDJob) and job_for("reid_core.train:train").spec == ours.spec
    assert set(ours.perturbable) == set(PERTURBABLE) and theirs.perturbable == ()
    assert ours.rerun_command("b.json").startswith("reid-tune train --config b.json")
    assert theirs.rerun_command("b.json").startswith("reid-tune run --trainable my_tune:train --config b.json")
    assert ours.exported() == {} and theirs.exported() == {"trainable": "my_tune:train"}
