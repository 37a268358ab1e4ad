"""sdm_start=go_line: SDM stays off until CE has left chance (the seed's "when to bring SDM back"), as the
plain job's metrics.csv and summary.json show it."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from reid_core.chance import go_line
from reid_core.config import ConfigError, TrainConfig
from reid_core.train import main

FAST = ["batch_size=16", "threads=1", "device=cpu", "sdm_ramp_steps=4"]


def run(tmp_path: Path, *settings: str) -> tuple[list[dict], dict]:
    out = tmp_path / "run"
    assert main(["--set", *FAST, *settings, "--out", str(out), "--log-every", "60"]) in (0, 1)
    with open(out / "metrics.csv", newline="") as f:
        rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
    return rows, json.loads((out / "summary.json").read_text())


def test_sdm_starts_the_step_after_ce_ema_first_reaches_the_go_line(tmp_path):
    rows, summary = run(tmp_path, "head_lr=1e-2", "sdm_start=go_line", "max_steps=60")
    crossed = next(i for i, r in enumerate(rows) if r["ce_ema"] <= go_line(r["chance_ce"]))
    assert crossed < 55, "the pretrained default crosses the Go line within a few dozen steps"
    assert all(r["sdm_weight"] == 0.0 for r in rows[: crossed + 1])  # CE-only up to and including the crossing
    ramp = [r["sdm_weight"] for r in rows[crossed + 1 : crossed + 5]]
    assert ramp == pytest.approx([0.25, 0.5, 0.75, 1.0])  # then the usual linear ramp
    assert summary["sdm_start_step"] == int(rows[crossed]["step"]) + 1


def test_a_larger_chance_margin_starts_sdm_later_on_the_same_run(tmp_path):
    # the run's own Go line, log(C) - chance_margin, ends the CE-only phase (the search sets it from --chance-margin)
    starts = {}
    for margin in (0.39, 0.8):
        (tmp_path / str(margin)).mkdir()
        rows, summary = run(tmp_path / str(margin), "head_lr=1e-2", "sdm_start=go_line", f"chance_margin={margin}", "max_steps=60")
        crossed = next(r for r in rows if r["ce_ema"] <= go_line(r["chance_ce"], margin))
        assert summary["sdm_start_step"] == int(crossed["step"]) + 1
        starts[margin] = summary["sdm_start_step"]
    assert starts[0.39] < starts[0.8], starts


def test_a_run_stuck_at_chance_stays_ce_only_until_the_cap(tmp_path):
    rows, summary = run(tmp_path, "head_lr=1e-6", "sdm_start=go_line", "sdm_start_cap=30", "max_steps=36")
    assert all(r["ce_ema"] > go_line(r["chance_ce"]) for r in rows)
    assert [r["sdm_weight"] > 0 for r in rows] == [False] * 30 + [True] * 6
    assert summary["sdm_start_step"] == 31


def test_without_a_cap_a_stuck_run_never_starts_sdm(tmp_path):
    rows, summary = run(tmp_path, "head_lr=1e-6", "sdm_start=go_line", "max_steps=20")
    assert all(r["sdm_weight"] == 0.0 and r["sdm"] == 0.0 for r in rows) and summary["sdm_start_step"] is None


def test_the_default_starts_sdm_after_ce_only_steps(tmp_path):
    rows, summary = run(tmp_path, "ce_only_steps=5", "max_steps=8")
    assert [r["sdm_weight"] > 0 for r in rows] == [False] * 5 + [True] * 3 and summary["sdm_start_step"] == 6


@pytest.mark.parametrize("key, value", [("sdm_start", "loss"), ("sdm_start_cap", -1)])
def test_bad_values_name_the_rule(key, value):
    with pytest.raises(ConfigError, match=key):
        TrainConfig.from_dict({key: value})


def test_go_line_is_the_default_chance_rules():
    assert go_line(math.log(400)) == pytest.approx(5.6, abs=0.01)
