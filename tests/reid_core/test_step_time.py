"""Smoke tests of ``benchmarks/step_time.py``, so the benchmark of the training step does not rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reid_core.config import TrainConfig
from reid_core.schedule import sdm_weight_at
from tests.reid_core.conftest import import_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "step_time.py"


def test_step_time_runs_and_ends_with_the_fused_speedup(run_python):
    """The real script in a fresh interpreter, 3 timed steps (not a timing: the numbers are not checked)."""
    proc = run_python(str(SCRIPT), "--steps", "3", "--warmup", "1", "--set", "synthetic_identities=20", timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stdout.strip().splitlines()
    rows = [line.split() for line in lines if line.startswith(("CE-only", "CE+SDM"))]
    assert [(r[0], r[2]) for r in rows] == [("CE-only", "fused"), ("CE-only", "foreach"), ("CE+SDM", "fused"), ("CE+SDM", "foreach")]
    for row in rows:
        ms_per_step, images_per_s = float(row[-2]), float(row[-1])
        assert ms_per_step > 0 and images_per_s > 0
    assert re.match(r"target: <= 80 ms per optimizer step .*: \d+\.\d ms, (met|missed)$", lines[-2])
    assert re.match(r"fused speedup: \d+\.\d\dx$", lines[-1])


@pytest.fixture(scope="module")
def step_time():
    return import_script(SCRIPT, "step_time")


def test_bad_set_is_one_line_and_exit_2(step_time, capsys):
    assert step_time.main(["--set", "head_lrr=1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "did you mean 'head_lr'" in err[0]


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--warmup", "-1"]])
def test_bad_step_counts_exit_2(step_time, argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        step_time.main(argv)
    assert exit_.value.code == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_phases_hold_sdm_weight(step_time):
    """The timed step numbers sit inside the CE-only warm-up and after the SDM ramp."""
    cfg = TrainConfig()
    (ce_name, ce_step), (sdm_name, sdm_step) = step_time.phases(cfg)
    assert (ce_name, sdm_name) == ("CE-only", "CE+SDM")
    assert sdm_weight_at(ce_step, cfg.ce_only_steps, cfg.sdm_ramp_steps, cfg.sdm_weight) == 0.0
    assert sdm_weight_at(sdm_step, cfg.ce_only_steps, cfg.sdm_ramp_steps, cfg.sdm_weight) == cfg.sdm_weight
