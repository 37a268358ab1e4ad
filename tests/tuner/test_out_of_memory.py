"""A trial that runs out of memory ends as an error whose one line names it and the fix (issue 27).

The planted function of ``tests/reid_core/test_out_of_memory.py`` (two real steps, then an allocation torch's CPU
allocator refuses) as a search's trial: real Ray (the shared session)."""

from __future__ import annotations

import pandas as pd

from tests.reid_core.test_out_of_memory import SPEC, write_config
from tuner.search import main as search_main


def test_a_trial_out_of_memory_is_an_error_naming_it_and_the_fix(ray_session, tmp_path, capsys):
    (tmp_path / "space.yaml").write_text("batch_size: {choice: [64]}\n")
    code = search_main([
        "--trainable", SPEC, "--config", str(write_config(tmp_path)), "--space", str(tmp_path / "space.yaml"),
        "--num-trials", "1", "--max-steps", "5", "--grace-steps", "5", "--skip-preflight",
        "--storage-path", str(tmp_path / "results"), "--name", "oom",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1  # some trials failed
    row = pd.read_csv(tmp_path / "results" / "oom" / "results.csv", dtype={"trial_id": str}).iloc[0]
    assert row["end_reason"] == "error" and row["steps"] == 2
    line = next(ln for ln in out.splitlines() if ln.startswith(f"trial {row['trial_id']} failed: "))
    assert "out of host memory at step 3 (an allocation of 1,048,576.00 GiB failed); fix: a smaller batch with more " in line
    assert "--set batch_size=32 grad_accum_steps=2 instead of 64 and 1, or fewer trials per machine" in line
    assert "Traceback" not in line
