"""Smoke runs of the benchmark scripts, so they do not rot: tiniest settings, exit 0, the ratio line last.

Not timings: no number is checked against its target. Each script runs as
``python benchmarks/NAME.py`` in a fresh interpreter, as a user runs it; the
ones that use Ray start their own (temp session folder and HOME, removed after).
The four start together and overlap (each spends most of its time importing
torch and starting Ray, not computing); the tests then read their outcomes.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
TINY = ["--set", "synthetic_identities=20", "batch_size=8"]  # 160 images: data in well under a second

SMOKES = {
    "harness_overhead": ["--steps", "6", "--repeats", "1", *TINY],
    "early_stop": ["--num-trials", "1", "--max-steps", "6", "--grace-steps", "3", "--max-concurrent", "1", *TINY],
    "stuck_latency": ["--num-trials", "1", "--grace-steps", "3", *TINY],
    "step_throughput": ["--steps", "2", "--warmup", "1", "--repeats", "1", *TINY],
    "simulation_scale": ["--trials", "30", "--workers", "4", "--max-steps", "60", "--grace-steps", "20"],
    "driver_rate": ["--trials", "4", "--max-steps", "10", "--grace-steps", "5"],
    "monitor_cost": ["--steps", "2", "--warmup", "1", *TINY],
    "unseen_cost": ["--steps", "2", "--warmup", "1", *TINY],
    "pbt": ["--num-trials", "2", "--max-steps", "6", "--grace-steps", "3", "--perturbation-interval", "1", "--max-concurrent", "1", *TINY],
    "diagnosis": ["--seeds", "1", "--configs", "b32", "--kinds", "lr_too_low", "--max-steps", "8", "--grace-steps", "4", *TINY],
    "head_lr": ["--seeds", "1", "--steps", "4", *TINY],
    "early_cost": ["--steps", "20", "--repeats", "1"],
}

RATIO_LINES = {
    "harness_overhead": r"step-rate ratio \(search / plain\): \d+\.\d{3}",
    "early_stop": r"trial-samples ratio \(b / a\): \d+\.\d{3}",
    "stuck_latency": r"stuck-detection latency \(reports past the grace window, worst trial\): (\d+\.\d\d|nan)",
    "step_throughput": r"images/s ratio \(reid_core / plain PyTorch\): \d+\.\d{3}",
    "simulation_scale": r"\d+ policy runs of \d+ trials in \d+\.\d s: \d+ trials/s",
    "driver_rate": r"\d+ results/s, \d+\.\d trials/s",
    "monitor_cost": r"monitor share of a step: -?\d+\.\d{4}",
    "unseen_cost": r"unseen_ce share of a step: -?\d+\.\d{4}",
    "pbt": r"PBT vs ASHA\+TPE: best ce_ema ([+-]\d+\.\d{3}|[+-]?nan), images spent ratio \d+\.\d{3}",
    "diagnosis": r"top-1 \d\.\d{3}, wrong-cause \d\.\d{3}, unknown \d\.\d{3}, healthy stopped or named \d+ of \d+, "
    r"pre-flight wiring \d+ of \d+, verdict at (\d+\.\d\d|nan) / (\d+\.\d\d|nan) grace windows \(median / p90\), wall \d+ s",
    "early_cost": r"early verdict share of a step: -?\d+\.\d{4}",
    "head_lr": r"guard: runaways caught \d+ of \d+, below the Go line \d+ of \d+ \(without: \d+\); raise: too-low runs below "
    r"the Go line \d+ of \d+ \(without: \d+\); healthy runs the guard fired on \d+ of \d+ \(peak ce_ema \d+\.\d{3}x chance\), raised \d+ of \d+; wall \d+ s",
}


@pytest.fixture(scope="module")
def scratch():
    """The scripts' TMPDIR: short (Ray's socket paths must stay under 107 characters); ours must be gone after."""
    folder = Path(tempfile.mkdtemp(prefix="rb"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def smokes(tmp_path_factory, scratch) -> dict[str, subprocess.CompletedProcess]:
    """Every script's tiny run, started together; ``{name: CompletedProcess}``."""
    tmp = tmp_path_factory.mktemp("bench")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # never join a test session's Ray
    env.update(PYTHONUNBUFFERED="1", TMPDIR=str(scratch))
    procs = {}
    for name, args in SMOKES.items():
        procs[name] = subprocess.Popen(
            [sys.executable, str(BENCHMARKS / f"{name}.py"), *args],
            cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    deadline = time.monotonic() + 900  # a hang guard: ten interpreters share the CPUs, for minutes on a loaded machine
    done = {}
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return done


@pytest.mark.parametrize("name", list(SMOKES))
def test_script_exits_0_and_prints_its_ratio_last(smokes, name):
    proc = smokes[name]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(RATIO_LINES[name], last), proc.stdout[-2000:]


@pytest.mark.parametrize(
    "name, line",
    [
        ("harness_overhead", r"target: search / plain step rate >= 0\.95 \(cpu\): \d+\.\d{3}, (met|missed)"),
        ("early_stop", r"target: at most 25% of \(a\)'s trial-samples: \d+\.\d%, (met|missed)"),
        ("step_throughput", r"ours / floor per phase: CE-only \d+\.\d{3}, CE\+SDM \d+\.\d{3}"),
    ],
)
def test_script_prints_its_verdict_before_the_ratio(smokes, name, line):
    lines = smokes[name].stdout.strip().splitlines()
    assert len(lines) >= 2 and re.fullmatch(line, lines[-2]), smokes[name].stdout[-2000:]


def test_harness_overhead_trains_the_same_curve_with_and_without_ray(smokes):
    """The two sides must run the same computation, or the ratio compares different work."""
    assert "same computation: largest |ce plain - ce search| over the steps 0\n" in smokes["harness_overhead"].stdout


def test_early_stop_runs_the_same_configs_and_a_to_the_budget(smokes):
    out = smokes["early_stop"].stdout
    assert "same configs in both runs: 1 of 1" in out
    assert "stopped before the budget" not in out


def test_temp_folders_are_removed(smokes, scratch):
    """Ray's session files, its auth token (under a temp HOME) and the runs' folders go when the scripts end."""
    ours = [p.name for p in scratch.iterdir() if p.name.startswith(("rtb-", "reid-bench-"))]
    assert ours == []


@pytest.fixture(scope="module")
def scripts():
    """The scripts as modules, for their argument checks (they import ``common`` and ``step_time`` by name)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield {name: importlib.import_module(name) for name in SMOKES}
    finally:
        sys.path.remove(str(BENCHMARKS))
        for name in [*SMOKES, "common", "step_time"]:  # leave no script-named module behind
            sys.modules.pop(name, None)


@pytest.mark.parametrize(
    "name, argv, message",
    [
        ("harness_overhead", ["--set", "head_lrr=1"], "did you mean 'head_lr'"),
        ("step_throughput", ["--set", "head_lrr=1"], "did you mean 'head_lr'"),
        ("early_stop", ["--space", "no-such-space"], "no-such-space"),
        ("stuck_latency", ["/no/such/experiment"], "/no/such/experiment"),
        ("diagnosis", ["--kinds", "no_such_kind"], "unknown kind 'no_such_kind'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(scripts, name, argv, message, capsys):
    assert scripts[name].main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and message in err[0]


@pytest.mark.parametrize(
    "name, argv",
    [
        ("harness_overhead", ["--steps", "3"]),
        ("early_stop", ["--grace-steps", "800", "--max-steps", "800"]),
        ("stuck_latency", ["--num-trials", "0"]),
        ("step_throughput", ["--repeats", "0"]),
    ],
)
def test_bad_counts_exit_2(scripts, name, argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        scripts[name].main(argv)
    assert exit_.value.code == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_rung_orders_names_a_folder_without_a_kept_experiment(tmp_path, capsys):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        rung_orders = importlib.import_module("rung_orders")
        assert rung_orders.main([str(tmp_path)]) == 2
    finally:
        sys.path.remove(str(BENCHMARKS))
        for name in ("rung_orders", "common"):
            sys.modules.pop(name, None)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and str(tmp_path) in err[0] and "early_stop.py --keep" in err[0]


@pytest.mark.parametrize(
    "name, argv, message",
    [("halt", ["/no/such/rows.jsonl"], "cannot read '/no/such/rows.jsonl'"), ("repair", ["--configs", "b99"], "unknown config 'b99'")],
)
def test_halt_and_repair_benchmarks_name_a_bad_input(name, argv, message, capsys):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        assert importlib.import_module(name).main(argv) == 2
    finally:
        sys.path.remove(str(BENCHMARKS))
        for module in (name, "common", "diagnosis", "planted"):
            sys.modules.pop(module, None)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and message in err[0]


def test_halt_replays_recorded_runs_through_the_search_rule(tmp_path, capsys):
    """Two recorded runs of one unfixable kind stop the search; the same runs as a healthy config's learners do not."""
    def run(kind, named, seed, go=None):
        rows = [{"step": s, "samples": 32 * s} for s in range(1, 21)]
        case = {"kind": kind, "way": "w", "config_name": "b32", "seed": seed, "grace_steps": 300}
        return {"case": case, "named": named, "step": 20 if named != "not_stopped" else None, "go_step": go, "rows": rows}

    rows = [run("labels_no_signal", "labels_no_signal", 3), run("labels_no_signal", "labels_no_signal", 4),
            run("healthy", "not_stopped", 3, go=15)]  # fmt: skip
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    sys.path.insert(0, str(BENCHMARKS))
    try:
        assert importlib.import_module("halt").main([str(tmp_path / "rows.jsonl")]) == 0
    finally:
        sys.path.remove(str(BENCHMARKS))
        sys.modules.pop("halt", None)
    out = capsys.readouterr().out
    assert "1/1 stopped on the right cause" in out and "healthy searches stopped: 0 of 1" in out
