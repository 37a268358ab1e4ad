"""``--scheduler pbt`` on real Ray: a small population, the chance-level rule still first, exploits whose LR
takes effect, and the winner's schedule re-run as a plain job; bad input refused before Ray starts."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from reid_core.schedule import lr_factor, scheduled_value
from reid_core.train import main as train_main
from tests.tuner.conftest import run_search
from tuner.lineage import read_lineage
from tuner.ray_files import read_reports
from tuner.report import compare
from tuner.report import main as report_main
from reid_core.config import TrainConfig
from tuner.results import export_config, read_experiment
from tuner.search import main as search_main
from tuner.settings import SearchSettings

MAX_STEPS, GRACE_STEPS, INTERVAL = 100, 40, 15  # rounds at steps 40, 55, 70, 85
WARMUP = 10  # TrainConfig's lr_warmup_steps
PBT = ["--scheduler", "pbt", "--max-steps", str(MAX_STEPS), "--grace-steps", str(GRACE_STEPS), "--perturbation-interval", str(INTERVAL), "--skip-preflight", "--quiet"]  # fmt: skip
# 1e-2 learns fastest, 1e-3 lags it (the bottom of the three learners: copied over), 1e-6 sits at chance
POINTS = [{"head_lr": 1e-2}, {"head_lr": 3e-3}, {"head_lr": 1e-3}, {"head_lr": 1e-6}]


@pytest.fixture(scope="module")
def pbt_search(ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pbt")
    code, exp = run_search(tmp, "pbt", POINTS, extra=PBT)
    return code, exp, pd.read_csv(exp / "results.csv", dtype={"trial_id": str}), read_lineage(exp)


pytestmark = pytest.mark.ray


def test_the_stuck_trial_is_still_stopped_by_the_grace_window_and_named(pbt_search):
    code, _, table, _ = pbt_search
    assert code == 0
    stuck = table[table.trial_id.str.endswith("00003")].iloc[0]  # head_lr 1e-6: never copied over, a stuck trial is stopped first
    assert stuck.end_reason == "stuck_at_chance" and stuck.stuck_cause == "lr_too_low"
    assert stuck.steps <= GRACE_STEPS and stuck.perturbations == 0
    assert (table.end_reason == "completed").sum() == 3


def _copied_head_lrs(exp, exploits: list[dict]) -> list[float]:
    """The head_lr of each exploit's copy, the value PBT perturbed: from Ray's own log of the same exploits in the
    same order (pbt_global.txt; per line: both trials, their iterations, the copy's config, the new config).
    Not the trial's own old value: a trial copied twice from the same top trial may draw the same value again."""
    logged = [json.loads(line) for line in (exp / "pbt_global.txt").read_text().splitlines() if line.strip()]
    assert [line[5]["head_lr"] for line in logged] == [e["new"]["head_lr"] for e in exploits]
    return [line[4]["head_lr"] for line in logged]


def test_at_least_one_trial_continued_from_a_copy_with_a_perturbed_head_lr(pbt_search):
    _, exp, table, lineage = pbt_search
    exploits = lineage["exploits"]
    assert exploits and table.perturbations.sum() == len(exploits)
    for e, copied in zip(exploits, _copied_head_lrs(exp, exploits)):
        assert e["new"]["head_lr"] != copied
        assert (e["step"] - GRACE_STEPS) % INTERVAL == 0  # a round's first step: where trials checkpoint
    assert (exp / "pbt_global.txt").is_file()  # Ray's own log of the same exploits
    perturbed = table[table.perturbations > 0].iloc[0]
    assert ":" in perturbed.head_lr_schedule  # "0.01, 55: 0.005": where the value changed
    assert perturbed.samples_trained < perturbed.samples or perturbed.samples_trained <= MAX_STEPS * 32


def test_after_an_exploit_the_optimizer_applies_the_new_head_lr_times_the_schedule(pbt_search):
    # The checkpoint copied carries the clone's LRs in its optimizer state: the first step after the restore
    # must already apply the new config's head_lr x warm-up/cosine factor, and every step after it.
    _, exp, _, lineage = pbt_search
    dirs = {p.name.split("_")[2] + "_" + p.name.split("_")[3]: p for p in exp.glob("train_trial_*")}
    for e, copied in zip(lineage["exploits"], _copied_head_lrs(exp, lineage["exploits"])):
        reports = read_reports(dirs[e["trial"]] / "result.json")[0]
        start = next(
            i for i, r in enumerate(reports)
            if r["step"] == e["step"] + 1 and r["iterations_since_restore"] == 1 and r["config"]["head_lr"] == e["new"]["head_lr"]
        )  # fmt: skip
        after = [r for r in reports[start : start + 10]]
        for row in after:
            factor = lr_factor(row["step"] - 1, WARMUP, MAX_STEPS)
            assert row["head_lr_applied"] == pytest.approx(e["new"]["head_lr"] * factor, rel=1e-9), (e, row["step"])
            assert row["head_lr_applied"] != pytest.approx(copied * factor, rel=1e-3)  # not the copy's own


def test_a_perturbed_trial_reruns_as_a_plain_job_following_its_schedule_step_for_step(pbt_search, tmp_path):
    # Its weights came from other trials (each exploit copied a checkpoint), all on one seed and data order:
    # the lineage is one run whose head LR changed at the exploits, which the plain job re-runs from scratch.
    _, exp, table, lineage = pbt_search
    settings, trials, _ = read_experiment(exp)
    trial = next(t for t in trials if lineage["trials"][t.trial_id]["changes"])
    cfg = TrainConfig.from_dict(export_config(settings, trial, lineage))
    assert cfg.head_lr_schedule
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    out = tmp_path / "rerun"
    assert train_main(["--config", str(tmp_path / "config.json"), "--out", str(out), "--log-every", "60"]) == 0
    rerun = pd.read_csv(out / "metrics.csv")
    expected = [scheduled_value(cfg.head_lr_schedule, s - 1, cfg.head_lr) * lr_factor(s - 1, WARMUP, MAX_STEPS) for s in rerun.step]
    assert rerun.head_lr_applied.tolist() == pytest.approx(expected, rel=1e-9)
    diff, steps, trial_id, _ = compare(exp, out)
    assert (trial_id, steps, diff) == (trial.trial_id, MAX_STEPS, 0.0)  # every step of the lineage, bit for bit


def test_best_config_holds_the_winner_s_schedule_and_reruns_without_ray(pbt_search, tmp_path):
    _, exp, table, lineage = pbt_search
    best = json.loads((exp / "best_config.json").read_text())
    entry = lineage["trials"][best["trial_id"]]
    assert best["config"]["head_lr"] == entry["initial"]["head_lr"]
    assert bool(best["config"]["head_lr_schedule"]) == any(
        c["values"]["head_lr"] != entry["initial"]["head_lr"] for c in entry["changes"]
    )
    assert [p["trial"] for p in best["pbt_lineage"]][-1] == best["trial_id"]
    assert train_main(["--config", str(exp / "best_config.json"), "--out", str(tmp_path / "best"), "--log-every", "60"]) == 0


def test_report_and_resume_read_the_pbt_setting(pbt_search, capsys):
    _, exp, table, lineage = pbt_search
    settings = SearchSettings.load(exp)
    assert settings.scheduler == "pbt" and settings.perturbation_interval == INTERVAL * 32
    assert report_main([str(exp), "--no-plots"]) == 0
    assert "head_lr_schedule" in capsys.readouterr().out
    # A resumed finished search restores its PBT scheduler, trains nothing more and keeps the lineage.
    code = search_main(["--resume", "--name", exp.name, "--storage-path", str(exp.parent), "--quiet"])
    assert code == 0 and read_lineage(exp) == lineage
    assert pd.read_csv(exp / "results.csv", dtype={"trial_id": str}).set_index("trial_id").steps.to_dict() == table.set_index("trial_id").steps.to_dict()


def _space(tmp_path, text):
    (tmp_path / "space.yaml").write_text(text)
    return ["--space", str(tmp_path / "space.yaml")]


BAD = {
    "nothing to perturb": (lambda t: [*_space(t, "grad_accum_steps: {choice: [1, 2]}\n"), "--scheduler", "pbt"], "changes head_lr or backbone_lr mid-run"),
    "a user's function": (lambda t: ["--scheduler", "pbt", "--trainable", "examples.minimal.train:train"], "reid_core's own training job only"),
    "checkpoint-every": (lambda t: ["--scheduler", "pbt", "--checkpoint-every", "10"], "--checkpoint-every does not apply"),
    "optuna asked for": (lambda t: ["--scheduler", "pbt", "--searcher", "optuna"], "refuses a search algorithm"),
    "a population of one": (lambda t: ["--scheduler", "pbt", "--num-trials", "1"], "needs a population"),
    "zero interval": (lambda t: ["--scheduler", "pbt", "--perturbation-interval", "0"], "--perturbation-interval is 0"),
    "unknown scheduler": (lambda t: ["--scheduler", "hyperband"], "invalid choice: 'hyperband'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_pbt_input_is_one_line_exit_2_and_nothing_written(case, tmp_path, capsys):
    make_args, message = BAD[case]
    storage = tmp_path / "results"
    try:
        code = search_main([*make_args(tmp_path), "--storage-path", str(storage), "--name", "exp"])
    except SystemExit as exit:  # a flag argparse refuses itself
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not storage.exists()


def test_help_says_pbt_starts_from_random_configs_without_optuna(capsys):
    with pytest.raises(SystemExit):
        search_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "refuses a search algorithm" in text and "no Optuna" in text
