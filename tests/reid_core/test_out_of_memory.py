"""Out of memory: a run that cannot allocate ends as one line naming it and the fix, not a traceback.

A real allocation failure, cheaply: a training function that trains two real steps, then asks torch's CPU
allocator for more than any machine has (``allocate_gib``), which fails at once (nothing is touched). A CUDA
out-of-memory error takes the same path (`reid_core.contract.out_of_memory`); the GPU script plants one.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import yaml

from reid_core.runner import main as run_main

SPEC = "tests.reid_core.test_out_of_memory:planted"


def planted(config: dict, report) -> None:
    """A tiny real loop (linear head on random features) whose third step allocates ``allocate_gib`` GiB."""
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 10)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-2)
    for step in range(1, config["max_steps"] + 1):
        features, labels = torch.randn(config["batch_size"], 16), torch.randint(0, 10, (config["batch_size"],))
        if step == 3:
            features = features.new_empty(int(config["allocate_gib"] * 2**30) // 4)  # the allocator refuses: real ENOMEM
        loss = torch.nn.functional.cross_entropy(head(features), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        report({"step": step, "samples": step * config["batch_size"], "ce": loss.item(), "num_classes": 10})


def write_config(folder: Path) -> Path:
    path = folder / "oom.yaml"
    path.write_text(yaml.safe_dump({"max_steps": 5, "batch_size": 64, "grad_accum_steps": 1, "allocate_gib": 2**20}))
    return path


def test_host_out_of_memory_is_one_line_naming_it_and_the_fix(tmp_path, capsys):
    out = tmp_path / "run"
    code = run_main(["--trainable", SPEC, "--config", str(write_config(tmp_path)), "--out", str(out)])
    fragment = (
        r"out of host memory at step 3 \(an allocation of 1,048,576\.00 GiB failed\); fix: a smaller batch with more gradient "
        r"accumulation \(the same images per step\): --set batch_size=32 grad_accum_steps=2 instead of 64 and 1, or fewer "
        r"trials per machine"
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert len(err.splitlines()) == 1 and re.match(r"python -m reid_core.runner: error: " + fragment, err), err
    # the two steps before it are recorded (they happened); no summary: the run did not end
    assert (out / "metrics.csv").read_text().count("\n") == 3
    assert not (out / "summary.json").exists()
