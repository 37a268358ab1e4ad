"""Smoke test of ``benchmarks/loader.py``, so the loader benchmark does not rot (numbers not checked)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.reid_core.conftest import import_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "loader.py"


@pytest.fixture(scope="module")
def loader_benchmark():
    return import_script(SCRIPT, "loader_benchmark")


def test_prints_loader_and_step_rates_and_the_ratio_last(loader_benchmark, capsys):
    argv = ["--images", "48", "--file-size", "64x32", "--workers", "0", "--batches", "2", "--steps", "2", "--warmup", "0"]
    assert loader_benchmark.main([*argv, "--set", "batch_size=8", "device=cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.match(r"loader, 0 worker\(s\) +\d+$", lines[-4])
    assert re.match(r"training step \(CE\+SDM\), no loading +\d+$", lines[-3])
    assert re.match(r"workers needed for \d+ images/s at \d+ images/s per worker: \d+$", lines[-2])
    assert re.match(r"loader / step at loader_workers=0 \(what training on cpu uses\): \d+\.\d\dx, (keeps up|starves the step)$", lines[-1])


def test_bad_file_size_is_one_line_and_exit_2(loader_benchmark, capsys):
    assert loader_benchmark.main(["--file-size", "big"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--file-size 'big' must be HEIGHTxWIDTH" in err[0]
