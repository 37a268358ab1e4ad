"""The scale fixture (``benchmarks/scale_data.py``): its layout and counts, and a slice of it trained through the
plain job (issue 27). Slow: it writes a few hundred 384x128 JPEGs and trains 40 real steps reading them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from reid_core.runner import main as run_main
from tests.reid_core.conftest import import_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "scale_data.py"


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
