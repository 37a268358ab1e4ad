"""The real-scale benchmarks (issue 27): the scale fixture (``benchmarks/scale_data.py``), its layout and counts and a
slice of it trained through the plain job; ``scale_cost.py`` and ``gpu_scale.py`` run on tiny shapes so they do
not rot (no number checked). The slow ones write a few hundred 384x128 JPEGs or run every GPU section on a CPU."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from reid_core.runner import main as run_main
from tests.reid_core.conftest import import_script

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPT = BENCHMARKS / "scale_data.py"


def test_the_full_fixture_has_cuhk_pedes_counts():
    scale = import_script(SCRIPT, "scale_data")
    train = scale.counts_per_identity(*scale.CUHK_PEDES["train"])
    assert len(train) == 11_003 and sum(train) == 34_054 and set(train) == {3, 4}
    assert sum(scale.counts_per_identity(*scale.CUHK_PEDES["test"])) == 3_074


@pytest.mark.slow
def test_a_slice_of_the_fixture_trains_through_the_plain_job_and_the_slow_loader_is_named(tmp_path, capsys):
    scale = import_script(SCRIPT, "scale_data")
    data = tmp_path / "cuhk"
    assert scale.main([str(data), "--fraction", "0.01"]) == 0
    records = json.loads((data / "reid_raw.json").read_text())
    train = [r for r in records if r["split"] == "train"]
    assert len({r["id"] for r in train}) == 110 and len(train) == 440  # the first 1% of the identities, 4 images each
    assert all(len(r["captions"]) == 2 and (data / "imgs" / r["file_path"]).is_file() for r in records)
    assert scale.main([str(data)]) == 2  # never over a data set already there
    capsys.readouterr()
    # 384x128 JPEGs decoded in the training process (no workers on a CPU), resized to the tiny model's 64x32
    out = tmp_path / "run"
    code = run_main(["--data", str(data), "--set", "image_size=64,32", "batch_size=8", "--max-steps", "40", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["end_reason"] == "completed" and summary["chance_ce"] == pytest.approx(4.700, abs=1e-3)  # log(110)
    shares = [float(row["data_wait_share"]) for row in csv.DictReader((out / "metrics.csv").open())]
    assert len(shares) == 40 and all(0 <= s < 1 for s in shares)
    # decoding a 384x128 JPEG costs more than the tiny model's step on it: the run is told, once
    assert printed.count("the data loader is the bottleneck: steps 21-40 waited for images") == 1


def test_scale_cost_prints_the_shares_last(tmp_path):
    """``benchmarks/scale_cost.py`` on the tiny model with the big head (the ViT-B/16 run is BENCHMARKS.md's)."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "scale_cost.py"), "--steps", "2", "--set", "model=reid-tiny", "image_size=64,32",
         "--checkpoint-dir", str(tmp_path / "ckpt")],  # fmt: skip
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert re.match(r"monitor share \d+\.\d{4}, guard share \d+\.\d{4}$", lines[-1]), lines[-1]
    assert any(re.match(r"checkpoint: \d+\.\d\d GB written in \d+\.\d s", line) for line in lines)
    assert not list((tmp_path / "ckpt").iterdir())  # the checkpoint it wrote is gone


@pytest.mark.slow
def test_the_gpu_script_runs_its_five_sections_on_a_cpu(tmp_path):
    """``benchmarks/gpu_scale.py --smoke --torch-only``: the path the lent GPU takes without open_clip, tiny shapes."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_scale.py"), "--smoke", "--torch-only", "--seconds", "2", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    text = (tmp_path / "gpu_scale.txt").read_text()
    for section in ("1. step, CE-only", "2. loader", "3. one process alone", "4. planted inf gradients", "5. out of host memory"):
        assert section in text, text
    assert "skipped_steps 30 of 30" in text and "diagnosis: amp_skipped_steps" in text
    assert json.loads((tmp_path / "gpu_scale.json").read_text())["planted_inf"]["cause"] == "amp_skipped_steps"
