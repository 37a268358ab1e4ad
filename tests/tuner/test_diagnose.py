"""``reid-tune diagnose``: the verdict a search would have given a run that already happened; and the plain job,
the search's stopper and the tables' replay stopping the same recorded curve at the same step."""

from __future__ import annotations

import io
import json

from reid_core.chance import first_verdict
from reid_core.config import TrainConfig
from reid_core.early import scope
from reid_core.runner import RunWriter
from reid_core.runner import main as train_main
from reid_core.schema import STUCK
from reid_core.trainer import Trainer
from tuner.diagnose import main as diagnose_main
from tuner.settings import SearchSettings
from tuner.stoppers import ChanceLevelStopper

BATCH, BUDGET, GRACE = 32, 450, 300


def test_a_stuck_plain_run_stops_early_and_diagnose_on_its_folder_gives_the_same_step_and_cause(tmp_path, capsys):
    out = tmp_path / "run"
    code = train_main(["--set", "head_lr=1e-6", "ce_only_steps=10000", "--max-steps", str(BUDGET), "--grace-steps", str(GRACE),
                       "--stop-when-stuck", "--out", str(out), "--log-every", "1000"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["chance_verdict"] == STUCK and summary["chance_verdict_step"] <= 60
    assert summary["stuck_cause"] == "lr_too_low" and summary["chance_verdict_basis"] == "early"
    assert "early verdict at step" in printed and "lr_too_low" in printed

    assert diagnose_main([str(out), "--max-steps", str(BUDGET)]) == 0
    said = capsys.readouterr().out
    assert f"{STUCK} at step {summary['chance_verdict_step']};" in said and "cause: lr_too_low" in said


def test_diagnose_reads_a_users_json_lines_log_and_judges_it_on_exact_wiring_evidence(tmp_path, capsys):
    trainer = Trainer(TrainConfig(max_steps=BUDGET, ce_only_steps=10_000, batch_size=BATCH, threads=1))
    trainer.model.classifier.weight.requires_grad_(False)  # the bug: a frozen head (no gradient reaches it)
    log = tmp_path / "my_loop.jsonl"
    log.write_text("".join(json.dumps(trainer.train_step()) + "\n" for _ in range(25)))
    assert diagnose_main([str(log), "--max-steps", str(BUDGET)]) == 0
    said = capsys.readouterr().out
    step = int(said.split(f"{STUCK} at step ")[1].split(";")[0])
    assert step <= 20 and "cause: no_gradient" in said and "exact wiring evidence" in said


def test_diagnose_of_a_missing_or_foreign_file_is_one_line_and_exit_2(tmp_path, capsys):
    assert diagnose_main([str(tmp_path / "nope")]) == 2
    (tmp_path / "x.jsonl").write_text('{"step": 1, "loss": 3.0}\n')
    assert diagnose_main([str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "does not exist" in err[0] and "lacks samples, ce, ce_ema, chance_ce" in err[1]


def test_the_search_stopper_the_plain_job_and_the_tables_stop_one_recorded_curve_at_the_same_step(tmp_path):
    cfg = TrainConfig(max_steps=BUDGET, ce_only_steps=10_000, batch_size=BATCH, threads=1, head_lr=1e-6)
    trainer = Trainer(cfg)
    rows = [trainer.train_step() for _ in range(80)]
    settings = SearchSettings(base=cfg.to_dict(), space={}, metric="ce_ema", mode="min", grace_samples=GRACE * BATCH,
                              chance_margin=0.39, max_samples=BUDGET * BATCH, num_trials=1, reduction_factor=2,
                              verdict="early")  # fmt: skip
    stopper = ChanceLevelStopper(settings.grace_samples, settings.chance_margin, keywords=settings.rule_keywords_of())
    live = next(r["step"] for r in rows if stopper("t1", {**r, "config": {"head_lr": 1e-6}}))
    _, replayed = first_verdict(rows, settings.grace_samples, settings.chance_margin, **settings.rule_keywords({"head_lr": 1e-6}))
    writer = RunWriter(cfg, tmp_path / "plain", grace_samples=GRACE * BATCH, stream=io.StringIO(),
                       judge={"verdict": "early", "budget_samples": BUDGET * BATCH, "scope": scope(cfg.to_dict())})  # fmt: skip
    for r in rows:
        writer(r)
    writer.close()
    assert live == replayed["step"] == writer.verdict_step <= 60
    assert stopper.early["t1"].cause == "lr_too_low"
