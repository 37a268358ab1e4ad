"""`python -m tuner.report` on the shared small search: tables, filters, pictures, and the re-run check."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from reid_core.diagnostics import HEALTHY_HEAD
from reid_core.train import main as train_main
from tuner.report import load, main

pytestmark = pytest.mark.ray

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def exp(learner_and_stuck):
    return learner_and_stuck[1]


def test_table_has_one_row_per_trial_and_matches_results_csv(exp, capsys):
    assert main([str(exp), "--format", "csv", "--no-plots"]) == 0
    printed = pd.read_csv(io.StringIO(capsys.readouterr().out), dtype={"trial_id": str})
    on_disk = pd.read_csv(exp / "results.csv", dtype={"trial_id": str}).drop(columns=["trial_dir", "chance_ce"])
    pd.testing.assert_frame_equal(printed, on_disk)
    assert len(printed) == 2


def test_table_is_sorted_by_the_objective_best_first(exp):
    frame = load(exp)
    assert list(frame.final_ce_ema) == sorted(frame.final_ce_ema)
    assert frame.iloc[0].head_lr == 1e-2


def test_reason_filter_and_top(exp, capsys):
    assert main([str(exp), "--reason", "stuck_at_chance", "--format", "json", "--no-plots"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["head_lr"] for r in rows] == [1e-6] and rows[0]["end_reason"] == "stuck_at_chance"
    assert main([str(exp), "--top", "1", "--format", "json", "--no-plots"]) == 0
    assert [r["head_lr"] for r in json.loads(capsys.readouterr().out)] == [1e-2]


def test_markdown_to_a_file(exp, tmp_path, capsys):
    out = tmp_path / "table.md"
    assert main([str(exp), "--format", "markdown", "--out", str(out), "--no-plots"]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("| trial_id | head_lr |") and len(lines) == 2 + 2
    assert "saved" in capsys.readouterr().out  # the compute account comes with it


def test_table_prints_the_compute_account_and_writes_both_pictures(exp, capsys):
    for png in ("curves.png", "hyperparams.png"):
        (exp / png).unlink(missing_ok=True)
    assert main([str(exp)]) == 0
    out = capsys.readouterr().out
    assert "stuck_at_chance" in out and "completed" in out
    assert "trial-images spent of" in out and "by end reason" in out
    for png in ("curves.png", "hyperparams.png"):
        data = (exp / png).read_bytes()
        assert data[:8] == PNG and len(data) > 10_000


def test_the_winner_rerun_without_ray_reproduces_the_trials_curve(exp, tmp_path, capsys):
    rerun = tmp_path / "rerun"
    assert train_main(["--config", str(exp / "best_config.json"), "--out", str(rerun), "--log-every", "60"]) == 0
    capsys.readouterr()
    assert main([str(exp), "--compare", str(rerun)]) == 0
    out = capsys.readouterr().out
    assert "reproduced" in out and "over 150 matching steps" in out
    assert (rerun / "compare.png").read_bytes()[:8] == PNG
    diff = float(out.split("largest |ce difference| ")[1].split()[0])
    assert diff <= 1e-5


def exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse's own errors
        return stop.code


@pytest.mark.parametrize(
    "args, message",
    [
        (lambda exp, tmp: [str(tmp)], "is not a reid-tune experiment"),
        (lambda exp, tmp: [str(tmp / "missing")], "does not exist"),
        (lambda exp, tmp: [str(exp), "--reason", "stuck"], "unknown --reason 'stuck'; known: completed"),
        (lambda exp, tmp: [str(exp), "--top", "0"], "--top is 0"),
        (lambda exp, tmp: [str(exp), "--compare", str(tmp)], "is not a plain training run folder"),
        (lambda exp, tmp: [str(exp), "--format", "xml"], "invalid choice: 'xml'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(exp, tmp_path, capsys, args, message):
    assert exit_code(args(exp, tmp_path)) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_reading_an_experiment_imports_neither_ray_nor_torch(learner_and_stuck):
    """Tables and pictures are pandas and matplotlib over files: a laptop without Ray or a GPU reads them."""
    _, exp, _ = learner_and_stuck
    code = f"import sys, tuner.report; tuner.report.load({str(exp)!r}); print('ray' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"


def test_an_experiment_written_with_the_old_names_still_reads(learner_and_stuck, tmp_path):
    """0.1 wrote num_samples and trend_samples in reid_tune.json, lr_backbone/warmup_steps in the base
    config and lr_head/lr_backbone in every result: the same table comes out."""
    _, exp, _ = learner_and_stuck
    old = tmp_path / "old"
    shutil.copytree(exp, old)
    settings = json.loads((old / "reid_tune.json").read_text())
    settings["num_samples"] = settings.pop("num_trials")
    settings["trend_samples"] = None
    settings["base"]["lr_backbone"] = settings["base"].pop("backbone_lr")
    settings["base"]["warmup_steps"] = settings["base"].pop("ce_only_steps")
    (old / "reid_tune.json").write_text(json.dumps(settings))
    for result in old.glob("*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines()]
        for row in rows:
            row["lr_head"], row["lr_backbone"] = row.pop("head_lr_applied"), row.pop("backbone_lr_applied")
        result.write_text("".join(json.dumps(row) + "\n" for row in rows))
    columns = ["trial_id", "head_lr", "end_reason", "stuck_cause", "steps", "final_ce_ema"]
    pd.testing.assert_frame_equal(load(old)[columns], load(exp)[columns])
    assert set(load(old).end_reason) == {"completed", "stuck_at_chance"}


def test_table_shows_the_stuck_trials_head_beside_a_healthy_one(exp, capsys):
    assert main([str(exp), "--no-plots"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "(lr_too_low):" in line)  # the head LR 1e-6 trial
    low, high = HEALTHY_HEAD[25]["head_weight_change"]  # stopped early, at step 20: the table's first step, 25
    assert "head_weight_change 0.0" in line and f"(healthy {low:.3g}-{high:.3g})" in line and "logit_std" in line
