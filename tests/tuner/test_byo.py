"""Bring your own training loop: real searches over functions that are not reid_core, and their plain re-runs.

Two user functions, each run from its own folder as its owner would: the seed-style example
(examples/seed_style: its own config, a torchvision ViT with a BNNeck head, HeadMonitor) and a
loop reporting only step, samples, ce and num_classes (examples/minimal). Real Ray (the shared
session), real torch; a few seconds per search.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tuner.cli import main as cli_main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NOT_A_FUNCTION = 3  # a --trainable that names something not callable


def reports_no_ce(config: dict, report) -> None:
    """A function that breaks the contract: its reports carry no 'ce'."""
    for step in range(1, 4):
        report({"step": step, "samples": 8 * step, "loss": 1.0, "num_classes": 10})


def search(tmp_path, folder: str, spec: str, points: list[dict], max_steps: int, grace_steps: int, *extra: str):
    (tmp_path / "points.json").write_text(json.dumps(points))
    code = cli_main(
        [
            "search", "--trainable", spec, "--config", "defaults.yaml", "--space", "space.yaml",
            "--points-to-evaluate", str(tmp_path / "points.json"), "--num-trials", str(len(points)),
            "--max-steps", str(max_steps), "--grace-steps", str(grace_steps),
            "--storage-path", str(tmp_path / "results"), "--name", "exp", *extra,
        ]
    )  # fmt: skip
    return code, tmp_path / "results" / "exp"


def rerun_and_compare(exp: Path, out: Path, capsys) -> str:
    """``reid-tune run`` on the exported winner (the function named by best_config.json), then
    ``reid-tune report --compare``; returns the compare line."""
    assert cli_main(["run", "--config", str(exp / "best_config.json"), "--out", str(out)]) == 0
    assert {"metrics.csv", "summary.json", "config.json"} <= {p.name for p in out.iterdir()}
    capsys.readouterr()
    assert cli_main(["report", str(exp), "--compare", str(out)]) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def seed_search(ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seed")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(EXAMPLES / "seed_style")
        points = [{"lr_head": 1e-2, "gradient_accumulation_steps": 1}, {"lr_head": 1e-6, "gradient_accumulation_steps": 2}]
        code, exp = search(tmp, "seed_style", "tune_glue:train", points, 60, 20)
    return code, exp, tmp


def test_seed_style_search_stops_the_low_head_lr_trial_with_a_named_cause(seed_search):
    code, exp, _ = seed_search
    assert code == 0
    table = pd.read_csv(exp / "results.csv", dtype={"trial_id": str})
    stuck = table[table["lr_head"] == 1e-6].iloc[0]
    assert stuck["end_reason"] == "stuck_at_chance" and stuck["stuck_cause"] == "lr_too_low"
    assert stuck["samples"] < 60 * 16  # stopped early, at the grace window (20 steps x 16 images)
    best = json.loads((exp / "best_config.json").read_text())
    assert best["trainable"] == "tune_glue:train" and best["config"]["lr_head"] == 1e-2
    assert best["config"]["backbone"] == "vit_tiny"  # the user's own config, whole
    assert (exp / "curves.png").is_file()


def test_seed_style_winner_reruns_on_the_trials_curve(seed_search, capsys, monkeypatch):
    _, exp, tmp = seed_search
    monkeypatch.chdir(EXAMPLES / "seed_style")
    line = rerun_and_compare(exp, tmp / "rerun", capsys)
    assert "reproduced" in line and "over 60 matching steps" in line


@pytest.fixture(scope="module")
def minimal_search(ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("minimal")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(EXAMPLES / "minimal")
        points = [{"lr_head": 0.5, "accum": 1}, {"lr_head": 1e-5, "accum": 2}]
        code, exp = search(tmp, "minimal", "minimal_train:train", points, 60, 20)
    return code, exp, tmp


def test_a_function_reporting_only_the_minimum_is_tuned_stopped_and_tabulated(minimal_search, capsys):
    code, exp, _ = minimal_search
    assert code == 0
    table = pd.read_csv(exp / "results.csv", dtype={"trial_id": str})
    assert set(table.columns) >= {"lr_head", "accum", "end_reason", "stuck_cause", "final_ce_ema"}  # the user's keys
    stuck = table[table["lr_head"] == 1e-5].iloc[0]
    assert stuck["end_reason"] == "stuck_at_chance" and stuck["stuck_cause"] == "unknown"  # no evidence, no guess
    assert stuck["steps"] == 10  # accum 2: 20 base steps' images in 10 steps
    learner = table[table["lr_head"] == 0.5].iloc[0]
    assert learner["end_reason"] == "completed" and learner["samples"] == 60 * 32
    assert cli_main(["report", str(exp), "--no-plots"]) == 0
    assert "stuck_at_chance" in capsys.readouterr().out


def test_the_minimal_winner_reruns_on_the_same_curve(minimal_search, capsys, monkeypatch):
    _, exp, tmp = minimal_search
    monkeypatch.chdir(EXAMPLES / "minimal")
    line = rerun_and_compare(exp, tmp / "rerun", capsys)
    assert "reproduced" in line and "over 60 matching steps" in line


BAD = {
    "module not found": (["--trainable", "no_such_module:train"], "cannot import module 'no_such_module'"),
    "function missing": (["--trainable", "minimal_train:trian"], "has no 'trian'; did you mean 'train'?"),
    "not callable": (["--trainable", "tests.tuner.test_byo:NOT_A_FUNCTION"], "'NOT_A_FUNCTION' is a int, not a function"),
    "not module:function": (["--trainable", "minimal_train"], "is not package.module:function"),
    "report without ce": (["--trainable", "tests.tuner.test_byo:reports_no_ce"], "has no 'ce'"),
    "space key not in the config": (["--space", "bad-space.yaml"], "search space key 'lr_haed' is not a key of your config; did you mean 'lr_head'?"),
    "override key not in the config": (["--set", "acum=2"], "did you mean 'accum'?"),
    "reid_core flag": (["--data", "somewhere"], "--data sets reid_core's own config"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_before_ray_and_nothing_written(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(EXAMPLES / "minimal")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))  # tests.tuner.test_byo importable
    (tmp_path / "bad-space.yaml").write_text("lr_haed: {loguniform: [1.0e-5, 1.0]}\n")
    flags, message = BAD[case]
    flags = [str(tmp_path / f) if f == "bad-space.yaml" else f for f in flags]
    args = {"--trainable": "minimal_train:train", "--config": "defaults.yaml", "--space": "space.yaml"}
    for flag, value in zip(flags[::2], flags[1::2]):
        args[flag] = value
    argv = ["search", *[x for kv in args.items() for x in kv], "--storage-path", str(tmp_path / "results"), "--name", "e"]
    code = cli_main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("reid-tune search: error: "), err
    assert message in err
    assert not (tmp_path / "results").exists()


def test_run_of_a_function_missing_ce_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    (tmp_path / "c.yaml").write_text("a: 1\n")
    code = cli_main(["run", "--trainable", "tests.tuner.test_byo:reports_no_ce", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "report(metrics) call 1 has no 'ce'" in err
    assert not (tmp_path / "out").exists()
