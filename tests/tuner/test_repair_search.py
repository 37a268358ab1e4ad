"""Repairs in a real search: a trial stopped as stuck for a cause a config value fixes comes back with the fix
(sized from its head; beyond the space with a note when the whole space is too low), recorded in results.csv,
counted in the summary; an interrupted repairing search resumed neither loses nor repeats a repair."""

from __future__ import annotations

import json
import signal
import subprocess

import pandas as pd
import pytest

from tests.tuner.conftest import run_search, search_in_subprocess, sequential_search_args, wait_for
from tuner.results import read_repairs
from tuner.search import main as search_main

pytestmark = pytest.mark.ray

LOW_SPACE = "head_lr: {loguniform: [1.0e-6, 1.0e-4]}\n"  # tops at a head LR too low for the default to leave chance


def test_a_space_that_tops_at_a_too_low_head_lr_gets_a_repair_above_it_that_crosses_the_go_line(ray_session, tmp_path, capsys):
    code, exp = run_search(tmp_path, "low", [{"head_lr": 1e-5}], extra=["--skip-preflight", "--repair"], space=LOW_SPACE)
    out = capsys.readouterr().out
    assert code == 0
    table = pd.read_csv(exp / "results.csv", dtype={"trial_id": str, "repair_of": str})
    assert len(table) == 2
    stuck = table[table.end_reason == "stuck_at_chance"].iloc[0]
    repair = table[table.repair_of.notna()].iloc[0]
    assert stuck.stuck_cause == "lr_too_low" and repair.repair_of == stuck.trial_id
    assert repair.head_lr > 1e-4 and repair.repair == f"head_lr={repair.head_lr:.3g} for lr_too_low"
    assert "above the space's top 0.0001" in repair.repair_note
    assert repair.end_reason == "completed" and pd.notna(repair.go_samples)  # it crossed the Go line
    assert "repairs: 1 of 1 crossed the Go line" in out
    assert json.loads((exp / "best_config.json").read_text())["trial_id"] == repair.trial_id


def test_without_repair_no_trial_is_added(ray_session, tmp_path):
    code, exp = run_search(tmp_path, "norepair", [{"head_lr": 1e-5}], extra=["--skip-preflight"], space=LOW_SPACE)
    table = pd.read_csv(exp / "results.csv", dtype={"trial_id": str})
    assert code == 0 and len(table) == 1 and "repair_of" not in table and not list(exp.glob("repairs-*.json"))


def _proposed(exp) -> int:
    return sum(e["trial"] is not None for e in read_repairs(exp))


def test_a_repairing_search_killed_and_resumed_neither_loses_nor_repeats_a_repair(ray_session, tmp_path):
    points = [{"head_lr": 1e-5}, {"head_lr": 3e-6}]
    args, storage = sequential_search_args(tmp_path, "resumed", points, extra=["--repair", "--max-steps", "90", "--grace-steps", "30"])
    (tmp_path / "space.yaml").write_text(LOW_SPACE)
    exp = storage / "resumed"
    with search_in_subprocess(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as driver:
        wait_for(lambda: _proposed(exp) >= 1, driver, "a repair proposed")
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    assert search_main(["--resume", "--name", "resumed", "--storage-path", str(storage)]) == 0
    repairs = read_repairs(exp)
    table = pd.read_csv(exp / "results.csv", dtype={"trial_id": str, "repair_of": str})
    stuck = set(table[table.end_reason == "stuck_at_chance"].trial_id)
    assert len(stuck) == 2 and sorted(e["of"] for e in repairs) == sorted(stuck)  # each stuck trial repaired once
    assert all(e["trial"] in set(table.trial_id) for e in repairs)  # each repair ran
    assert sorted(table.repair_of.dropna()) == sorted(stuck) and table.trial_id.is_unique
