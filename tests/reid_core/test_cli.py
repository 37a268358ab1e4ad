"""The plain command line ``python -m reid_core.train``: its files, reproducibility and its errors.

Errors a user can fix must give exit code 2, exactly one line on stderr, no traceback,
and leave ``--out`` unwritten. A few cases run in a fresh interpreter (the real stderr);
the rest call ``main([...])`` in-process, which is ~7 s per case faster.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from pathlib import Path

import pytest

import reid_core.config
from reid_core.config import TrainConfig
from reid_core.schema import METRIC_COLUMNS
from reid_core.train import main
TIMINGS = ("images_per_s", "data_wait_share")  # wall-clock measurements: differ between two runs of one curve

# Small and fast, and crossing every phase: CE-only warm-up, SDM ramp, full SDM, an evaluation mid-way.
SMALL = [
    "synthetic_identities=20",
    "batch_size=8",
    "max_steps=6",
    "ce_only_steps=2",
    "sdm_ramp_steps=2",
    "eval_every=3",
    "threads=1",
    "device=cpu",
]


def run_main(argv: list[str]) -> int:
    """``main(argv)`` as the shell sees it: argparse's usage errors exit via SystemExit."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)


def read_rows(path: Path, drop: tuple[str, ...] = ()) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]


# --- a successful run ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["--set", *SMALL, "--out", str(out)]) == 0
    return out


def test_writes_one_metrics_row_per_step(run_dir: Path):
    with open(run_dir / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == METRIC_COLUMNS
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [int(r["samples"]) for r in rows] == [8, 16, 24, 32, 40, 48]
    assert [float(r["sdm_weight"]) for r in rows] == [0.0, 0.0, 0.5, 1.0, 1.0, 1.0]
    assert [bool(r["val_r1"]) for r in rows] == [False, False, True, False, False, True]  # eval_every=3
    assert all(math.isfinite(float(r["ce_ema"])) for r in rows)


def test_reports_the_lrs_the_optimizer_applied_under_the_fields_names(run_dir: Path):
    rows = read_rows(run_dir / "metrics.csv")
    assert {"head_lr_applied", "backbone_lr_applied"} <= set(rows[0]) and not {"lr_head", "lr_backbone"} & set(rows[0])
    cfg = TrainConfig.from_file(run_dir / "config.json")
    # LR warm-up (10 steps) then cosine: the first step applies a tenth of each configured LR
    assert float(rows[0]["head_lr_applied"]) == pytest.approx(cfg.head_lr / cfg.lr_warmup_steps)
    assert float(rows[0]["backbone_lr_applied"]) == pytest.approx(cfg.backbone_lr / cfg.lr_warmup_steps)


def test_a_best_config_written_before_the_renames_still_reruns(tmp_path: Path, capsys, monkeypatch):
    """best_config.json files exported by 0.1 name the fields lr_backbone and warmup_steps."""
    monkeypatch.setattr(reid_core.config, "_noted", set())  # each old key is noted once per process
    old = TrainConfig.from_dict({k.split("=")[0]: k.split("=")[1] for k in SMALL}).to_dict()
    old["lr_backbone"], old["warmup_steps"] = old.pop("backbone_lr"), old.pop("ce_only_steps")
    old_file = tmp_path / "best_config.json"
    old_file.write_text(json.dumps({"config": old, "trial_id": "abc", "metrics": {"lr_head": 0.01}}))
    assert main(["--config", str(old_file), "--out", str(tmp_path / "rerun")]) == 0
    cfg = TrainConfig.from_file(tmp_path / "rerun" / "config.json")
    assert cfg.ce_only_steps == 2 and cfg.backbone_lr == 1e-5
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: config key")]
    assert sorted(notes) == [
        "note: config key 'lr_backbone' is now 'backbone_lr'; read as 'backbone_lr'",
        "note: config key 'warmup_steps' is now 'ce_only_steps'; read as 'ce_only_steps'",
    ]


def test_writes_summary(run_dir: Path):
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["end_reason"] == "completed"
    assert summary["steps"] == 6 and summary["samples"] == 48
    assert summary["chance_ce"] == pytest.approx(math.log(20))
    last = read_rows(run_dir / "metrics.csv")[-1]
    assert summary["final"]["ce_ema"] == pytest.approx(float(last["ce_ema"]))


def test_config_json_is_the_run_config(run_dir: Path):
    assert TrainConfig.from_file(run_dir / "config.json") == TrainConfig().with_overrides(SMALL)


def test_same_seed_gives_identical_metrics(run_dir: Path, tmp_path: Path):
    """Two runs with the same seed write the same metrics.csv on CPU, every column but the wall-clock one."""
    again = tmp_path / "again"
    assert main(["--set", *SMALL, "--out", str(again)]) == 0
    first = read_rows(run_dir / "metrics.csv", drop=TIMINGS)
    second = read_rows(again / "metrics.csv", drop=TIMINGS)
    assert second == first


def test_config_json_reruns_the_same_curve(run_dir: Path, tmp_path: Path):
    """A finished run's config.json is accepted by --config and reproduces the run (the re-run contract)."""
    rerun = tmp_path / "rerun"
    assert main(["--config", str(run_dir / "config.json"), "--out", str(rerun)]) == 0
    assert read_rows(rerun / "metrics.csv", drop=TIMINGS) == read_rows(
        run_dir / "metrics.csv", drop=TIMINGS
    )


def test_exported_best_config_runs(tmp_path: Path):
    exported = {"config": TrainConfig().with_overrides(SMALL + ["max_steps=2"]).to_dict(), "trial": "t_0001"}
    (tmp_path / "best_config.json").write_text(json.dumps(exported))
    assert main(["--config", str(tmp_path / "best_config.json"), "--out", str(tmp_path / "run")]) == 0
    assert len(read_rows(tmp_path / "run" / "metrics.csv")) == 2


def test_yaml_config_with_set_on_top(tmp_path: Path):
    (tmp_path / "c.yaml").write_text("synthetic_identities: 20\nbatch_size: 8\nmax_steps: 5\nhead_lr: 1e-3\n")
    assert main(["--config", str(tmp_path / "c.yaml"), "--set", "max_steps=2", "--out", str(tmp_path / "run")]) == 0
    saved = TrainConfig.from_file(tmp_path / "run" / "config.json")
    assert saved.max_steps == 2 and saved.head_lr == 1e-3
    assert len(read_rows(tmp_path / "run" / "metrics.csv")) == 2


def test_diverged_run_exits_1_and_says_why(tmp_path: Path, capsys):
    out = tmp_path / "run"
    assert run_main(["--set", *SMALL, "head_lr=1e30", "max_steps=20", "--out", str(out)]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["end_reason"] == "diverged"
    rows = read_rows(out / "metrics.csv")
    assert len(rows) == summary["steps"] < 20
    assert not math.isfinite(float(rows[-1]["loss"]))
    assert "diverged" in capsys.readouterr().out


@pytest.mark.slow
def test_stop_when_stuck_ends_the_run_at_the_verdict_with_its_diagnosis(tmp_path: Path, capsys):
    out = tmp_path / "run"
    args = ["--set", "head_lr=1e-6", "max_steps=200", "ce_only_steps=200", "--grace-steps", "20", "--log-every", "60"]
    assert run_main([*args, "--stop-when-stuck", "--out", str(out)]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["end_reason"] == "stuck_at_chance" and summary["stuck_cause"] == "lr_too_low"
    assert summary["steps"] == summary["chance_verdict_step"] < 200  # stopped where the search would stop it
    assert len(read_rows(out / "metrics.csv")) == summary["steps"]
    printed = capsys.readouterr().out
    assert "lr_too_low" in printed and "head_lr 1e-06" in printed and "(healthy " in printed  # the diagnosis, printed
    # the search's one line for the cause, and the re-run that applies its fix, sized from this run's head
    line = printed.strip().splitlines()[-1]
    assert line.startswith(f"stopped: stuck_at_chance at step {summary['steps']} because lr_too_low (")
    rerun = line.split("re-run with the fix: ", 1)[1]
    assert rerun.startswith(f"reid-tune train --config {out}/config.json --grace-steps 20 --set head_lr=")
    assert summary["fix"]["head_lr"] > 100 * 1e-6
    fixed = tmp_path / "fixed"
    argv = rerun.split()[2:] + ["--set", "max_steps=120", "--out", str(fixed), "--log-every", "60"]
    assert run_main(argv) == 0  # the fix learns: the run completes below the Go line
    last = read_rows(fixed / "metrics.csv")[-1]
    assert float(last["ce_ema"]) < math.log(400) - 0.39


def test_refuses_to_overwrite_a_run(run_dir: Path, capsys):
    before = (run_dir / "metrics.csv").read_text()
    assert run_main(["--set", *SMALL, "--out", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and len(err.splitlines()) == 1
    assert (run_dir / "metrics.csv").read_text() == before


# --- bad inputs: exit 2, one line, no traceback, nothing written ---------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# (argv builder given tmp_path, a fragment the one stderr line must hold)
BAD_INPUTS = {
    "missing config file": (lambda d: ["--config", str(d / "nope.json")], "config file '.*nope.json' does not exist"),
    "malformed JSON": (lambda d: ["--config", str(write(d / "c.json", '{"head_lr": 1e-3,'))], "cannot parse config file"),
    "malformed YAML": (lambda d: ["--config", str(write(d / "c.yaml", "head_lr: [1e-3\n"))], "cannot parse config file"),
    "config not a mapping": (lambda d: ["--config", str(write(d / "c.yaml", "- 1\n- 2\n"))], "must hold a mapping"),
    "unknown key in file": (
        lambda d: ["--config", str(write(d / "c.yaml", "head_lrr: 0.01\n"))],
        "unknown config key 'head_lrr'; did you mean 'head_lr'",
    ),
    "unknown key in --set": (lambda d: ["--set", "head_lrr=0.01"], "did you mean 'head_lr'"),
    "wrong type": (lambda d: ["--set", "batch_size=abc"], "'batch_size' must be an integer, got 'abc'"),
    "invalid value": (lambda d: ["--set", "head_lr=-1"], "'head_lr' is -1.0, but must be > 0"),
    "invalid value in file": (lambda d: ["--config", str(write(d / "c.json", '{"grad_accum_steps": 0}'))], ">= 1"),
    "--set without =": (lambda d: ["--set", "head_lr"], "override 'head_lr' is not key=value"),
    "labels out of range": (
        lambda d: ["--set", "num_classes=300"],
        r"identity labels span \[0, 399\] but num_classes=300 requires \[0, 299\]",
    ),
    "unknown data format": (lambda d: ["--set", "data_format=cuhk"], "unknown data format 'cuhk'; known: synthetic"),
    "unknown model": (lambda d: ["--set", "model=reid-tiniy"], "unknown model 'reid-tiniy'"),
    "unknown flag": (lambda d: ["--head-lr", "1e-3"], "unrecognized arguments: --head-lr"),
}
IN_SUBPROCESS = ("missing config file", "malformed YAML", "wrong type")


def check_one_line_error(code: int, err: str, fragment: str, out: Path) -> None:
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("python -m reid_core.train: error: ")
    assert re.search(fragment, lines[0]), lines[0]
    assert "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("case", [c for c in BAD_INPUTS if c not in IN_SUBPROCESS])
def test_bad_input_in_process(case: str, tmp_path: Path, capsys, caplog):
    argv, fragment = BAD_INPUTS[case]
    out = tmp_path / "run"
    code = run_main([*argv(tmp_path), "--out", str(out)])
    check_one_line_error(code, capsys.readouterr().err, fragment, out)
    # pytest holds log records back from stderr; in a real run a warning would be a second line
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("case", IN_SUBPROCESS)
def test_bad_input_on_the_real_command_line(case: str, tmp_path: Path, run_python):
    """A fresh ``python -m reid_core.train``: the stderr a user sees, with every import's noise."""
    argv, fragment = BAD_INPUTS[case]
    out = tmp_path / "run"
    proc = run_python("-m", "reid_core.train", *argv(tmp_path), "--out", str(out))
    check_one_line_error(proc.returncode, proc.stderr, fragment, out)
    assert proc.stdout == ""


def test_help_exits_0(capsys):
    assert run_main(["--help"]) == 0
    assert "--config" in capsys.readouterr().out


def test_a_random_init_run_says_nothing_on_stderr(tmp_path: Path, run_python):
    """open_clip logs "No pretrained weights loaded" for every random-init model: expected here, not news."""
    proc = run_python("-m", "reid_core.train", "--set", *SMALL, "max_steps=2", "--out", str(tmp_path / "run"))
    assert proc.returncode == 0 and proc.stderr == ""
